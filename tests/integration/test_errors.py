"""Bad input: one clear line on stderr, Docker's exit code, and nothing left behind."""

from __future__ import annotations

import os

import pytest

from minidock.runtime import SECCOMP_CACHE
from tests.conftest import Minidock


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "nosuchimage"], 125, "No such image: nosuchimage"),
        (["run", "-m", "abc", "busybox", "true"], 125, '"abc"'),
        (["run", "--cpus", "-1", "busybox", "true"], 125, "-1"),
        (["run", "--pids-limit", "x", "busybox", "true"], 125, '"x"'),
        (["run", "-v", "relative:/data", "busybox", "true"], 125, "relative"),
        (
            ["run", "--rm", "busybox", "nosuchcommand"],
            127,
            'exec: "nosuchcommand": executable file not found in $PATH',
        ),
        (["run", "--rm", "busybox", "/etc/passwd"], 126, "permission denied"),
        (["run", "--rm", "--cap-add", "NOT_A_CAP", "busybox", "true"], 125, "NOT_A_CAP"),
        (["stop", "nosuchcontainer"], 125, "No such container: nosuchcontainer"),
        (["logs", "nosuchcontainer"], 125, "No such container: nosuchcontainer"),
        (["kill", "-s", "NOPE", "x"], 125, "NOPE"),
    ],
)
def test_bad_input(md: Minidock, args: list[str], code: int, message: str) -> None:
    proc = md(*args, check=False)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert md("ps", "-aq").stdout == "", "a failed run left a container behind"
    # Of the runtime's records, only its cache of compiled seccomp filters may stay.
    assert set(os.listdir(os.path.join(md.root, "runtime"))) <= {SECCOMP_CACHE}


def test_name_in_use(md: Minidock) -> None:
    md("create", "--name", "taken", "busybox", "true")
    proc = md("run", "--name", "taken", "busybox", "true", check=False)
    assert proc.returncode == 125 and 'name "/taken" is already in use' in proc.stderr
    assert len(md("ps", "-aq").stdout.split()) == 1


def test_rm_of_a_running_container_needs_force(md: Minidock) -> None:
    md("run", "-d", "--name", "busy", "busybox", "sleep", "60")
    proc = md("rm", "busy", check=False)
    assert proc.returncode == 125 and "force" in proc.stderr
    assert md.inspect("busy")["State"]["Running"]


def test_start_of_a_running_container_is_refused(md: Minidock) -> None:
    md("run", "-d", "--name", "up", "busybox", "sleep", "60")
    proc = md("start", "up", check=False)
    assert proc.returncode == 125 and "already running" in proc.stderr
