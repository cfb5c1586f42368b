"""Restart policies, carried out by each container's monitor with Docker's back-off, and the
boot-time recovery (``start --boot``). The events journal is the witness of what happened
and when."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil

from minidock.logs import parse_timestamp
from tests.conftest import Minidock, wait_for


def _events(md: Minidock, name: str) -> list[dict]:
    out = md("events", "--since", "1h", "--until", "0s", "--format", "json",
             "--filter", f"container={name}").stdout  # fmt: skip
    return [json.loads(line) for line in out.splitlines()]


def _actions(md: Minidock, name: str) -> list[str]:
    return [e["Action"] for e in _events(md, name)]


def _state(md: Minidock, name: str) -> dict:
    return md.inspect(name)["State"] | {"RestartCount": md.inspect(name)["RestartCount"]}


def _state_file(md: Minidock, name: str) -> dict:
    """The record state.json holds, including what inspect doesn't show (MonitorPid)."""
    with open(os.path.join(md.root, "containers", md.inspect(name)["Id"], "state.json")) as f:
        return json.load(f)


def _monitor_pid(md: Minidock, name: str) -> int:
    return _state_file(md, name)["MonitorPid"]


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (an exited process waiting to be reaped does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_on_failure_restarts_exactly_n_times_with_growing_delays(md: Minidock) -> None:
    md("run", "-d", "--network", "none", "--name", "flaky", "--restart", "on-failure:3",
       "busybox", "sh", "-c", "exit 3")  # fmt: skip
    assert wait_for(lambda: _state(md, "flaky")["Status"] == "exited"
                    and _state(md, "flaky")["RestartCount"] == 3, timeout=30)  # fmt: skip
    time.sleep(0.5)  # no fourth start may follow
    events = _events(md, "flaky")
    assert [e["Action"] for e in events] == ["create"] + ["start", "die", "restart"] * 3 + [
        "start", "die"]  # fmt: skip
    assert all(e["Actor"]["Attributes"]["exitCode"] == "3" for e in events if e["Action"] == "die")
    times = [(e["Action"], e["timeNano"] / 1e9) for e in events]
    gaps = [later[1] - t for (a, t), later in zip(times, times[1:], strict=False) if a == "die"]
    # Docker's back-off: 100 ms, then 200 and 400. Each gap is the delay plus the time our
    # restart stage takes to start (about the same each time), so it grows with the delay.
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4, gaps
    assert gaps[2] - gaps[0] >= 0.15, gaps
    assert md.inspect("flaky")["State"]["ExitCode"] == 3


def test_on_failure_leaves_a_clean_exit_alone(md: Minidock) -> None:
    md("run", "-d", "--network", "none", "--name", "fine", "--restart", "on-failure",
       "busybox", "true")  # fmt: skip
    assert wait_for(lambda: _state(md, "fine")["Status"] == "exited", timeout=20)
    time.sleep(0.5)
    assert _state(md, "fine")["RestartCount"] == 0
    assert _actions(md, "fine") == ["create", "start", "die"]


def test_always_restarts_after_a_crash_but_not_after_stop(md: Minidock) -> None:
    md("run", "-d", "--network", "none", "--name", "svc", "--restart", "always",
       "busybox", "sleep", "300")  # fmt: skip
    first = md.pid("svc")
    os.kill(first, signal.SIGKILL)  # a crash: PID 1 dies without anyone asking
    assert wait_for(lambda: _state(md, "svc")["Status"] == "running"
                    and md.pid("svc") not in (0, first), timeout=20)  # fmt: skip
    state = _state(md, "svc")
    assert state["RestartCount"] == 1
    assert _actions(md, "svc")[-2:] == ["restart", "start"]
    monitor = _monitor_pid(md, "svc")
    md("stop", "-t", "1", "svc")
    time.sleep(1.0)  # well past the back-off: a restart would have happened
    state = _state(md, "svc")
    assert state["Status"] == "exited" and state["RestartCount"] == 1
    assert _actions(md, "svc")[-3:] == ["kill", "die", "stop"]
    assert wait_for(lambda: not _alive(monitor)), "the monitor must end with the container"


def test_stop_during_the_back_off_cancels_the_restart(md: Minidock) -> None:
    md("run", "-d", "--network", "none", "--name", "loop", "--restart", "always",
       "busybox", "sh", "-c", "exit 1")  # fmt: skip
    assert wait_for(lambda: _state(md, "loop")["RestartCount"] >= 3, timeout=30)
    md("stop", "loop")
    state = _state(md, "loop")
    assert state["Status"] == "exited"
    count = state["RestartCount"]
    time.sleep(2.0)  # the back-off is at most 0.8 s by now
    assert _state(md, "loop")["RestartCount"] == count
    assert _state(md, "loop")["Status"] == "exited"
    md("rm", "loop")


def test_rm_force_of_an_always_container_leaves_no_monitor(md: Minidock) -> None:
    md("run", "-d", "--network", "none", "--name", "gone", "--restart", "always",
       "busybox", "sleep", "300")  # fmt: skip
    cid = md.inspect("gone")["Id"]
    monitor = _monitor_pid(md, "gone")
    md("rm", "-f", "gone")
    assert wait_for(lambda: not _alive(monitor), timeout=10)
    assert not os.path.exists(os.path.join(md.root, "containers", cid))
    assert _actions(md, cid[:12])[-1] == "destroy"


def test_attached_run_returns_and_the_policy_restarts_it_in_the_background(md: Minidock) -> None:
    proc = md("run", "--network", "none", "--name", "fg", "--restart", "on-failure:1",
              "busybox", "sh", "-c", "echo once; exit 4", check=False)  # fmt: skip
    assert proc.returncode == 4 and proc.stdout == "once\n"
    assert wait_for(lambda: _state(md, "fg")["RestartCount"] == 1
                    and _state(md, "fg")["Status"] == "exited", timeout=20)  # fmt: skip
    assert md("logs", "fg").stdout == "once\nonce\n"


def test_restart_policy_and_rm_conflict(md: Minidock) -> None:
    proc = md("run", "--rm", "--restart", "always", "busybox", "true", check=False)
    assert proc.returncode == 125 and "--restart and --rm" in proc.stderr
    proc = md("run", "--restart", "sometimes", "busybox", "true", check=False)
    assert proc.returncode == 125 and "invalid restart policy" in proc.stderr
    assert md("ps", "-aq").stdout == ""


def _simulate_reboot(md: Minidock, name: str) -> None:
    """What a reboot does to a running container: its monitor and processes vanish
    without recording anything (SIGKILL to the PIDs our test started)."""
    state = _state_file(md, name)
    os.kill(state["MonitorPid"], signal.SIGKILL)
    os.kill(state["Pid"], signal.SIGKILL)
    assert wait_for(lambda: not _alive(state["Pid"]) and not _alive(state["MonitorPid"]))


def test_start_boot_brings_back_what_the_policies_say(md: Minidock) -> None:
    for name, policy in [("a-stopped", "always"), ("u-stopped", "unless-stopped"),
                         ("u-running", "unless-stopped"), ("n-running", "no")]:  # fmt: skip
        md("run", "-d", "--network", "none", "--name", name, "--restart", policy,
           "busybox", "sleep", "300")  # fmt: skip
    md("stop", "-t", "0", "a-stopped", "u-stopped")
    for name in ("u-running", "n-running"):
        _simulate_reboot(md, name)
    started = md("start", "--boot").stdout.split()
    assert sorted(started) == ["a-stopped", "u-running"]
    status = {n: md.inspect(n)["State"]["Status"]
              for n in ("a-stopped", "u-stopped", "u-running", "n-running")}  # fmt: skip
    assert status == {"a-stopped": "running", "u-stopped": "exited",
                      "u-running": "running", "n-running": "exited"}  # fmt: skip
    assert md.inspect("n-running")["State"]["Error"] == "monitor died; exit status unknown"
    started_at = parse_timestamp(md.inspect("u-running")["State"]["StartedAt"])
    assert time.time_ns() - started_at < 60e9
    usage = md("start", "--boot", "u-running", check=False)
    assert usage.returncode != 0 and "--boot" in usage.stderr
