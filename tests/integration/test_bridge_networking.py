"""Bridge networking through the engine: -p through the shim and through DNAT, user
networks with name resolution and isolation, and nothing left behind. Traffic goes only to
loopback, this host's own addresses and the containers these tests create."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Minidock, wait_for

HTTPD = ["sh", "-c", "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && "
         "exec httpd -f -p 80 -h /www"]  # fmt: skip
#: Debian's python3 from the host, bound read-only into the container for a UDP echo server.
HOST_PYTHON = ["-v", "/usr:/usr:ro", "-v", "/lib:/lib:ro", "-v", "/lib64:/lib64:ro"]
UDP_ECHO = (
    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.bind(('0.0.0.0', 9000))\nwhile True:\n d, a = s.recvfrom(65535); s.sendto(d, a)"
)


def http_get(ip: str) -> str:
    """A shell pipeline fetching http://IP/ with busybox nc (the static busybox's wget
    crashes in glibc's service lookup for addresses other than loopback)."""
    return f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 80"


def host_address() -> str:
    """This host's own non-loopback IPv4 address (the one its default route leaves from)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return out.split()[3].split("/")[0]


def fetch(port: int, host: str = "127.0.0.1") -> str:
    def ok() -> bool:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    assert wait_for(ok, 10), f"nothing answered on {host}:{port}"
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as r:
        return r.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leftovers(md: Minidock) -> dict[str, list[str]]:
    """Ports of this test's bridges (veths) and its DNAT rules, as the kernel lists them."""
    from minidock.network.networks import NetworkStore, root_hash

    veths = []
    for net in NetworkStore(md.root).list():
        out = subprocess.run(["ip", "-o", "link", "show", "master", net.bridge],
                             capture_output=True, text=True).stdout  # fmt: skip
        veths += [line.split(":")[1].strip() for line in out.splitlines()]
    rules = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    tag = f"minidock:{root_hash(md.root)}:"
    return {
        "veths": veths,
        "dnat": [line for line in rules.splitlines() if tag in line and "DNAT" in line],
    }


@pytest.mark.parametrize("mode", ["shim", "dnat"])
def test_publish_reaches_the_server_before_and_after_restart(md: Minidock, mode: str) -> None:
    md.env["MINIDOCK_PORT_MODE"] = mode
    port = free_port()
    md("run", "-d", "--name", "web", "-h", "web1", "-p", f"{port}:80", "busybox", *HTTPD)
    assert fetch(port) == "hello-from-web1\n"
    assert fetch(port, host_address()) == "hello-from-web1\n"
    assert md("port", "web").stdout.strip() == f"80/tcp -> 0.0.0.0:{port}"
    md("restart", "-t", "0", "web")
    assert fetch(port) == "hello-from-web1\n"
    md("rm", "-f", "web")
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert leftovers(md)["veths"] == [] or all(
        not v.startswith("veth") for v in leftovers(md)["veths"]
    )


def test_random_host_port_and_publish_all(md: Minidock) -> None:
    md("run", "-d", "--name", "any", "-p", "80", "busybox", *HTTPD)
    ports = json.loads(md("inspect", "-f", "{{json .NetworkSettings.Ports}}", "any").stdout)
    host_port = int(ports["80/tcp"][0]["HostPort"])
    assert host_port > 0 and fetch(host_port).startswith("hello-from-")


def test_udp_through_the_shim(md: Minidock) -> None:
    port = free_port()
    md("run", "-d", "--name", "echo", "-p", f"127.0.0.1:{port}:9000/udp", *HOST_PYTHON,
       "busybox", "/usr/bin/python3", "-c", UDP_ECHO)  # fmt: skip
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for i, client in enumerate(clients):
            client.settimeout(1)

            def answered(c: socket.socket = client, n: int = i) -> bool:
                c.sendto(f"ping-{n}".encode(), ("127.0.0.1", port))
                try:
                    return c.recv(100) == f"ping-{n}".encode()
                except OSError:
                    return False

            assert wait_for(answered, 10)
    finally:
        for client in clients:
            client.close()


def test_containers_on_a_user_network_reach_each_other_by_name(md: Minidock) -> None:
    md("network", "create", "front")
    md("network", "create", "back")
    md("run", "-d", "--name", "api", "--network", "front", "--network-alias", "service",
       "busybox", *HTTPD)  # fmt: skip
    md("run", "-d", "--name", "db", "--network", "back", "busybox", *HTTPD)
    # Resolve through libc's /etc/hosts lookup (the static busybox has no NSS): host python.
    fetch_by_name = (
        "import sys, urllib.request as u\nfor name in sys.argv[1:]:\n"
        " print(u.urlopen(f'http://{name}/', timeout=3).read().decode(), end='')"
    )
    out = md("run", "--rm", "--network", "front", *HOST_PYTHON, "busybox", "/usr/bin/python3",
             "-c", fetch_by_name, "api", "service").stdout  # fmt: skip
    assert out.count("hello-from-") == 2
    db_ip = md.inspect("db")["NetworkSettings"]["IPAddress"]
    proc = md("run", "--rm", "--network", "front", "busybox", "sh", "-c",
              f"{http_get(db_ip)} | grep -q hello || echo isolated; grep -c db /etc/hosts",
              check=False)  # fmt: skip
    assert "isolated" in proc.stdout and proc.stdout.split()[-1] == "0"
    info = json.loads(md("network", "inspect", "front").stdout)[0]
    assert {c["Name"] for c in info["Containers"].values()} == {"api"}
    assert md("network", "rm", "front", check=False).returncode == 125  # api is connected
    md("rm", "-f", "api")
    md("network", "rm", "front")
    assert md("network", "prune").stdout.split() == []  # back still has db


