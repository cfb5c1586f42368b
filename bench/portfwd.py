"""Published-port throughput and connection rate: minidock's shim against direct and socat.

    python bench/portfwd.py [--bytes N] [--reps 2] [--rounds 3] [--count 2000]
                            [--no-containers]
    (or the environment: BYTES=268435456 REPS=1 ROUNDS=1 COUNT=500 CONTAINERS=0 ...)

One sink (``netbench.py sink`` on 127.0.0.1, from the peers' scripts) and several *routes*
to it; each route is measured with the same load generator (``netbench.py bulk``: a 1 GiB
transfer with an end-to-end acknowledgement, ``netbench.py rate``: sequential short
connections), round by round, interleaved, so machine noise hits all rows alike:

* direct: the sink's own address (the ceiling of the tool);
* minidock shim: ``python -m minidock.network.proxy`` in front of the sink, started as
  the engine starts it (a listening socket passed as an inherited fd), splicing;
* the same shim with ``--copy`` (recv/send): what splice(2) saves;
* socat -b 262144 with ``fork``: a classic userland proxy, one process per connection;
* (as root) real minidock containers, each running the same sink *inside* a busybox image
  with the host's ``/usr``, ``/lib`` and ``/lib64`` bound read-only (as the peers ran
  docker and podman), published as a user publishes them:

  - ``minidock run -p 127.0.0.1:PORT:9000`` in the default shim mode (userland proxy);
  - the same with ``MINIDOCK_PORT_MODE=dnat`` (kernel DNAT, Docker's ``userland-proxy:
    false``);
  - the DNAT container's own address, ``CONTAINER_IP:9000``: the same sink without the
    NAT, the "direct" that DNAT is held against.

  They use a private minidock (``Minidock``): a state root in a temp dir, a cgroup parent
  of its own, its own busybox image; all of it is removed on the way out, Ctrl-C included.
  Traffic goes only to loopback and to the containers the bench made. Compare container
  rows with each other rather than with the loopback ones: the container's sink runs in a
  cpu cgroup of its own, which under CPU contention gets a group's share, and it is
  Debian's /usr/bin/python3 where the host's sink is ``sys.executable``.

After the table, the figures are set against the targets (``TARGETS``): the shim at 1.5×
docker-proxy's throughput and 2× its connection rate as the peers measured them on this
machine, DNAT at 95% of the container's direct address.

A route is a function: it gets the sink's address, sets up its path, and returns the
address to hit and how to tear the path down (``Reach``); a route may also bring a sink
of its own (one inside a container, say) and ignore the host's. To add a row, add a
route to ``routes`` in ``main``. netbench.py is found at
``REPO/../shared/peers/netbench.py`` (``--netbench`` to override).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
NETBENCH = REPO.parent / "shared" / "peers" / "netbench.py"
HOST = "127.0.0.1"
Address = tuple[str, int]
MINIDOCK = [sys.executable, "-m", "minidock"]
#: The sink's port inside the containers.
CONTAINER_PORT = 9000
#: The host's python, for the sink inside the busybox containers (as the peers ran it).
HOST_LIBS = ["-v", "/usr:/usr:ro", "-v", "/lib:/lib:ro", "-v", "/lib64:/lib64:ro"]

# Row names the targets refer to.
DIRECT = "direct"
CONTAINER_DIRECT = "container direct (IP:9000)"
RUN_SHIM = "minidock run -p (shim)"
RUN_DNAT = "minidock run -p (dnat)"
#: The peers' docker -p (docker-proxy) on this machine: shared/peers/README.md, section 2.
DOCKER_PROXY_MIBS, DOCKER_PROXY_CPS = 1001, 681
#: (what, row, its figure: 0 MiB/s or 1 conn/s, the reference: a fixed figure or a row,
#: factor): the row's figure must reach factor × the reference.
TARGETS: list[tuple[str, str, int, float | str, float]] = [
    ("shim throughput ≥ 1.5× docker-proxy", RUN_SHIM, 0, DOCKER_PROXY_MIBS, 1.5),
    ("shim conn rate ≥ 2× docker-proxy", RUN_SHIM, 1, DOCKER_PROXY_CPS, 2.0),
    ("DNAT throughput ≥ 95% of direct", RUN_DNAT, 0, CONTAINER_DIRECT, 0.95),
    ("DNAT conn rate ≥ 95% of direct", RUN_DNAT, 1, CONTAINER_DIRECT, 0.95),
]


class Reach(NamedTuple):
    """What a route set up: the address to hit, its teardown, and the forwarding process
    (if one) whose memory is reported."""

    address: Address
    cleanup: Callable[[], None]
    pid: int | None = None


Route = Callable[[Address], Reach]


class Processes:
    """Every long-running process the bench starts, stopped by PID on the way out."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
        # A session of its own: a Ctrl-C reaches only the bench, which then stops these.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=pass_fds,
            cwd=REPO,
        )
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.running[:]):
            self.stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def probe(address: Address, timeout: float = 10.0) -> None:
    """One netbench exchange (1 byte, half-close, ``"1\\n"`` back) until it works: the
    route is up end to end, and a first connection's start-up cost is not measured."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(address, timeout=2) as s:
                s.sendall(b"x")
                s.shutdown(socket.SHUT_WR)
                reply = b""
                while chunk := s.recv(64):
                    reply += chunk
            if reply == b"1\n":
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{address[0]}:{address[1]} does not reach the sink")
        time.sleep(0.05)


def direct(sink: Address) -> Reach:
    return Reach(sink, lambda: None)


def shim(procs: Processes, *extra: str) -> Route:
    """minidock's shim, started as the engine does: the host port is bound by the caller
    and passed down as fd N in ``--map tcp:N:PORT``."""

    def route(sink: Address) -> Reach:
        listener = socket.create_server((HOST, 0), backlog=1024)
        with listener:
            proc = procs.start(
                [
                    sys.executable,
                    "-m",
                    "minidock.network.proxy",
                    "--target",
                    sink[0],
                    "--map",
                    f"tcp:{listener.fileno()}:{sink[1]}",
                    *extra,
                ],
                pass_fds=(listener.fileno(),),
            )
            address = listener.getsockname()
        return Reach(address, lambda: procs.stop(proc), proc.pid)

    return route


def socat(procs: Processes) -> Route:
    def route(sink: Address) -> Reach:
        port = free_port()
        proc = procs.start(
            [
                "socat",
                "-b",
                "262144",
                f"TCP-LISTEN:{port},bind={HOST},reuseaddr,fork",
                f"TCP:{sink[0]}:{sink[1]}",
            ]
        )
        return Reach((HOST, port), lambda: procs.stop(proc), proc.pid)

    return route


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is over, then act on them: a minidock
    command is never cut off halfway (a half-made container is harder to remove than a
    whole one), and a second Ctrl-C does not cut the cleanup short."""
    caught: list[int] = []
    old = {
        signum: signal.signal(signum, lambda received, _frame: caught.append(received))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])


