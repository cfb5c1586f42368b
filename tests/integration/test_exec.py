"""`minidock exec`: a second process that joins the running container's namespaces,
cgroup, root and restrictions — checked against the kernel."""

from __future__ import annotations

import os
import pty
import sys

from tests.conftest import Minidock, wait_for
from tests.integration.test_lifecycle import _read_pty


def _ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def test_exec_joins_every_namespace_the_cgroup_and_the_root(md: Minidock) -> None:
    md("run", "-d", "--name", "box", "-h", "boxhost", "busybox", "sh", "-c",
       "echo inside > /marker; sleep 60")  # fmt: skip
    pid1 = md.pid("box")
    assert wait_for(lambda: os.path.exists(f"/proc/{pid1}/root/marker"))
    script = "hostname; cat /marker; echo $$; cat /proc/self/cgroup; sleep 30 & echo $!"
    out = md("exec", "box", "sh", "-c", script).stdout.splitlines()
    assert out[0] == "boxhost" and out[1] == "inside"
    assert int(out[2]) > 1  # a PID of the container's namespace, not the host's
    assert {line.rsplit(":", 1)[1] for line in out if ":" in line} == {"/"}  # cgroup ns root
    inner_host_pids = [p for p in md.engine.top("box") if p != pid1]
    assert inner_host_pids, "the exec'd sleep is in the container's cgroup"
    with open(f"/proc/{pid1}/cgroup") as a, open(f"/proc/{inner_host_pids[0]}/cgroup") as b:
        assert a.read() == b.read()
    for kind in ("pid", "mnt", "uts", "ipc", "net", "cgroup"):
        assert _ns(inner_host_pids[0], kind) == _ns(pid1, kind)


def test_exec_exit_codes_and_errors(md: Minidock) -> None:
    md("run", "-d", "--name", "box", "busybox", "sleep", "60")
    assert md("exec", "box", "sh", "-c", "exit 9", check=False).returncode == 9
    proc = md("exec", "box", "nosuchcmd", check=False)
    assert proc.returncode == 127 and "executable file not found" in proc.stderr
    assert md("exec", "nosuchbox", "true", check=False).returncode == 125
    md("pause", "box")
    proc = md("exec", "box", "true", check=False)
    assert proc.returncode == 125 and "paused" in proc.stderr


def test_exec_has_the_containers_restrictions_and_no_host_fds(md: Minidock) -> None:
    md("run", "-d", "--name", "box", "busybox", "sleep", "60")
    out = md("exec", "box", "sh", "-c", "grep CapEff /proc/self/status; ls /proc/self/fd").stdout
    lines = out.split()
    assert int(lines[1], 16) == 0xA80425FB
    assert sorted(lines[2:]) == ["0", "1", "2", "3"]
    out = md("exec", "-u", "web", "-w", "/tmp", "-e", "X=1", "box", "sh", "-c",
             "id -u; pwd; echo $X").stdout.split()  # fmt: skip
    assert out == ["1000", "/tmp", "1"]


def test_exec_interactive_stdin_and_detached(md: Minidock) -> None:
    md("run", "-d", "--name", "box", "busybox", "sleep", "60")
    assert md("exec", "-i", "box", "tr", "a-z", "A-Z", input="shout\n").stdout == "SHOUT\n"
    md("exec", "-d", "box", "sh", "-c", "sleep 1; touch /done")
    pid1 = md.pid("box")
    assert wait_for(lambda: os.path.exists(f"/proc/{pid1}/root/done"), 10)


def test_exec_tty(md: Minidock) -> None:
    md("run", "-d", "--name", "box", "busybox", "sleep", "60")
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, "-m", "minidock", "exec", "-it", "box",
                                   "sh", "-c", "tty; exit 4"], md.env)  # fmt: skip
    out = _read_pty(fd, until=None)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 4, out
    assert b"/dev/pts/" in out


def test_exec_processes_die_with_the_container(md: Minidock) -> None:
    md("run", "-d", "--name", "box", "busybox", "sleep", "60")
    md("exec", "-d", "box", "sleep", "300")
    assert wait_for(lambda: len(md.engine.top("box")) == 2)
    pids = md.engine.top("box")
    md("stop", "-t", "0", "box")
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 5)
