"""Which cgroup flavour does this host run, and where is it mounted?

* **v2 (unified)**: one cgroup2 filesystem at ``/sys/fs/cgroup``; every controller lives in
  the same tree and the root holds ``cgroup.controllers``.
* **v1 (legacy or hybrid)**: ``/sys/fs/cgroup`` is a tmpfs with one cgroup filesystem per
  controller (``/sys/fs/cgroup/memory``, ``/sys/fs/cgroup/cpu``, ...), each with its own tree.
  A *hybrid* host also mounts cgroup2 at ``/sys/fs/cgroup/unified``, usually with no resource
  controllers on it, so limits still have to go through v1 — we treat it as v1.

The textbook test is statfs(2) on the mount point (``f_type == CGROUP2_SUPER_MAGIC``,
0x63677270); Python has no statfs, and looking for ``cgroup.controllers`` at the root gives
the same answer.
"""

from __future__ import annotations

import os

from .fs import CgroupError

#: Where cgroup hierarchies are mounted unless ``MINIDOCK_CGROUP_MOUNT`` says otherwise
#: (tests point it at a hybrid host's ``/sys/fs/cgroup/unified`` to exercise the v2 code).
DEFAULT_MOUNT = "/sys/fs/cgroup"


def mount_point() -> str:
    """The directory holding the cgroup hierarchy (v2) or the per-controller mounts (v1)."""
    return os.environ.get("MINIDOCK_CGROUP_MOUNT", DEFAULT_MOUNT)


def backend_name() -> str:
    """``"v2"`` if the mount point is a cgroup2 root, ``"v1"`` if it holds v1 hierarchies."""
    root = mount_point()
    if os.path.isfile(os.path.join(root, "cgroup.controllers")):
        return "v2"
    if os.path.isdir(root) and any(
        os.path.isfile(os.path.join(root, entry, "cgroup.procs")) for entry in os.listdir(root)
    ):
        return "v1"
    raise CgroupError(f"no cgroup filesystem mounted at {root}", root)