def test_twenty_concurrent_runs_get_distinct_addresses(md: Minidock) -> None:
    md("network", "create", "many")
    with ThreadPoolExecutor(max_workers=20) as pool:
        procs = list(pool.map(lambda i: md("run", "-d", "--network", "many", "busybox",
                                           "sleep", "60", check=False), range(20)))  # fmt: skip
    assert [p.returncode for p in procs] == [0] * 20, [p.stderr for p in procs if p.returncode]
    addresses = [md.inspect(p.stdout.strip())["NetworkSettings"]["IPAddress"] for p in procs]
    assert len(set(addresses)) == 20


def test_a_taken_port_is_refused_and_leaves_nothing(md: Minidock) -> None:
    port = free_port()
    md("run", "-d", "--name", "first", "-p", f"{port}:80", "busybox", *HTTPD)
    before = leftovers(md)
    proc = md("run", "-d", "--name", "second", "-p", f"{port}:80", "busybox", *HTTPD, check=False)
    assert proc.returncode == 125
    assert f"port {port}/tcp is already allocated" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert md("ps", "-a", "--format", "{{.Names}}").stdout.split() == ["first"]
    assert leftovers(md) == before
    assert fetch(port).startswith("hello-from-")


def test_rm_leaves_no_veth_rule_address_or_listener(md: Minidock) -> None:
    md.env["MINIDOCK_PORT_MODE"] = "dnat"
    port = free_port()
    cid = md("run", "-d", "-p", f"{port}:80", "busybox", *HTTPD).stdout.strip()
    with open(os.path.join(md.root, "containers", cid, "network-state.json")) as f:
        state = json.load(f)
    veth = state["networks"][0]["veth"]
    assert os.path.exists(f"/sys/class/net/{veth}")
    assert leftovers(md)["dnat"], "expected the DNAT rules while it runs"
    md("rm", "-f", cid)
    assert not os.path.exists(f"/sys/class/net/{veth}")
    assert leftovers(md) == {"veths": [], "dnat": []}
    from minidock.network.networks import NetworkStore

    store = NetworkStore(md.root)
    assert store.endpoints(store.default()) == []


def test_network_connect_and_disconnect(md: Minidock) -> None:
    md("network", "create", "left")
    md("network", "create", "right")
    md("run", "-d", "--name", "srv", "--network", "right", "busybox", *HTTPD)
    md("run", "-d", "--name", "cli", "--network", "left", "busybox", "sleep", "60")
    srv_ip = md.inspect("srv")["NetworkSettings"]["Networks"]["right"]["IPAddress"]
    probe = f"{http_get(srv_ip)} | grep hello || echo isolated"
    assert "isolated" in md("exec", "cli", "sh", "-c", probe).stdout
    md("network", "connect", "right", "cli")
    assert md("exec", "cli", "sh", "-c", probe).stdout.startswith("hello-from-")
    assert "srv" in md("exec", "cli", "cat", "/etc/hosts").stdout
    assert md("exec", "cli", "ls", "/sys/class/net").stdout.split() == ["eth0", "eth1", "lo"]
    md("restart", "-t", "0", "cli")  # the connection is part of the container's record
    assert md("exec", "cli", "sh", "-c", probe).stdout.startswith("hello-from-")
    md("network", "disconnect", "right", "cli")
    assert "isolated" in md("exec", "cli", "sh", "-c", probe).stdout
    assert md("exec", "cli", "ls", "/sys/class/net").stdout.split() == ["eth0", "lo"]
    proc = md("network", "disconnect", "right", "cli", check=False)
    assert proc.returncode == 125 and "not connected" in proc.stderr


def test_a_killed_monitor_is_repaired_and_nothing_is_left_listening(md: Minidock) -> None:
    port = free_port()
    cid = md("run", "-d", "-p", f"127.0.0.1:{port}:80", "busybox", *HTTPD).stdout.strip()
    assert fetch(port).startswith("hello-from-")
    from minidock.runtime import is_alive

    with open(os.path.join(md.root, "containers", cid, "state.json")) as f:
        state = json.load(f)
    monitor, started = state["MonitorPid"], state["MonitorPidStart"]
    os.kill(monitor, 9)  # the monitor this test started, by PID
    assert wait_for(lambda: not is_alive(monitor, started))
    assert md.inspect(cid)["State"]["Running"]  # unsupervised, but still running
    md("stop", "-t", "0", cid)
    state = md.inspect(cid)["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 255  # unknown: nobody reaped it
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    md("rm", cid)
    assert leftovers(md) == {"veths": [], "dnat": []}