class Container(NamedTuple):
    name: str
    ip: str
    host_port: int
    proxy_pid: int | None


class Minidock:
    """A private minidock, run as a user runs it (``python -m minidock``): its own state
    root in a temp dir, its own cgroup parent and busybox image, made on first use.
    :meth:`close` removes every container it made, then the root's networks (bridge,
    rules), the cgroup parent and the temp dir."""

    def __init__(self, netbench_py: Path) -> None:
        self.netbench_py = netbench_py.resolve()
        self.work: Path | None = None
        self.parent = f"minidock-bench-{secrets.token_hex(4)}"
        self.sinks: dict[str, Container] = {}  # by port mode
        self.made: list[str] = []  # names of every container asked for, removed or not

    @property
    def root(self) -> str:
        assert self.work is not None
        return str(self.work / "state")

    def env(self, port_mode: str | None = None) -> dict[str, str]:
        env = {
            **os.environ,
            "MINIDOCK_ROOT": self.root,
            "MINIDOCK_CGROUP_PARENT": self.parent,
            "PYTHONPATH": str(REPO),
        }
        env.pop("MINIDOCK_PORT_MODE", None)
        if port_mode:
            env["MINIDOCK_PORT_MODE"] = port_mode
        return env

    def __call__(self, *args: str, port_mode: str | None = None, check: bool = True) -> str:
        """``minidock ARGS``; its stdout. A session of its own, and signals held until it
        is done (see :func:`deferred_signals`)."""
        with deferred_signals():
            proc = subprocess.run(
                [*MINIDOCK, *args],
                env=self.env(port_mode),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd="/",
                timeout=120,
            )
        if check and proc.returncode != 0:
            raise RuntimeError(f"minidock {' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def _prepare(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the minidock container rows need root")
        self.work = Path(tempfile.mkdtemp(prefix="minidock-bench-"))
        rootfs = self.work / "busybox"
        subprocess.run(
            [str(REPO / "rootfs-samples/busybox/build.sh"), str(rootfs)],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self("import", "--change", 'CMD ["sh"]', str(rootfs), "busybox")

    def sink(self, port_mode: str) -> Container:
        """The container that runs the sink with its port published in ``port_mode``
        (``shim`` or ``dnat``) on 127.0.0.1; started once, shared by the routes."""
        if port_mode in self.sinks:
            return self.sinks[port_mode]
        if self.work is None:
            self._prepare()
        name = f"bench-{port_mode}-{secrets.token_hex(3)}"
        host_port = free_port()
        self.made.append(name)  # before the run: even a half-made one gets removed
        cid = self(
            "run", "-d", "--name", name, "-p", f"{HOST}:{host_port}:{CONTAINER_PORT}",
            *HOST_LIBS, "-v", f"{self.netbench_py}:/netbench.py:ro",
            "busybox", "/usr/bin/python3", "/netbench.py", "sink",
            "--host", "0.0.0.0", "--port", str(CONTAINER_PORT),
            port_mode=port_mode,
        ).strip()  # fmt: skip
        ip = self("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name).strip()
        state = json.loads(
            (Path(self.root) / "containers" / cid / "network-state.json").read_text()
        )
        proxy = state.get("proxy")
        self.sinks[port_mode] = Container(name, ip, host_port, proxy and proxy["pid"])
        return self.sinks[port_mode]

    def remove(self, name: str) -> None:
        """``minidock rm -f NAME``, once."""
        if name in self.made:
            self("rm", "-f", name, check=False)
            self.made.remove(name)
            self.sinks = {mode: c for mode, c in self.sinks.items() if c.name != name}

    def close(self) -> None:
        """Remove everything this minidock made; safe to call twice, or before any use."""
        if self.work is None:
            return
        with deferred_signals():
            for name in self.made[:]:
                self.remove(name)
            # Anything else under this root (a container whose name never got recorded).
            with contextlib.suppress(subprocess.SubprocessError):
                leftover = self("ps", "-aq", check=False).split()
                if leftover:
                    self("rm", "-f", *leftover, check=False)
            # minidock and cgroups are imported by a child, with PYTHONPATH set as for the
            # CLI: this interpreter need not have them installed.
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys, cgroups\n"
                    "from minidock.network.networks import NetworkStore\n"
                    "try:\n"
                    "    NetworkStore(sys.argv[1]).remove_all()\n"
                    "finally:\n"
                    "    cgroups.remove_parent_if_empty(sys.argv[2])\n",
                    self.root,
                    self.parent,
                ],
                env=self.env(),
                check=False,
                stdin=subprocess.DEVNULL,
                cwd="/",
            )
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None


