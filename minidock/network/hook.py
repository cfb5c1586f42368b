"""The OCI hooks that wire a container into its networks, and out again.

The runtime runs them with the container's state as JSON on stdin (runtime-spec
config.md "POSIX-platform Hooks")::

    python -m minidock.network.hook setup ROOT      # createRuntime: the namespaces exist
    python -m minidock.network.hook teardown ROOT   # poststop: the container is gone

``setup`` reads what the engine asked for in ``ROOT/containers/<cid>/network.json``::

    {"name": "web",                                    # the container's name (optional)
     "networks": [{"name": "bridge", "aliases": ["web"]}],      # the first one routes
     "ports": [{"host_ip": "0.0.0.0", "host_port": 8080, "container_port": 80,
                "proto": "tcp"}],                      # host_port 0: any free port
     "port_mode": "shim"}                              # or "dnat"

For each network it makes sure the bridge and rules exist, allocates an address,
plugs a veth pair into the namespace of the container's PID 1 as eth0, eth1 … and adds
the container to the hosts files of its neighbours. Then it publishes the ports:

* ``shim``: the hook binds the listening sockets itself, so a taken port fails the
  create with one clear line, then hands them to ``python -m minidock.network.proxy``,
  a detached process that forwards connections (Docker's docker-proxy);
* ``dnat``: kernel DNAT rules (Docker's ``userland-proxy: false``).

What it did is recorded in ``ROOT/containers/<cid>/network-state.json``::

    {"networks": [{"name", "id", "bridge", "ifname", "ip", "prefix_len", "gateway",
                   "mac", "veth", "aliases"}, …],
     "ports": [{"host_ip", "host_port", "container_port", "proto"}, …],   # as bound
     "port_mode": "shim" | "dnat",
     "proxy": {"pid", "start_time"} | null,
     "dnat_tag": "minidock:<root hash>:<cid>" | null}

``teardown`` undoes all of it, and is idempotent: it works from what is left (the
veth names, the rule tag and the endpoint records are all derived from the container
id), so it also cleans up after a setup that died halfway. A failing hook prints one
line on stderr and exits 1; a failing ``setup`` first tears down what it did.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import minidock
from minidock import explain, store
from minidock.errors import MinidockError
from minidock.network import bridge, hosts, nat
from minidock.network.networks import (
    DEFAULT_NETWORK,
    Network,
    NetworkStore,
    tag,
    veth_name,
)

#: How long the proxy gets to exit after SIGTERM before it is killed.
PROXY_STOP_TIMEOUT = 2.0


def setup(root: str, cid: str, pid: int) -> dict:
    """Connect container ``cid`` (its PID 1 is ``pid``) as ``network.json`` asks;
    returns what is written to ``network-state.json``."""
    paths = store.Paths(root)
    request = store.read_json(paths.container(cid, "network.json"))
    done: dict = {
        "networks": [],
        "ports": [],
        "port_mode": request.get("port_mode", "shim"),
        "proxy": None,
        "dnat_tag": None,
    }
    try:
        _connect(root, cid, pid, request, done)
        if request.get("ports"):
            _publish(root, cid, request["ports"], done)
        store.write_json(paths.container(cid, "network-state.json"), done)
    except BaseException:
        # Undo what was done; the error that stopped setup is the one worth reporting.
        with contextlib.suppress(Exception):
            _teardown(root, cid, done)
        raise
    return done


def _connect(root: str, cid: str, pid: int, request: dict, done: dict) -> None:
    networks = NetworkStore(root)
    joined = [_join(networks, cid, pid, request.get("name"), wanted, done)
              for wanted in request["networks"]]  # fmt: skip
    neighbours = {e["cid"] for net in joined for e in networks.endpoints(net)}
    hosts.refresh(networks, [cid, *sorted(neighbours)])


def _join(networks: NetworkStore, cid: str, pid: int, name: str | None, wanted: dict,
          done: dict) -> Network:  # fmt: skip
    """Plug the container into one network as the next free ``ethN`` (the first one it
    joins carries the default route) and record it in ``done``."""
    net = networks.default() if wanted["name"] == DEFAULT_NETWORK else networks.get(wanted["name"])
    veth = veth_name(cid, net.id)
    endpoint = networks.connect(
        net, cid, {"name": name, "aliases": wanted.get("aliases", []), "veth": veth}
    )
    used = {n["ifname"] for n in done["networks"]}
    ifname = next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)
    bridge.plug(pid, net.bridge, ifname, f"{endpoint['ip']}/{net.prefix_len}",
                None if done["networks"] else net.gateway, endpoint["mac"], veth=veth)  # fmt: skip
    done["networks"].append({
        "name": net.name, "id": net.id, "bridge": net.bridge, "ifname": ifname,
        "ip": endpoint["ip"], "prefix_len": net.prefix_len, "gateway": net.gateway,
        "mac": endpoint["mac"], "veth": veth, "aliases": hosts.endpoint_names(endpoint),
    })  # fmt: skip
    return net


def connect(root: str, cid: str, pid: int, name: str, wanted: dict) -> None:
    """``network connect`` of a running container: one more veth, into one more network."""
    paths = store.Paths(root)
    state_path = paths.container(cid, "network-state.json")
    done = store.read_json(state_path)
    if any(n["name"] == wanted["name"] for n in done["networks"]):
        raise MinidockError(f"container {name} is already connected to {wanted['name']}")
    networks = NetworkStore(root)
    net = _join(networks, cid, pid, name, wanted, done)
    store.write_json(state_path, done)
    hosts.refresh(networks, [cid, *sorted(e["cid"] for e in networks.endpoints(net))])


def disconnect(root: str, cid: str, network: str) -> None:
    """``network disconnect`` of a running container: unplug its veth from one network."""
    paths = store.Paths(root)
    state_path = paths.container(cid, "network-state.json")
    done = store.read_json(state_path)
    entry = next((n for n in done["networks"] if n["name"] == network), None)
    if entry is None:
        raise MinidockError(f"container is not connected to network {network}")
    networks = NetworkStore(root)
    net = networks.get(entry["id"])
    bridge.unplug(entry["veth"])  # deleting one end of a veth pair deletes both
    networks.disconnect(net, cid)
    done["networks"].remove(entry)
    store.write_json(state_path, done)
    hosts.refresh(networks, [cid, *sorted(e["cid"] for e in networks.endpoints(net))])


def _publish(root: str, cid: str, ports: list[dict], done: dict) -> None:
    """Publish ``ports`` on the container's first address, as ``done["port_mode"]`` says."""
    if not done["networks"]:
        raise MinidockError("ports can only be published on a bridge network")
    target = done["networks"][0]["ip"]
    if done["port_mode"] == "dnat":
        done["dnat_tag"] = tag(root, cid)
        for port in ports:
            host_port = port["host_port"]
            if not host_port:  # any free port: ask the kernel for one
                with nat.bind_port(port["host_ip"], 0, port["proto"]) as probe:
                    host_port = probe.getsockname()[1]
            nat.add_dnat(
                port["host_ip"],
                host_port,
                port["proto"],
                target,
                port["container_port"],
                done["dnat_tag"],
            )
            done["ports"].append({**port, "host_port": host_port})
        return
    sockets = []
    try:
        for port in ports:
            sock = nat.bind_port(port["host_ip"], port["host_port"], port["proto"])
            sockets.append(sock)
            host_port = sock.getsockname()[1]
            if nat.published(port["host_ip"], host_port, port["proto"]):
                raise MinidockError(nat.port_allocated(port["host_ip"], host_port, port["proto"]))
            done["ports"].append({**port, "host_port": host_port})
        done["proxy"] = _start_proxy(root, cid, target, done["ports"], sockets)
    finally:
        for sock in sockets:
            sock.close()


