"""The network store: Docker's ``network create / ls / inspect / rm / prune``.

Layout under the state root::

    ROOT/networks/lock                        serialises names, creation and removal
    ROOT/networks/<id>/network.json           the Network record
    ROOT/networks/<id>/lock                   held while endpoints come and go
    ROOT/networks/<id>/ipam.json              address table (see ipam.py)
    ROOT/networks/<id>/endpoints/<cid>.json   one per container connected

Creating a network creates its bridge at once, as Docker does: the bridge's route is
how other minidock roots, Docker, Podman or a VPN see that the subnet is taken. A free
subnet is one that overlaps no route of the host and no other network of this root, and
is chosen under a host-wide lock. The kernel side (bridge, NAT, isolation rules) is
recreated idempotently whenever a container joins (:meth:`NetworkStore.connect`), so a
reboot, which wipes it, costs nothing but that.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from ipaddress import IPv4Network

from minidock import store
from minidock.errors import Conflict, InvalidArgument, NotFound
from minidock.logfile import format_timestamp
from minidock.network import bridge, nat
from minidock.network.ipam import Ipam

DEFAULT_NETWORK = "bridge"
#: Names Docker reserves for its network modes; no user network may take them.
PREDEFINED = ("bridge", "host", "none")
#: Serialises subnet choice across every minidock root on the host.
SUBNET_LOCK = "/run/minidock-networks.lock"
#: Where free subnets are looked for, split into /24s: Podman's 10.89.0.0/16 range for
#: its networks, then the top of Docker's 172.16.0.0/12 default pools.
POOLS = ("10.89.0.0/16", "172.30.0.0/15")
POOL_PREFIX = 24


@dataclass
class Network:
    """One bridge network, as ``network.json`` records it."""

    id: str
    name: str
    driver: str
    subnet: str
    gateway: str
    bridge: str
    created: str
    internal: bool = False

    @property
    def prefix_len(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen


def root_hash(root: str) -> str:
    """8 hex digits naming a state root in bridge names and rule tags."""
    return hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:8]


def tag(root: str, object_id: str) -> str:
    """The comment that marks a network's or container's iptables rules (see nat.py)."""
    return f"minidock:{root_hash(root)}:{object_id}"


def default_bridge_name(root: str) -> str:
    """``minidock0`` for the standard root (as Docker's is ``docker0``); every other root
    gets its own, so that test roots never share a bridge."""
    if os.path.abspath(root) == store.DEFAULT_ROOT:
        return "minidock0"
    return f"mdb{root_hash(root)}"


def user_bridge_name(network_id: str) -> str:
    """``mdn`` + 12 hex digits of the network id: 15 bytes, the most a name may have."""
    return f"mdn{network_id[:12]}"


def veth_name(cid: str, network_id: str) -> str:
    """The host end of ``cid``'s veth pair on a network: the same every time, so teardown
    finds it even when setup died before recording it."""
    return "veth" + hashlib.sha256(f"{cid}:{network_id}".encode()).hexdigest()[:8]


def choose_subnet(
    taken: list[IPv4Network], pools: tuple[str, ...] = POOLS, prefix: int = POOL_PREFIX
) -> IPv4Network | None:
    """The first ``/prefix`` of ``pools`` that overlaps none of ``taken``."""
    for pool in pools:
        for candidate in ipaddress.ip_network(pool).subnets(new_prefix=prefix):
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
    return None


class NetworkStore:
    """The networks of one state root."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.dir = os.path.join(self.root, "networks")

    def _path(self, network_id: str, *parts: str) -> str:
        return os.path.join(self.dir, network_id, *parts)

    @property
    def _lock(self) -> str:
        os.makedirs(self.dir, mode=0o711, exist_ok=True)
        return os.path.join(self.dir, "lock")

    # --- reading ------------------------------------------------------------------------------
    def list(self) -> list[Network]:
        """Every network of this root, by name."""
        found = []
        for entry in os.listdir(self.dir) if os.path.isdir(self.dir) else []:
            try:
                found.append(Network(**store.read_json(self._path(entry, "network.json"))))
            except (FileNotFoundError, NotADirectoryError):
                continue  # being created or removed right now
        return sorted(found, key=lambda n: n.name)

    def get(self, ref: str) -> Network:
        """A network by name, full id or unique id prefix (as Docker resolves them)."""
        networks = self.list()
        for net in networks:
            if ref in (net.name, net.id):
                return net
        matches = [net for net in networks if ref and net.id.startswith(ref)]
        if len(matches) > 1:
            raise Conflict(f"network {ref} is ambiguous ({len(matches)} matches found)")
        if not matches:
            raise NotFound(f"network {ref} not found")
        return matches[0]

    def default(self) -> Network:
        """The ``bridge`` network containers join unless told otherwise; made on first use."""
        with store.locked(self._lock):
            try:
                return self.get(DEFAULT_NETWORK)
            except NotFound:
                return self._create(DEFAULT_NETWORK, None, default_bridge_name(self.root))

    def endpoints(self, net: Network) -> list[dict]:
        """The containers connected to ``net``: one record each (see :meth:`connect`)."""
        directory = self._path(net.id, "endpoints")
        names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
        found = []
        for name in names:
            if name.endswith(".json"):
                try:
                    found.append(store.read_json(os.path.join(directory, name)))
                except FileNotFoundError:
                    continue
        return found

    # --- creating -----------------------------------------------------------------------------
    def create(self, name: str, subnet: str | None = None, *, internal: bool = False) -> Network:
        """A new bridge network ``name``; its subnet is ``subnet`` or the first free /24.
        An ``internal`` network has no route out (no MASQUERADE, nothing forwarded)."""
        if name in PREDEFINED:
            raise Conflict(f"{name} is a pre-defined network and cannot be created")
        with store.locked(self._lock):
            if any(net.name == name for net in self.list()):
                raise Conflict(f"network with name {name} already exists")
            network_id = secrets.token_hex(32)
            return self._create(name, subnet, user_bridge_name(network_id), network_id, internal)

    def _create(
        self,
        name: str,
        subnet: str | None,
        bridge_name: str,
        network_id: str | None = None,
        internal: bool = False,
    ) -> Network:
        """Choose the subnet, record the network and make its bridge (root lock held)."""
        network_id = network_id or secrets.token_hex(32)
        with store.locked(SUBNET_LOCK):
            ours = [ipaddress.ip_network(net.subnet) for net in self.list()]
            if subnet is None:
                chosen = choose_subnet([*ours, *bridge.host_routes()])
                if chosen is None:
                    raise Conflict("could not find an available, non-overlapping IPv4 subnet")
            else:
                chosen = _parse_subnet(subnet)
                if any(chosen.overlaps(other) for other in ours):
                    raise Conflict(f"subnet {chosen} overlaps with another network")
            net = Network(
                id=network_id,
                name=name,
                driver="bridge",
                subnet=str(chosen),
                gateway=str(chosen.network_address + 1),
                bridge=bridge_name,
                created=format_timestamp(time.time_ns()),
                internal=internal,
            )
            os.makedirs(self._path(net.id, "endpoints"), mode=0o711)
            store.write_json(self._path(net.id, "network.json"), asdict(net))
            try:
                self.activate(net)
            except BaseException:
                self._destroy(net)
                raise
        return net

    def activate(self, net: Network) -> None:
        """Make the kernel match the record: the bridge with the gateway address, outbound
        NAT, isolation from the other networks, loopback access to published ports.
        Idempotent; every container start calls it, so a reboot heals itself."""
        bridge.ensure_bridge(net.bridge, f"{net.gateway}/{net.prefix_len}")
        net_tag = tag(self.root, net.id)
        if not net.internal:
            nat.add_masquerade(net.subnet, net.bridge, net_tag)
        nat.add_isolation(net.bridge, net_tag, internal=net.internal)
        nat.add_localnet(net.bridge, net_tag)

    # --- endpoints ----------------------------------------------------------------------------
    def ipam(self, net: Network) -> Ipam:
        return Ipam(self._path(net.id), net.subnet, net.gateway)

    def connect(self, net: Network, cid: str, endpoint: dict) -> dict:
        """Make sure ``net`` is active, then record container ``cid`` on it with an
        address allocated for it; returns the endpoint record (``endpoint`` plus ``cid``,
        ``ip`` and ``mac``). Containers connect under a shared hold of the network's
        lock, which :meth:`remove` takes exclusively: a removal either sees the endpoint
        or happens first, and then nothing is recreated for a network that is gone."""
        try:
            with store.locked(self._path(net.id, "lock"), shared=True):
                if not os.path.exists(self._path(net.id, "network.json")):
                    raise FileNotFoundError
                self.activate(net)
                ip = self.ipam(net).allocate(cid)
                record = {**endpoint, "cid": cid, "ip": ip, "mac": bridge.mac_address(ip)}
                store.write_json(self._path(net.id, "endpoints", f"{cid}.json"), record)
        except FileNotFoundError:
            raise NotFound(f"network {net.name} not found") from None
        return record

    def disconnect(self, net: Network, cid: str) -> dict | None:
        """Forget ``cid`` on ``net`` and free its address; returns the endpoint it had."""
        path = self._path(net.id, "endpoints", f"{cid}.json")
        try:
            with store.locked(self._path(net.id, "lock"), shared=True):
                try:
                    record = store.read_json(path)
                    os.unlink(path)
                except FileNotFoundError:
                    record = None
                self.ipam(net).release(cid)
        except FileNotFoundError:  # the network itself is gone
            return None
        return record

    # --- removing -----------------------------------------------------------------------------
    def remove(self, ref: str) -> Network:
        """Remove a user network: its record, its bridge and its rules."""
        with store.locked(self._lock):
            net = self.get(ref)
            if net.name == DEFAULT_NETWORK:
                raise Conflict(f"{net.name} is a pre-defined network and cannot be removed")
            self._remove(net)
        return net

    def prune(self) -> list[Network]:
        """Remove every user network no container is connected to."""
        removed = []
        with store.locked(self._lock):
            for net in self.list():
                if net.name != DEFAULT_NETWORK and not self.endpoints(net):
                    self._remove(net)
                    removed.append(net)
        return removed

    def remove_all(self) -> None:
        """Remove every network of this root, the default one included, and any rule
        still tagged with this root (a leftover of a crash): for tests and uninstalling."""
        with store.locked(self._lock):
            for net in self.list():
                self._remove(net)
        nat.remove_rules(f"minidock:{root_hash(self.root)}:", prefix=True)

    def _remove(self, net: Network) -> None:
        with store.locked(self._path(net.id, "lock")):
            if self.endpoints(net):
                raise Conflict(f"network {net.name} has active endpoints")
            self._destroy(net)

    def _destroy(self, net: Network) -> None:
        nat.remove_rules(tag(self.root, net.id))
        bridge.delete_bridge(net.bridge)
        shutil.rmtree(self._path(net.id))


def _parse_subnet(subnet: str) -> IPv4Network:
    try:
        parsed = ipaddress.ip_network(subnet)
    except ValueError as exc:
        raise InvalidArgument(f"invalid subnet {subnet}: {exc}") from None
    if not isinstance(parsed, IPv4Network) or parsed.prefixlen > 30:
        raise InvalidArgument(f"invalid subnet {subnet}: an IPv4 network of /30 or larger")
    return parsed
