"""Bridges and veth pairs, made over rtnetlink — the socket protocol ``ip link`` speaks.

A *bridge* is the kernel's software switch: it learns which MAC address sits behind
which port and forwards frames between its ports. Given an IP address it also becomes
an interface of the host, so the host routes the subnet to it and is the containers'
gateway. A *veth pair* is two virtual NICs wired back to back; the host end is made a
port of the bridge and the other end lives in the container's network namespace, where
it is the container's ``eth0``.

Each request is reported to the ``--explain`` observer of :mod:`minidock.syscalls` by
its rtnetlink message type (RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_DELLINK).

pyroute2 is imported on first use only: it costs ~150 ms of start-up, and the
``poststop`` hook usually finds nothing to do (a veth pair dies with its namespace).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from typing import TYPE_CHECKING

from minidock import syscalls
from minidock.errors import KernelError

if TYPE_CHECKING:
    from pyroute2.iproute.linux import IPRoute

#: Interface names are at most IFNAMSIZ - 1 = 15 bytes (include/uapi/linux/if.h).
IFNAMSIZ = 16
_NETLINK_ROUTE = 0


def write_sysctl(key: str, value: str) -> None:
    """Set a kernel parameter (``net.ipv4.ip_forward`` → ``/proc/sys/net/ipv4/ip_forward``);
    the write is skipped when it already has that value."""
    path = "/proc/sys/" + key.replace(".", "/")
    with open(path, "r+") as f:
        if f.read().strip() == value:
            return
        syscalls.narrate(lambda: f"write({path}, {value})", f"sysctl {key}={value}")
        f.seek(0)
        f.write(value)


def mac_address(ip: str) -> str:
    """``02:42:`` and the four bytes of ``ip``: a locally administered MAC (bit 1 of the
    first byte) unique on the network because the address is, as Docker made them."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def link_exists(name: str) -> bool:
    """Whether the host's network namespace has an interface ``name`` (sysfs lists one
    directory per interface: no netlink round trip, no pyroute2 import)."""
    return os.path.exists(f"/sys/class/net/{name}")


def _iproute() -> IPRoute:
    """An rtnetlink socket in our own network namespace."""
    from pyroute2.iproute.linux import IPRoute

    return IPRoute()


@contextlib.contextmanager
def _iproute_in(pid: int) -> Iterator[IPRoute]:
    """An rtnetlink socket inside the network namespace of process ``pid``.

    A socket belongs for life to the namespace it was created in, so we setns(2) into the
    container's namespace just long enough to create one, then come back: every request
    sent on it then acts on the container's interfaces and routes.
    """
    from pyroute2.iproute.linux import IPRoute

    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        os.close(own)
        raise KernelError("open", errno.ESRCH, f"/proc/{pid}/ns/net") from None
    try:
        syscalls.setns(
            target, syscalls.CLONE_NEWNET, reason="open a netlink socket in the container's netns"
        )
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_ROUTE)
        finally:
            syscalls.setns(
                own, syscalls.CLONE_NEWNET, reason="back to the host's netns (the socket stays)"
            )
    finally:
        os.close(target)
        os.close(own)
    with IPRoute(fileno=sock.detach()) as ipr:
        yield ipr


def _request(
    message: str, detail: str, reason: str, send: Callable[[], object], ignore: int = 0
) -> None:
    """Send one rtnetlink request, narrated; a failure (other than errno ``ignore``)
    becomes a KernelError naming the message and its object."""
    from pyroute2.netlink.exceptions import NetlinkError

    syscalls.narrate(lambda: f"{message} {detail}", reason)
    try:
        send()
    except NetlinkError as exc:
        if exc.code != ignore:
            raise KernelError(message, exc.code, detail) from None


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise KernelError("RTM_GETLINK", errno.ENODEV, name)
    return found[0]


