"""The backend-independent part of a cgroup handle: naming, killing, removal, waiting.

A cgroup is a directory in cgroupfs. Moving a process in (writing its PID to ``cgroup.procs``)
makes the kernel account its memory, CPU time and task count to that directory and enforce the
directory's limits on it; every child it forks afterwards starts in the same cgroup. That is
why a container runtime can find, limit, freeze and kill *all* of a container's processes,
however many times they forked, without tracking them itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from . import fs
from .fs import CgroupError
from .limits import Limits, Stats

#: How long freeze() waits for the kernel to report every task frozen.
FREEZE_TIMEOUT = 5.0
#: How long remove() retries rmdir while the last processes finish exiting.
REMOVE_TIMEOUT = 1.0


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` with a growing sleep (1 ms → 50 ms) until true or ``timeout`` passes.

    cgroupfs can also announce changes through poll(2)/inotify on ``cgroup.events``; short
    polling is simpler and fast enough for the sub-second waits here.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def check_name(name: str) -> str:
    """Accept a relative cgroup path like ``"minidock/<id>"``; reject ``..``, ``/x``, ``a//b``."""
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in name.split("/")):
        raise ValueError(f"bad cgroup name {name!r}: want a relative path like 'minidock/<id>'")
    return name


def ancestors(name: str) -> list[str]:
    """The parent paths of ``name``, outermost first: ``"a/b/c"`` → ``["a", "a/b"]``."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def send_signal(pid: int, sig: int) -> None:
    """kill(2) that ignores processes which have already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class Cgroup(ABC):
    """A handle on one cgroup, named by its path relative to the mount point.

    Get one from :func:`cgroups.create` or :func:`cgroups.open_cgroup`; the backend subclass
    (v1 or v2) knows which files to touch. The handle holds no open files or kernel state:
    it is only a name, so it is cheap to re-create from a stored container ID.
    """

    def __init__(self, root: str, name: str) -> None:
        self.root = root
        self.name = check_name(name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} under {self.root}>"

    # -- backend-specific ----------------------------------------------------------------------

    @abstractmethod
    def paths(self) -> dict[str, str]:
        """Controller → absolute directory of this cgroup (v2 has one: ``{"": dir}``)."""

    @abstractmethod
    def _mkdirs(self) -> None:
        """Create the cgroup's directories and their parents; CgroupError if it exists."""

    @abstractmethod
    def add_process(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into this cgroup via ``cgroup.procs``."""

    @abstractmethod
    def set_limits(self, limits: Limits) -> None:
        """Write every limit that is not ``None`` in ``limits``; others stay as they are."""

    @abstractmethod
    def pids(self) -> list[int]:
        """The PIDs of the processes in this cgroup, as ``cgroup.procs`` lists them."""

    @abstractmethod
    def stats(self) -> Stats:
        """Read the kernel's accounting for this cgroup."""

    @abstractmethod
    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed because of this cgroup's limit."""

    @abstractmethod
    def freeze(self) -> None:
        """Stop every process in the cgroup; returns once the kernel reports them all frozen."""

    @abstractmethod
    def thaw(self) -> None:
        """Let the processes of a frozen cgroup run again."""

    @abstractmethod
    def frozen(self) -> bool:
        """Whether the kernel reports the cgroup as completely frozen."""

    @abstractmethod
    def _freezer_available(self) -> bool:
        """Whether this cgroup can be frozen (v1: freezer mounted; v2: ``cgroup.freeze``)."""

    def _kill_in_kernel(self) -> bool:
        """SIGKILL everything in one kernel call if the backend can (v2 ``cgroup.kill``)."""
        return False

    # -- shared ----------------------------------------------------------------------------

    def _dirs(self) -> list[str]:
        """The distinct directories behind :meth:`paths` (v1 co-mounts share one)."""
        return list(dict.fromkeys(self.paths().values()))

    def exists(self) -> bool:
        """Whether the cgroup's directory exists (in at least one v1 hierarchy)."""
        return any(os.path.isdir(d) for d in self._dirs())

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
        """Send ``sig`` to every process in the cgroup, then wait until the cgroup is empty.

        Reading ``cgroup.procs`` and signalling each PID races with ``fork``: a child born in
        between escapes. So the cgroup is frozen first (frozen tasks can't fork, and can't
        exit, so their PIDs can't be reused either), signalled, then thawed so the signals
        are delivered. On v2 with SIGKILL, ``cgroup.kill`` (Linux 5.14) does all of this
        inside the kernel. A cgroup that was already frozen stays frozen unless ``sig`` is
        SIGKILL (killed processes must run to exit).

        Waits up to ``timeout`` seconds for ``cgroup.procs`` to empty, re-sending SIGKILL to
        stragglers. Processes may survive a catchable signal; for SIGKILL that is an error
        (e.g. a task stuck in the kernel) and raises :class:`CgroupError`. A cgroup that
        another process removes meanwhile counts as emptied.
        """
        try:
            if not (sig == signal.SIGKILL and self._kill_in_kernel()):
                self._signal_frozen(sig)

            def emptied() -> bool:
                left = self.pids()
                if sig == signal.SIGKILL:
                    for pid in left:
                        send_signal(pid, sig)
                return not left

            if not wait_until(emptied, timeout) and sig == signal.SIGKILL:
                raise CgroupError(
                    f"cgroup {self.name}: processes {self.pids()} survived SIGKILL for {timeout} s",
                    self._dirs()[0],
                )
        except CgroupError:
            if self.exists():
                raise
            # Removed underneath us (by the container's monitor, once its last process
            # exited): a cgroup that no longer exists has nothing left to kill.

    def _signal_frozen(self, sig: int) -> None:
        """Signal each process while the cgroup is frozen (see :meth:`kill_all`)."""
        use_freezer = self._freezer_available()
        was_frozen = use_freezer and self.frozen()
        if use_freezer and not was_frozen:
            self.freeze()
        try:
            for pid in self.pids():
                send_signal(pid, sig)
        finally:
            if use_freezer and (not was_frozen or sig == signal.SIGKILL):
                self.thaw()

    def remove(self) -> None:
        """Delete the cgroup (its leaf directory in every hierarchy); parents stay.

        The kernel refuses (``EBUSY``) while processes remain, so call :meth:`kill_all` first;
        read :meth:`oom_kills` and :meth:`stats` before, as they go with the directory.
        Removing a cgroup that is already gone is not an error.
        """
        for d in self._dirs():
            fs.rmdir(d, busy_timeout=REMOVE_TIMEOUT)
