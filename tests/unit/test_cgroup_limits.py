"""Pure-logic tests for cgroups.limits: Docker flag conversions, write plans, file parsers."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from cgroups import fs
from cgroups.base import ancestors, check_name
from cgroups.limits import (
    Limits,
    cpu_max_v2,
    cpus_to_quota,
    memory_max_v2,
    parse_keyed,
    parse_max,
    parse_pids,
    parse_v1_limit,
    pids_max,
    shares_to_weight,
    swap_max_v2,
    v1_writes,
    v2_writes,
)

MiB = 1 << 20
V1_UNLIMITED_4K = 9223372036854771712  # what a fresh v1 memory.limit_in_bytes reads


# -- --cpus → quota/period ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpus", "expected"),
    [
        (0.5, (50_000, 100_000)),
        (1, (100_000, 100_000)),
        (1.5, (150_000, 100_000)),
        (2, (200_000, 100_000)),
        (0.01, (1_000, 100_000)),
        (0.1, (10_000, 100_000)),  # 0.1 is inexact in binary; NanoCPUs rounding keeps it exact
    ],
)
def test_cpus_to_quota(cpus: float, expected: tuple[int, int]) -> None:
    assert cpus_to_quota(cpus) == expected


def test_cpus_to_quota_custom_period() -> None:
    assert cpus_to_quota(0.5, period=50_000) == (25_000, 50_000)


@pytest.mark.parametrize("cpus", [0, -1])
def test_cpus_to_quota_rejects_non_positive(cpus: float) -> None:
    with pytest.raises(ValueError):
        cpus_to_quota(cpus)


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [
        (50_000, 100_000, "50000 100000"),
        (None, 100_000, "max 100000"),
        (-1, 100_000, "max 100000"),
        (50_000, None, "50000"),
        (-1, None, "max"),
        (None, None, None),
    ],
)
def test_cpu_max_v2(quota: int | None, period: int | None, expected: str | None) -> None:
    assert cpu_max_v2(quota, period) == expected


# -- shares → weight ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shares", "weight"),
    [(2, 1), (1024, 39), (512, 20), (2048, 79), (262_144, 10_000)],
)
def test_shares_to_weight(shares: int, weight: int) -> None:
    assert shares_to_weight(shares) == weight


@pytest.mark.parametrize("shares", [0, 1, 262_145])
def test_shares_to_weight_rejects_out_of_range(shares: int) -> None:
    with pytest.raises(ValueError):
        shares_to_weight(shares)


# -- memory, swap, pids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("memory", "swap", "expected"),
    [
        (64 * MiB, 128 * MiB, str(64 * MiB)),  # 128 MiB memory+swap = 64 MiB swap
        (64 * MiB, 64 * MiB, "0"),  # memory_swap == memory: no swap at all
        (64 * MiB, -1, "max"),
        (64 * MiB, None, None),  # swap untouched
        (-1, None, "max"),  # runc: unlimited memory lifts the swap limit too
        (None, None, None),
    ],
)
def test_swap_max_v2(memory: int | None, swap: int | None, expected: str | None) -> None:
    assert swap_max_v2(memory, swap) == expected


@pytest.mark.parametrize(("memory", "swap"), [(None, 64 * MiB), (-1, 64 * MiB), (64 * MiB, MiB)])
def test_swap_max_v2_rejects_inconsistent(memory: int | None, swap: int) -> None:
    with pytest.raises(ValueError):
        swap_max_v2(memory, swap)


def test_memory_max_v2() -> None:
    assert memory_max_v2(32 * MiB) == str(32 * MiB)
    assert memory_max_v2(-1) == "max"
    assert memory_max_v2(None) is None


@pytest.mark.parametrize(
    ("pids", "expected"), [(20, "20"), (1, "1"), (0, "max"), (-1, "max"), (None, None)]
)
def test_pids_max(pids: int | None, expected: str | None) -> None:
    assert pids_max(pids) == expected


# -- Limits validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"memory": 0},
        {"memory": -2},
        {"memory_swap": 64 * MiB},  # swap without memory
        {"memory": 64 * MiB, "memory_swap": 32 * MiB},  # total below memory
        {"cpu_quota": 0},
        {"cpu_period": 0},
        {"cpu_shares": 1},
        {"cpu_shares": 300_000},
        {"device_rules": ["c 1:3"]},
        {"device_rules": ["c 1:3 rwm\nc 1:5 rwm"]},  # one rule per write, no smuggling
    ],
)
def test_limits_rejects(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_limits_accepts() -> None:
    Limits(
        memory=-1,
        memory_swap=-1,
        cpu_quota=-1,
        cpu_shares=2,
        pids=0,
        device_rules=["a", "c 1:3 rwm", "b *:* m", "c 136:* rw"],
    )


def test_limits_default_device_rules_not_shared() -> None:
    a, b = Limits(), Limits()
    a.device_rules.append("c 1:3 rwm")
    assert b.device_rules == []


# -- write plans --------------------------------------------------------------------------------


def test_v2_writes_full() -> None:
    limits = Limits(
        memory=32 * MiB,
        memory_swap=64 * MiB,
        cpu_quota=50_000,
        cpu_period=100_000,
        cpu_shares=1024,
        pids=20,
        device_rules=["c 1:3 rwm"],
    )
    assert v2_writes(limits, has_swap_file=True) == [
        ("memory.max", str(32 * MiB)),
        ("memory.swap.max", str(32 * MiB)),
        ("cpu.max", "50000 100000"),
        ("cpu.weight", "39"),
        ("pids.max", "20"),
    ]


def test_v2_writes_skips_swap_without_swap_accounting() -> None:
    limits = Limits(memory=32 * MiB, memory_swap=64 * MiB)
    assert v2_writes(limits, has_swap_file=False) == [("memory.max", str(32 * MiB))]


def test_v2_writes_nothing_for_empty_limits() -> None:
    assert v2_writes(Limits(), has_swap_file=True) == []


def test_v2_writes_reset_to_unlimited() -> None:
    limits = Limits(memory=-1, cpu_quota=-1, pids=-1)
    assert v2_writes(limits, has_swap_file=True) == [
        ("memory.max", "max"),
        ("memory.swap.max", "max"),
        ("cpu.max", "max"),
        ("pids.max", "max"),
    ]


def test_v1_writes_fresh_cgroup_memory_first() -> None:
    limits = Limits(memory=32 * MiB, memory_swap=64 * MiB, cpu_quota=20_000, cpu_period=100_000)
    assert v1_writes(limits, V1_UNLIMITED_4K, has_memsw_file=True) == [
        ("memory", "memory.limit_in_bytes", str(32 * MiB)),
        ("memory", "memory.memsw.limit_in_bytes", str(64 * MiB)),
        ("cpu", "cpu.cfs_period_us", "100000"),  # period before quota
        ("cpu", "cpu.cfs_quota_us", "20000"),
    ]


def test_v1_writes_raising_limits_writes_memsw_first() -> None:
    # Currently 32 MiB / 64 MiB; going to 128 MiB / 256 MiB: memory first would put
    # memory (128) above memsw (64), which the kernel refuses.
    limits = Limits(memory=128 * MiB, memory_swap=256 * MiB)
    assert v1_writes(limits, 32 * MiB, has_memsw_file=True) == [
        ("memory", "memory.memsw.limit_in_bytes", str(256 * MiB)),
        ("memory", "memory.limit_in_bytes", str(128 * MiB)),
    ]


def test_v1_writes_unlimited_memory_lifts_memsw_first() -> None:
    assert v1_writes(Limits(memory=-1), 32 * MiB, has_memsw_file=True) == [
        ("memory", "memory.memsw.limit_in_bytes", "-1"),
        ("memory", "memory.limit_in_bytes", "-1"),
    ]


def test_v1_writes_skips_memsw_without_swap_accounting() -> None:
    limits = Limits(memory=32 * MiB, memory_swap=64 * MiB)
    assert v1_writes(limits, V1_UNLIMITED_4K, has_memsw_file=False) == [
        ("memory", "memory.limit_in_bytes", str(32 * MiB)),
    ]


def test_v1_writes_shares_pids_devices() -> None:
    limits = Limits(cpu_shares=512, pids=-1, device_rules=["c 1:3 rwm", "c 1:5 rwm"])
    assert v1_writes(limits, 0, has_memsw_file=True) == [
        ("cpu", "cpu.shares", "512"),
        ("pids", "pids.max", "max"),
        ("devices", "devices.deny", "a"),
        ("devices", "devices.allow", "c 1:3 rwm"),
        ("devices", "devices.allow", "c 1:5 rwm"),
    ]


def test_v1_writes_nothing_for_empty_limits() -> None:
    assert v1_writes(Limits(), 0, has_memsw_file=True) == []


# -- parsing kernel files -----------------------------------------------------------------------

V2_CPU_STAT = """usage_usec 1234567
user_usec 1000000
system_usec 234567
core_sched.force_idle_usec 0
nr_periods 10
nr_throttled 8
throttled_usec 812345
nr_bursts 0
burst_usec 0
"""

V1_CPU_STAT = """nr_periods 11
nr_throttled 9
throttled_time 801234567
nr_bursts 0
burst_time 0
"""

V2_MEMORY_EVENTS = """low 0
high 0
max 57
oom 3
oom_kill 2
oom_group_kill 0
"""

V1_OOM_CONTROL = """oom_kill_disable 0
under_oom 0
oom_kill 1
"""


def test_parse_v2_cpu_stat() -> None:
    stat = parse_keyed(V2_CPU_STAT)
    assert stat["usage_usec"] == 1234567
    assert (stat["nr_periods"], stat["nr_throttled"], stat["throttled_usec"]) == (10, 8, 812345)


def test_parse_v1_cpu_stat() -> None:
    stat = parse_keyed(V1_CPU_STAT)
    assert (stat["nr_periods"], stat["nr_throttled"], stat["throttled_time"]) == (11, 9, 801234567)


def test_parse_memory_events_oom_kill_not_oom() -> None:
    events = parse_keyed(V2_MEMORY_EVENTS)
    assert events["oom_kill"] == 2
    assert events["oom"] == 3


def test_parse_v1_oom_control() -> None:
    assert parse_keyed(V1_OOM_CONTROL)["oom_kill"] == 1


def test_parse_keyed_empty() -> None:
    assert parse_keyed("") == {}


def test_parse_max() -> None:
    assert parse_max("max\n") is None
    assert parse_max("33554432\n") == 33554432


def test_parse_v1_limit() -> None:
    assert parse_v1_limit(str(V1_UNLIMITED_4K)) is None
    assert parse_v1_limit("9223372036854710272") is None  # 64 KiB pages
    assert parse_v1_limit("33554432") == 33554432


def test_parse_pids() -> None:
    assert parse_pids("12\n345\n") == [12, 345]
    assert parse_pids("") == []


# -- names and the write hook -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["minidock/abc", "x", "a/b/c"])
def test_check_name_ok(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "..", "a//b", "a/", "./a"])
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)


def test_ancestors() -> None:
    assert ancestors("a/b/c") == ["a", "a/b"]
    assert ancestors("leaf") == []


def test_write_calls_observer_and_reports_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(fs, "observer", lambda path, value: seen.append((path, value)))
    target = str(tmp_path / "pids.max")
    open(target, "w").close()
    fs.write(target, "20")
    assert seen == [(target, "20")]
    assert fs.read(target) == "20"

    missing = str(tmp_path / "nope" / "memory.max")
    with pytest.raises(fs.CgroupError) as info:
        fs.write(missing, "1")
    assert missing in str(info.value) and "ENOENT" in str(info.value)
    assert info.value.errno == errno.ENOENT
