"""What a container may use (:class:`Limits`), what it used (:class:`Stats`), and the pure
arithmetic that turns Docker's flags into cgroup file values.

Docker's flags were designed for cgroup v1 and kept their v1 meaning on v2, so some values
need converting: ``--memory-swap`` is memory *plus* swap on v1 but v2's ``memory.swap.max``
counts swap alone; ``--cpu-shares`` (2..262144) became ``cpu.weight`` (1..10000).

Nothing here touches the filesystem: each backend asks a ``*_writes`` function for the ordered
list of (file, value) pairs and writes them, so the order rules can be unit-tested without root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Default CFS period: 100 ms. moby daemon/oci_linux.go uses it to turn ``--cpus`` into a quota.
DEFAULT_CPU_PERIOD_US = 100_000

#: cgroup v1 ``cpu.shares`` range: MIN_SHARES (2) .. MAX_SHARES (1 << 18) in kernel/sched.
MIN_SHARES = 2
MAX_SHARES = 262_144

#: v1 reports "no limit" as PAGE_COUNTER_MAX pages: LONG_MAX rounded down to the page size
#: (9223372036854771712 with 4 KiB pages). Anything at least this large is no limit.
V1_UNLIMITED = 1 << 62

#: A v1 device rule as devices.allow takes it: "a" (every device), or type (a = all, c = char,
#: b = block), "major:minor" (either may be "*"), access letters r(ead) w(rite) m(knod).
DEVICE_RULE = re.compile(
    r"a|(?P<type>[abc]) (?P<major>\*|\d+):(?P<minor>\*|\d+) (?P<access>[rwm]{1,3})"
)


@dataclass
class Limits:
    """Resource limits for one cgroup, in Docker's units and meanings.

    ``None`` means "leave this setting alone", so the same object serves ``run`` (a fresh
    cgroup starts unlimited) and ``update`` (only the named settings change).

    * ``memory``: bytes, or -1 for no limit.
    * ``memory_swap``: Docker's memory+swap total in bytes (so ``memory_swap == memory``
      means no swap), or -1 for unlimited swap. Needs ``memory``.
    * ``cpu_quota`` / ``cpu_period``: µs of CPU time per period (``--cpus 0.5`` is
      50000/100000, see :func:`cpus_to_quota`); quota -1 means no limit.
    * ``cpu_shares``: relative weight, Docker's 2..262144 (default 1024).
    * ``pids``: maximum number of tasks; 0 or -1 means unlimited (Docker API's meaning).
    * ``device_rules``: v1 ``devices.allow`` rules such as ``"c 1:3 rwm"``. Empty leaves device
      access alone; otherwise everything is denied first, then each rule allowed. cgroup v2
      has no devices files: the v2 backend compiles the same rules into an eBPF program that
      it attaches to the cgroup (:mod:`cgroups.devices_bpf`), with the same meaning.

    Raises ``ValueError`` for values the kernel would reject or Docker forbids.
    """

    memory: int | None = None
    memory_swap: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    cpu_shares: int | None = None
    pids: int | None = None
    device_rules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.memory is not None and self.memory != -1 and self.memory <= 0:
            raise ValueError(f"memory must be positive or -1, not {self.memory}")
        if self.memory_swap is not None and self.memory_swap != -1:
            if self.memory is None or self.memory == -1:
                # moby: "You should always set the Memory limit when using Memoryswap limit"
                raise ValueError("memory_swap needs a memory limit")
            if self.memory_swap < self.memory:
                raise ValueError(
                    f"memory_swap ({self.memory_swap}) must be >= memory ({self.memory})"
                )
        if self.cpu_quota is not None and self.cpu_quota != -1 and self.cpu_quota <= 0:
            raise ValueError(f"cpu_quota must be positive or -1, not {self.cpu_quota}")
        if self.cpu_period is not None and self.cpu_period <= 0:
            raise ValueError(f"cpu_period must be positive, not {self.cpu_period}")
        if self.cpu_shares is not None and not MIN_SHARES <= self.cpu_shares <= MAX_SHARES:
            raise ValueError(
                f"cpu_shares must be in {MIN_SHARES}..{MAX_SHARES}, not {self.cpu_shares}"
            )
        for rule in self.device_rules:
            if not DEVICE_RULE.fullmatch(rule):
                raise ValueError(f"bad device rule {rule!r} (expected e.g. 'c 1:3 rwm')")


@dataclass(frozen=True)
class Stats:
    """A snapshot of what the kernel accounted for one cgroup.

    Sizes in bytes, times in nanoseconds. ``None`` means "no limit" for the limits and "not
    reported by this kernel" for ``memory_peak``. A controller that is not available reads
    as zero.
    """

    memory_current: int
    memory_peak: int | None
    memory_limit: int | None
    cpu_usage_ns: int
    cpu_nr_periods: int
    cpu_nr_throttled: int
    cpu_throttled_ns: int
    pids_current: int
    pids_limit: int | None
    oom_kills: int


# ---------------------------------------------------------------------------------------------
# Conversions (pure)


def cpus_to_quota(cpus: float, period: int = DEFAULT_CPU_PERIOD_US) -> tuple[int, int]:
    """``--cpus N`` → ``(quota, period)`` in µs, as moby daemon/oci_linux.go does it.

    Docker stores ``--cpus`` as NanoCPUs (cpus × 10⁹) and then computes
    ``quota = NanoCPUs × period / 10⁹`` with a 100 ms period: 0.5 CPU → 50000/100000.
    """
    if cpus <= 0:
        raise ValueError(f"cpus must be positive, not {cpus}")
    nano_cpus = round(cpus * 1_000_000_000)
    return nano_cpus * period // 1_000_000_000, period


def shares_to_weight(shares: int) -> int:
    """cgroup v1 ``cpu.shares`` (2..262144) → v2 ``cpu.weight`` (1..10000).

    The linear map runc uses (opencontainers/cgroups ``ConvertCPUSharesToCgroupV2Value``):
    ``1 + ((shares - 2) * 9999) // 262142``. Docker's default 1024 shares becomes weight 39,
    not v2's default 100 — a known quirk of this formula, kept for compatibility.
    """
    if not MIN_SHARES <= shares <= MAX_SHARES:
        raise ValueError(f"cpu shares must be in {MIN_SHARES}..{MAX_SHARES}, not {shares}")
    return 1 + ((shares - 2) * 9999) // 262142


def swap_max_v2(memory: int | None, memory_swap: int | None) -> str | None:
    """Docker's memory+swap total → v2 ``memory.swap.max`` (swap alone), or ``None`` to skip.

    Follows runc's ``ConvertMemorySwapToCgroupV2Value``: -1 → ``"max"``; otherwise
    ``memory_swap - memory``. Setting memory to -1 without naming swap also lifts the swap
    limit, "for compatibility with cgroup1", where memsw can't stay below the memory limit.
    """
    if memory_swap is None:
        return "max" if memory == -1 else None
    if memory_swap == -1:
        return "max"
    if memory is None or memory <= 0 or memory_swap < memory:
        raise ValueError(f"memory_swap {memory_swap} needs memory <= it, not {memory}")
    return str(memory_swap - memory)


def cpu_max_v2(quota: int | None, period: int | None) -> str | None:
    """Quota and period → v2 ``cpu.max`` ``"$QUOTA $PERIOD"``, or ``None`` to skip.

    The kernel reads the first word as the quota (``max`` = none) and an optional second word
    as the period. Like runc, a period given without a quota writes ``"max $PERIOD"``, which
    also lifts any quota already set.
    """
    if quota is None and period is None:
        return None
    q = "max" if quota is None or quota == -1 else str(quota)
    return q if period is None else f"{q} {period}"


def pids_max(pids: int | None) -> str | None:
    """``--pids-limit`` → ``pids.max`` (same file and syntax on v1 and v2), or ``None``.

    Values ≤ 0 mean unlimited (``"max"``): moby daemon/oci_linux.go ``getPidsLimit`` maps
    "0 and negative values" to -1, which runc writes as ``max``.
    """
    if pids is None:
        return None
    return "max" if pids <= 0 else str(pids)


def memory_max_v2(memory: int | None) -> str | None:
    """``--memory`` → v2 ``memory.max`` (-1 → ``"max"``), or ``None`` to skip."""
    if memory is None:
        return None
    return "max" if memory == -1 else str(memory)


def v2_writes(limits: Limits, has_swap_file: bool) -> list[tuple[str, str]]:
    """The ``(file, value)`` writes that apply ``limits`` to a v2 cgroup, in order.

    ``memory.swap.max`` exists only when the kernel accounts swap; without it the swap part is
    skipped. Device rules are not v2 files: :mod:`cgroups.devices_bpf` applies them.
    """
    candidates = [
        ("memory.max", memory_max_v2(limits.memory)),
        ("memory.swap.max", swap_max_v2(limits.memory, limits.memory_swap)),
        ("cpu.max", cpu_max_v2(limits.cpu_quota, limits.cpu_period)),
        (
            "cpu.weight",
            None if limits.cpu_shares is None else str(shares_to_weight(limits.cpu_shares)),
        ),
        ("pids.max", pids_max(limits.pids)),
    ]
    return [
        (name, value)
        for name, value in candidates
        if value is not None and (name != "memory.swap.max" or has_swap_file)
    ]


def v1_writes(
    limits: Limits, current_memory_limit: int, has_memsw_file: bool
) -> list[tuple[str, str, str]]:
    """The ``(controller, file, value)`` writes that apply ``limits`` to v1 cgroups, in order.

    Order matters on v1 because the kernel checks each write against the current state:

    * ``memory.memsw.limit_in_bytes`` (memory+swap) may never be below
      ``memory.limit_in_bytes``. runc (libcontainer/cgroups/fs/memory.go ``setMemoryAndSwap``)
      writes memsw first when it is -1 or above the current memory limit (raising both),
      otherwise memory first (lowering both). A fresh cgroup is unlimited, so memory goes
      first. The memsw file exists only with swap accounting; without it swap is skipped.
    * ``cpu.cfs_period_us`` before ``cpu.cfs_quota_us``, as runc does.
    * Device rules: ``"a"`` to ``devices.deny`` (deny all), then each rule to ``devices.allow``.
    """
    memory, swap = limits.memory, limits.memory_swap
    if memory == -1 and swap is None:
        swap = -1  # runc: unlimited memory means unlimited memory+swap too
    if not has_memsw_file:
        swap = None
    mem_w = [] if memory is None else [("memory", "memory.limit_in_bytes", str(memory))]
    swap_w = [] if swap is None else [("memory", "memory.memsw.limit_in_bytes", str(swap))]
    raise_swap_first = (
        memory is not None and swap is not None and (swap == -1 or current_memory_limit < swap)
    )
    writes = swap_w + mem_w if raise_swap_first else mem_w + swap_w

    if limits.cpu_period is not None:
        writes.append(("cpu", "cpu.cfs_period_us", str(limits.cpu_period)))
    if limits.cpu_quota is not None:
        writes.append(("cpu", "cpu.cfs_quota_us", str(limits.cpu_quota)))
    if limits.cpu_shares is not None:
        writes.append(("cpu", "cpu.shares", str(limits.cpu_shares)))
    pids = pids_max(limits.pids)
    if pids is not None:
        writes.append(("pids", "pids.max", pids))
    if limits.device_rules:
        writes.append(("devices", "devices.deny", "a"))
        writes += [("devices", "devices.allow", rule) for rule in limits.device_rules]
    return writes


# ---------------------------------------------------------------------------------------------
# Parsing what the kernel reports (pure)


def parse_keyed(text: str) -> dict[str, int]:
    """Parse a "flat keyed" cgroup file: one ``key value`` pair per line.

    ``cpu.stat``, ``memory.events``, ``memory.oom_control``, ``pids.events`` and
    ``cgroup.events`` all use this format.
    """
    result: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value:
            result[key] = int(value)
    return result


def parse_max(text: str) -> int | None:
    """Parse a v2 limit file (``memory.max``, ``pids.max``): ``"max"`` → ``None``."""
    text = text.strip()
    return None if text == "max" else int(text)


def parse_v1_limit(text: str) -> int | None:
    """Parse a v1 byte limit (``memory.limit_in_bytes``): the "unlimited" huge value → None."""
    value = int(text)
    return None if value >= V1_UNLIMITED else value


def parse_pids(text: str) -> list[int]:
    """Parse ``cgroup.procs``: one PID per line."""
    return [int(line) for line in text.split()]
