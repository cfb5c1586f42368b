"""The lessons in docs/ stay true: every ```sh block in docs/*.md is run, as root, against a
private minidock, and must exit 0 having removed everything it made.

Each block runs on its own (``bash -euo pipefail``, working directory the project root) with

* ``MINIDOCK_ROOT``: a temporary state root, shared by the blocks of this module;
* ``MINIDOCK_CGROUP_PARENT``: a cgroup parent of this run's own;
* ``PATH``: a directory holding a ``minidock`` script that runs this checkout;
* the images the lessons use already there: ``busybox`` and ``web``.

A block checks what it claims itself (``test``, ``grep -q``…), so exit 0 is the assertion;
the test adds that it printed something and left no container, network, image, mount or
cgroup behind. Blocks fenced as ```text are never run (interactive ones, say).

The links of the lessons are checked too: a relative link must name an existing file, and
a link written as [`name`](../path.py) must name a function, class or constant defined there.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, Minidock

DOCS = REPO / "docs"
#: Longest a single block may take (the slowest boots the cgroup v2 VM: about 6 s).
BLOCK_TIMEOUT = 120
#: Variables of the caller's environment that would change what minidock does.
_SCRUBBED = ("MINIDOCK_EXPLAIN", "MINIDOCK_PORT_MODE", "MINIDOCK_CGROUP_MOUNT")

_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_IDENTIFIER = re.compile(r"^`([A-Za-z_][\w.]*)(\(\))?`$")


def sh_blocks(path: Path) -> list[str]:
    """The ```sh blocks of a Markdown file, in order."""
    return [body for lang, body in _FENCE.findall(path.read_text()) if lang == "sh"]


def _lessons() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _block_params() -> list:
    return [
        pytest.param(path, index, block, id=f"{path.name}#{index + 1}")
        for path in _lessons()
        for index, block in enumerate(sh_blocks(path))
    ]


# --- the blocks ---------------------------------------------------------------------------------
class Lessons:
    """A private minidock for the lessons, and what it looked like before any block ran."""

    def __init__(self, md: Minidock, bin_dir: Path) -> None:
        self.md = md
        self.env = {k: v for k, v in md.env.items() if k not in _SCRUBBED}
        self.env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
        self.images = self.image_ids()

    def image_ids(self) -> set[str]:
        return {image.id for image in self.md.engine.images.list(all_images=True)}

    def leftovers(self) -> list[str]:
        """What a block made and did not remove."""
        from minidock import runtime
        from minidock.network.networks import NetworkStore

        engine = self.md.engine
        left = [f"container {c.name}" for c in engine.containers()]
        left += [f"runtime container {cid}" for cid in runtime.list_ids(engine.paths.runtime)]
        left += [
            f"network {n.name}" for n in NetworkStore(self.md.root).list() if n.name != "bridge"
        ]
        left += [f"image {i[:12]}" for i in sorted(self.image_ids() - self.images)]
        left += [f"missing image {i[:12]}" for i in sorted(self.images - self.image_ids())]
        with open("/proc/self/mountinfo") as f:
            left += [f"mount {line.split()[4]}" for line in f if self.md.root in line.split()[4]]
        for hierarchy in [Path("/sys/fs/cgroup"), *Path("/sys/fs/cgroup").iterdir()]:
            parent = hierarchy / self.md.cgroup_parent
            if parent.is_dir():
                left += [f"cgroup {child}" for child in parent.iterdir() if child.is_dir()]
        return left


@pytest.fixture(scope="module")
def lessons(busybox_rootfs: str) -> Lessons:
    if os.geteuid() != 0:
        pytest.skip("needs root and a real kernel")
    # Not under pytest's temporary directory (0700): with a user namespace, a container's
    # root walks to its root filesystem as an ordinary host user (docs/userns.md).
    base = Path(tempfile.mkdtemp(prefix="minidock-docs-"))
    base.chmod(0o711)
    md = Minidock(str(base / "root"), f"minidock-docs-{secrets.token_hex(4)}")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "minidock"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m minidock "$@"\n')
    wrapper.chmod(0o755)
    try:
        md("import", "--change", 'CMD ["sh"]', busybox_rootfs, "busybox")
        md("build", "-t", "web", str(REPO / "rootfs-samples" / "web"))
        yield Lessons(md, bin_dir)
    finally:
        md.cleanup()
        shutil.rmtree(base)


@pytest.mark.parametrize(("path", "index", "block"), _block_params())
def test_block_runs_and_cleans_up(lessons: Lessons, path: Path, index: int, block: str) -> None:
    where = f"{path.relative_to(REPO)}, sh block {index + 1}"
    try:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=REPO,
            env=lessons.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
        )
    finally:
        left = lessons.leftovers()
        if left:
            lessons.md.cleanup()  # so that the next block starts clean
    report = f"{where}:\n{block}\n--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, f"exited {proc.returncode}: {report}"
    assert proc.stdout.strip(), f"printed nothing: {report}"
    assert not left, f"left behind {left}: {report}"


# --- the links ----------------------------------------------------------------------------------
def _defines(source: str, name: str) -> bool:
    """Does ``source`` define ``name``: a function, a class, a module-level name, or an
    attribute (a dataclass field ``name: type``, or ``self.name = …``)?"""
    n = re.escape(name)
    pattern = rf"^\s*(?:async\s+)?(?:def|class)\s+{n}\b|^{n}\s*[:=]|^\s+{n}: |^\s+self\.{n}\s*="
    return re.search(pattern, source, re.MULTILINE) is not None


@pytest.mark.parametrize("path", _lessons(), ids=lambda p: p.name)
def test_links_point_at_real_code(path: Path) -> None:
    broken = []
    for text, target in _LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, or a heading of the same page
        file = (path.parent / target.split("#", 1)[0]).resolve()
        if not file.exists():
            broken.append(f"{text} -> {target}: no such file")
            continue
        shown = text.strip("`")
        if shown.endswith((".py", "/")):  # [`relay.py`](../minidock/relay.py): the file itself
            if not target.rstrip("/").endswith(shown.rstrip("/")):
                broken.append(f"{text} -> {target}: the link names another file")
            continue
        named = _IDENTIFIER.match(text)
        if named and file.suffix == ".py":
            name = named.group(1).split(".")[-1]
            if not _defines(file.read_text(), name):
                broken.append(f"{text} -> {target}: {name} is not defined there")
    assert not broken, f"{path.name}: " + "; ".join(broken)


@pytest.mark.parametrize("path", _lessons(), ids=lambda p: p.name)
def test_every_block_says_whether_it_runs(path: Path) -> None:
    """A fence is ```sh (run by this test) or ```text (shown only): an unlabelled one, or
    ```bash, would be commands that silently stop being checked."""
    langs = [lang for lang, _ in _FENCE.findall(path.read_text())]
    assert [lang for lang in langs if lang not in ("sh", "text")] == []


def test_every_lesson_has_runnable_commands() -> None:
    """Each lesson ends with commands to try (the registry lesson describes a protocol
    minidock does not speak yet, so it has none)."""
    lessons = [p for p in _lessons() if p.name not in ("README.md", "registry.md")]
    assert lessons, "no lessons in docs/"
    assert [p.name for p in lessons if not sh_blocks(p)] == []
