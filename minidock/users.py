"""Resolve ``-u user[:group]`` against the *container's* /etc/passwd and /etc/group.

A name means what the image says it means, not what the host says, so the files are read
from the container's root filesystem (following links as the container would).
"""

from __future__ import annotations

from minidock.errors import InvalidArgument
from minidock.runtime.rootfs import resolve_in_root


def _entries(rootfs: str, name: str) -> list[list[str]]:
    try:
        with open(resolve_in_root(rootfs, f"/etc/{name}")) as f:
            return [
                line.rstrip("\n").split(":")
                for line in f
                if line.strip() and not line.startswith("#")
            ]
    except OSError:
        return []


def resolve(rootfs: str, user: str) -> tuple[int, int, list[int]]:
    """(uid, gid, supplementary gids) for ``user``: ``name``, ``uid``, ``name:group``,
    ``uid:gid``. Numeric ids need no entry in /etc/passwd (as in Docker)."""
    if not user:
        user = "0"
    name, _, group = user.partition(":")
    passwd = _entries(rootfs, "passwd")
    groups = _entries(rootfs, "group")
    uid = gid = None
    for entry in passwd:
        if len(entry) >= 4 and (entry[0] == name or entry[2] == name):
            uid, gid = int(entry[2]), int(entry[3])
            login = entry[0]
            break
    else:
        if not name.isdigit():
            raise InvalidArgument(f"unable to find user {name}: no matching entries in passwd file")
        uid, gid, login = int(name), 0, None
    if group:
        for entry in groups:
            if len(entry) >= 3 and (entry[0] == group or entry[2] == group):
                gid = int(entry[2])
                break
        else:
            if not group.isdigit():
                raise InvalidArgument(
                    f"unable to find group {group}: no matching entries in group file"
                )
            gid = int(group)
    extra = sorted(
        {
            int(e[2])
            for e in groups
            if len(e) >= 4 and login and login in e[3].split(",") and int(e[2]) != gid
        }
    )
    return uid, gid, extra
