"""Published-port throughput and connection rate: minidock's shim against direct and socat.

    python bench/portfwd.py [--bytes N] [--reps 2] [--rounds 3] [--count 2000]
    (or the environment: BYTES=268435456 REPS=1 ROUNDS=1 COUNT=500 python bench/portfwd.py)

One sink (``netbench.py sink`` on 127.0.0.1, from the peers' scripts) and several *routes*
to it; each route is measured with the same load generator (``netbench.py bulk``: a 1 GiB
transfer with an end-to-end acknowledgement, ``netbench.py rate``: sequential short
connections), round by round, interleaved, so machine noise hits all rows alike:

* direct: the sink's own address (the ceiling of the tool);
* minidock shim: ``python -m minidock.network.proxy`` in front of the sink, started as
  the engine starts it (a listening socket passed as an inherited fd), splicing;
* the same shim with ``--copy`` (recv/send): what splice(2) saves;
* socat -b 262144 with ``fork``: a classic userland proxy, one process per connection.

A route is a function: it gets the sink's address, sets up its path, and returns the
address to hit and how to tear the path down (``Reach``); a route may also bring a sink
of its own (one inside a container, say) and ignore the host's. To add a row, add a
route to ``routes`` in ``main``. netbench.py is found at
``REPO/../shared/peers/netbench.py`` (``--netbench`` to override).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
NETBENCH = REPO.parent / "shared" / "peers" / "netbench.py"
HOST = "127.0.0.1"
Address = tuple[str, int]


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


def main() -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bytes", type=int, default=int(env("BYTES", 1 << 30)))
    parser.add_argument("--reps", type=int, default=int(env("REPS", 2)), help="per round")
    parser.add_argument("--rounds", type=int, default=int(env("ROUNDS", 3)))
    parser.add_argument("--count", type=int, default=int(env("COUNT", 2000)))
    parser.add_argument("--netbench", type=Path, default=NETBENCH)
    args = parser.parse_args()
    if not args.netbench.is_file():
        sys.exit(
            f"bench/portfwd.py: {args.netbench} not found; it is the peers' load generator "
            "(shared/peers/netbench.py beside the project), or pass --netbench PATH"
        )
    # SIGTERM unwinds like Ctrl-C, through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs = Processes()
    routes: dict[str, Route] = {
        "direct": direct,
        "minidock shim (splice)": shim(procs),
        "minidock shim --copy (recv/send)": shim(procs, "--copy"),
        "socat -b 262144 (fork)": socat(procs),
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
        print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
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
                    f"{rate['conn_per_s']} conn/s",
                    flush=True,
                )
        print(f"load after: {os.getloadavg()[0]:.2f}")
        report(samples, args)
        print()
        for name, reach in reaches.items():
            if reach.pid is not None:  # socat: the listening parent, not its per-connection forks
                rss, pss = memory_kib(reach.pid)
                print(f"{name}: resident forwarder RSS {rss} KiB, PSS {pss} KiB")
    finally:
        for reach in reaches.values():
            reach.cleanup()
        procs.stop_all()


if __name__ == "__main__":
    main()
