"""Healthchecks on real containers: the checks really run inside them (their files, their
processes), the status follows Docker's rules, the events are journaled, and
``--health-on-failure`` really kills, stops or restarts the container."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from minidock.logs import parse_timestamp
from tests.conftest import Minidock, wait_for
from tests.integration.test_restart import _actions, _events

MS = 1_000_000
S = 1000 * MS
#: A PID 1 that a normal stop ends at once (busybox sleep as PID 1 would ignore SIGTERM).
STOPPABLE = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]
#: The journal of a container stopped because it turned unhealthy: the stop's SIGTERM
#: (``kill``), the exit the monitor saw (``die``), then the stop command's own event.
STOPPED_WHEN_UNHEALTHY = ["create", "start", "health_status: unhealthy", "kill", "die", "stop"]


def until(get: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 30) -> Any:
    """Poll ``get()`` until ``ok`` says yes; return that value (fail with the last one)."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting after {timeout} s; last value: {value}")
        time.sleep(0.02)


def _state(md: Minidock, name: str) -> dict:
    return md.inspect(name)["State"]


def _health(md: Minidock, name: str) -> dict:
    return _state(md, name)["Health"]


def _status_is(status: str) -> Callable[[dict], bool]:
    return lambda health: health["Status"] == status


def _health_events(md: Minidock, name: str) -> list[str]:
    return [a for a in _actions(md, name) if a.startswith("health_status")]


def _relay_args(md: Minidock, name: str) -> list[str]:
    """The command line of the container's monitor, now the relay loop: ROOT ID PID LOG
    MAX_SIZE MAX_FILES HEALTH_INTERVAL FD=STREAM…"""
    with open(f"/proc/{md.pid(name)}/status") as f:
        monitor = next(line.split()[1] for line in f if line.startswith("PPid:"))
    with open(f"/proc/{monitor}/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0")[:-1]]
    return argv[argv.index("minidock.relay") + 1 :]


def _ns(timestamp: str) -> int:
    return parse_timestamp(timestamp)


def test_before_the_first_check_the_status_is_starting(md: Minidock) -> None:
    md("run", "-d", "--name", "fresh", "--network", "none", "--health-cmd", "true",
       "--health-interval", "1h", "busybox", "sleep", "60")  # fmt: skip
    assert _health(md, "fresh") == {"Status": "starting", "FailingStreak": 0, "Log": []}
    assert md("ps", "--format", "{{.Status}}").stdout.endswith(" (health: starting)\n")
    assert md.inspect("fresh")["Config"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "true"], "Interval": 3600 * S}  # fmt: skip
    assert _relay_args(md, "fresh")[6] == str(3600 * S)  # the relay keeps the clock


def test_a_passing_check_makes_it_healthy(md: Minidock) -> None:
    # PID 1 closes its stdout and stderr at once: the monitor must go on checking anyway.
    md("run", "-d", "--name", "fine", "--network", "none", "--health-interval", "200ms",
       "--health-cmd", "echo fine; echo also >&2; hostname", "-h", "inside",
       "busybox", "sh", "-c", "exec > /dev/null 2>&1; exec sleep 60")  # fmt: skip
    health = until(lambda: _health(md, "fine"), _status_is("healthy"))
    assert health["FailingStreak"] == 0
    first = health["Log"][0]
    assert first["ExitCode"] == 0
    assert first["Output"] == "fine\nalso\ninside\n"  # stdout and stderr, in the container
    started = _ns(_state(md, "fine")["StartedAt"])
    assert _ns(first["Start"]) - started >= 200 * MS  # the first check waits one interval
    assert _ns(first["Start"]) <= _ns(first["End"])
    assert re.fullmatch(r"Up .+ \(healthy\)\n", md("ps", "--format", "{{.Status}}").stdout)
    assert _actions(md, "fine") == ["create", "start", "health_status: healthy"]


#: A check that fails, numbering its failures: "fail 1", "fail 2"…
COUNTING_FAILURE = (
    'n=$(( $(cat /n 2>/dev/null || echo 0) + 1 )); echo $n > /n; echo "fail $n"; false'
)


def test_unhealthy_after_exactly_retries_failures(md: Minidock) -> None:
    md("run", "-d", "--name", "sick", "--network", "none", "--health-cmd", COUNTING_FAILURE,
       "--health-interval", "300ms", "--health-retries", "3", "busybox", "sleep", "60")  # fmt: skip
    seen: list[tuple[int, str]] = []

    def look() -> dict:
        health = _health(md, "sick")
        seen.append((health["FailingStreak"], health["Status"]))
        return health

    health = until(look, _status_is("unhealthy"))
    assert (2, "starting") in seen  # two failures were not enough…
    assert all(status == "starting" for streak, status in seen if streak < 3)
    streak = health["FailingStreak"]  # …the third was (a fourth may have followed by now)
    assert streak >= 3
    outputs = [r["Output"] for r in health["Log"]]
    assert outputs == [f"fail {n}\n" for n in range(streak - len(outputs) + 1, streak + 1)]
    assert {r["ExitCode"] for r in health["Log"]} == {1}
    assert _health_events(md, "sick") == ["health_status: unhealthy"]
    assert md("ps", "--format", "{{.Status}}").stdout.endswith(" (unhealthy)\n")


