"""Spec building: the OCI config.json the engine hands to the runtime."""

from __future__ import annotations

import pytest

from minidock import caps, spec
from minidock.errors import InvalidArgument


def _record(**host: object) -> dict:
    config = {
        "Hostname": "abc",
        "Env": ["A=1"],
        "Cmd": None,
        "Entrypoint": None,
        "WorkingDir": "",
        "Tty": False,
    }
    host_config = {"NetworkMode": "none", "Binds": [], "CapAdd": [], "CapDrop": [], **host}
    return {"Name": "/web", "Config": config, "HostConfig": host_config}


def _build(record: dict, image: dict | None = None, **kw: object) -> dict:
    args = {
        "rootfs": "rootfs",
        "cgroup_path": "minidock/x",
        "identity": (0, 0, []),
        "etc_files": {"/etc/hosts": "/h"},
        "network_path": None,
        "host_hard_limits": {"RLIMIT_NOFILE": 20000},
        **kw,
    }
    return spec.build(record, image or {"Cmd": ["sh"]}, **args)


def test_command_line_follows_dockers_rules() -> None:
    image = {"Entrypoint": ["/ep"], "Cmd": ["default"]}
    assert spec.command_line({"Cmd": None, "Entrypoint": None}, image) == ["/ep", "default"]
    assert spec.command_line({"Cmd": ["x"], "Entrypoint": None}, image) == ["/ep", "x"]
    assert spec.command_line({"Cmd": None, "Entrypoint": ["/other"]}, image) == ["/other"]
    assert spec.command_line({"Cmd": ["a"], "Entrypoint": []}, image) == ["a"]


def test_environment_user_overrides_image_and_sets_hostname() -> None:
    env = spec.environment({"Env": ["A=2"], "Tty": True}, {"Env": ["A=1", "B=1"]}, "h")
    assert "A=2" in env and "B=1" in env and "HOSTNAME=h" in env and "TERM=xterm" in env
    assert sum(e.startswith("PATH=") for e in env) == 1


def test_default_spec_has_dockers_defaults() -> None:
    s = _build(_record())
    assert s["process"]["args"] == ["sh"]
    assert s["process"]["capabilities"]["bounding"] == sorted(
        caps.DOCKER_DEFAULT, key=caps.CAPABILITIES.__getitem__
    )
    kinds = {ns["type"] for ns in s["linux"]["namespaces"]}
    assert kinds == {"pid", "mount", "uts", "ipc", "cgroup", "network"}
    assert "/proc/kcore" in s["linux"]["maskedPaths"]
    assert "/proc/sys" in s["linux"]["readonlyPaths"]
    destinations = [m["destination"] for m in s["mounts"]]
    assert destinations[:3] == ["/proc", "/dev", "/dev/pts"] and "/etc/hosts" in destinations
    assert s["linux"]["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert s["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 20000, "hard": 20000}]


def test_host_network_has_no_network_namespace_and_container_network_joins() -> None:
    s = _build(_record(NetworkMode="host"))
    assert "network" not in {ns["type"] for ns in s["linux"]["namespaces"]}
    s = _build(_record(NetworkMode="container:x"), network_path="/proc/7/ns/net")
    assert {"type": "network", "path": "/proc/7/ns/net"} in s["linux"]["namespaces"]


def test_resources_from_flags() -> None:
    s = _build(
        _record(
            Memory=64 << 20, MemorySwap=128 << 20, NanoCpus=500_000_000, CpuShares=512, PidsLimit=64
        )
    )
    res = s["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20, "swap": 128 << 20}
    assert res["cpu"] == {"period": 100_000, "quota": 50_000, "shares": 512}
    assert res["pids"] == {"limit": 64}


def test_privileged_drops_masks_and_grants_available_caps() -> None:
    s = _build(_record(Privileged=True), host_caps=["CAP_CHOWN", "CAP_SYS_ADMIN"])
    assert s["process"]["capabilities"]["bounding"] == ["CAP_CHOWN", "CAP_SYS_ADMIN"]
    assert s["linux"]["maskedPaths"] == [] and s["linux"]["readonlyPaths"] == []
    assert "devices" not in s["linux"]["resources"]


def test_binds_and_init_annotation() -> None:
    s = _build(_record(Binds=["/src:/dst:ro"], Init=True))
    bind = next(m for m in s["mounts"] if m["destination"] == "/dst")
    assert bind["source"] == "/src" and "ro" in bind["options"]
    assert s["annotations"]["org.minidock.init"] == "true"


def test_rlimits_clamp_to_host_hard_limit() -> None:
    limits = spec.rlimits([{"Name": "RLIMIT_NPROC", "Soft": 10, "Hard": 99}], {"RLIMIT_NPROC": 50})
    assert {"type": "RLIMIT_NPROC", "soft": 10, "hard": 50} in limits


def test_capability_names() -> None:
    assert caps.normalize("net_admin") == "CAP_NET_ADMIN"
    assert caps.resolve(["ALL"], [], False) == sorted(
        caps.CAPABILITIES, key=caps.CAPABILITIES.__getitem__
    )
    assert caps.resolve([], ["ALL"]) == []
    assert "CAP_NET_RAW" not in caps.resolve(["ALL"], ["NET_RAW"])
    assert caps.resolve(["CHOWN"], ["ALL"]) == ["CAP_CHOWN"]
    with pytest.raises(InvalidArgument, match="NOPE"):
        caps.normalize("NOPE")