def ensure_bridge(name: str, gateway_cidr: str) -> None:
    """Make sure bridge ``name`` exists, holds ``gateway_cidr`` (e.g. ``10.89.0.1/24``) and
    is up. Idempotent, and safe when several processes do it at once: whoever loses the
    race to create the bridge or its address gets EEXIST, which means done.

    The bridge is given a MAC of its own. Without one it borrows the lowest MAC among
    its ports, which changes as containers come and go, and every container's ARP entry
    for its gateway would go stale each time.
    """
    address, prefix = gateway_cidr.split("/")
    with _iproute() as ipr:
        if not link_exists(name):
            _request(
                "RTM_NEWLINK",
                f"{name} type bridge",
                "a software switch for the network's containers",
                lambda: ipr.link("add", ifname=name, kind="bridge", address=mac_address(address)),
                ignore=errno.EEXIST,
            )
        index = _index(ipr, name)
        _request(
            "RTM_NEWADDR",
            f"{gateway_cidr} dev {name}",
            "the gateway address: the host's own address on the subnet",
            lambda: ipr.addr("add", index=index, address=address, prefixlen=int(prefix)),
            ignore=errno.EEXIST,
        )
        _request(
            "RTM_NEWLINK",
            f"{name} up",
            "start switching",
            lambda: ipr.link("set", index=index, state="up"),
        )
    # The host must route between the bridge and its other interfaces (Docker sets it too).
    write_sysctl("net.ipv4.ip_forward", "1")


def plug(
    pid: int,
    bridge: str,
    ifname: str,
    address_cidr: str,
    gateway: str | None,
    mac: str | None,
    *,
    veth: str,
) -> str:
    """Connect the network namespace of process ``pid`` to ``bridge``; returns ``veth``.

    One RTM_NEWLINK creates the pair with its peer already inside the namespace and
    already named ``ifname`` (eth0, eth1 …), so the peer never exists on the host under a
    temporary name. The host end ``veth`` becomes a port of the bridge; inside, the peer
    gets ``address_cidr``, the MAC ``mac`` and, when ``gateway`` is given, the default
    route. If a step fails the caller unplugs ``veth`` (the peer goes with it).
    """
    address, prefix = address_cidr.split("/")
    peer: dict[str, object] = {"ifname": ifname, "net_ns_pid": pid}
    if mac:
        peer["address"] = mac
    with _iproute() as ipr:
        master = _index(ipr, bridge)
        _request(
            "RTM_NEWLINK",
            f"{veth} type veth peer {ifname} netns {pid}",
            "a veth pair: one end on the host, the other in the container",
            lambda: ipr.link("add", ifname=veth, kind="veth", peer=peer),
        )
        _request(
            "RTM_NEWLINK",
            f"{veth} master {bridge} up",
            "plug the host end into the bridge",
            lambda: ipr.link("set", index=_index(ipr, veth), master=master, state="up"),
        )
    with _iproute_in(pid) as ns:
        index = _index(ns, ifname)
        _request(
            "RTM_NEWADDR",
            f"{address_cidr} dev {ifname}",
            "the container's address on the network",
            lambda: ns.addr("add", index=index, address=address, prefixlen=int(prefix)),
        )
        _request(
            "RTM_NEWLINK",
            f"{ifname} up",
            "bring the container's interface up",
            lambda: ns.link("set", index=index, state="up"),
        )
        if gateway:
            _request(
                "RTM_NEWROUTE",
                f"default via {gateway} dev {ifname}",
                "everything off the subnet goes through the host",
                lambda: ns.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index),
            )
    return veth


def host_routes() -> list[IPv4Network]:
    """The destinations of the host's IPv4 routes, all tables, default routes left out
    (0.0.0.0/0 overlaps everything, and is no subnet anyone sits on)."""
    with _iproute() as ipr:
        routes = ipr.get_routes(family=socket.AF_INET)
    return [
        ipaddress.ip_network(f"{r.get('dst')}/{r['dst_len']}", strict=False)
        for r in routes
        if r["dst_len"] > 0
    ]


def _delete_link(name: str, reason: str) -> None:
    if not link_exists(name):
        return
    with _iproute() as ipr:
        _request(
            "RTM_DELLINK",
            name,
            reason,
            lambda: ipr.link("del", ifname=name),
            ignore=errno.ENODEV,  # the kernel got there first
        )


def unplug(veth: str) -> None:
    """Delete the host end of a veth pair if it is still there. Deleting either end
    deletes both; when the container's namespace died, the pair has already gone."""
    _delete_link(veth, "unplug the container from the bridge")


def delete_bridge(name: str) -> None:
    """Delete bridge ``name`` (its address and routes go with it), if it exists."""
    _delete_link(name, "the network is removed")
