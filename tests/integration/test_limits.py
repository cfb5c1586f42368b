"""Resource limits through the engine, read back from the kernel. These tests run on the
host's backend (cgroup v1 here) and again inside the pure cgroup v2 VM (`make test-v2`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import cgroups
from tests.conftest import Minidock, wait_for


def _cgroup_file(md: Minidock, name: str, v1: tuple[str, str], v2: str) -> str:
    """Read a limit file of the container's cgroup by the backend's own file name."""
    cid = md.inspect(name)["Id"]
    group = cgroups.open_cgroup(f"{md.cgroup_parent}/{cid}")
    paths = group.paths()
    path = f"{paths['']}/{v2}" if cgroups.backend_name() == "v2" else f"{paths[v1[0]]}/{v1[1]}"
    with open(path) as f:
        return f.read().strip()


def _assert_half_a_cpu(md: Minidock, name: str) -> None:
    """``--cpus 0.5`` as the kernel holds it: 50 ms of CPU time per 100 ms period."""
    if cgroups.backend_name() == "v2":
        assert _cgroup_file(md, name, ("", ""), "cpu.max") == "50000 100000"
    else:
        assert _cgroup_file(md, name, ("cpu", "cpu.cfs_quota_us"), "") == "50000"
        assert _cgroup_file(md, name, ("cpu", "cpu.cfs_period_us"), "") == "100000"


def test_memory_limit_oom_kills_with_137(md: Minidock) -> None:
    proc = md(
        "run",
        "--network",
        "none",
        "--name",
        "oom",
        "-m",
        "32m",
        "busybox",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=100M",
        "count=1",
        check=False,
    )
    assert proc.returncode == 137, proc.stderr
    state = md.inspect("oom")["State"]
    assert state["OOMKilled"] is True
    assert state["ExitCode"] == 137


def test_limits_are_written_to_the_cgroup(md: Minidock) -> None:
    md(
        "run",
        "--network",
        "none",
        "-d",
        "--name",
        "lim",
        "-m",
        "64m",
        "--cpus",
        "0.5",
        "--pids-limit",
        "64",
        "busybox",
        "sleep",
        "30",
    )
    assert _cgroup_file(md, "lim", ("memory", "memory.limit_in_bytes"), "memory.max") == str(
        64 << 20
    )
    assert _cgroup_file(md, "lim", ("pids", "pids.max"), "pids.max") == "64"
    _assert_half_a_cpu(md, "lim")


def test_cpus_throttle_a_busy_loop(md: Minidock) -> None:
    md(
        "run",
        "--network",
        "none",
        "-d",
        "--name",
        "busy",
        "--cpus",
        "0.2",
        "busybox",
        "sh",
        "-c",
        "while :; do :; done",
    )
    _, first = md.engine.stats("busy")
    start = time.monotonic()
    time.sleep(1.5)
    _, last = md.engine.stats("busy")
    elapsed_ns = (time.monotonic() - start) * 1e9
    share = (last.cpu_usage_ns - first.cpu_usage_ns) / elapsed_ns
    assert last.cpu_nr_throttled > first.cpu_nr_throttled
    assert 0.05 < share < 0.35, f"used {share:.2f} of a CPU with --cpus 0.2"


def test_pids_limit_contains_a_fork_bomb(md: Minidock) -> None:
    # The inner shell forks until the kernel refuses (EAGAIN), then gives up; the outer one
    # stays as PID 1 without needing another fork (exec).
    bomb = "sh -c 'for i in $(seq 200); do sleep 30 & done'; exec sleep 30"
    md(
        "run",
        "--network",
        "none",
        "-d",
        "--name",
        "bomb",
        "--pids-limit",
        "20",
        "busybox",
        "sh",
        "-c",
        bomb,
    )
    assert wait_for(lambda: "can't fork" in md("logs", "bomb").stderr, 10)
    pids = md.engine.stats("bomb")[1].pids_current
    assert 18 <= pids <= 20
    assert md.inspect("bomb")["State"]["Running"]
    md("rm", "-f", "bomb")


def test_rm_leaves_no_cgroup(md: Minidock) -> None:
    cid = md(
        "run", "--network", "none", "-d", "--name", "gone", "-m", "16m", "busybox", "sleep", "30"
    ).stdout.strip()
    group = cgroups.open_cgroup(f"{md.cgroup_parent}/{cid}")
    assert group.exists()
    md("rm", "-f", "gone")
    assert not group.exists()


def test_works_when_the_caller_sits_in_a_cgroup_with_processes(md: Minidock) -> None:
    """cgroup v2's "no internal processes" rule: controllers can't be enabled for the
    children of a cgroup that holds processes. minidock keeps its containers under its own
    parent at the root, so a caller inside such a cgroup (a systemd service, a CI job)
    still gets working limits."""
    caller = cgroups.create(f"{md.cgroup_parent}-caller", cgroups.Limits())
    try:
        script = (
            "cat /proc/self/cgroup; cat /sys/fs/cgroup/memory.max 2>/dev/null"
            " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
        )
        command = [sys.executable, "-m", "minidock", "run", "--rm", "--network=none", "-m", "48m",
                   "busybox", "sh", "-c", script]  # fmt: skip
        proc = subprocess.run(
            command, env=md.env, capture_output=True, text=True, timeout=60, cwd="/",
            preexec_fn=lambda: caller.add_process(os.getpid()),
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert md.cgroup_parent not in proc.stdout  # a cgroup namespace: it sees "/" only
        assert proc.stdout.split()[-1] == str(48 << 20)  # its own cgroup, mounted inside
    finally:
        caller.kill_all()
        caller.remove()


def test_pause_freezes_and_unpause_resumes(md: Minidock) -> None:
    md(
        "run",
        "--network",
        "none",
        "-d",
        "--name",
        "spin",
        "busybox",
        "sh",
        "-c",
        "while :; do :; done",
    )
    md("pause", "spin")
    assert md("ps", "--format", "{{.State}}").stdout.split() == ["paused"]
    _, before = md.engine.stats("spin")
    time.sleep(0.5)
    _, after = md.engine.stats("spin")
    assert after.cpu_usage_ns - before.cpu_usage_ns < 20_000_000, "a frozen loop used CPU"
    md("unpause", "spin")
    time.sleep(0.5)
    _, resumed = md.engine.stats("spin")
    assert resumed.cpu_usage_ns - after.cpu_usage_ns > 100_000_000
    assert md("unpause", "spin", check=False).returncode == 125  # not paused any more


def test_stop_and_rm_of_a_paused_container(md: Minidock) -> None:
    md("run", "--network", "none", "-d", "--name", "p1", "busybox", "sleep", "60")
    md("run", "--network", "none", "-d", "--name", "p2", "busybox", "sleep", "60")
    md("pause", "p1", "p2")
    md("stop", "-t", "1", "p1")
    assert md.inspect("p1")["State"]["Status"] == "exited"
    md("rm", "-f", "p2")
    assert md("ps", "-aq").stdout.split() == [md.inspect("p1")["Id"][:12]]


def test_update_changes_a_running_containers_cgroup(md: Minidock) -> None:
    md("run", "--network", "none", "-d", "--name", "upd", "-m", "32m", "--pids-limit", "20",
       "busybox", "sleep", "60")  # fmt: skip
    md("update", "-m", "64m", "--cpus", "0.5", "--pids-limit", "50", "upd")
    memory = _cgroup_file(md, "upd", ("memory", "memory.limit_in_bytes"), "memory.max")
    assert memory == str(64 << 20)
    assert _cgroup_file(md, "upd", ("pids", "pids.max"), "pids.max") == "50"
    _assert_half_a_cpu(md, "upd")
    host = md.inspect("upd")["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (64 << 20, 500_000_000, 50)
    # A limit below what the container uses is the kernel's to refuse or enforce; a bad
    # value is refused before anything is written.
    bad = md("update", "--memory-swap", "16m", "upd", check=False)
    assert bad.returncode == 125 and "memory" in bad.stderr.lower()
    assert md.inspect("upd")["HostConfig"]["MemorySwap"] == 2 * (64 << 20)


def test_update_of_a_stopped_container_applies_at_its_next_start(md: Minidock) -> None:
    md("create", "--network", "none", "--name", "later", "busybox", "sleep", "60")
    md("update", "--pids-limit", "33", "--restart", "on-failure:2", "later")
    md("start", "later")
    assert _cgroup_file(md, "later", ("pids", "pids.max"), "pids.max") == "33"
    policy = md.inspect("later")["HostConfig"]["RestartPolicy"]
    assert policy == {"Name": "on-failure", "MaximumRetryCount": 2}
    missing = md("update", "-m", "64m", "nosuchcontainer", check=False)
    assert missing.returncode == 125 and "No such container" in missing.stderr
