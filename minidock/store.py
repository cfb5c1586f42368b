"""On-disk state: where things live under the state root, atomic writes, and file locks.

Layout (``/var/lib/minidock`` unless ``--root`` or ``MINIDOCK_ROOT`` says otherwise)::

    ROOT/lock                         serialises name allocation and removal
    ROOT/images/…                     the image store (see images.py)
    ROOT/containers/<id>/container.json   what the user asked for (written once at create)
    ROOT/containers/<id>/state.json   status, pids, exit code, times (rewritten as it changes)
    ROOT/containers/<id>/lock         held while a command changes this container
    ROOT/containers/<id>/bundle/      the OCI bundle: config.json, and rootfs/ (overlay mount)
    ROOT/containers/<id>/upper, work  the overlay's writable layer
    ROOT/containers/<id>/container.log    json-file log (+ .1, .2 … after rotation)
    ROOT/runtime/<id>/state.json      the OCI runtime's own record (see runtime/)
    ROOT/runtime/.seccomp-cache/      the runtime's compiled seccomp filters (see seccomp.py)

Every JSON file is replaced atomically (write a temporary file, rename it over the old
one: :func:`write_file`), so a reader sees the old or the new content, never half of either.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from typing import Any

DEFAULT_ROOT = "/var/lib/minidock"


def state_root(explicit: str | None = None) -> str:
    """The state root: ``--root``, else ``$MINIDOCK_ROOT``, else /var/lib/minidock."""
    return os.path.abspath(explicit or os.environ.get("MINIDOCK_ROOT") or DEFAULT_ROOT)


def write_file(path: str, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (temp file + fsync + rename(2)).

    The fsync makes the new content reach the disk before the rename does, so that after
    a power cut the file holds the old or the new content, not an empty one. It costs a
    journal commit (~1.5 ms here, far more when the disk is busy), so files that are made
    again whenever they are missing or damaged pass ``durable=False``.
    """
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def write_json(path: str, data: Any, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` as JSON atomically (:func:`write_file`)."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_file(path, text.encode(), mode, durable=durable)


def read_json(path: str) -> Any:
    with open(path, "rb") as f:
        return json.load(f)


@contextlib.contextmanager
def locked(path: str, shared: bool = False) -> Iterator[None]:
    """Hold an flock(2) on ``path`` (created if missing) for the ``with`` block.

    flock locks belong to the open file, so they vanish when the holder dies: a crashed
    command can never leave a container locked forever.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Paths:
    """Names of everything under one state root; creates nothing by itself."""

    def __init__(self, root: str) -> None:
        self.root = root

    @property
    def lock(self) -> str:
        return os.path.join(self.root, "lock")

    @property
    def containers(self) -> str:
        return os.path.join(self.root, "containers")

    @property
    def images(self) -> str:
        return os.path.join(self.root, "images")

    @property
    def runtime(self) -> str:
        return os.path.join(self.root, "runtime")

    def container(self, cid: str, *parts: str) -> str:
        return os.path.join(self.containers, cid, *parts)

    def ensure(self) -> None:
        for d in (self.root, self.containers, self.images, self.runtime):
            os.makedirs(d, mode=0o711, exist_ok=True)