def test_a_missing_file_makes_it_unhealthy_until_exec_creates_it(md: Minidock) -> None:
    md("run", "-d", "--name", "flaky", "--network", "none", "--health-cmd", "cat /ready",
       "--health-interval", "200ms", "--health-retries", "2", "busybox", "sleep", "60")  # fmt: skip
    health = until(lambda: _health(md, "flaky"), _status_is("unhealthy"))
    assert health["Log"][-1]["ExitCode"] == 1
    assert "/ready" in health["Log"][-1]["Output"]  # cat's complaint
    md("exec", "flaky", "sh", "-c", "echo ready > /ready")
    health = until(lambda: _health(md, "flaky"), _status_is("healthy"))
    assert health["FailingStreak"] == 0
    assert health["Log"][-1]["ExitCode"] == 0 and health["Log"][-1]["Output"] == "ready\n"
    assert _health_events(md, "flaky") == ["health_status: unhealthy", "health_status: healthy"]


def _processes(md: Minidock, name: str) -> list[bytes]:
    """The command lines of every live process in the container's cgroup."""
    lines = []
    for pid in md.engine.top(name):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                lines.append(f.read())
        except FileNotFoundError:
            continue
    return lines


def test_a_check_past_its_timeout_is_killed_and_fails(md: Minidock) -> None:
    # The first check hangs (and starts a second process); later ones pass at once.
    check = "test -e /once && exit 0; touch /once; echo begun; sleep 30 & sleep 31"
    md("run", "-d", "--name", "hang", "--network", "none", "--health-cmd", check,
       "--health-timeout", "500ms", "--health-interval", "200ms", "--health-retries", "1",
       "busybox", "sleep", "60")  # fmt: skip
    health = until(lambda: _health(md, "hang"), _status_is("healthy"))
    timed_out = health["Log"][0]
    assert timed_out["ExitCode"] == -1
    assert timed_out["Output"] == "Health check exceeded timeout (500ms)"
    took = (_ns(timed_out["End"]) - _ns(timed_out["Start"])) / S
    assert 0.5 <= took < 10
    assert _health_events(md, "hang") == ["health_status: unhealthy", "health_status: healthy"]
    # the check and what it started are gone; the container's PID 1 is not
    assert wait_for(lambda: not any(p.startswith(b"sleep\x003") for p in _processes(md, "hang")))
    assert _processes(md, "hang") == [b"sleep\x0060\x00"]


def test_failures_in_the_start_period_do_not_count(md: Minidock) -> None:
    md("run", "-d", "--name", "warm", "--network", "none", "--health-cmd", "exit 1",
       "--health-interval", "200ms", "--health-start-period", "3s", "--health-retries", "1",
       "busybox", "sleep", "60")  # fmt: skip
    started = _ns(_state(md, "warm")["StartedAt"])
    early = until(lambda: _health(md, "warm"), lambda h: len(h["Log"]) >= 2)
    assert all(_ns(r["Start"]) - started < 3 * S for r in early["Log"])
    assert early["Status"] == "starting" and early["FailingStreak"] == 0
    late = until(lambda: _health(md, "warm"), _status_is("unhealthy"))
    counted = [r for r in late["Log"] if _ns(r["Start"]) - started >= 3 * S]
    assert counted and late["FailingStreak"] == len(counted)
    assert len(counted) < len(late["Log"])  # the failures before them did not count


def _build(md: Minidock, context: Path, dockerfile: str, tag: str) -> None:
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile)
    md("build", "-t", tag, str(context))


def test_the_images_healthcheck_flags_that_override_it_and_no_healthcheck(
    md: Minidock, tmp_path: Path
) -> None:
    _build(md, tmp_path / "ctx", "FROM busybox\n"
           'HEALTHCHECK --interval=200ms --retries=2 CMD ["cat", "/ready"]\n'
           'CMD ["sleep", "60"]\n', "checked")  # fmt: skip
    md("run", "-d", "--name", "img", "--network", "none", "checked")
    image_check = {"Test": ["CMD", "cat", "/ready"], "Interval": 200 * MS, "Retries": 2}
    assert md.inspect("img")["Config"]["Healthcheck"] == image_check
    health = until(lambda: _health(md, "img"), _status_is("unhealthy"))
    assert health["FailingStreak"] >= 2
    md("exec", "img", "touch", "/ready")
    until(lambda: _health(md, "img"), _status_is("healthy"))

    md("create", "--name", "tuned", "--health-retries", "5", "--health-timeout", "2s", "checked")
    assert md.inspect("tuned")["Config"]["Healthcheck"] == {
        **image_check, "Retries": 5, "Timeout": 2 * S}  # fmt: skip

    md("run", "-d", "--name", "off", "--network", "none", "--no-healthcheck", "checked")
    info = md.inspect("off")
    assert info["Config"]["Healthcheck"]["Test"] == ["NONE"]
    assert "Health" not in info["State"]
    assert _relay_args(md, "off")[6] == "0"  # no clock, so no check ever starts
    rows = md("ps", "--format", "{{.Names}} {{.Status}}").stdout.splitlines()
    assert [r for r in rows if re.fullmatch(r"off Up [^()]+", r)]  # no "(health…)"


