"""The one door to cgroupfs: every read, write, mkdir and rmdir of a cgroup goes through here.

cgroupfs is a pseudo-filesystem. Its files hold no data: writing ``"50000 100000"`` to
``cpu.max`` is a request to the kernel's cgroup code, which answers through the return value
of write(2) (``EINVAL`` for a value it rejects, ``EBUSY`` for a state it refuses, ...). So a
cgroup value must go in one write(2) call, and errors are worth reporting with the file's path.

Keeping every write in :func:`write` gives minidock's ``--explain`` one place to narrate them:
set :data:`observer` to a callable and it sees ``(path, value)`` just before each write.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable

#: Called as ``observer(path, value)`` just before each write to a cgroup file, or ``None``.
observer: Callable[[str, str], None] | None = None


class CgroupError(Exception):
    """A cgroup operation failed; the message names the file and, if any, the OS error.

    ``path`` and ``errno`` are kept as attributes so a caller can react to, say, ``EBUSY``
    without parsing the message.
    """

    def __init__(self, message: str, path: str | None = None, err: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = err

    @classmethod
    def from_os(cls, action: str, path: str, exc: OSError) -> CgroupError:
        """Wrap an ``OSError`` as ``"<action> <path>: <strerror> (<ERRNO>)"``."""
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return cls(f"{action} {path}: {exc.strerror} ({name})", path, exc.errno)


def write(path: str, value: str) -> None:
    """Write ``value`` to the cgroup file ``path`` in a single write(2).

    Raises :class:`CgroupError` carrying the path and errno when the kernel refuses.
    """
    if observer is not None:
        observer(path, value)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupError.from_os(f"write {value!r} to", path, exc) from exc


def read(path: str) -> str:
    """Return the contents of a cgroup file, without the trailing newline."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError as exc:
        raise CgroupError.from_os("read", path, exc) from exc


def read_int(path: str) -> int:
    """Read a file that holds a single integer (``memory.current``, ``cpuacct.usage``, ...)."""
    return int(read(path))


def read_optional(path: str) -> str | None:
    """Like :func:`read`, but ``None`` when the file does not exist.

    Some files come and go with kernel version or boot options: ``memory.peak`` (5.19+),
    ``memory.swap.max`` and ``memory.memsw.*`` (only with swap accounting).
    """
    try:
        return read(path)
    except CgroupError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def mkdir(path: str, exist_ok: bool = False) -> None:
    """Create one cgroup: mkdir(2) in cgroupfs makes the kernel allocate a new cgroup.

    The kernel fills the new directory with the interface files of every controller enabled
    for it. Raises :class:`CgroupError` (errno ``EEXIST``) if it exists, unless ``exist_ok``.
    """
    try:
        os.mkdir(path)
    except FileExistsError:
        if not exist_ok:
            raise CgroupError(f"cgroup {path} already exists", path, errno.EEXIST) from None
    except OSError as exc:
        raise CgroupError.from_os("mkdir", path, exc) from exc


def rmdir(path: str, busy_timeout: float = 0.0) -> None:
    """Delete one cgroup; a missing directory counts as already deleted.

    rmdir(2) is the only way to remove a cgroup (its files can't be unlinked) and fails with
    ``EBUSY`` while a process is still in it. Processes that were just killed leave the cgroup
    only once they have exited, so ``EBUSY`` is retried for up to ``busy_timeout`` seconds.
    """
    deadline = time.monotonic() + busy_timeout
    delay = 0.001
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise CgroupError.from_os("rmdir", path, exc) from exc
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
