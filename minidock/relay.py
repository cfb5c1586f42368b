"""The monitor's steady state: copy the container's output into its log until PID 1 exits.

A detached container's monitor spends nearly all its life here, so this loop lives in a
module that imports almost nothing. After creating and starting the container (which
needs the runtime, cgroups, JSON…), the monitor *re-executes itself* into
``python -S -m minidock.relay``: execve(2) keeps the process's PID, its children (the
container's PID 1 stays our child) and its subreaper flag, and drops every module the
start-up needed — several megabytes per running container. When PID 1 exits, the relay
execs the monitor once more to record the exit and clean up (``monitor.py finish``).

The same ``relay`` function also runs inside ``minidock run`` (attached), where the
output is copied to the user's terminal as well.
"""

from __future__ import annotations

import os
import select
import sys

from minidock.logfile import JsonFileWriter

_READ_SIZE = 65536


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a pipe or terminal may take less at a time)."""
    while data:
        data = data[os.write(fd, data) :]


def reap_others(pid: int) -> None:
    """Reap exited children other than the container's PID 1 (which stays a zombie until
    the loop collects its status). As a subreaper we inherit orphans — e.g. processes a
    hook left behind — and must wait(2) for them or they stay zombies."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == pid:
            return
        os.waitpid(info.si_pid, 0)


def relay(
    sources: dict[int, str],
    pid: int,
    log: JsonFileWriter | None,
    *,
    terminal_out: tuple[int, int] | None = None,
    stdin: int | None = None,
    stdin_target: int | None = None,
) -> int:
    """Relay until PID 1 (``pid``, our child) exits; return its wait status.

    ``sources`` maps our read ends to "stdout", "stderr" or "pty". Output goes to the
    log (none for ``exec``) and, attached, to ``terminal_out`` (our stdout, stderr);
    ``stdin`` is copied to ``stdin_target``. PID 1's exit is seen through a pidfd
    (pidfd_open(2)), which turns readable when the process exits. Its exit makes the
    kernel kill the rest of its PID namespace, so the pipes then reach end-of-file once
    their last writers are gone.
    """
    pidfd = os.pidfd_open(pid)
    sources = dict(sources)
    status: int | None = None
    while sources:
        fds = list(sources)
        if stdin is not None:
            fds.append(stdin)
        if status is None:
            fds.append(pidfd)
        readable, _, _ = select.select(fds, [], [], 2.0 if status is not None else 60.0)
        if not readable:
            if status is not None:
                break  # PID 1 is gone and nothing more arrives: stop waiting for EOF
            reap_others(pid)
            continue
        for fd in readable:
            if fd == pidfd:
                reap_others(pid)
                _, status = os.waitpid(pid, 0)
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
    if status is None:
        _, status = os.waitpid(pid, 0)
    if log is not None:
        log.flush()
    os.close(pidfd)
    return status


def main(argv: list[str]) -> None:
    """``python -S -m minidock.relay ROOT ID PID LOG MAX_SIZE MAX_FILES FD=STREAM…``"""
    root, cid, pid, log_path, max_size, max_files, *fds = argv
    sources = {int(fd): stream for fd, stream in (item.split("=") for item in fds)}
    log = JsonFileWriter(log_path, int(max_size), int(max_files))
    status = relay(sources, int(pid), log)
    log.close()
    os.execv(sys.executable, [sys.executable, "-S", "-m", "minidock.monitor", "finish", root,
                              cid, str(status)])  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