def test_a_check_that_cannot_start_fails_with_minus_one(md: Minidock, tmp_path: Path) -> None:
    _build(md, tmp_path / "ctx", "FROM busybox\n"
           'HEALTHCHECK --interval=200ms --retries=1 CMD ["nosuchcheck"]\n', "broken")  # fmt: skip
    md("run", "-d", "--name", "broken", "--network", "none", "broken", "sleep", "60")
    health = until(lambda: _health(md, "broken"), _status_is("unhealthy"))
    assert health["Log"][0]["ExitCode"] == -1
    assert health["Log"][0]["Output"] == 'exec: "nosuchcheck": executable file not found in $PATH'


def test_on_failure_restart_restarts_it(md: Minidock) -> None:
    md("run", "-d", "--name", "phoenix", "--network", "none", "--health-cmd", "test -e /fixed",
       "--health-interval", "200ms", "--health-retries", "1", "--health-on-failure", "restart",
       "busybox", *STOPPABLE)  # fmt: skip
    first = _state(md, "phoenix")
    again = until(
        lambda: _state(md, "phoenix"),
        lambda st: st["Status"] == "running" and st["StartedAt"] != first["StartedAt"],
    )
    assert again["Pid"] != first["Pid"]
    assert _ns(again["StartedAt"]) > _ns(first["StartedAt"])
    assert again["Health"]["Status"] in ("starting", "unhealthy")  # reset by the start
    # End the loop: the file survives restarts (the container's own writable layer).
    touch = ("exec", "phoenix", "touch", "/fixed")  # fails while a restart is under way
    until(lambda: md(*touch, check=False).returncode, lambda code: code == 0)
    until(lambda: _health(md, "phoenix"), _status_is("healthy"))
    actions = _actions(md, "phoenix")
    first_restart = actions.index("restart")
    assert actions[: first_restart + 1] == [*STOPPED_WHEN_UNHEALTHY, "start", "restart"]
    assert actions[-1] == "health_status: healthy"


def test_on_failure_kill_leaves_it_to_the_restart_policy(md: Minidock) -> None:
    md("run", "-d", "--name", "doomed", "--network", "none", "--health-cmd", "exit 1",
       "--health-interval", "200ms", "--health-retries", "1", "--health-on-failure", "kill",
       "--restart", "on-failure:1", "busybox", "sleep", "60")  # fmt: skip
    # killed, restarted once by the policy, killed again, and then left exited
    final = until(lambda: md.inspect("doomed"), lambda i: i["State"]["Status"] == "exited")
    assert final["State"]["ExitCode"] == 137 and final["RestartCount"] == 1
    actions = _actions(md, "doomed")
    assert actions.count("health_status: unhealthy") == 2
    assert actions.count("die") == 2 and actions.count("start") == 2
    kills = [e["Actor"]["Attributes"] for e in _events(md, "doomed") if e["Action"] == "kill"]
    assert [k["signal"] for k in kills] == ["9", "9"]


def test_on_failure_stop_is_a_stop_the_policy_respects(md: Minidock) -> None:
    md("run", "-d", "--name", "halted", "--network", "none", "--health-cmd", "exit 1",
       "--health-interval", "200ms", "--health-retries", "1", "--health-on-failure", "stop",
       "--restart", "always", "busybox", *STOPPABLE)  # fmt: skip
    final = until(lambda: md.inspect("halted"), lambda i: i["State"]["Status"] == "exited")
    assert final["State"]["ExitCode"] == 0  # it got SIGTERM and exited by its trap
    assert final["RestartCount"] == 0  # "always", yet not restarted: a stop is a stop
    assert _actions(md, "halted") == STOPPED_WHEN_UNHEALTHY


def test_checks_run_for_an_attached_run_too(md: Minidock) -> None:
    # PID 1 waits for the second check: by then the first one's result is recorded.
    wait = "until [ -f /checks ] && [ $(wc -l < /checks) -ge 2 ]; do sleep 0.05; done; echo done"
    proc = md("run", "--name", "fg", "--network", "none", "--health-cmd", "echo x >> /checks",
              "--health-interval", "100ms", "busybox", "sh", "-c", wait, timeout=60)  # fmt: skip
    assert proc.stdout == "done\n"
    health = _health(md, "fg")
    assert health["Status"] == "healthy" and health["Log"][0]["ExitCode"] == 0
