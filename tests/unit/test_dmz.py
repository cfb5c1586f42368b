"""The exec trampoline (``minidock/runtime/dmz.py``), run for real: the kernel loads the
hand-assembled ELF from a sealed memfd, exactly as the runtime's last step does. No root
needed."""

from __future__ import annotations

import errno
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from subprocess import CompletedProcess

import pytest

from minidock import syscalls
from minidock.runtime.dmz import TRAMPOLINE

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 machine code")


@pytest.fixture
def trampoline() -> Iterator[str]:
    """The path under which a child process can exec the sealed trampoline."""
    fd = syscalls.sealed_memfd("test-dmz", TRAMPOLINE)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _run(trampoline: str, *args: str, env: dict[str, str] | None = None) -> CompletedProcess:
    """Exec the trampoline as ``trampoline ARGS…`` in a child that inherits its memfd."""
    fd = int(trampoline.rsplit("/", 1)[1])
    return subprocess.run([trampoline, *args], env=env or {}, pass_fds=(fd,),
                          capture_output=True, text=True, check=False)  # fmt: skip


def test_it_execs_the_program_with_its_own_argv0_and_the_environment(trampoline: str) -> None:
    code = "import os, sys; print(sys.orig_argv[0], sys.argv[1], os.environ['GREETING']); exit(7)"
    proc = _run(trampoline, sys.executable, "custom-name", "-c", code, "first",
                env={"GREETING": "hello"})  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "custom-name first hello\n", "")


def test_it_reports_a_failed_exec_with_dockers_exit_codes(trampoline: str, tmp_path) -> None:  # noqa: ANN001
    missing = _run(trampoline, str(tmp_path / "missing"), "missing")
    assert missing.returncode == 127
    assert missing.stderr == f"minidock: exec {tmp_path}/missing: errno {errno.ENOENT}\n"
    not_executable = tmp_path / "data"
    not_executable.write_text("just data\n")
    denied = _run(trampoline, str(not_executable), "data")
    assert denied.returncode == 126
    assert denied.stderr == f"minidock: exec {not_executable}: errno {errno.EACCES}\n"
    assert _run(trampoline, "/bin/true").returncode == 127  # no argv[0] for the program


def test_the_trampoline_can_not_be_changed(trampoline: str) -> None:
    """What a container reaches through /proc/<pid>/exe while the trampoline runs: it may
    even be opened for writing, but the seals refuse every change."""
    fd = os.open(trampoline, os.O_WRONLY)
    try:
        with pytest.raises(PermissionError):
            os.write(fd, b"overwritten")
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    with open(trampoline, "rb") as f:
        assert f.read() == TRAMPOLINE
