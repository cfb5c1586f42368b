"""The monitor's steady state: copy the container's output into its log until PID 1 exits.

A detached container's monitor spends nearly all its life here, so this loop lives in a
module that imports almost nothing. After creating and starting the container (which
needs the runtime, cgroups, JSON…), the monitor *re-executes itself* into
``python -S -m minidock.relay``: execve(2) keeps the process's PID, its children (the
container's PID 1 stays our child) and its subreaper flag, and drops every module the
start-up needed — several megabytes per running container. When PID 1 exits, the relay
execs the monitor once more to record the exit and clean up (``monitor.py finish``).

The same ``relay`` function also runs inside ``minidock run`` (attached), where the
output is copied to the user's terminal as well. In both, it keeps the healthcheck's clock
(:class:`HealthTimer`) and leaves the checks themselves to a process of their own.
"""

from __future__ import annotations

import os
import select
import sys
import time

from minidock.logfile import JsonFileWriter

_READ_SIZE = 65536
#: The directory holding the ``minidock`` package, for the healthcheck process's imports.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a pipe or terminal may take less at a time)."""
    while data:
        data = data[os.write(fd, data) :]


def reap_others(*keep: int) -> None:
    """Reap exited children other than those in ``keep`` — the container's PID 1 and a
    running healthcheck, which stay zombies until the loop collects their status. As a
    subreaper we inherit orphans — e.g. processes a hook left behind — and must wait(2)
    for them or they stay zombies."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid in keep:
            return
        os.waitpid(info.si_pid, 0)


class HealthTimer:
    """The monitor's part in healthchecks (``health.py``): only the clock. The first check
    is due ``interval`` seconds after the start, each next one ``interval`` seconds after
    the previous one *finished*. When one is due and none is running, the checker —
    ``python -m minidock.health ROOT ID``, a short-lived process that does all the work —
    is started; its exit is seen through a pidfd, like PID 1's."""

    def __init__(self, root: str, cid: str, interval: float) -> None:
        self.argv = [sys.executable, "-m", "minidock.health", root, cid]
        self.interval = interval
        self.due = time.monotonic() + interval
        self.pid = 0  # of the running check, 0 if none
        self.pidfd: int | None = None

    def seconds_left(self) -> float | None:
        """How long until the next check is due (0: it is); None while one runs."""
        return None if self.pid else max(0.0, self.due - time.monotonic())

    def start_if_due(self) -> None:
        if self.pid or time.monotonic() < self.due:
            return
        # A session of its own, so that an attached run's Ctrl-C doesn't reach it; stdin
        # and stdout /dev/null, stderr ours (the monitor's log, or the user's terminal).
        try:
            self.pid = os.posix_spawn(
                self.argv[0], self.argv, {**os.environ, "PYTHONPATH": _PACKAGE_PARENT},
                setsid=True, file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                           (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)],
            )  # fmt: skip
        except OSError as exc:  # out of memory or PIDs: skip this check, never the container
            os.write(2, f"minidock relay: cannot start a healthcheck: {exc}\n".encode())
            self.due = time.monotonic() + self.interval
            return
        self.pidfd = os.pidfd_open(self.pid)

    def finished(self) -> None:
        """The check's pidfd turned readable: reap it; the next is due ``interval`` from now."""
        os.waitpid(self.pid, 0)
        self.close()
        self.pid = 0
        self.due = time.monotonic() + self.interval

    def close(self) -> None:
        """Stop watching. A check still running when PID 1 exits is left to end by itself:
        its program died with the container, and it records nothing for a gone PID 1."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def relay(
    sources: dict[int, str],
    pid: int,
    log: JsonFileWriter | None,
    *,
    terminal_out: tuple[int, int] | None = None,
    stdin: int | None = None,
    stdin_target: int | None = None,
    health: HealthTimer | None = None,
) -> int:
    """Relay until PID 1 (``pid``, our child) exits; return its wait status.

    ``sources`` maps our read ends to "stdout", "stderr" or "pty". Output goes to the
    log (none for ``exec``) and, attached, to ``terminal_out`` (our stdout, stderr);
    ``stdin`` is copied to ``stdin_target``; ``health`` says when to start a healthcheck.
    PID 1's exit is seen through a pidfd (pidfd_open(2)), which turns readable when the
    process exits. Its exit makes the kernel kill the rest of its PID namespace, so the
    pipes then reach end-of-file once their last writers are gone. (A program may close
    its stdout and stderr long before it exits: the loop goes on without them.)
    """
    pidfd = os.pidfd_open(pid)
    sources = dict(sources)
    status: int | None = None
    while status is None or sources:
        fds = list(sources)
        if stdin is not None:
            fds.append(stdin)
        timeout = 2.0 if status is not None else 60.0
        if status is None:
            fds.append(pidfd)
            if health is not None:
                health.start_if_due()
                if health.pidfd is not None:
                    fds.append(health.pidfd)
                if (left := health.seconds_left()) is not None:
                    timeout = min(timeout, left)
        readable, _, _ = select.select(fds, [], [], timeout)
        if not readable:
            if status is not None:
                break  # PID 1 is gone and nothing more arrives: stop waiting for EOF
            reap_others(pid, health.pid if health is not None else 0)
            continue
        for fd in readable:
            if fd == pidfd:
                reap_others(pid, health.pid if health is not None else 0)
                _, status = os.waitpid(pid, 0)
            elif health is not None and fd == health.pidfd:
                health.finished()
            elif fd == stdin:
                data = os.read(fd, _READ_SIZE)
                if data and stdin_target is not None:
                    write_all(stdin_target, data)
                else:
                    stdin = None
                    if stdin_target is not None and sources.get(stdin_target) != "pty":
                        os.close(stdin_target)  # the program reads end-of-file
                        stdin_target = None
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
                if log is not None:
                    log.write(stream, data)
                if terminal_out is not None:
                    write_all(terminal_out[stream == "stderr"], data)
    if log is not None:
        log.flush()
    os.close(pidfd)
    if health is not None:
        health.close()
    return status


def main(argv: list[str]) -> None:
    """``python -S -m minidock.relay ROOT ID PID LOG MAX_SIZE MAX_FILES HEALTH FD=STREAM…``

    HEALTH is the healthcheck interval in nanoseconds, 0 for a container without one."""
    root, cid, pid, log_path, max_size, max_files, health_interval, *fds = argv
    sources = {int(fd): stream for fd, stream in (item.split("=") for item in fds)}
    for fd in sources:  # inherited through exec; no healthcheck process must inherit them
        os.set_inheritable(fd, False)
    log = JsonFileWriter(log_path, int(max_size), int(max_files))
    interval = int(health_interval) / 1e9
    health = HealthTimer(root, cid, interval) if interval else None
    status = relay(sources, int(pid), log, health=health)
    log.close()
    os.execv(sys.executable, [sys.executable, "-S", "-m", "minidock.monitor", "finish", root,
                              cid, str(status)])  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
