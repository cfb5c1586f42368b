"""Healthchecks: a command run inside the container now and then, whose exit status says
whether the program still works (``HEALTHCHECK`` in a Dockerfile, ``--health-cmd`` …).

A running process is not necessarily a working one: a web server can be up and
deadlocked. So the image (or ``run``) names a check — ``["CMD", "wget", "-q", "-O-",
"localhost"]``, or ``["CMD-SHELL", "…"]`` for ``/bin/sh -c …`` — that runs *inside* the
container like ``minidock exec`` does. Docker's rules (moby ``daemon/health.go``), which
minidock follows:

* the first check runs ``Interval`` after the start, each next one ``Interval`` after the
  previous one *finished* (30 s by default); never two at once;
* exit 0 is a success: the status becomes ``healthy`` and the failing streak 0. Anything
  else — another exit code, a program that can't be started, a check that outlives its
  ``Timeout`` (30 s; it is killed and recorded with exit code -1) — is a failure;
* ``Retries`` failures in a row (3) make the container ``unhealthy``; until the first
  success the status is ``starting``, and failures during the ``StartPeriod`` (0) after
  the start don't count;
* ``State.Health`` keeps the status, the streak and the last 5 results (``Log``), each
  with at most 4096 bytes of output (stdout and stderr together); each change of status
  is an event, ``health_status: healthy`` or ``health_status: unhealthy``.

``--health-on-failure`` (Podman's flag) adds what to do when the container is unhealthy:
``none``, ``kill`` (SIGKILL; a restart policy then decides, as after a crash), ``stop`` (a
normal stop) or ``restart`` (stop, then start, like ``minidock restart``).

Who does the work: the container's monitor spends its life in a lean loop (``relay.py``)
whose memory is measured, so it keeps only the clock (:class:`~minidock.relay.HealthTimer`).
When a check is due it starts ``python -m minidock.health ROOT ID`` — :func:`main`
here, a short-lived process of its own — and waits for it to exit before counting the
next interval. That process enters the container (``runtime/exec.py``), runs the check
under its timeout, records the result in ``state.json`` and applies the on-failure action.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from typing import Any

from minidock import runtime
from minidock.container import Container
from minidock.errors import InvalidArgument, MinidockError
from minidock.logfile import format_timestamp
from minidock.logs import parse_timestamp
from minidock.runtime.exec import exec_process, process_of
from minidock.runtime.reaper import exit_status
from minidock.state import Status

_MS = 1_000_000
_S = 1000 * _MS
#: Docker's defaults (moby daemon/health.go) and limits (api/types/container MinimumDuration).
DEFAULT_INTERVAL = 30 * _S
DEFAULT_TIMEOUT = 30 * _S
DEFAULT_START_PERIOD = 0
DEFAULT_RETRIES = 3
MIN_DURATION = 1 * _MS
MAX_LOG_ENTRIES = 5
MAX_OUTPUT = 4096  # bytes of a check's output that are kept

STARTING, HEALTHY, UNHEALTHY = "starting", "healthy", "unhealthy"
ON_FAILURE_ACTIONS = ("none", "kill", "restart", "stop")
SHELL = ["/bin/sh", "-c"]  # what runs a CMD-SHELL check (Docker's default shell on Linux)
#: Docker's names for the config's durations, as the --health-* flags spell them.
_DURATION_FLAGS = {"Interval": "interval", "Timeout": "timeout", "StartPeriod": "start-period"}


# --- the configuration --------------------------------------------------------------------------
def user_config(command: str, *, interval: int = 0, timeout: int = 0, start_period: int = 0,
                retries: int = 0, disabled: bool = False) -> dict[str, Any] | None:  # fmt: skip
    """``run --health-*`` as Docker's ``Config.Healthcheck`` (durations in nanoseconds, 0 or
    "" for a flag not given), before the image's ``HEALTHCHECK`` is merged in (:func:`merge`).
    None when no flag was given. Docker's CLI and daemon checks, with their messages."""
    given = {"Interval": interval, "Timeout": timeout, "StartPeriod": start_period}
    if disabled:
        if command or retries or any(given.values()):
            raise InvalidArgument("--no-healthcheck conflicts with --health-* options")
        return {"Test": ["NONE"]}
    if not command and not retries and not any(given.values()):
        return None
    for key, value in given.items():
        if value < 0:
            raise InvalidArgument(f"--health-{_DURATION_FLAGS[key]} cannot be negative")
        if 0 < value < MIN_DURATION:
            minimum = format_duration(MIN_DURATION)
            raise InvalidArgument(f"{key} in Healthcheck cannot be less than {minimum}")
    if retries < 0:
        raise InvalidArgument("--health-retries cannot be negative")
    config: dict[str, Any] = {key: value for key, value in given.items() if value}
    if command:
        config["Test"] = ["CMD-SHELL", command]
    if retries:
        config["Retries"] = retries
    return config


