"""Name resolution between containers: the ``/etc/hosts`` entries of their networks.

Every container's ``/etc/hosts`` is a file the engine keeps at
``ROOT/containers/<cid>/hosts`` and bind-mounts into the container. Below the engine's
own lines (localhost, the hostname) this module keeps a block between two marker lines
listing, for each network the container is on, the address and names (container name
and aliases) of every container there, itself included. On the default ``bridge``
network containers are not told about each other, as in Docker, where only
user-defined networks resolve container names; there the block holds the container's
own entry only.

A bind mount pins the file's inode: a new file renamed over it would not be seen inside
the container. So the file is truncated and rewritten in place, under a lock so that two
containers joining at once can't interleave their writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from minidock import store
from minidock.network.networks import DEFAULT_NETWORK, NetworkStore

BEGIN = "# BEGIN minidock networks: managed, rewritten when containers come and go"
END = "# END minidock networks"


def strip_block(text: str) -> str:
    """``text`` without the minidock block (the engine's lines, as it wrote them)."""
    lines = text.splitlines(keepends=True)
    if BEGIN + "\n" not in lines:
        return text
    start = lines.index(BEGIN + "\n")
    end = lines.index(END + "\n", start) + 1 if END + "\n" in lines[start:] else len(lines)
    return "".join(lines[:start] + lines[end:])


def render(base: str, entries: Iterable[tuple[str, list[str]]]) -> str:
    """``base`` (any old block removed) followed by one ``address<TAB>names`` line per
    entry between the markers; no block at all when there are no entries."""
    base = strip_block(base)
    unique = dict.fromkeys((address, tuple(names)) for address, names in entries if names)
    lines = [f"{address}\t{' '.join(names)}\n" for address, names in unique]
    if not lines:
        return base
    if base and not base.endswith("\n"):
        base += "\n"
    return base + BEGIN + "\n" + "".join(lines) + END + "\n"


def endpoint_names(endpoint: dict) -> list[str]:
    """The names a container answers to on a network: its name, then its aliases."""
    return list(dict.fromkeys([*filter(None, [endpoint.get("name")]), *endpoint["aliases"]]))


def refresh(networks: NetworkStore, cids: Iterable[str]) -> None:
    """Rewrite the block in the hosts file of each container in ``cids`` from the
    endpoint records (a container without a hosts file is skipped)."""
    if not os.path.isdir(networks.dir):
        return  # no network, no entries
    paths = store.Paths(networks.root)
    with store.locked(os.path.join(networks.dir, "hosts.lock")):
        # Read under the lock: whoever writes last has seen every endpoint written before.
        connected = [(net, networks.endpoints(net)) for net in networks.list()]
        for cid in dict.fromkeys(cids):
            entries = []
            for net, endpoints in connected:
                if not any(e["cid"] == cid for e in endpoints):
                    continue
                visible = [e for e in endpoints if net.name != DEFAULT_NETWORK or e["cid"] == cid]
                entries += [(e["ip"], endpoint_names(e)) for e in visible]
            _rewrite(paths.container(cid, "hosts"), entries)


def _rewrite(path: str, entries: list[tuple[str, list[str]]]) -> None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    with os.fdopen(fd, "r+") as f:
        new = render(f.read(), entries)
        f.seek(0)
        f.truncate()
        f.write(new)
