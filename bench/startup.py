"""Start-to-exit latency and per-container memory, against real peers in the same run.

    python bench/startup.py [--runs 20] [--rounds 3]

Times ``/bin/true`` in a busybox container, started three ways, interleaved round by
round so machine noise hits all rows alike, and prints medians and ratios:

* ``unshare --pid --fork --mount --uts --ipc --net chroot ROOTFS /bin/true`` — the floor:
  namespaces and nothing else;
* ``runc run`` of an OCI bundle of the same rootfs (the reference runtime);
* ``minidock run --rm --network none busybox /bin/true`` — the whole engine, as a user runs it.

Then starts a detached ``sleep`` container and reports its monitor's PSS (what one
container costs while it runs), beside runc's zero (it leaves no process behind).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cgroups
from minidock.network.networks import NetworkStore

REPO = Path(__file__).resolve().parent.parent
MINIDOCK = [sys.executable, "-m", "minidock"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        cmd,
        env=env,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return (time.perf_counter() - start) * 1000


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per row per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/startup.py: run as root")
    work = Path(tempfile.mkdtemp(prefix="minidock-bench-"))
    root = work / "state"
    parent = f"minidock-bench-{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "MINIDOCK_ROOT": str(root),
        "MINIDOCK_CGROUP_PARENT": parent,
        "PYTHONPATH": str(REPO),
    }
    try:
        rootfs = work / "bundle" / "rootfs"
        subprocess.run(
            [str(REPO / "rootfs-samples/busybox/build.sh"), str(rootfs)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [*MINIDOCK, "import", str(rootfs), "busybox"],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        bundle = work / "bundle"
        subprocess.run(["runc", "spec"], cwd=bundle, check=True)
        config = json.loads((bundle / "config.json").read_text())
        config["process"]["args"], config["process"]["terminal"] = ["/bin/true"], False
        (bundle / "config.json").write_text(json.dumps(config))
        counter = iter(range(10**9))

        rows: dict[str, Callable[[], list[str]]] = {
            "unshare + chroot (floor)": lambda: [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "chroot",
                str(rootfs),
                "/bin/true",
            ],
            "runc run": lambda: ["runc", "run", "--bundle", str(bundle), f"r{next(counter)}"],
            "minidock run --rm": lambda: [
                *MINIDOCK,
                "run",
                "--rm",
                "--network",
                "none",
                "busybox",
                "/bin/true",
            ],
        }
        if shutil.which("runc") is None:
            del rows["runc run"]
        samples: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name, make in rows.items():
                for _ in range(args.runs):
                    samples[name].append(timed(make(), env))
        floor = statistics.median(samples["unshare + chroot (floor)"])
        runc = statistics.median(samples["runc run"]) if "runc run" in samples else None
        print(
            f"\nstart-to-exit of /bin/true, median of {args.runs * args.rounds} runs "
            f"({args.rounds} interleaved rounds), load {os.getloadavg()[0]:.1f}"
        )
        print(f"{'':28} {'ms':>8} {'× floor':>8} {'× runc':>8}")
        for name, values in samples.items():
            m = statistics.median(values)
            vs_runc = f"{m / runc:8.2f}" if runc else "       -"
            print(f"{name:28} {m:8.1f} {m / floor:8.2f} {vs_runc}")

        cid = subprocess.run(
            [*MINIDOCK, "run", "-d", "busybox", "sleep", "60"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        state = json.loads((root / "containers" / cid / "state.json").read_text())
        time.sleep(0.5)
        monitor = pss_kib(state["MonitorPid"])
        print(
            f"\nresident memory of one detached container's monitor (PSS): "
            f"{monitor / 1024:.1f} MiB (conmon 0.6 MB, containerd-shim 5.8 MB)"
        )
        subprocess.run([*MINIDOCK, "rm", "-f", cid], env=env, check=True, stdout=subprocess.DEVNULL)
    finally:
        subprocess.run(
            [
                *MINIDOCK,
                "rm",
                "-f",
                *subprocess.run(
                    [*MINIDOCK, "ps", "-aq"], env=env, capture_output=True, text=True
                ).stdout.split(),
            ],
            env=env,
            check=False,
            capture_output=True,
        )
        cgroups.remove_parent_if_empty(parent)
        NetworkStore(str(root)).remove_all()  # the detached container's default bridge
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