def on_failure_action(text: str) -> str:
    """``--health-on-failure``: one of :data:`ON_FAILURE_ACTIONS`."""
    if text not in ON_FAILURE_ACTIONS:
        raise InvalidArgument(
            f'invalid value "{text}" for --health-on-failure: use none, kill, restart or stop'
        )
    return text


def merge(user: dict[str, Any] | None, image: dict[str, Any] | None) -> dict[str, Any] | None:
    """The container's healthcheck: each field the user set, else the image's (moby
    ``daemon/commit.go`` merge). ``--health-interval 5s`` alone keeps the image's test."""
    if user is None or image is None:
        return user if user is not None else image
    merged = dict(image)
    merged.update({key: value for key, value in user.items() if value})
    return merged


def command(config: dict[str, Any] | None) -> list[str] | None:
    """The program a check runs, or None if the container has no (active) healthcheck:
    none configured, ``["NONE"]``, or a test of a kind Docker doesn't know."""
    test = (config or {}).get("Test") or []
    if test[:1] == ["CMD"]:
        return test[1:]
    if test[:1] == ["CMD-SHELL"]:
        return [*SHELL, *test[1:]]
    return None


def interval_ns(config: dict[str, Any] | None) -> int:
    """How long the monitor waits before each check; 0 if the container has none."""
    if command(config) is None:
        return 0
    return (config or {}).get("Interval") or DEFAULT_INTERVAL


def format_duration(ns: int) -> str:
    """A duration as Go prints it (``30s``, ``1m30s``, ``1.5s``, ``200ms``, ``1h0m0s``): the
    words of Docker's ``Health check exceeded timeout (…)``."""
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns < _S:
        for unit, size in (("ms", _MS), ("µs", 1000), ("ns", 1)):
            if ns >= size:
                return f"{sign}{_decimal(ns, size)}{unit}"
    hours, rest = divmod(ns, 3600 * _S)
    minutes, rest = divmod(rest, 60 * _S)
    text = f"{_decimal(rest, _S)}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def _decimal(value: int, unit: int) -> str:
    """``value / unit`` with as many decimals as needed and no trailing zeros."""
    whole, fraction = divmod(value, unit)
    digits = str(fraction).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


# --- the state ----------------------------------------------------------------------------------
def state_at_start(config: dict[str, Any] | None, previous: dict[str, Any] | None) -> dict:
    """What a (re)start writes into ``state.json``: the status goes back to ``starting`` and
    the streak to 0, the log of earlier results stays (moby ``initHealthMonitor``). Nothing
    for a container without a healthcheck."""
    if command(config) is None:
        return {}
    return {"Health": {"Status": STARTING, "FailingStreak": 0,
                       "Log": (previous or {}).get("Log", [])}}  # fmt: skip


def record_result(health: dict[str, Any], result: dict[str, Any], retries: int,
                  in_start_period: bool) -> dict[str, Any]:  # fmt: skip
    """``State.Health`` after one more check's ``result`` (``{Start, End, ExitCode, Output}``):
    Docker's ``handleProbeResult``. ``in_start_period``: the check began less than
    StartPeriod after the container started, so a failure doesn't count while it is still
    ``starting`` (a success ends the start period at once). ``retries`` 0 means 3."""
    status, streak = health["Status"], health["FailingStreak"]
    if result["ExitCode"] == 0:
        status, streak = HEALTHY, 0
    elif not (status == STARTING and in_start_period):
        streak += 1
        if streak >= (retries if retries > 0 else DEFAULT_RETRIES):
            status = UNHEALTHY
    log = [*health["Log"], result][-MAX_LOG_ENTRIES:]
    return {"Status": status, "FailingStreak": streak, "Log": log}


def describe(health: dict[str, Any]) -> str:
    """The health part of ``ps``'s STATUS, as Docker writes it: ``health: starting``,
    ``healthy`` or ``unhealthy``."""
    return f"health: {STARTING}" if health["Status"] == STARTING else health["Status"]


# --- the checker process ------------------------------------------------------------------------
def run_check(c: Container) -> None:
    """One check of a running container, start to end: run the command inside it, record
    the result, emit an event if the status changed, and act on ``unhealthy``.

    A result is only recorded if the container still runs the same PID 1 as when the
    check began: a check that ends because the container was stopped, paused or
    restarted meanwhile says nothing about the container as it is now."""
    record, before = c.record(), c.state()
    config = record["Config"].get("Healthcheck") or {}
    argv = command(config)
    if argv is None or before["Status"] != Status.RUNNING:
        return  # Docker doesn't check a paused container either
    start_ns = time.time_ns()
    exit_code, output = _probe(c, argv, config.get("Timeout") or DEFAULT_TIMEOUT)
    result = {"Start": format_timestamp(start_ns), "End": format_timestamp(time.time_ns()),
              "ExitCode": exit_code, "Output": output}  # fmt: skip
    start_period = config.get("StartPeriod") or DEFAULT_START_PERIOD
    in_start_period = start_ns - parse_timestamp(before["StartedAt"]) < start_period
    statuses: list[str] = []  # the status before and after, if the result was recorded

    def add_result(state: dict[str, Any]) -> dict[str, Any]:
        if state["Status"] != Status.RUNNING or state["Pid"] != before["Pid"]:
            return {}
        health = record_result(state["Health"], result, config.get("Retries", 0),
                               in_start_period)  # fmt: skip
        statuses.extend((state["Health"]["Status"], health["Status"]))
        return {"Health": health}

    c.change_state(add_result)
    if not statuses:
        return
    old, new = statuses
    if new != old:
        c.emit(f"health_status: {new}")
    if new == UNHEALTHY:
        _on_failure(c, record["Config"].get("HealthcheckOnFailureAction") or "none")


