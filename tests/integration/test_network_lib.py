"""Bridge networking against the real kernel: networks, the hooks, NAT and isolation.

Each "container" here is a process in a network namespace of its own (``unshare --net
sleep``), wired in by running the hook exactly as the runtime does: the OCI state on
stdin, ``network.json`` written beforehand. What is asserted is what the kernel
reports, read with ``ip -j`` (iproute2, independent of the pyroute2 code under test).
Traffic goes only to loopback, the host's own addresses and these namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from minidock import store
from minidock.network import bridge, hook, nat
from minidock.network.networks import Network, NetworkStore, root_hash, tag, veth_name
from tests.conftest import REPO, needs_root, wait_for

pytestmark = [needs_root, pytest.mark.root]

#: A TCP and UDP server for inside a namespace: says "ready", then answers every
#: connection or datagram with the client's address as it sees it.
SERVER = """
import socket, sys, threading
port = int(sys.argv[1])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", port))
def echo_udp():
    while True:
        _, peer = u.recvfrom(100)
        u.sendto(peer[0].encode(), peer)
threading.Thread(target=echo_udp, daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen()
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""
#: Connects to argv[1]:argv[2] and prints what the server said, or the error.
CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
        print(c.recv(100).decode())
except OSError as e:
    print(type(e).__name__)
"""


def ip_json(*args: str, pid: int | None = None) -> list[dict]:
    """``ip -j ARGS`` on the host, or inside the network namespace of ``pid``."""
    enter = ["nsenter", f"--net=/proc/{pid}/ns/net"] if pid else []
    out = subprocess.run([*enter, "ip", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "[]")


def rules_tagged(prefix: str) -> list[str]:
    """Every rule in the ruleset whose comment starts with ``prefix``."""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if f'--comment "{prefix}' in line]


class Container:
    """A network namespace with a process in it, and the files the engine would write."""

    def __init__(self, root: str, name: str) -> None:
        self.root = root
        self.name = name
        self.cid = secrets.token_hex(32)
        self.dir = Path(store.Paths(root).container(self.cid))
        self.dir.mkdir(parents=True)
        (self.dir / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{self.cid[:12]}\n")
        host_ns = os.readlink("/proc/self/ns/net")
        self.holder = subprocess.Popen(["unshare", "--net", "sleep", "300"])
        self.children: list[subprocess.Popen] = []
        assert wait_for(lambda: os.readlink(f"/proc/{self.pid}/ns/net") != host_ns)

    @property
    def pid(self) -> int:
        return self.holder.pid

    def request(self, networks: list[str], ports: list[dict] | None = None, mode: str = "dnat"):
        network_json = {
            "name": self.name,
            "networks": [{"name": n, "aliases": [f"{self.name}-alias"]} for n in networks],
            "ports": ports or [],
            "port_mode": mode,
        }
        store.write_json(str(self.dir / "network.json"), network_json)

    def hook(self, phase: str) -> subprocess.CompletedProcess[str]:
        """Run the hook as the runtime does (``pid`` only for setup, like ``poststop``)."""
        state = {"ociVersion": "1.0.2", "id": self.cid, "bundle": str(self.dir)}
        if phase == "setup":
            state |= {"status": "creating", "pid": self.pid}
        return subprocess.run(
            [sys.executable, "-m", "minidock.network.hook", phase, self.root],
            input=json.dumps(state),
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd="/",
            timeout=60,
        )

    def setup(self) -> dict:
        proc = self.hook("setup")
        assert proc.returncode == 0, proc.stderr
        return store.read_json(str(self.dir / "network-state.json"))

    def serve(self, port: int) -> None:
        server = subprocess.Popen(
            ["nsenter", f"--net=/proc/{self.pid}/ns/net", sys.executable, "-c", SERVER, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.children.append(server)
        assert server.stdout is not None and server.stdout.readline() == "ready\n"

    def connect(self, host: str, port: int, timeout: float = 2.0) -> str:
        """Connect from inside this namespace; the server's answer or the error's name."""
        return _client(["nsenter", f"--net=/proc/{self.pid}/ns/net"], host, port, timeout)

    def stop(self) -> None:
        for proc in [*self.children, self.holder]:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _client(prefix: list[str], host: str, port: int, timeout: float = 2.0) -> str:
    args = [*prefix, sys.executable, "-c", CLIENT, host, str(port), str(timeout)]
    return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()


def connect_from_host(host: str, port: int, timeout: float = 2.0) -> str:
    return _client([], host, port, timeout)


def udp_from_host(host: str, port: int) -> str:
    """Send a datagram from the host; the answer, or the error's name."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"hello", (host, port))
        try:
            return s.recv(100).decode()
        except OSError as e:
            return type(e).__name__


@pytest.fixture
def root(tmp_path: Path) -> Iterator[str]:
    """A state root whose networks, rules and links are all removed afterwards."""
    path = str(tmp_path / "root")
    os.makedirs(os.path.join(path, "containers"))
    try:
        yield path
    finally:
        networks = NetworkStore(path)
        bridges = [net.bridge for net in networks.list()]
        with contextlib.suppress(Exception):
            networks.remove_all()
        for name in bridges:
            bridge.delete_bridge(name)
        nat.remove_rules(f"minidock:{root_hash(path)}:", prefix=True)


@pytest.fixture
def containers(root: str) -> Iterator[list[Container]]:
    """Containers to make; each is torn down and its processes killed afterwards."""
    made: list[Container] = []
    try:
        yield made
    finally:
        for c in made:
            c.stop()
            with contextlib.suppress(Exception):
                hook.teardown(root, c.cid)
            for net in NetworkStore(root).list():
                bridge.unplug(veth_name(c.cid, net.id))


def start(root: str, made: list[Container], name: str, networks: list[str], **kw) -> Container:
    c = Container(root, name)
    made.append(c)
    c.request(networks, **kw)
    return c


def host_address() -> str:
    """An address of the host's own, other than loopback and minidock bridges."""
    for link in ip_json("-4", "addr"):
        if link["ifname"] == "lo" or link["ifname"].startswith(("mdb", "mdn", "minidock")):
            continue
        for addr in link.get("addr_info", []):
            if addr.get("scope") == "global":
                return addr["local"]
    pytest.skip("the host has no non-loopback IPv4 address")


def mapping(host_port: int = 0, proto: str = "tcp", host_ip: str = "127.0.0.1") -> dict:
    """One entry of network.json's ``ports``, to the container's port 80."""
    return {"host_ip": host_ip, "host_port": host_port, "container_port": 80, "proto": proto}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the network store ----------------------------------------------------------------------
def test_create_chooses_a_subnet_clear_of_the_hosts_routes(root: str) -> None:
    networks = NetworkStore(root)
    routes_before = [
        ipaddress.ip_network(r["dst"], strict=False)
        for r in ip_json("-4", "route", "show", "table", "all")
        if r["dst"] not in ("default",)
    ]
    net = networks.create("front")
    subnet = ipaddress.ip_network(net.subnet)
    assert not any(subnet.overlaps(r) for r in routes_before)
    assert net.gateway == str(subnet.network_address + 1)
    assert net.bridge == f"mdn{net.id[:12]}"
    (link,) = ip_json("-d", "addr", "show", "dev", net.bridge)
    assert link["linkinfo"]["info_kind"] == "bridge" and "UP" in link["flags"]
    assert {(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"} == {
        (net.gateway, 24)
    }
    second = networks.create("back")
    assert not ipaddress.ip_network(second.subnet).overlaps(subnet)
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    assert rules_tagged(tag(root, net.id))  # MASQUERADE and isolation


def test_names_ids_prefixes_and_conflicts(root: str) -> None:
    from minidock.errors import Conflict, NotFound

    networks = NetworkStore(root)
    net = networks.create("front", "10.89.250.0/24")
    assert net.subnet == "10.89.250.0/24" and net.gateway == "10.89.250.1"
    assert networks.get("front") == networks.get(net.id) == networks.get(net.id[:6]) == net
    with pytest.raises(Conflict, match="network with name front already exists"):
        networks.create("front")
    with pytest.raises(Conflict, match="overlaps"):
        networks.create("other", "10.89.250.128/25")
    with pytest.raises(Conflict, match="pre-defined"):
        networks.create("host")
    with pytest.raises(NotFound, match="network nope not found"):
        networks.get("nope")
    default = networks.default()
    assert default.name == "bridge" and default.bridge == f"mdb{root_hash(root)}"
    assert networks.default() == default
    assert [n.name for n in networks.list()] == ["bridge", "front"]
    with pytest.raises(Conflict, match="pre-defined"):
        networks.remove("bridge")


def test_an_internal_network_gets_no_way_out(root: str) -> None:
    net = NetworkStore(root).create("secret", internal=True)
    rules = rules_tagged(tag(root, net.id))
    assert not any("MASQUERADE" in rule for rule in rules)
    leaving = f"-A MINIDOCK-ISOLATION-1 -i {net.bridge} ! -o {net.bridge} "
    assert any(rule.startswith(leaving) and rule.endswith("-j DROP") for rule in rules)


def test_remove_refuses_while_endpoints_exist_then_deletes_bridge_and_rules(
    root: str, containers: list[Container]
) -> None:
    from minidock.errors import Conflict

    networks = NetworkStore(root)
    net = networks.create("front")
    spare = networks.create("spare")
    c = start(root, containers, "web", ["front"])
    c.setup()
    with pytest.raises(Conflict, match="network front has active endpoints"):
        networks.remove("front")
    assert [n.name for n in networks.prune()] == ["spare"]
    assert not bridge.link_exists(spare.bridge)
    assert c.hook("teardown").returncode == 0
    assert networks.remove("front") == net
    assert not bridge.link_exists(net.bridge)
    assert rules_tagged(tag(root, net.id)) == []
    assert networks.list() == []


# --- the hooks ------------------------------------------------------------------------------
def test_setup_plugs_the_container_in_and_teardown_undoes_it(
    root: str, containers: list[Container]
) -> None:
    networks = NetworkStore(root)
    net = networks.create("front")
    c = start(root, containers, "web", ["front"])
    state = c.setup()

    (entry,) = state["networks"]
    veth = veth_name(c.cid, net.id)
    assert entry["veth"] == veth and entry["ifname"] == "eth0" and entry["gateway"] == net.gateway
    ports_on_bridge = [link["ifname"] for link in ip_json("link", "show", "master", net.bridge)]
    assert ports_on_bridge == [veth]
    (bridge_link,) = ip_json("link", "show", "dev", net.bridge)
    assert bridge_link["address"] == bridge.mac_address(net.gateway)  # not its port's MAC
    (eth0,) = ip_json("addr", "show", "dev", "eth0", pid=c.pid)
    assert "UP" in eth0["flags"] and eth0["address"] == entry["mac"]
    assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"] == [
        (entry["ip"], 24)
    ]
    (route,) = ip_json("route", "show", "default", pid=c.pid)
    assert route["gateway"] == net.gateway and route["dev"] == "eth0"
    assert networks.ipam(net).allocated() == {c.cid: entry["ip"]}
    (endpoint,) = networks.endpoints(net)
    assert endpoint["cid"] == c.cid and endpoint["veth"] == veth
    hosts = (c.dir / "hosts").read_text()
    assert hosts.startswith("127.0.0.1\tlocalhost\n")
    assert f"{entry['ip']}\tweb web-alias\n" in hosts
    assert connect_from_host(entry["ip"], 80, 1) == "ConnectionRefusedError"  # it's there

    proc = c.hook("teardown")
    assert proc.returncode == 0, proc.stderr
    assert not bridge.link_exists(veth)
    assert ip_json("link", "show", "master", net.bridge) == []
    assert networks.ipam(net).allocated() == {} and networks.endpoints(net) == []
    assert not (c.dir / "network-state.json").exists()
    assert "web-alias" not in (c.dir / "hosts").read_text()
    assert rules_tagged(tag(root, c.cid)) == []
    assert c.hook("teardown").returncode == 0  # idempotent


def test_teardown_of_a_container_never_set_up(root: str, containers: list[Container]) -> None:
    NetworkStore(root).create("front")
    c = start(root, containers, "ghost", ["front"])
    proc = c.hook("teardown")
    assert proc.returncode == 0, proc.stderr


def test_containers_on_one_network_talk_and_know_each_others_names(
    root: str, containers: list[Container]
) -> None:
    NetworkStore(root).create("front")
    a = start(root, containers, "alpha", ["front"])
    b = start(root, containers, "beta", ["front"])
    ip_a = a.setup()["networks"][0]["ip"]
    ip_b = b.setup()["networks"][0]["ip"]
    a.serve(7000)
    assert b.connect(ip_a, 7000) == ip_b  # straight across the bridge, no NAT
    hosts_a, hosts_b = (a.dir / "hosts").read_text(), (b.dir / "hosts").read_text()
    for text in (hosts_a, hosts_b):
        assert f"{ip_a}\talpha alpha-alias\n" in text and f"{ip_b}\tbeta beta-alias\n" in text
    assert b.hook("teardown").returncode == 0
    assert "beta" not in (a.dir / "hosts").read_text()


def test_the_default_network_hides_names_but_routes(root: str, containers: list[Container]) -> None:
    a = start(root, containers, "alpha", ["bridge"])
    b = start(root, containers, "beta", ["bridge"])
    ip_a = a.setup()["networks"][0]["ip"]
    ip_b = b.setup()["networks"][0]["ip"]
    a.serve(7000)
    assert b.connect(ip_a, 7000) == ip_b
    assert "beta" not in (a.dir / "hosts").read_text()
    assert "alpha" in (a.dir / "hosts").read_text()


def test_different_networks_are_isolated(root: str, containers: list[Container]) -> None:
    networks = NetworkStore(root)
    front, back = networks.create("front"), networks.create("back")
    a = start(root, containers, "alpha", ["front"])
    c = start(root, containers, "gamma", ["back"])
    ip_a = a.setup()["networks"][0]["ip"]
    ip_c = c.setup()["networks"][0]["ip"]
    a.serve(7000)
    c.serve(7000)
    assert c.connect(ip_a, 7000, timeout=1) == "TimeoutError"  # dropped in FORWARD
    assert a.connect(ip_c, 7000, timeout=1) == "TimeoutError"
    assert connect_from_host(ip_a, 7000) == front.gateway  # the host reaches both
    assert connect_from_host(ip_c, 7000) == back.gateway
    # A container on both networks reaches both; its first network has the default route.
    both = start(root, containers, "both", ["front", "back"])
    state = both.setup()
    assert [n["ifname"] for n in state["networks"]] == ["eth0", "eth1"]
    assert both.connect(ip_a, 7000) == state["networks"][0]["ip"]
    assert both.connect(ip_c, 7000) == state["networks"][1]["ip"]
    (route,) = ip_json("route", "show", "default", pid=both.pid)
    assert route["dev"] == "eth0"


def test_dnat_publishes_on_loopback_and_the_hosts_address(
    root: str, containers: list[Container]
) -> None:
    NetworkStore(root).create("front")
    c = start(
        root,
        containers,
        "web",
        ["front"],
        ports=[mapping(host_ip="0.0.0.0"), mapping(proto="udp", host_ip="0.0.0.0")],
        mode="dnat",
    )
    state = c.setup()
    c.serve(80)
    host_port, udp_port = (port["host_port"] for port in state["ports"])
    assert host_port > 0 and state["dnat_tag"] == tag(root, c.cid) and state["proxy"] is None
    gateway = state["networks"][0]["gateway"]
    assert connect_from_host("127.0.0.1", host_port) == gateway  # masqueraded loopback
    address = host_address()
    assert connect_from_host(address, host_port) == address  # the client's own address
    assert udp_from_host("127.0.0.1", udp_port) == gateway
    assert udp_from_host(address, udp_port) == address
    assert nat.port_in_use("0.0.0.0", host_port, "tcp")
    assert nat.port_in_use("127.0.0.1", udp_port, "udp")
    assert c.hook("teardown").returncode == 0
    assert rules_tagged(tag(root, c.cid)) == []
    assert connect_from_host("127.0.0.1", host_port, 1) == "ConnectionRefusedError"


def test_shim_mode_starts_the_proxy_with_the_bound_sockets(
    root: str, containers: list[Container]
) -> None:
    NetworkStore(root).create("front")
    host_port = free_port()
    c = start(
        root,
        containers,
        "web",
        ["front"],
        ports=[mapping(host_port), mapping(proto="udp")],
        mode="shim",
    )
    state = c.setup()
    proxy = state["proxy"]
    assert state["ports"][0]["host_port"] == host_port and state["dnat_tag"] is None
    udp_port = state["ports"][1]["host_port"]
    assert udp_port > 0
    c.serve(80)
    gateway = state["networks"][0]["gateway"]
    assert wait_for(lambda: connect_from_host("127.0.0.1", host_port) == gateway)
    assert udp_from_host("127.0.0.1", udp_port) == gateway  # relayed from the gateway
    assert c.hook("teardown").returncode == 0
    assert not os.path.exists(f"/proc/{proxy['pid']}") or _is_zombie(proxy["pid"])
    assert connect_from_host("127.0.0.1", host_port, 1) == "ConnectionRefusedError"


def _is_zombie(pid: int) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


@pytest.mark.parametrize("mode", ["shim", "dnat"])
def test_a_taken_port_fails_setup_and_leaves_nothing(
    root: str, containers: list[Container], mode: str
) -> None:
    net = NetworkStore(root).create("front")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        host_port = taken.getsockname()[1]
        c = start(
            root,
            containers,
            "web",
            ["front"],
            ports=[mapping(host_port)],
            mode=mode,
        )
        proc = c.hook("setup")
    assert proc.returncode == 1
    assert proc.stderr == f"port {host_port}/tcp is already allocated on 127.0.0.1\n"
    networks = NetworkStore(root)
    assert not bridge.link_exists(veth_name(c.cid, net.id))
    assert ip_json("link", "show", "master", net.bridge) == []
    assert networks.ipam(net).allocated() == {} and networks.endpoints(net) == []
    assert rules_tagged(tag(root, c.cid)) == []
    assert not (c.dir / "network-state.json").exists()
    assert ip_json("addr", "show", pid=c.pid)[0]["ifname"] == "lo"  # nothing left inside


def test_two_dnat_containers_cannot_publish_the_same_port(
    root: str, containers: list[Container]
) -> None:
    NetworkStore(root).create("front")
    host_port = free_port()
    a = start(root, containers, "a", ["front"], ports=[mapping(host_port, host_ip="0.0.0.0")])
    a.setup()
    b = start(root, containers, "b", ["front"], ports=[mapping(host_port)])
    proc = b.hook("setup")
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"port {host_port}/tcp is already allocated on 127.0.0.1"


def test_many_containers_join_a_network_at_once(root: str, containers: list[Container]) -> None:
    net = NetworkStore(root).create("front")
    made = [start(root, containers, f"c{n}", ["front"]) for n in range(6)]
    with ThreadPoolExecutor(len(made)) as pool:
        results = list(pool.map(lambda c: c.hook("setup"), made))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    ips = {c.cid: store.read_json(str(c.dir / "network-state.json"))["networks"][0]["ip"]
           for c in made}  # fmt: skip
    assert len(set(ips.values())) == len(made)
    assert len(ip_json("link", "show", "master", net.bridge)) == len(made)
    for c in made:  # every hosts file lists everyone, whoever wrote last
        text = (c.dir / "hosts").read_text()
        assert all(f"{ips[o.cid]}\t{o.name} " in text for o in made)
    assert len(rules_tagged(tag(root, net.id))) == 4  # each rule of activate() just once


def test_ensure_bridge_twice_at_once(root: str) -> None:
    name = f"mdb{secrets.token_hex(6)}"
    code = f"from minidock.network import bridge; bridge.ensure_bridge({name!r}, '10.89.254.1/24')"
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        assert [p.wait(timeout=30) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
        (link,) = ip_json("addr", "show", "dev", name)
        assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == ["10.89.254.1"]
    finally:
        bridge.delete_bridge(name)


def test_chains_go_when_their_last_rule_goes(root: str) -> None:
    others = [line for line in rules_tagged("minidock:") if root_hash(root) not in line]
    if others:
        pytest.skip("another minidock root has rules on this host right now")
    networks = NetworkStore(root)
    net: Network = networks.create("front")
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert all(f":{chain.name} " in saved for chain in nat.CHAINS if chain is not nat.DNAT)
    networks.remove("front")
    assert not bridge.link_exists(net.bridge)
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "MINIDOCK" not in saved and "minidock" not in saved


def test_hook_reports_one_line_for_a_missing_network(
    root: str, containers: list[Container]
) -> None:
    c = start(root, containers, "web", ["nope"])
    proc = c.hook("setup")
    assert (proc.returncode, proc.stderr) == (1, "network nope not found\n")


def test_a_stale_proxy_pid_is_never_killed(root: str, containers: list[Container]) -> None:
    """Teardown trusts a recorded proxy pid only with its start time: a process that
    reused the pid survives."""
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        NetworkStore(root).create("front")
        c = start(root, containers, "web", ["front"])
        c.setup()
        path = str(c.dir / "network-state.json")
        store.write_json(path, {**store.read_json(path), "proxy": {"pid": bystander.pid,
                                                                   "start_time": 1}})  # fmt: skip
        assert c.hook("teardown").returncode == 0
        time.sleep(0.1)
        assert bystander.poll() is None
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait()
