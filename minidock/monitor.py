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
terminal. The detached form is ``python -m minidock.monitor ROOT ID READY_FD``: it imports
only the runtime and the log writer, to stay lean (one per container).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import termios
from collections.abc import Callable
from dataclasses import dataclass

import cgroups
from minidock import runtime, store, syscalls
from minidock.container import Container, now
from minidock.errors import MinidockError
from minidock.logs import JsonFileWriter
from minidock.runtime.reaper import exit_status
from minidock.state import Status

_READ_SIZE = 65536
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


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


class Monitor:
    def __init__(self, container: Container, attach: Attach | None = None) -> None:
        self.container = container
        self.attach = attach
        self.pid = 0

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
        )
        ready({"ok": True, "pid": st.pid})
        status = self._supervise(ours, log, st.cgroup)
        code = exit_status(status)
        oom = self._oom_killed(st.cgroup)
        log.close()
        c.cleanup_after_exit()
        c.update_state(
            Status=Status.EXITED.value,
            ExitCode=code,
            OOMKilled=oom,
            Pid=0,
            MonitorPid=0,
            FinishedAt=now(),
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

    def _supervise(self, ours: dict[str, int], log: JsonFileWriter, cgroup: str) -> int:
        """Relay output to the log (and the terminal) until PID 1 exits; return its wait
        status. PID 1's exit makes the kernel kill the rest of its PID namespace, so after
        it the pipes reach end-of-file once their last writers are gone."""
        pidfd = os.pidfd_open(self.pid)
        sources = {fd: name for name, fd in ours.items() if name in ("stdout", "stderr", "pty")}
        attach = self.attach
        stdin_target = ours.get("pty", ours.get("stdin"))
        if attach is not None and attach.stdin is not None and "pty" in ours:
            _copy_window_size(attach.stdin, ours["pty"])
        watch_stdin = attach is not None and attach.stdin is not None
        self._install_signal_proxy("pty" in ours)
        status: int | None = None
        while sources:
            fds = list(sources) + ([attach.stdin] if watch_stdin and attach else [])
            if status is None:
                fds.append(pidfd)
            readable, _, _ = select.select(fds, [], [], 2.0 if status is not None else None)
            if not readable and status is not None:
                break  # PID 1 is gone and nothing more arrives: stop waiting for EOF
            for fd in readable:
                if fd == pidfd:
                    _, status = os.waitpid(self.pid, 0)
                elif attach is not None and fd == attach.stdin:
                    data = os.read(fd, _READ_SIZE)
                    if data and stdin_target is not None:
                        _write_all(stdin_target, data)
                    else:
                        watch_stdin = False
                        if "stdin" in ours:
                            os.close(ours.pop("stdin"))
                else:
                    try:
                        data = os.read(fd, _READ_SIZE)
                    except OSError:  # EIO: the pty's last user closed it
                        data = b""
                    if not data:
                        del sources[fd]
                        os.close(fd)
                        continue
                    stream = "stderr" if sources[fd] == "stderr" else "stdout"
                    log.write(stream, data)
                    if attach is not None:
                        _write_all(attach.stderr if stream == "stderr" else attach.stdout, data)
        if status is None:
            _, status = os.waitpid(self.pid, 0)
        log.flush()
        os.close(pidfd)
        for name in ("stdin",):
            if name in ours:
                os.close(ours[name])
        return status

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
    if not container.record()["HostConfig"].get("AutoRemove"):
        return
    with container.operation_lock():
        if container.exists():
            container.remove_files()


def main(argv: list[str]) -> int:
    """Entry point of the detached monitor: ``python -m minidock.monitor ROOT ID READY_FD``."""
    root, cid, ready_fd = argv[0], argv[1], int(argv[2])
    container = Container(store.Paths(root), cid)

    def ready(message: dict) -> None:
        os.write(ready_fd, json.dumps(message).encode() + b"\n")
        os.close(ready_fd)

    Monitor(container).run(ready)
    remove_if_auto(container)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
