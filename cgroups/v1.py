"""cgroup v1: one separate tree per controller, mounted at ``<mount>/<controller>``.

A "cgroup" here is really one directory per hierarchy with the same relative name
(``memory/minidock/<id>``, ``cpu/minidock/<id>``, ...), and a process has to be written into
each of them. Unlike v2, inner cgroups may hold processes and limits need no enabling.

Some v1 behaviours this backend works around:

* Killing reliably needs the **freezer** hierarchy: v1 has no ``cgroup.kill``, so the only way
  to stop a fork loop from outrunning a read-``cgroup.procs``-then-kill loop is to freeze the
  cgroup first (see :meth:`cgroups.base.Cgroup.kill_all`).
* ``memory.memsw.*`` (memory+swap) exists only when swap accounting is on
  (``swapaccount=1``); without it swap limits are silently skipped, as runc does.
* Hosts may co-mount controllers (``cpu,cpuacct`` with ``cpu`` and ``cpuacct`` as symlinks);
  such a shared directory is created, filled and removed once.
"""

from __future__ import annotations

import os

from . import fs
from .base import FREEZE_TIMEOUT, Cgroup, ancestors, wait_until
from .fs import CgroupError
from .limits import Limits, Stats, parse_keyed, parse_max, parse_pids, parse_v1_limit, v1_writes

#: The hierarchies minidock uses, whichever are mounted. cpuset is left out: a new cpuset
#: cgroup starts with empty ``cpuset.cpus``/``cpuset.mems`` and accepts no task until they are
#: filled in.
CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "freezer", "devices")


def hierarchies(root: str) -> dict[str, str]:
    """Controller → real path of its mounted hierarchy root, for each of :data:`CONTROLLERS`."""
    found: dict[str, str] = {}
    for controller in CONTROLLERS:
        directory = os.path.join(root, controller)
        if os.path.isfile(os.path.join(directory, "cgroup.procs")):
            found[controller] = os.path.realpath(directory)
    return found


class V1Cgroup(Cgroup):
    """A cgroup spread over the v1 hierarchies: one directory per mounted controller."""

    def __init__(self, root: str, name: str) -> None:
        super().__init__(root, name)
        self._roots = hierarchies(root)
        if not self._roots:
            raise CgroupError(f"none of {', '.join(CONTROLLERS)} is mounted under {root}", root)

    def paths(self) -> dict[str, str]:
        return {c: os.path.join(r, self.name) for c, r in self._roots.items()}

    def _file(self, controller: str, name: str) -> str:
        """Path of ``name`` in this cgroup's ``controller`` hierarchy; CgroupError if unmounted."""
        if controller not in self._roots:
            raise CgroupError(
                f"cgroup {self.name}: the {controller} controller is not mounted under "
                f"{self.root}, so {name} cannot be used"
            )
        return os.path.join(self._roots[controller], self.name, name)

    def _mkdirs(self) -> None:
        """mkdir the cgroup in every hierarchy; undo the ones made if any fails."""
        made: list[str] = []
        try:
            for root in dict.fromkeys(self._roots.values()):
                for rel in ancestors(self.name):
                    fs.mkdir(os.path.join(root, rel), exist_ok=True)
                fs.mkdir(os.path.join(root, self.name))
                made.append(os.path.join(root, self.name))
        except CgroupError:
            for path in made:
                fs.rmdir(path)
            raise

    def add_process(self, pid: int) -> None:
        """Write ``pid`` into ``cgroup.procs`` of every hierarchy."""
        for directory in self._dirs():
            fs.write(os.path.join(directory, "cgroup.procs"), str(pid))

    def set_limits(self, limits: Limits) -> None:
        """Write the v1 files in the order :func:`cgroups.limits.v1_writes` gives.

        The current ``memory.limit_in_bytes`` is read first because the safe order of the
        memory and memory+swap writes depends on it.
        """
        current_limit = 0
        has_memsw = False
        if "memory" in self._roots:
            has_memsw = os.path.exists(self._file("memory", "memory.memsw.limit_in_bytes"))
            if limits.memory is not None:
                current_limit = fs.read_int(self._file("memory", "memory.limit_in_bytes"))
        for controller, name, value in v1_writes(limits, current_limit, has_memsw):
            fs.write(self._file(controller, name), value)

    def pids(self) -> list[int]:
        """``cgroup.procs`` of the pids hierarchy (else memory, else any: all list the same)."""
        controller = next(
            (c for c in ("pids", "memory") if c in self._roots), next(iter(self._roots))
        )
        return parse_pids(fs.read(self._file(controller, "cgroup.procs")))

    def stats(self) -> Stats:
        """Gather the counters from the memory, cpuacct, cpu and pids hierarchies."""
        memory_current, memory_peak, memory_limit = 0, None, None
        if "memory" in self._roots:
            memory_current = fs.read_int(self._file("memory", "memory.usage_in_bytes"))
            memory_peak = fs.read_int(self._file("memory", "memory.max_usage_in_bytes"))
            memory_limit = parse_v1_limit(fs.read(self._file("memory", "memory.limit_in_bytes")))
        usage_ns = 0
        if "cpuacct" in self._roots:
            usage_ns = fs.read_int(self._file("cpuacct", "cpuacct.usage"))
        cpu: dict[str, int] = {}
        if "cpu" in self._roots:
            cpu = parse_keyed(fs.read(self._file("cpu", "cpu.stat")))
        pids_current, pids_limit = 0, None
        if "pids" in self._roots:
            pids_current = fs.read_int(self._file("pids", "pids.current"))
            pids_limit = parse_max(fs.read(self._file("pids", "pids.max")))
        return Stats(
            memory_current=memory_current,
            memory_peak=memory_peak,
            memory_limit=memory_limit,
            cpu_usage_ns=usage_ns,
            cpu_nr_periods=cpu.get("nr_periods", 0),
            cpu_nr_throttled=cpu.get("nr_throttled", 0),
            cpu_throttled_ns=cpu.get("throttled_time", 0),
            pids_current=pids_current,
            pids_limit=pids_limit,
            oom_kills=self.oom_kills(),
        )

    def oom_kills(self) -> int:
        """``oom_kill`` in ``memory.oom_control`` (Linux 4.13+); 0 without a memory hierarchy."""
        if "memory" not in self._roots:
            return 0
        text = fs.read(self._file("memory", "memory.oom_control"))
        return parse_keyed(text).get("oom_kill", 0)

    def freeze(self) -> None:
        """Write FROZEN to ``freezer.state`` and wait until it reads FROZEN, not FREEZING.

        The v1 freezer stops tasks one by one and reports FREEZING until the last has stopped.
        On timeout the cgroup is thawed again.
        """
        state = self._file("freezer", "freezer.state")
        fs.write(state, "FROZEN")
        if not wait_until(self.frozen, FREEZE_TIMEOUT):
            fs.write(state, "THAWED")
            raise CgroupError(f"cgroup {self.name} did not freeze within {FREEZE_TIMEOUT} s", state)

    def thaw(self) -> None:
        fs.write(self._file("freezer", "freezer.state"), "THAWED")

    def frozen(self) -> bool:
        if "freezer" not in self._roots:
            return False
        return fs.read(self._file("freezer", "freezer.state")) == "FROZEN"

    def _freezer_available(self) -> bool:
        return "freezer" in self._roots
