"""minidock's exceptions: one small tree, each class carrying Docker's exit code.

The CLI catches ``MinidockError`` once, prints ``minidock: <message>`` on one line and
exits with ``exit_code``. Docker's convention (moby ``cli/command/container``):

* 125 — the engine itself failed (bad flag value, unknown image or container, conflict)
* 126 — the container's command exists but cannot be invoked (not executable)
* 127 — the container's command was not found
* otherwise the container's own exit status, or 128+N when signal N killed it
"""

from __future__ import annotations

import errno as _errno
import os


class MinidockError(Exception):
    """Base class: an engine error (exit 125) unless a subclass says otherwise."""

    exit_code = 125


class InvalidArgument(MinidockError):
    """A flag or value the user gave is malformed (``-m abc``, ``--cpus -1``)."""


class NotFound(MinidockError):
    """Something the user named does not exist."""


class ImageNotFound(NotFound):
    """No image by that name, tag or ID in the local store."""


class ContainerNotFound(NotFound):
    """No container by that name or ID (full or unique prefix)."""


class Conflict(MinidockError):
    """The request clashes with existing state: a name in use, a wrong container state."""


class InvalidState(Conflict):
    """The container's current state does not allow the operation (see ``state.TRANSITIONS``)."""


class CommandNotFound(MinidockError):
    """The container's command is not in its root filesystem or ``$PATH`` (exit 127)."""

    exit_code = 127


class CommandNotInvocable(MinidockError):
    """The container's command exists but cannot be executed (exit 126)."""

    exit_code = 126


class KernelError(MinidockError):
    """A system call failed. Carries the call's name and errno so the message says both."""

    def __init__(self, call: str, err: int, detail: str = "") -> None:
        self.call = call
        self.errno = err
        self.detail = detail
        where = f" {detail}" if detail else ""
        name = _errno.errorcode.get(err, str(err))
        super().__init__(f"{call}{where}: {os.strerror(err)} ({name})")
