"""``--init``: a tiny PID 1 that reaps orphans and forwards signals (tini's job).

The kernel treats PID 1 of a PID namespace specially: it gets no default signal actions
(SIGTERM without a handler does nothing), and every orphaned process in the namespace is
re-parented to it — if it never calls wait(2), they stay zombies forever. Most programs
aren't written to be PID 1, so ``--init`` puts this loop there instead:

* fork the real program as PID 2 and exec it;
* block every catchable signal and take them synchronously with sigwaitinfo(2);
* SIGCHLD → reap every exited child with ``waitpid(-1, WNOHANG)``;
* anything else → forward it to the program;
* when the program itself exits, exit with its status (128+N if signal N killed it).

It runs in the runtime's own (non-dumpable) process, so no extra binary is put inside the
container and nothing of the host is reachable through ``/proc/1/exe``.
"""

from __future__ import annotations

import contextlib
import os
import signal

from minidock.errors import KernelError
from minidock.runtime import dmz

#: Signals the reaper keeps for itself: SIGCHLD drives reaping; the rest cannot be caught
#: or are synchronous faults that must not be blocked.
_NOT_FORWARDED = {
    signal.SIGCHLD,
    signal.SIGKILL,
    signal.SIGSTOP,
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGILL,
    signal.SIGFPE,
    signal.SIGABRT,
    signal.SIGTRAP,
    signal.SIGSYS,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGTSTP,
}


def exit_status(status: int) -> int:
    """The shell's convention for a wait status: the exit code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def run_reaper(program: str, args: list[str], env: dict[str, str]) -> None:
    """Become the reaper; never returns."""
    from minidock.runtime.init import reset_signals

    catchable = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
    signal.pthread_sigmask(signal.SIG_BLOCK, catchable)
    child = os.fork()
    if child == 0:
        reset_signals()
        try:
            dmz.execve(program, args, env, reason="the program runs as PID 2 under --init")
        except (OSError, KernelError) as exc:
            os.write(2, f"minidock-init: exec {args[0]}: {exc}\n".encode())
            os._exit(126)
    os.closerange(3, 2**31 - 1)  # the reaper never execs: really close host descriptors
    while True:
        info = signal.sigwaitinfo(catchable)
        if info.si_signo != signal.SIGCHLD:
            if info.si_signo not in _NOT_FORWARDED:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, info.si_signo)
            continue
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == child:
                os._exit(exit_status(status))
