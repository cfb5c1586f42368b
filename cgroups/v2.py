"""cgroup v2, the unified hierarchy: one tree, every controller's files in each directory.

Two rules shape this backend:

* A controller works in a cgroup only if its parent lists it in ``cgroup.subtree_control``,
  and so on up to the root. Creating ``minidock/<id>`` therefore enables ``+cpu +memory
  +pids`` in the root and in ``minidock`` first.
* "No internal processes": a non-root cgroup that has controllers enabled for its children
  may not hold processes itself (the kernel would otherwise have to split resources between
  a cgroup's own tasks and its children). Processes only ever go into leaves; inner
  cgroups like ``minidock`` only group them.
"""

from __future__ import annotations

import errno
import os

from . import devices_bpf, fs
from .base import FREEZE_TIMEOUT, Cgroup, ancestors, wait_until
from .fs import CgroupError
from .limits import Limits, Stats, parse_keyed, parse_max, parse_pids, v2_writes

#: The controllers minidock enables for its cgroups, where the kernel offers them.
CONTROLLERS = ("cpu", "memory", "pids")


def enable_controllers(directory: str) -> None:
    """Enable :data:`CONTROLLERS` for the children of ``directory``, as far as available.

    ``cgroup.controllers`` lists what this cgroup may hand down (what its parent enabled);
    writing ``+name`` to ``cgroup.subtree_control`` hands it to the children. Only missing
    ones are written, so an already configured tree sees no writes.
    """
    available = fs.read(os.path.join(directory, "cgroup.controllers")).split()
    enabled = fs.read(os.path.join(directory, "cgroup.subtree_control")).split()
    missing = [c for c in CONTROLLERS if c in available and c not in enabled]
    if not missing:
        return
    try:
        fs.write(
            os.path.join(directory, "cgroup.subtree_control"), " ".join(f"+{c}" for c in missing)
        )
    except CgroupError as exc:
        if exc.errno == errno.EBUSY:
            raise CgroupError(
                f"{exc}: {directory} holds processes itself, and cgroup v2's 'no internal "
                "processes' rule forbids handing controllers to its children",
                exc.path,
                exc.errno,
            ) from exc
        raise


class V2Cgroup(Cgroup):
    """A cgroup in the unified hierarchy; all of its files live in :attr:`path`."""

    def __init__(self, root: str, name: str) -> None:
        super().__init__(root, name)
        self.path = os.path.join(root, name)

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def paths(self) -> dict[str, str]:
        return {"": self.path}

    def _mkdirs(self) -> None:
        for rel in ancestors(self.name):
            enable_controllers(os.path.dirname(os.path.join(self.root, rel)))
            fs.mkdir(os.path.join(self.root, rel), exist_ok=True)
        enable_controllers(os.path.dirname(self.path))
        fs.mkdir(self.path)

    def _controllers(self) -> set[str]:
        """The controllers active in this cgroup (those its parent enabled)."""
        return set(fs.read(self._file("cgroup.controllers")).split())

    def add_process(self, pid: int) -> None:
        fs.write(self._file("cgroup.procs"), str(pid))

    def set_limits(self, limits: Limits) -> None:
        """Write ``memory.max``, ``memory.swap.max``, ``cpu.max``, ``cpu.weight``, ``pids.max``.

        Device rules have no file on v2: they become an eBPF program that the kernel runs on
        every device open and mknod in this cgroup, attached to its directory
        (:func:`cgroups.devices_bpf.apply`; it replaces the program of earlier rules).
        """
        has_swap = os.path.exists(self._file("memory.swap.max"))
        for name, value in v2_writes(limits, has_swap):
            fs.write(self._file(name), value)
        if limits.device_rules:
            devices_bpf.apply(self.path, limits.device_rules)

    def pids(self) -> list[int]:
        return parse_pids(fs.read(self._file("cgroup.procs")))

    def stats(self) -> Stats:
        """Read ``memory.*``, ``cpu.stat``, ``pids.*`` and ``memory.events``.

        ``cpu.stat`` always has ``usage_usec``; the throttling counters appear only when the
        cpu controller is enabled. ``memory.peak`` needs Linux 5.19.
        """
        controllers = self._controllers()
        cpu = parse_keyed(fs.read(self._file("cpu.stat")))
        memory_current, memory_peak, memory_limit = 0, None, None
        if "memory" in controllers:
            memory_current = fs.read_int(self._file("memory.current"))
            peak = fs.read_optional(self._file("memory.peak"))
            memory_peak = None if peak is None else int(peak)
            memory_limit = parse_max(fs.read(self._file("memory.max")))
        pids_current, pids_limit = 0, None
        if "pids" in controllers:
            pids_current = fs.read_int(self._file("pids.current"))
            pids_limit = parse_max(fs.read(self._file("pids.max")))
        return Stats(
            memory_current=memory_current,
            memory_peak=memory_peak,
            memory_limit=memory_limit,
            cpu_usage_ns=cpu["usage_usec"] * 1000,
            cpu_nr_periods=cpu.get("nr_periods", 0),
            cpu_nr_throttled=cpu.get("nr_throttled", 0),
            cpu_throttled_ns=cpu.get("throttled_usec", 0) * 1000,
            pids_current=pids_current,
            pids_limit=pids_limit,
            oom_kills=self._oom_kills(controllers),
        )

    def oom_kills(self) -> int:
        """``oom_kill`` in ``memory.events``: processes the OOM killer killed here.

        Not ``oom``, which counts how often the limit was hit (reclaim may still have
        succeeded, or the allocation failed without a kill).
        """
        return self._oom_kills(self._controllers())

    def _oom_kills(self, controllers: set[str]) -> int:
        if "memory" not in controllers:
            return 0
        return parse_keyed(fs.read(self._file("memory.events"))).get("oom_kill", 0)

    def freeze(self) -> None:
        """Write 1 to ``cgroup.freeze`` and wait for ``frozen 1`` in ``cgroup.events``.

        Freezing is asynchronous: each task stops when it next returns to user space, and the
        kernel flips ``frozen`` once all have. On timeout the cgroup is thawed again.
        """
        fs.write(self._file("cgroup.freeze"), "1")
        if not wait_until(self.frozen, FREEZE_TIMEOUT):
            fs.write(self._file("cgroup.freeze"), "0")
            raise CgroupError(
                f"cgroup {self.name} did not freeze within {FREEZE_TIMEOUT} s",
                self._file("cgroup.events"),
            )

    def thaw(self) -> None:
        fs.write(self._file("cgroup.freeze"), "0")

    def frozen(self) -> bool:
        return parse_keyed(fs.read(self._file("cgroup.events"))).get("frozen") == 1

    def _freezer_available(self) -> bool:
        return os.path.exists(self._file("cgroup.freeze"))

    def _kill_in_kernel(self) -> bool:
        """Write 1 to ``cgroup.kill`` (Linux 5.14+): the kernel SIGKILLs every task in the
        cgroup and its descendants, with no window for a fork to escape."""
        if not os.path.exists(self._file("cgroup.kill")):
            return False
        fs.write(self._file("cgroup.kill"), "1")
        return True
