"""User namespaces, the engine's pure half: flags, id maps, the range allocator, the
subuid file and its lock, and what the spec says. No root needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from minidock import userns
from minidock.errors import InvalidArgument, MinidockError
from tests.unit.test_spec import _build, _record


def test_userns_mode_flag() -> None:
    assert userns.parse_mode("") is None
    assert userns.parse_mode("host") is None
    assert userns.parse_mode("auto") == userns.DEFAULT_SIZE == 65536
    assert userns.parse_mode("auto:size=1024") == 1024
    for bad in ("keep-id", "auto:size=0", "auto:size=x", "auto:uidmapping=0:1:2", "host:size=1"):
        with pytest.raises(InvalidArgument, match="want host, auto or auto:size=N"):
            userns.parse_mode(bad)


def test_id_mapping_flag_round_trips() -> None:
    mapping = userns.parse_mapping("0:100000:65536")
    assert mapping == {"containerID": 0, "hostID": 100000, "size": 65536}
    assert userns.format_mapping(mapping) == "0:100000:65536"
    for bad in ("0:100000", "0:x:1", "0:1:0", "-1:0:1", f"0:{2**32 - 2}:2"):
        with pytest.raises(InvalidArgument, match="invalid id mapping"):
            userns.parse_mapping(bad)


def test_to_host_translates_through_each_range() -> None:
    maps = [{"containerID": 0, "hostID": 1000, "size": 1},
            {"containerID": 1, "hostID": 200000, "size": 100}]  # fmt: skip
    assert userns.to_host(0, maps) == 1000
    assert userns.to_host(1, maps) == 200000
    assert userns.to_host(100, maps) == 200099
    assert userns.to_host(101, maps) is None


def test_id_maps_from_host_config_must_map_root() -> None:
    host = {"IDMappings": {"UidMap": ["0:300000:10"], "GidMap": ["0:400000:10"]}}
    maps = userns.IdMaps.from_host_config(host)
    assert maps is not None and maps.root == (300000, 400000)
    assert userns.IdMaps.from_host_config({}) is None
    assert userns.IdMaps.from_host_config({"IDMappings": {}}) is None
    with pytest.raises(InvalidArgument, match="must map the container's root"):
        userns.IdMaps.from_host_config({"IDMappings": {"UidMap": ["1:300000:10"],
                                                       "GidMap": ["0:300000:10"]}})  # fmt: skip


def test_allocator_takes_the_lowest_free_block() -> None:
    available = [(100000, 65536 * 4)]
    assert userns.free_start(available, [], 65536) == 100000
    used = [(100000, 65536)]
    assert userns.free_start(available, used, 65536) == 165536
    # A hole left by a removed container is reused, first.
    used = [(165536, 65536), (100000 + 3 * 65536, 65536)]
    assert userns.free_start(available, used, 65536) == 100000
    used = [(100000, 65536), (100000 + 2 * 65536, 65536)]
    assert userns.free_start(available, used, 65536) == 165536


def test_allocator_skips_partial_overlaps_and_unsorted_input() -> None:
    available = [(500, 100), (0, 100)]
    used = [(60, 10), (10, 5)]  # out of order
    assert userns.free_start(available, used, 10) == 0  # 0..9 ends just before 10
    assert userns.free_start(available, used, 11) == 15  # 0..10 hits 10..14
    assert userns.free_start(available, used, 45) == 15  # 15..59 ends just before 60
    assert userns.free_start(available, used, 46) == 500  # 70..115 would leave 0..99
    assert userns.free_start(available, [(0, 100), (500, 100)], 1) is None  # all taken
    assert userns.free_start(available, [], 101) is None  # no range is big enough


def test_ranges_are_read_by_name(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\n# comment\ncontainers:200000:1000\nbroken line\n"
                      "containers:300000:1000\n")  # fmt: skip
    assert userns.read_ranges(str(subuid)) == [(200000, 1000), (300000, 1000)]
    assert userns.read_ranges(str(subuid), "alice") == [(100000, 65536)]
    assert userns.read_ranges(str(tmp_path / "missing")) == []


def test_first_use_adds_podmans_range_and_keeps_the_rest(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536")  # no final newline
    subuid.chmod(0o640)
    assert userns.ensure_ranges(str(subuid)) == [userns.FIRST_USE_RANGE]
    assert subuid.read_text() == "alice:100000:65536\ncontainers:2147483647:2147483648\n"
    assert subuid.stat().st_mode & 0o777 == 0o640
    assert userns.ensure_ranges(str(subuid)) == [userns.FIRST_USE_RANGE]  # added once
    assert sorted(os.listdir(tmp_path)) == ["subuid"]  # no lock or temporary file left
    missing = tmp_path / "subgid"
    assert userns.ensure_ranges(str(missing)) == [userns.FIRST_USE_RANGE]
    assert missing.read_text() == "containers:2147483647:2147483648\n"


def test_first_use_refuses_a_taken_range(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("bob:3000000000:65536\n")
    with pytest.raises(MinidockError, match="has no range for containers"):
        userns.ensure_ranges(str(subuid))
    assert subuid.read_text() == "bob:3000000000:65536\n"


def test_shadow_lock_breaks_a_dead_holders_lock_but_waits_for_a_live_one(tmp_path: Path) -> None:
    path = str(tmp_path / "subuid")
    Path(f"{path}.lock").write_text(str(_exited_pid()))
    with userns.shadow_lock(path):
        assert Path(f"{path}.lock").read_text() == str(os.getpid())
    assert not Path(f"{path}.lock").exists()
    Path(f"{path}.lock").write_text(str(os.getppid()))  # alive: our parent
    with (
        pytest.raises(MinidockError, match="held by another process"),
        userns.shadow_lock(path, timeout=0.2),
    ):
        pass
    assert Path(f"{path}.lock").read_text() == str(os.getppid())  # not ours to break


def _exited_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_spec_gets_a_user_namespace_first_and_the_maps() -> None:
    host = {"IDMappings": {"UidMap": ["0:2147483647:65536"], "GidMap": ["0:2147483647:65536"]}}
    s = _build(_record(**host))
    assert s["linux"]["namespaces"][0] == {"type": "user"}
    mapping = [{"containerID": 0, "hostID": 2147483647, "size": 65536}]
    assert s["linux"]["uidMappings"] == mapping and s["linux"]["gidMappings"] == mapping
    plain = _build(_record())
    assert "user" not in {ns["type"] for ns in plain["linux"]["namespaces"]}
    assert "uidMappings" not in plain["linux"]
