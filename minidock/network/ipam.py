"""IP address management (IPAM): which address of a network's subnet each container holds.

The kernel checks nothing here: two containers given the same address on one bridge
would both answer ARP for it and steal each other's traffic. So every allocation goes
through ``ROOT/networks/<id>/ipam.json``, read and rewritten under an flock(2) (many
``minidock`` processes may start containers at once) and replaced atomically (a crash
leaves the old or the new table, never half of one).

Addresses are handed out round-robin from the last one allocated, as Docker's IPAM does
(moby ``libnetwork/ipams/defaultipam``): a just-released address is reused last, so a
client still talking to a dead container's IP (or holding its ARP entry) is not silently
connected to a new one.
"""

from __future__ import annotations

import ipaddress
import os
from ipaddress import IPv4Address, IPv4Network

from minidock import store
from minidock.errors import MinidockError


def next_address(
    subnet: IPv4Network, reserved: set[IPv4Address], last: IPv4Address | None
) -> IPv4Address | None:
    """The first host address of ``subnet`` after ``last`` (wrapping around) that is not
    ``reserved``; ``None`` when every one is. The network and broadcast addresses are
    never host addresses."""
    first = int(subnet.network_address) + 1
    count = subnet.num_addresses - 2
    start = int(last) - first + 1 if last is not None and last in subnet else 0
    for step in range(count):
        candidate = IPv4Address(first + (start + step) % count)
        if candidate not in reserved:
            return candidate
    return None


class Ipam:
    """The address table of one network, kept in ``directory/ipam.json``."""

    def __init__(self, directory: str, subnet: str, gateway: str) -> None:
        self.path = os.path.join(directory, "ipam.json")
        self.lock = os.path.join(directory, "ipam.lock")
        self.subnet = ipaddress.ip_network(subnet)
        self.gateway = ipaddress.ip_address(gateway)

    def _read(self) -> dict:
        try:
            return store.read_json(self.path)
        except FileNotFoundError:
            return {"allocated": {}, "last": None}

    def allocate(self, cid: str) -> str:
        """An address for container ``cid``: the one it already holds, else a free one."""
        with store.locked(self.lock):
            table = self._read()
            if cid in table["allocated"]:
                return table["allocated"][cid]
            reserved = {self.gateway, *map(IPv4Address, table["allocated"].values())}
            last = IPv4Address(table["last"]) if table["last"] else None
            address = next_address(self.subnet, reserved, last)
            if address is None:
                raise MinidockError(f"no available IPv4 addresses in subnet {self.subnet}")
            table["allocated"][cid] = str(address)
            table["last"] = str(address)
            store.write_json(self.path, table)
            return str(address)

    def release(self, cid: str) -> None:
        """Give ``cid``'s address back (nothing happens if it holds none)."""
        with store.locked(self.lock):
            table = self._read()
            if table["allocated"].pop(cid, None) is not None:
                store.write_json(self.path, table)

    def allocated(self) -> dict[str, str]:
        """Container id → address, for every address currently handed out."""
        with store.locked(self.lock, shared=True):
            return dict(self._read()["allocated"])
