"""A container's life through the CLI: detach, logs, stop/start/restart, kill, wait, rm,
and what must be left behind (nothing)."""

from __future__ import annotations

import glob
import json
import os
import pty
import select
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from minidock.runtime import SECCOMP_CACHE
from tests.conftest import Minidock, wait_for

TICKER = "while true; do echo tick; sleep 0.2; done"


def test_detached_container_logs_ps_and_inspect(md: Minidock) -> None:
    cid = md("run", "-d", "--name", "app", "busybox", "sh", "-c", TICKER).stdout.strip()
    assert len(cid) == 64
    assert wait_for(lambda: "tick" in md("logs", "app").stdout)
    ps = md("ps", "--format", "{{.ID}} {{.Names}} {{.State}}").stdout.split()
    assert ps == [cid[:12], "app", "running"]
    info = md.inspect(cid[:8])
    assert info["State"]["Running"] and info["Name"] == "/app"
    with open(info["LogPath"]) as f:
        record = json.loads(f.readline())
    assert record["log"] == "tick\n" and record["stream"] == "stdout"
    assert record["time"].endswith("Z")


def test_stop_of_sigterm_ignoring_pid1_takes_the_timeout_and_exits_137(md: Minidock) -> None:
    md("run", "-d", "--name", "stubborn", "busybox", "sleep", "60")
    start = time.monotonic()
    md("stop", "-t", "1", "stubborn")
    took = time.monotonic() - start
    assert 1.0 <= took < 4.0
    assert md.inspect("stubborn")["State"]["ExitCode"] == 137


def test_stop_of_a_sigterm_handling_pid1_is_prompt(md: Minidock) -> None:
    script = "trap 'exit 0' TERM; while true; do sleep 0.1; done"
    md("run", "-d", "--name", "polite", "busybox", "sh", "-c", script)
    start = time.monotonic()
    md("stop", "-t", "10", "polite")
    assert time.monotonic() - start < 3.0
    assert md.inspect("polite")["State"]["ExitCode"] == 0


def test_logs_survive_stop_and_start_and_restart(md: Minidock) -> None:
    md("run", "-d", "--name", "counter", "busybox", "sh", "-c", "echo started; sleep 60")
    assert wait_for(lambda: md("logs", "counter").stdout == "started\n")
    md("stop", "-t", "0", "counter")
    md("start", "counter")
    assert wait_for(lambda: md("logs", "counter").stdout == "started\nstarted\n")
    first_pid = md.pid("counter")
    md("restart", "-t", "0", "counter")
    assert md.pid("counter") != first_pid
    assert wait_for(lambda: md("logs", "counter").stdout.count("started") == 3)
    timestamps = md("logs", "-t", "--tail", "1", "counter").stdout
    assert timestamps.count("started") == 1 and timestamps[:4].isdigit()


def test_logs_rotate_by_size(md: Minidock) -> None:
    script = "i=0; while [ $i -lt 400 ]; do echo line-$i-padding-padding-padding; i=$((i+1)); done"
    md(
        "run",
        "--name",
        "chatty",
        "--log-opt",
        "max-size=4k",
        "--log-opt",
        "max-file=2",
        "busybox",
        "sh",
        "-c",
        script,
    )
    log_path = md.inspect("chatty")["LogPath"]
    files = sorted(glob.glob(log_path + "*"))
    assert files == [log_path, log_path + ".1"]
    assert all(os.path.getsize(f) <= 4096 for f in files)
    lines = md("logs", "chatty").stdout.splitlines()
    assert lines[-1].startswith("line-399-") and not lines[0].startswith("line-0-")


def test_logs_follow_ends_when_the_container_exits(md: Minidock) -> None:
    md("run", "-d", "--name", "brief", "busybox", "sh", "-c", "echo one; sleep 1; echo two")
    proc = md("logs", "-f", "brief", timeout=20)
    assert proc.stdout == "one\ntwo\n"


def test_kill_with_a_signal_and_wait_returns_the_code(md: Minidock) -> None:
    md(
        "run",
        "-d",
        "--name",
        "handler",
        "busybox",
        "sh",
        "-c",
        "trap 'exit 42' USR1; while true; do sleep 0.1; done",
    )
    md("kill", "-s", "USR1", "handler")
    assert md("wait", "handler").stdout.strip() == "42"
    assert md("kill", "handler", check=False).returncode == 125