def _start_proxy(root: str, cid: str, target: str, ports: list[dict], sockets: list) -> dict:
    """Start the port shim with the bound sockets as inherited descriptors; it runs in
    its own session, detached from the runtime, until SIGTERM."""
    from minidock.runtime import process_start_time

    maps = []
    for port, sock in zip(ports, sockets, strict=True):
        maps += ["--map", f"{port['proto']}:{sock.fileno()}:{port['container_port']}"]
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(minidock.__file__)))
    env = {**os.environ, "PYTHONPATH": package_parent}
    with open(store.Paths(root).container(cid, "proxy.log"), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-m", "minidock.network.proxy", "--target", target, *maps],
            pass_fds=[sock.fileno() for sock in sockets],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd="/",
            env=env,
        )
    return {"pid": proc.pid, "start_time": process_start_time(proc.pid)}


def teardown(root: str, cid: str) -> None:
    """Disconnect container ``cid`` from everything ``setup`` connected it to."""
    try:
        done = store.read_json(store.Paths(root).container(cid, "network-state.json"))
    except FileNotFoundError:
        done = {}
    _teardown(root, cid, done)


def _teardown(root: str, cid: str, done: dict) -> None:
    """Undo ``setup``, from its record ``done`` and what can be derived from ``cid``.
    Every step runs even if an earlier one failed; the first failure is raised last."""
    networks = NetworkStore(root)
    failures: list[Exception] = []

    def attempt(step: Callable[..., object], *args: object) -> None:
        try:
            step(*args)
        except Exception as exc:  # keep undoing the rest
            failures.append(exc)

    if done.get("proxy"):
        attempt(_stop_proxy, done["proxy"]["pid"], done["proxy"]["start_time"])
    attempt(nat.remove_rules, tag(root, cid))
    left: list[Network] = []

    def leave(net: Network) -> None:
        bridge.unplug(veth_name(cid, net.id))
        if networks.disconnect(net, cid) is not None:
            left.append(net)

    for net in networks.list():
        attempt(leave, net)
    neighbours = {e["cid"] for net in left for e in networks.endpoints(net)}
    attempt(hosts.refresh, networks, [cid, *sorted(neighbours)])
    with contextlib.suppress(FileNotFoundError):
        os.unlink(store.Paths(root).container(cid, "network-state.json"))
    if failures:
        raise failures[0]


def _stop_proxy(pid: int, start_time: int) -> None:
    """SIGTERM the proxy, SIGKILL it if it lingers. The pid is trusted only while it
    still names the process that started at ``start_time`` (pids are reused)."""
    from minidock.runtime import is_alive

    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_alive(pid, start_time):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + PROXY_STOP_TIMEOUT
        while is_alive(pid, start_time) and time.monotonic() < deadline:
            time.sleep(0.01)
    if is_alive(pid, start_time):
        raise MinidockError(f"port proxy {pid} did not exit")


def main(argv: list[str] | None = None) -> int:
    """``setup|teardown ROOT`` with the OCI state on stdin; 0, or 1 and one line on stderr."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("setup", "teardown"):
        print("usage: python -m minidock.network.hook setup|teardown ROOT", file=sys.stderr)
        return 2
    phase, root = args
    explain.from_environment()
    try:
        state = json.load(sys.stdin)
        if phase == "setup":
            setup(root, state["id"], state["pid"])
        else:
            teardown(root, state["id"])
    except MinidockError as exc:
        print(exc, file=sys.stderr)
        return 1
    except Exception as exc:  # anything else still gets one line, not a traceback
        print(f"network {phase} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
