"""The per-container monitor: the container's parent for its whole life (conmon's role).

There is no daemon. ``minidock run -d`` and ``minidock start`` start one of these small
processes per container and return as soon as the container runs. The monitor:

* is a *child subreaper* (prctl PR_SET_CHILD_SUBREAPER), and calls the runtime's
  ``create`` and ``start`` itself, so the container's PID 1 is its child;
* holds the read ends of the container's stdout and stderr and writes every line to the
  json-file log (rotated by size);
* learns of PID 1's exit through a pidfd (pidfd_open(2)) and reaps it with waitpid(2);
* records the exit code (128+N for signal N), whether the OOM killer struck (the cgroup's
  ``oom_kill`` counter), and the finish time; then deletes the runtime state (and with it
  the cgroup), unmounts the root filesystem, and removes the container if ``--rm``.

``minidock run`` without ``-d`` runs the same code in the CLI process, attached to the
terminal. Detached, it lives in three stages of one process (one PID throughout):
``python -S -m minidock.monitor ROOT ID READY_FD`` creates and starts the container, then
execs the lean relay loop (``relay.py``) that copies output while the container runs,
which execs ``python -S -m minidock.monitor finish …`` to record the exit and clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass

import cgroups
from minidock import explain, health, restart, runtime, store, syscalls
from minidock.container import Container, now
from minidock.errors import MinidockError
from minidock.logfile import JsonFileWriter
from minidock.logs import parse_timestamp
from minidock.relay import HealthTimer, relay
from minidock.runtime.reaper import exit_status
from minidock.state import Operation, Status, require

#: Signals ``run`` (attached, no tty) passes on to the container, like docker's sig-proxy.
PROXIED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


@dataclass
class Attach:
    """The terminal of a foreground ``run``: where output is copied and input comes from."""

    stdout: int
    stderr: int
    stdin: int | None  # None unless -i


def _copy_window_size(source: int, target: int) -> None:
    try:
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        fcntl.ioctl(target, termios.TIOCSWINSZ, size)
    except OSError:
        pass


class Monitor:
    def __init__(self, container: Container, attach: Attach | None = None) -> None:
        self.container = container
        self.attach = attach
        self.pid = 0
        self.cgroup = ""

    def run(self, ready: Callable[[dict], None]) -> int:
        """Create, start and supervise the container until its PID 1 exits.

        ``ready`` is called once: with ``{"ok": True, …}`` when the program runs, or
        ``{"error": …, "exit_code": …}`` if it could not be started. Returns the exit code.
        """
        c = self.container
        record = c.record()
        spec = store.read_json(os.path.join(c.bundle, "config.json"))
        terminal = bool(spec["process"].get("terminal"))
        syscalls.prctl(
            syscalls.PR_SET_CHILD_SUBREAPER,
            1,
            reason="orphans of the container's creation are re-parented to us",
        )
        log_config = record["HostConfig"]["LogConfig"]["Config"]
        log = JsonFileWriter(c.log_path, int(log_config["max-size"]), int(log_config["max-file"]))
        interactive = self.attach is not None and self.attach.stdin is not None
        ours, theirs = self._make_stdio(terminal, interactive)
        try:
            try:
                if terminal:
                    console, console_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                    with console, console_peer:
                        st = runtime.create(c.runtime_root, c.id, c.bundle, console=console_peer)
                        _, fds, _, _ = socket.recv_fds(console, 16, 1)
                    ours = {"pty": fds[0]}
                else:
                    st = runtime.create(c.runtime_root, c.id, c.bundle, stdio=theirs)
                for fd in set(theirs):
                    os.close(fd)
                theirs = ()
                runtime.start(c.runtime_root, c.id)
            except MinidockError as exc:
                c.cleanup_after_exit()
                ready({"error": str(exc), "exit_code": exc.exit_code})
                return exc.exit_code
        finally:
            for fd in set(theirs):
                os.close(fd)
        self.pid = st.pid
        self.cgroup = st.cgroup
        init = st.annotations.get("org.minidock.init") == "true"
        syscalls.narrate(
            lambda: (
                f"process tree: monitor (host PID {os.getpid()}) → container PID 1 "
                f"(host PID {st.pid}, {'the --init reaper' if init else 'the program'})"
                + (" → the program as PID 2" if init else "")
            ),
            "the monitor is the parent of the container's first process and reaps it",
        )
        c.update_state(
            Status=Status.RUNNING.value,
            Pid=st.pid,
            PidStart=st.pid_start,
            MonitorPid=os.getpid(),
            MonitorPidStart=runtime.process_start_time(os.getpid()),
            StartedAt=now(),
            ExitCode=0,
            OOMKilled=False,
            Error="",
            **health.state_at_start(record["Config"].get("Healthcheck"), c.state().get("Health")),
        )
        c.emit("start")
        ready({"ok": True, "pid": st.pid})
        if self.attach is None:
            self._become_relay(ours, record)  # never returns
        status = self._supervise(ours, log)
        log.close()
        return self.finish(status)

    def _become_relay(self, ours: dict[str, int], record: dict) -> None:
        """Shed the start-up's modules: exec the lean relay loop, keeping our PID, our
        child (the container's PID 1) and the pipes, which are made inheritable. The relay
        also keeps the healthcheck's clock: it gets the interval (0: no healthcheck)."""
        c = self.container
        sources = []
        for name, fd in ours.items():
            os.set_inheritable(fd, True)
            sources.append(f"{fd}={name}")
        log_config = record["HostConfig"]["LogConfig"]["Config"]
        interval = health.interval_ns(record["Config"].get("Healthcheck"))
        os.execv(sys.executable, [
            sys.executable, "-S", "-m", "minidock.relay", c.paths.root, c.id, str(self.pid),
            c.log_path, log_config["max-size"], log_config["max-file"], str(interval), *sources,
        ])  # fmt: skip

    def finish(self, status: int) -> int:
        """PID 1 exited with wait ``status``: record it, delete the runtime's state (and
        with it the cgroup), unmount the root filesystem. The restart policy then decides
        between ``exited`` and ``restarting`` (see restart.py). Returns the exit code."""
        c = self.container
        code = exit_status(status)
        oom = self._oom_killed(self.cgroup)
        c.cleanup_after_exit()
        st = c.state()
        finished = time.time_ns()
        again = restart.should_restart(
            c.record()["HostConfig"].get("RestartPolicy") or {},
            code,
            st.get("ManuallyStopped", False),
            st.get("RestartCount", 0),
        )
        if oom:
            c.emit("oom")
        c.emit("die", exitCode=str(code))
        exit_fields = {"ExitCode": code, "OOMKilled": oom, "Pid": 0, "FinishedAt": now()}
        if not again:
            c.update_state(Status=Status.EXITED.value, MonitorPid=0, **exit_fields)
            return code
        ran_for = (finished - parse_timestamp(st["StartedAt"])) / 1e9
        c.update_state(
            Status=Status.RESTARTING.value,
            RestartCount=st.get("RestartCount", 0) + 1,
            RestartDelay=restart.next_delay(st.get("RestartDelay", 0), ran_for),
            **exit_fields,
        )
        return code

    def _make_stdio(
        self, terminal: bool, interactive: bool
    ) -> tuple[dict[str, int], tuple[int, ...]]:
        """Pipes for the container's stdin/stdout/stderr: our ends, and theirs (0, 1, 2)."""
        if terminal:
            return {}, ()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        ours = {"stdout": out_r, "stderr": err_r}
        if interactive:
            in_r, in_w = os.pipe()
            ours["stdin"] = in_w
        else:
            in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return ours, (in_r, out_w, err_w)

    def _supervise(self, ours: dict[str, int], log: JsonFileWriter) -> int:
        """Attached (``run`` without ``-d``): relay in this process, to the terminal too."""
        attach = self.attach
        assert attach is not None
        sources = {fd: name for name, fd in ours.items() if name in ("stdout", "stderr", "pty")}
        stdin_target = ours.get("pty", ours.get("stdin"))
        if attach.stdin is not None and "pty" in ours:
            _copy_window_size(attach.stdin, ours["pty"])
        self._install_signal_proxy("pty" in ours)
        c = self.container
        interval = health.interval_ns(c.record()["Config"].get("Healthcheck"))
        timer = HealthTimer(c.paths.root, c.id, interval / 1e9) if interval else None
        return relay(sources, self.pid, log, terminal_out=(attach.stdout, attach.stderr),
                     stdin=attach.stdin, stdin_target=stdin_target, health=timer)  # fmt: skip

    def _install_signal_proxy(self, terminal: bool) -> None:
        """Attached without a tty, the user's Ctrl-C is meant for the container: pass it on."""
        if self.attach is None or terminal:
            return

        def forward(signum: int, _frame: object) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

        for sig in PROXIED_SIGNALS:
            signal.signal(sig, forward)

    @staticmethod
    def _oom_killed(cgroup: str) -> bool:
        """Did the kernel's OOM killer kill anything in the container's cgroup? Read before
        the cgroup is removed."""
        if not cgroup:
            return False
        try:
            return cgroups.open_cgroup(cgroup).oom_kills() > 0
        except cgroups.CgroupError:
            return False


def remove_if_auto(container: Container) -> None:
    """``--rm``: once the container has exited, delete it."""
    try:
        if not container.record()["HostConfig"].get("AutoRemove"):
            return
        with container.operation_lock():
            if container.exists():
                container.remove_files()
    except FileNotFoundError:
        pass  # an ``rm -f`` removed it first


def restart_after_back_off(container: Container) -> int:
    """The ``restarting`` stage: sleep the restart policy's back-off delay, then start the
    container again *in this process*, which stays its monitor. A ``stop`` or ``rm`` in
    the meantime cancels the restart (it kills this process, or changes the status)."""
    from minidock.engine import Engine  # the engine imports this module

    sleep_out_back_off(container)
    engine = Engine(container.paths.root)
    if not container.exists():
        return 0
    try:
        with container.operation_lock():
            if container.status() is not Status.RESTARTING:
                return 0  # stopped by the user while we waited
            require(Status.RESTARTING, Operation.AUTO_RESTART, container.name)
            container.emit("restart")
            engine.prepare_bundle(container)
    except MinidockError as exc:
        _record_failed_restart(container, {"error": str(exc), "exit_code": exc.exit_code})
        return exc.exit_code

    def ready(message: dict) -> None:
        if "error" in message:
            _record_failed_restart(container, message)

    Monitor(container).run(ready)  # returns only if the container could not start
    return 0


def sleep_out_back_off(container: Container) -> None:
    """Wait until the back-off delay, counted from PID 1's exit, is over."""
    st = container.state()
    wake_ns = parse_timestamp(st["FinishedAt"]) + int(st["RestartDelay"] * 1e9)
    time.sleep(max(0.0, (wake_ns - time.time_ns()) / 1e9))


def _record_failed_restart(container: Container, message: dict) -> None:
    container.update_state(Status=Status.EXITED.value, MonitorPid=0,
                           Error=message["error"], ExitCode=message["exit_code"])  # fmt: skip


def main(argv: list[str]) -> int:
    """Entry points of the detached monitor:

    * ``python -S -m minidock.monitor ROOT ID READY_FD`` — create and start the container,
      report on READY_FD, then become the relay loop (``relay.py``);
    * ``python -S -m minidock.monitor finish ROOT ID STATUS`` — the relay's last step: record
      the exit, then either clean up or, if the restart policy says so, exec the next stage;
    * ``python -m minidock.monitor restart ROOT ID`` — wait the back-off delay and start the
      container again (this stage needs the engine, and the engine needs site-packages).
    """
    explain.from_environment()
    if argv[0] == "finish":
        root, cid, status = argv[1], argv[2], int(argv[3])
        container = Container(store.Paths(root), cid)
        monitor = Monitor(container)
        monitor.cgroup = runtime.state(container.runtime_root, cid).cgroup
        monitor.finish(status)
        if container.status() is Status.RESTARTING:
            sleep_out_back_off(container)  # here, where start-up costs are already paid
            os.execv(sys.executable, restart_stage_argv(root, cid))
        remove_if_auto(container)
        return 0
    if argv[0] == "restart":
        return restart_after_back_off(Container(store.Paths(argv[1]), argv[2]))
    root, cid, ready_fd = argv[0], argv[1], int(argv[2])
    container = Container(store.Paths(root), cid)

    def ready(message: dict) -> None:
        os.write(ready_fd, json.dumps(message).encode() + b"\n")
        os.close(ready_fd)
        # The command that started us is about to return: let go of its stderr.
        log = os.open(container.path("monitor.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.dup2(log, 2)
        os.close(log)

    Monitor(container).run(ready)  # returns only if the container could not start
    remove_if_auto(container)
    return 0


def restart_stage_argv(root: str, cid: str) -> list[str]:
    """The command line of the monitor's ``restart`` stage."""
    return [sys.executable, "-m", "minidock.monitor", "restart", root, cid]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
