"""Image-building costs, against real peers in the same run.

    python bench/build.py [--rounds 3] [--megabytes 200]

1. An unchanged rebuild: the web sample plus a RUN step is built once (cold), then rebuilt
   ``--rounds`` times; every step comes from the cache. Timed through the builder API in
   this process, so Python's start-up (about 0.2 s for the CLI) is not part of it.
2. Unpacking one large layer (``--megabytes`` of files in a few thousand files, gzip, made
   by ``umoci insert``): minidock's safe extractor, ``umoci raw unpack`` and ``umoci
   unpack`` (which also writes an mtree manifest) of the same image, and GNU tar
   (``tar -xzf``, no safety checks: the floor). Interleaved round by round so machine
   noise hits all rows alike; medians and ratios are printed.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cgroups  # noqa: E402
from minidock import layers  # noqa: E402
from minidock.build import Builder, BuildOptions  # noqa: E402
from minidock.engine import Engine  # noqa: E402
from minidock.monitor import Attach  # noqa: E402


def seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def make_tree(top: Path, megabytes: int) -> None:
    """Files of 4 KiB to 128 KiB (half random, half text-like) in nested directories."""
    rng = random.Random(42)
    total, n = 0, 0
    while total < megabytes * 1024 * 1024:
        directory = top / f"d{n % 40:02d}" / f"s{n % 7}"
        directory.mkdir(parents=True, exist_ok=True)
        size = rng.randint(4, 128) * 1024
        data = os.urandom(size) if n % 2 else (b"minidock layer %d\n" % n) * (size // 17)
        (directory / f"f{n:05d}").write_bytes(data)
        total, n = total + len(data), n + 1


def bench_rebuild(engine: Engine, work: Path, rounds: int) -> None:
    context = work / "web"
    shutil.copytree(REPO / "rootfs-samples/web", context)
    with open(context / "Dockerfile", "a") as f:
        f.write("RUN echo built > /built\n")
    attach = Attach(stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno(), stdin=None)

    def build() -> None:
        Builder(engine, BuildOptions(str(context), tags=["bench"]), lambda _: None, attach).build()

    cold = seconds(build)
    warm = [seconds(build) for _ in range(rounds * 3)]
    median = statistics.median(warm)
    print(f"\nweb sample + RUN, {len(warm)} unchanged rebuilds (every step from the cache)")
    print(f"{'cold build':34} {cold * 1000:9.1f} ms")
    print(
        f"{'unchanged rebuild (median)':34} {median * 1000:9.1f} ms   {cold / median:.1f}× faster"
    )


def bench_unpack(work: Path, megabytes: int, rounds: int) -> None:
    tree, layout = work / "tree", work / "layout"
    make_tree(tree, megabytes)
    for cmd in (
        ["umoci", "init", "--layout", str(layout)],
        ["umoci", "new", "--image", f"{layout}:big"],
        ["umoci", "insert", "--image", f"{layout}:big", str(tree), "/data"],
    ):
        subprocess.run(cmd, check=True, capture_output=True)
    blobs = layout / "blobs" / "sha256"
    blob = max(blobs.iterdir(), key=lambda p: p.stat().st_size)  # the one big layer
    print(
        f"\nunpacking one {blob.stat().st_size / 2**20:.0f} MiB gzip layer "
        f"({megabytes} MiB in {sum(1 for _ in tree.rglob('f*'))} files), "
        f"median of {rounds} interleaved rounds"
    )

    def minidock(dest: Path) -> None:
        dest.mkdir()
        with layers.open_uncompressed(str(blob)) as stream:
            layers.unpack(stream, str(dest))

    def run(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True)

    rows: dict[str, Callable[[Path], None]] = {
        "tar -xzf (no checks, the floor)": lambda d: (
            d.mkdir(),
            run("tar", "-xzf", str(blob), "-C", str(d)),
        ),
        "umoci raw unpack": lambda d: run(
            "umoci", "raw", "unpack", "--image", f"{layout}:big", str(d)
        ),
        "umoci unpack (+ mtree manifest)": lambda d: run(
            "umoci", "unpack", "--image", f"{layout}:big", str(d)
        ),
        "minidock layers.unpack": minidock,
    }
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, action in rows.items():
            dest = work / "out"
            samples[name].append(seconds(lambda action=action, dest=dest: action(dest)))
            shutil.rmtree(dest)
    umoci = statistics.median(samples["umoci raw unpack"])
    print(f"{'':34} {'s':>9} {'× umoci raw':>12}")
    for name, values in samples.items():
        m = statistics.median(values)
        print(f"{name:34} {m:9.2f} {m / umoci:12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/build.py: run as root")
    if shutil.which("umoci") is None:
        sys.exit("bench/build.py: needs umoci (apt-get install umoci)")
    work = Path(tempfile.mkdtemp(prefix="minidock-bench-build-"))
    parent = f"minidock-bench-{secrets.token_hex(4)}"
    engine = Engine(str(work / "state"), parent)
    try:
        rootfs = work / "busybox"
        subprocess.run(
            [str(REPO / "rootfs-samples/busybox/build.sh"), str(rootfs)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        engine.images.import_rootfs(str(rootfs), "busybox", ['CMD ["sh"]'])
        bench_rebuild(engine, work, args.rounds)
        bench_unpack(work, args.megabytes, args.rounds)
        print(f"\nload average {os.getloadavg()[0]:.1f}")
    finally:
        for c in engine.containers():
            engine.remove(c, force=True)
        cgroups.remove_parent_if_empty(parent)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