def published(md: Minidock, port_mode: str) -> Route:
    """``minidock run -p 127.0.0.1:PORT:9000`` in ``port_mode``; the sink is the
    container's, the host's is not used."""

    def route(_sink: Address) -> Reach:
        container = md.sink(port_mode)
        return Reach(
            (HOST, container.host_port), lambda: md.remove(container.name), container.proxy_pid
        )

    return route


def container_direct(md: Minidock) -> Route:
    """Straight to the DNAT container's address: its sink, without the NAT."""

    def route(_sink: Address) -> Reach:
        container = md.sink("dnat")
        return Reach((container.ip, CONTAINER_PORT), lambda: md.remove(container.name))

    return route


def netbench(netbench_py: Path, mode: str, address: Address, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(netbench_py), mode, "--host", address[0], "--port", str(address[1])]
        + list(args),
        check=True,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    return json.loads(out.splitlines()[-1])


def memory_kib(pid: int) -> tuple[int, int]:
    """RSS and PSS of one process, from /proc/PID/smaps_rollup."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = dict(line.split()[:2] for line in f if line.split()[0] in ("Rss:", "Pss:"))
    return int(fields["Rss:"]), int(fields["Pss:"])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}×" if base else "-"


def report(samples: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    med = {
        name: (statistics.median(s["mibs"]), statistics.median(s["cps"]))
        for name, s in samples.items()
    }
    base = med.get("direct")
    socat_row = next((m for name, m in med.items() if name.startswith("socat")), None)
    print(
        f"\n{args.bytes / 2**20:.0f} MiB transfers (median of {args.rounds * args.reps}), "
        f"{args.count} sequential connections (median of {args.rounds} rounds)\n"
    )
    print(
        "| route | MiB/s | min–max | × direct | × socat | conn/s | × direct | × socat "
        "| p50 ms | p99 ms |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in samples.items():
        mibs, cps = med[name]
        print(
            f"| {name} | {mibs:.0f} | {min(s['mibs']):.0f}–{max(s['mibs']):.0f} "
            f"| {ratio(mibs, base and base[0])} | {ratio(mibs, socat_row and socat_row[0])} "
            f"| {cps:.0f} | {ratio(cps, base and base[1])} "
            f"| {ratio(cps, socat_row and socat_row[1])} "
            f"| {statistics.median(s['p50']):.3f} | {statistics.median(s['p99']):.3f} |"
        )


def targets(samples: dict[str, dict[str, list[float]]]) -> None:
    """Each target beside the measured figure: met or missed, and by how much."""
    med = {name: (statistics.median(s["mibs"]), statistics.median(s["cps"]))
           for name, s in samples.items()}  # fmt: skip
    unit = ("MiB/s", "conn/s")
    print("\n| target | row | measured | reference | needed | × reference | met |")
    print("|---|---|---:|---:|---:|---:|---|")
    for what, row, figure, reference, factor in TARGETS:
        if row not in med or (isinstance(reference, str) and reference not in med):
            print(f"| {what} | {row} | not measured | | | | |")
            continue
        value = med[row][figure]
        if isinstance(reference, str):
            base, source = med[reference][figure], reference
        else:
            base, source = reference, "peers"
        print(
            f"| {what} | {row} | {value:.0f} {unit[figure]} | {base:.0f} ({source}) "
            f"| {factor * base:.0f} | {value / base:.3f}× | "
            f"{'yes' if value >= factor * base else 'NO'} |"
        )


def main() -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bytes", type=int, default=int(env("BYTES", 1 << 30)))
    parser.add_argument("--reps", type=int, default=int(env("REPS", 2)), help="per round")
    parser.add_argument("--rounds", type=int, default=int(env("ROUNDS", 3)))
    parser.add_argument("--count", type=int, default=int(env("COUNT", 2000)))
    parser.add_argument("--netbench", type=Path, default=NETBENCH)
    parser.add_argument(
        "--no-containers",
        action="store_true",
        default=env("CONTAINERS") == "0",
        help="skip the rows through minidock containers (which need root)",
    )
    args = parser.parse_args()
    if not args.netbench.is_file():
        sys.exit(
            f"bench/portfwd.py: {args.netbench} not found; it is the peers' load generator "
            "(shared/peers/netbench.py beside the project), or pass --netbench PATH"
        )
    # SIGTERM unwinds like Ctrl-C, through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs = Processes()
    md = Minidock(args.netbench)
    routes: dict[str, Route] = {
        DIRECT: direct,
        "minidock shim (splice)": shim(procs),
        "minidock shim --copy (recv/send)": shim(procs, "--copy"),
        "socat -b 262144 (fork)": socat(procs),
    }
    if args.no_containers:
        pass
    elif os.geteuid() != 0:
        print("not root: the rows through minidock containers are left out", file=sys.stderr)
    else:
        routes |= {
            CONTAINER_DIRECT: container_direct(md),
            RUN_SHIM: published(md, "shim"),
            RUN_DNAT: published(md, "dnat"),
        }
    reaches: dict[str, Reach] = {}
    try:
        port = free_port()
        procs.start(
            [sys.executable, str(args.netbench), "sink", "--host", HOST, "--port", str(port)]
        )
        sink = (HOST, port)
        probe(sink)
        for name, route in routes.items():
            reaches[name] = route(sink)
            probe(reaches[name].address)
        if md.sinks:
            print(f"minidock state root {md.root}, cgroup parent {md.parent}")
        for mode, c in md.sinks.items():
            print(f"{mode} container {c.name}: {c.ip}:{CONTAINER_PORT} on {HOST}:{c.host_port}")
        print(f"load before: {load()}", flush=True)
        samples = {name: {"mibs": [], "cps": [], "p50": [], "p99": []} for name in routes}
        for round_ in range(1, args.rounds + 1):
            for name, reach in reaches.items():
                sizes = ("--bytes", str(args.bytes), "--reps", str(args.reps))
                bulk = netbench(args.netbench, "bulk", reach.address, *sizes)
                rate = netbench(args.netbench, "rate", reach.address, "--count", str(args.count))
                if bulk["acks_ok"] is False or rate["errors"]:
                    raise RuntimeError(f"{name}: bytes lost or connections failed: {bulk} {rate}")
                s = samples[name]
                s["mibs"] += bulk["MiB_s_all"]
                s["cps"].append(rate["conn_per_s"])
                s["p50"].append(rate["lat_ms_p50"])
                s["p99"].append(rate["lat_ms_p99"])
                print(
                    f"round {round_}: {name}: {bulk['MiB_s_all']} MiB/s, "
                    f"{rate['conn_per_s']} conn/s (load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
        print(f"load after: {load()}")
        report(samples, args)
        targets(samples)
        print()
        for name, reach in reaches.items():
            if reach.pid is not None:  # socat: the listening parent, not its per-connection forks
                rss, pss = memory_kib(reach.pid)
                print(f"{name}: resident forwarder RSS {rss} KiB, PSS {pss} KiB")
    finally:
        with deferred_signals():
            steps = [reach.cleanup for reach in reaches.values()] + [procs.stop_all, md.close]
            for step in steps:
                try:
                    step()
                except Exception as exc:  # the other steps must still run
                    print(f"bench/portfwd.py: cleanup: {exc!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
