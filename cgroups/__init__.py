"""A small, standalone cgroup library: create a cgroup, limit it, watch it, freeze it, kill it.

Control groups are the kernel's way to treat a set of processes as one unit: it accounts and
limits their memory, CPU time and number of tasks, and can freeze or kill them together.
They are exposed as a filesystem (cgroupfs): directories are cgroups, files are settings.

Two generations exist and this library hides the difference:

* **v2** (:mod:`cgroups.v2`): one unified tree, e.g. ``memory.max``, ``cpu.max``.
* **v1** (:mod:`cgroups.v1`): one tree per controller, e.g. ``memory.limit_in_bytes``.

Typical use::

    cg = cgroups.create("minidock/<id>", cgroups.Limits(memory=64 << 20, pids=100))
    cg.add_process(pid)
    ...
    cg.kill_all()
    cg.remove()

Every write goes through :func:`cgroups.fs.write`; set ``cgroups.fs.observer`` to watch them.
This package does not depend on minidock.
"""

from __future__ import annotations

import errno

from . import fs
from .base import Cgroup
from .detect import backend_name, mount_point
from .fs import CgroupError
from .limits import Limits, Stats
from .v1 import V1Cgroup
from .v2 import V2Cgroup

__all__ = [
    "Cgroup",
    "CgroupError",
    "Limits",
    "Stats",
    "backend_name",
    "create",
    "mount_point",
    "open_cgroup",
    "remove_parent_if_empty",
]


def _handle(name: str) -> Cgroup:
    """A handle for ``name`` on this host's backend, whether or not the cgroup exists."""
    if backend_name() == "v2":
        return V2Cgroup(mount_point(), name)
    return V1Cgroup(mount_point(), name)


def create(name: str, limits: Limits) -> Cgroup:
    """Create the cgroup ``name`` (a relative path such as ``"minidock/<id>"``) with ``limits``.

    Missing parents are created (on v2 with cpu, memory and pids enabled for their
    children). Raises :class:`CgroupError` if the cgroup already exists; if applying the
    limits fails, the new cgroup is removed again before the error propagates.
    """
    cgroup = _handle(name)
    cgroup._mkdirs()
    try:
        cgroup.set_limits(limits)
    except BaseException:
        cgroup.remove()
        raise
    return cgroup


def open_cgroup(name: str) -> Cgroup:
    """A handle on the existing cgroup ``name``; :class:`CgroupError` if there is none."""
    cgroup = _handle(name)
    if not cgroup.exists():
        raise CgroupError(f"cgroup {name} does not exist", cgroup._dirs()[0], errno.ENOENT)
    return cgroup


def remove_parent_if_empty(name: str) -> None:
    """rmdir the grouping cgroup ``name`` (e.g. ``"minidock"``) in every hierarchy if unused.

    Meant for parents that :func:`create` made: it is quietly left alone while it still has
    child cgroups or processes (``EBUSY``/``ENOTEMPTY``) or is already gone (``ENOENT``).
    """
    for directory in _handle(name)._dirs():
        try:
            fs.rmdir(directory)
        except CgroupError as exc:
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise
