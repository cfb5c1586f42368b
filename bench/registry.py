"""Push and pull of a large image through a local registry, beside skopeo, in one run.

    python bench/registry.py [--rounds 3] [--megabytes 100]

The image: one gzip layer of ``--megabytes`` of files (bench/build.py's tree: half random,
half text-like), imported as a tarball so minidock keeps the layer compressed. Both tools
then move the very same bytes: skopeo reads a ``minidock save`` of it (``docker-archive:``)
and, its layer being gzip already, does not recompress it.

Each round starts a fresh ``docker-registry`` on 127.0.0.1 (empty storage, a new port, so
neither tool finds a blob there already or can mount one), then times, interleaved:

* push: minidock's ``push_image`` (in this process, like bench/build.py: no Python start-up)
  and ``skopeo copy docker-archive:… docker://…``;
* pull: minidock's ``pull_image`` into an empty store (download, verify, unpack) and the
  same work by peers, ``skopeo copy docker://… oci:DIR`` then ``umoci raw unpack``; then
  the two halves alone (skopeo's copy, minidock's extractor), so the download part of a
  minidock pull can be told apart from its unpacking.

Medians and ratios (minidock ÷ peer) are printed; compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from build import make_tree, seconds  # noqa: E402  (bench/build.py, beside this file)

from minidock import archive, layers, registry  # noqa: E402
from minidock.engine import Engine  # noqa: E402


@contextmanager
def local_registry(work: Path) -> Iterator[str]:
    """A docker-registry with empty storage on a free loopback port; yields host:port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work.mkdir(parents=True)
    config = work / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(150):
            try:
                httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


@contextmanager
def cleaned_up(work: Path) -> Iterator[None]:
    """Remove ``work`` afterwards (the registry has stopped by then)."""
    try:
        yield
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unpack(blob: str, dest: Path) -> None:
    """What a pull does with a layer once it is in: the safe extractor, alone."""
    dest.mkdir()
    with layers.open_uncompressed(blob) as stream:
        layers.unpack(stream, str(dest))


def skopeo(*args: str) -> None:
    subprocess.run(["skopeo", *args], check=True, stdout=subprocess.DEVNULL)


PUSH = "push  minidock"
PUSH_SKOPEO = "push  skopeo copy"
PULL = "pull  minidock (download, verify, unpack)"
PULL_SKOPEO_UMOCI = "pull  skopeo copy → oci: + umoci raw unpack"
PULL_SKOPEO = "      skopeo copy → oci: alone"
UNPACK = "      minidock unpack alone"


def one_round(work: Path, source: Engine, saved: Path, layer: dict) -> dict[str, float]:
    """Each row once, against a fresh registry; seconds by row."""
    with cleaned_up(work), local_registry(work / "registry") as host:
        ref = registry.parse_reference(f"{host}/bench/minidock:1")
        source.images.tag("bench:1", ref.local or "")
        remote = f"docker://{host}/bench/minidock:1"

        def skopeo_and_umoci() -> None:
            skopeo("copy", "--src-tls-verify=false", remote, f"oci:{work / 'oci-u'}:1")
            subprocess.run(
                ["umoci", "raw", "unpack", "--image", f"{work / 'oci-u'}:1", str(work / "rootfs")],
                check=True,
                capture_output=True,
            )

        actions: dict[str, Callable[[], object]] = {
            PUSH: lambda: registry.push_image(source.images, ref, registry.Progress()),
            PUSH_SKOPEO: lambda: skopeo(
                "copy",
                "--dest-tls-verify=false",
                f"docker-archive:{saved}",
                f"docker://{host}/bench/skopeo:1",
            ),
            PULL: lambda: registry.pull_image(
                Engine(str(work / "pulled")).images,
                ref,
                registry.DEFAULT_PLATFORM,
                registry.Progress(),
            ),
            PULL_SKOPEO_UMOCI: skopeo_and_umoci,
            PULL_SKOPEO: lambda: skopeo(
                "copy", "--src-tls-verify=false", remote, f"oci:{work / 'oci'}:1"
            ),
            UNPACK: lambda: unpack(source.images.blob_path(layer["digest"]), work / "unpacked"),
        }
        return {name: seconds(action) for name, action in actions.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/registry.py: run as root")
    for tool in ("docker-registry", "skopeo", "umoci"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/registry.py: needs {tool} (apt-get install {tool})")
    work = Path(tempfile.mkdtemp(prefix="minidock-bench-registry-"))
    try:
        make_tree(work / "tree", args.megabytes)
        tarball = work / "layer.tar.gz"
        subprocess.run(["tar", "-C", str(work / "tree"), "-czf", str(tarball), "."], check=True)
        source = Engine(str(work / "source"))
        image = source.images.import_rootfs(str(tarball), "bench:1", [])
        saved = work / "bench.tar"
        archive.save_to_file(source.images, ["bench:1"], str(saved))
        layer = image.manifest["layers"][0]
        print(
            f"one {layer['size'] / 2**20:.0f} MiB gzip layer ({args.megabytes} MiB of files), "
            f"median of {args.rounds} rounds, each against a fresh registry"
        )

        samples: dict[str, list[float]] = {}
        for n in range(args.rounds):
            for name, value in one_round(work / f"round{n}", source, saved, layer).items():
                samples.setdefault(name, []).append(value)
        medians = {name: statistics.median(values) for name, values in samples.items()}
        mib = layer["size"] / 2**20
        print(f"{'':44} {'s':>6} {'MiB/s':>6}")
        for name, m in medians.items():
            print(f"{name:44} {m:6.2f} {mib / m:6.0f}")
        push = medians[PUSH] / medians[PUSH_SKOPEO]
        pull = medians[PULL] / medians[PULL_SKOPEO_UMOCI]
        print(f"minidock ÷ peer: push {push:.2f} (÷ skopeo), pull {pull:.2f} (÷ skopeo + umoci)")
        print(f"load average {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