def test_run_rm_and_rm_leave_nothing_behind(md: Minidock) -> None:
    md("run", "--rm", "busybox", "true")
    cid = md("run", "-d", "busybox", "sleep", "60").stdout.strip()
    pid = md.pid(cid)
    monitor = md.inspect(cid)["State"]["Pid"] and _monitor_pid(md, cid)
    md("rm", "-f", cid)
    assert md("ps", "-aq").stdout == ""
    assert os.listdir(os.path.join(md.root, "containers")) == []
    # Of the runtime's records, only its cache of compiled seccomp filters may stay.
    assert set(os.listdir(os.path.join(md.root, "runtime"))) <= {SECCOMP_CACHE}
    with open("/proc/self/mountinfo") as f:
        assert md.root not in f.read()
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5)
    assert wait_for(lambda: not os.path.exists(f"/proc/{monitor}"), 5)


def _monitor_pid(md: Minidock, cid: str) -> int:
    with open(os.path.join(md.root, "containers", cid, "state.json")) as f:
        return json.load(f)["MonitorPid"]


def test_twenty_concurrent_detached_runs(md: Minidock) -> None:
    with ThreadPoolExecutor(max_workers=20) as pool:
        procs = list(
            pool.map(
                lambda i: md("run", "-d", "--name", f"c{i}", "busybox", "sleep", "60", check=False),
                range(20),
            )
        )
    assert [p.returncode for p in procs] == [0] * 20, [p.stderr for p in procs if p.returncode]
    ids = {p.stdout.strip() for p in procs}
    assert len(ids) == 20
    running = md("ps", "-q", "--no-trunc").stdout.split()
    assert set(running) == ids
    pids = {md.pid(cid) for cid in ids}
    assert len(pids) == 20 and all(os.path.exists(f"/proc/{p}") for p in pids)


def test_interactive_tty(md: Minidock) -> None:
    """`run -it` gives the program a real terminal (a pty from the container's devpts)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(
            sys.executable,
            [sys.executable, "-m", "minidock", "run", "-it", "--rm", "busybox", "sh"],
            md.env,
        )
    out = _read_pty(fd, until=b"# ")  # the shell's prompt: it is reading the terminal now
    if b"\x1b[6n" in out:  # busybox asks the terminal where the cursor is; answer it
        os.write(fd, b"\x1b[1;1R")
    os.write(fd, b"tty; echo $((6*7)); exit 5\n")
    out += _read_pty(fd, until=None)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 5, out
    assert b"/dev/pts/0" in out and b"42" in out


def _read_pty(fd: int, until: bytes | None, timeout: float = 30) -> bytes:
    """Read a pty master until ``until`` appears, or until it closes (EIO) when None."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (until is None or until not in out):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def test_interactive_without_tty_passes_stdin(md: Minidock) -> None:
    proc = md("run", "-i", "--rm", "busybox", "sh", "-c", "tr a-z A-Z", input="hello\n")
    assert proc.stdout == "HELLO\n"


def test_create_then_start(md: Minidock) -> None:
    cid = md("create", "--name", "later", "busybox", "sh", "-c", "echo ran").stdout.strip()
    assert md.inspect("later")["State"]["Status"] == "created"
    md("start", "later")
    assert md("wait", cid).stdout.strip() == "0"
    assert md("logs", "later").stdout == "ran\n"


def test_the_runtime_alone_follows_the_oci_lifecycle(md: Minidock, tmp_path) -> None:  # noqa: ANN001
    """`minidock runtime` runs a bundle by itself, as runc does: create → start → kill → delete."""
    md("create", "--name", "bundle-src", "--network", "none", "busybox", "sleep", "60")
    engine = md.engine
    c = engine.find("bundle-src")
    engine._prepare(c)  # mounts the rootfs and writes config.json, like `start` would
    state_dir = str(tmp_path / "rt")
    rt = [sys.executable, "-m", "minidock", "runtime", "--state-dir", state_dir]
    env = md.env
    subprocess.run(
        [*rt, "create", "--bundle", c.bundle, "oci1"],
        check=True,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        state = json.loads(
            subprocess.run([*rt, "state", "oci1"], check=True, env=env, capture_output=True).stdout
        )
        assert state["status"] == "created" and state["pid"] > 0
        subprocess.run([*rt, "start", "oci1"], check=True, env=env)
        state = json.loads(
            subprocess.run([*rt, "state", "oci1"], check=True, env=env, capture_output=True).stdout
        )
        assert state["status"] == "running"
        with open(f"/proc/{state['pid']}/cmdline") as f:
            assert f.read().split("\0")[0] == "sleep"
        subprocess.run([*rt, "kill", "oci1", "KILL"], check=True, env=env)
        assert wait_for(
            lambda: (
                json.loads(
                    subprocess.run([*rt, "state", "oci1"], env=env, capture_output=True).stdout
                )["status"]
                == "stopped"
            )
        )
    finally:
        subprocess.run([*rt, "delete", "--force", "oci1"], env=env, check=False)
        c.unmount_rootfs()
    assert not os.path.exists(os.path.join(state_dir, "oci1"))