def _probe(c: Container, argv: list[str], timeout_ns: int) -> tuple[int, str]:
    """Run ``argv`` in the container as ``minidock exec`` would (the container's user,
    environment, working directory, capabilities and seccomp filter), stdout and stderr
    into one pipe. Returns its exit code and output; -1 and why if it could not be started
    or ran past ``timeout_ns`` (then it is killed with everything it started)."""
    read_end, write_end = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        helper = exec_process(c.runtime_root, c.id, process_of(c.bundle, argv),
                              stdio=(null, write_end, write_end))  # fmt: skip
    except MinidockError as exc:
        os.close(read_end)
        return -1, str(exc)
    finally:
        os.close(null)
        os.close(write_end)
    output = _Output()
    deadline = time.monotonic() + timeout_ns / 1e9
    pidfd = os.pidfd_open(helper)
    try:
        while True:
            left = deadline - time.monotonic()
            ready = select.select([read_end, pidfd], [], [], left)[0] if left > 0 else []
            if not ready:
                _kill_tree(helper)
                os.waitpid(helper, 0)
                return -1, f"Health check exceeded timeout ({format_duration(timeout_ns)})"
            if read_end in ready:
                output.read_from(read_end)
            if pidfd in ready:
                _, status = os.waitpid(helper, 0)
                # What it wrote just before exiting. A process it left in the background
                # may hold the pipe open (and go on writing) for good: take only what is
                # there now, up to the limit, rather than wait for end-of-file.
                while (not output.full() and select.select([read_end], [], [], 0)[0]
                       and output.read_from(read_end)):  # fmt: skip
                    pass
                return exit_status(status), output.text()
    finally:
        os.close(pidfd)
        os.close(read_end)


class _Output:
    """The first :data:`MAX_OUTPUT` bytes of a check's output; the rest is read and
    dropped (so the check never blocks on a full pipe), and shown as ``...`` (moby's
    ``limitedBuffer``)."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.truncated = False

    def read_from(self, fd: int) -> bool:
        """Read once; False at end-of-file."""
        data = os.read(fd, 65536)
        room = MAX_OUTPUT - len(self.kept)
        self.kept += data[:room]
        self.truncated = self.truncated or len(data) > room
        return bool(data)

    def full(self) -> bool:
        return len(self.kept) >= MAX_OUTPUT

    def text(self) -> str:
        return self.kept.decode(errors="replace") + ("..." if self.truncated else "")


def _kill_tree(pid: int) -> None:
    """SIGKILL every descendant of ``pid`` (the exec helper: its child is the check's
    program, inside the container, and that may have started more). The whole tree is
    listed first (``/proc/PID/task/TID/children``) and then killed, parents first — a
    killed parent's children would otherwise be re-parented to the container's PID 1 and
    escape. The helper itself then exits with the program's status (137)."""
    tree, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # it exited meanwhile
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    children = [int(p) for p in f.read().split()]
            except OSError:
                continue
            tree += children
            todo += children
    for child in tree:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            os.kill(child, signal.SIGKILL)


def _on_failure(c: Container, action: str) -> None:
    """``--health-on-failure``: what to do with an unhealthy container. ``kill`` is not a
    user's kill, so the restart policy still decides what follows (as after a crash);
    ``stop`` is a user's stop, so it doesn't."""
    if action == "none":
        return
    from minidock.engine import Engine  # which imports this module

    if action == "kill":
        c.emit("kill", signal=str(int(signal.SIGKILL)))
        runtime.kill(c.runtime_root, c.id, signal.SIGKILL)
        return
    # The monitor passed on its environment, which names the cgroup parent and port mode.
    engine = Engine(c.paths.root)
    if action == "stop":
        engine.stop(c)
    else:
        engine.restart(c.id)


def main(argv: list[str]) -> int:
    """``python -m minidock.health ROOT ID``: one check (started by the relay loop)."""
    from minidock import explain, store

    explain.from_environment()
    container = Container(store.Paths(argv[0]), argv[1])
    try:
        run_check(container)
    except FileNotFoundError:
        return 0  # the container was removed meanwhile: nothing to record
    except MinidockError as exc:  # e.g. the on-failure action found it stopped already
        print(f"minidock health {argv[1][:12]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
