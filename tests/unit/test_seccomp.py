"""seccomp: Docker's profile → the spec's ``linux.seccomp`` → a BPF program the kernel runs.

The last test installs the filter for real, in a forked child that sets no_new_privs
first (which lets any user install one), and checks the kernel's verdicts."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import platform

import pytest

from minidock import caps, seccomp, spec, syscalls
from minidock.cli import _security_opt, _tmpfs
from minidock.errors import InvalidArgument, MinidockError
from minidock.seccomp_default import DEFAULT_PROFILE

DOCKER_CAPS = list(caps.DOCKER_DEFAULT)

#: What reference.md lists as blocked by Docker's default profile (moby keeps ptrace and
#: process_vm_readv/writev allowed on kernels ≥ 4.8, so those are checked separately).
BLOCKED = [
    "acct", "add_key", "bpf", "clock_settime", "delete_module", "init_module",
    "finit_module", "kexec_load", "keyctl", "mount", "umount2", "pivot_root", "reboot",
    "request_key", "setns", "unshare", "swapon", "swapoff", "userfaultfd",
    "perf_event_open", "open_by_handle_at", "sethostname", "settimeofday",
]  # fmt: skip


def _oci(capabilities: list[str] = DOCKER_CAPS, machine: str = "x86_64",
         kernel: str = "6.1.0-18-amd64", profile: dict | None = None) -> dict:  # fmt: skip
    text = None if profile is None else json.dumps(profile)
    result = seccomp.for_container(text, capabilities, machine, kernel)
    assert result is not None
    return result


def _rules(oci: dict, name: str) -> list[dict]:
    return [rule for rule in oci["syscalls"] if name in rule["names"]]


def _always_allowed(oci: dict) -> set[str]:
    """Names some rule allows whatever the arguments."""
    return {
        name
        for rule in oci["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }


def test_default_profile_is_an_allow_list_that_fails_the_rest_with_eperm() -> None:
    oci = _oci()
    assert oci["defaultAction"] == "SCMP_ACT_ERRNO" and oci["defaultErrnoRet"] == errno.EPERM
    allowed = _always_allowed(oci)
    assert {"read", "write", "openat", "execve", "exit_group", "capset", "arch_prctl"} <= allowed
    assert not allowed & set(BLOCKED)
    assert {"ptrace", "process_vm_readv", "process_vm_writev"} <= allowed  # kernel ≥ 4.8
    assert "ptrace" not in _always_allowed(_oci(kernel="4.4.0"))
    assert len(DEFAULT_PROFILE["syscalls"][0]["names"]) > 300


def test_argument_conditions_clone_socket_personality() -> None:
    oci = _oci()
    (clone,) = _rules(oci, "clone")
    assert clone["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    (clone3,) = _rules(oci, "clone3")
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == errno.ENOSYS
    (socket_rule,) = _rules(oci, "socket")
    assert socket_rule["args"][0]["op"] == "SCMP_CMP_NE" and socket_rule["args"][0]["value"] == 40
    assert sorted(r["args"][0]["value"] for r in _rules(oci, "personality")) == [
        0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF,
    ]  # fmt: skip


def test_capabilities_unlock_the_calls_that_go_with_them() -> None:
    oci = _oci([*DOCKER_CAPS, "CAP_SYS_ADMIN"])
    allowed = _always_allowed(oci)
    assert {"mount", "umount2", "unshare", "setns", "clone", "clone3", "sethostname"} <= allowed
    assert not _rules(oci, "clone3")[0].get("errnoRet")  # no ENOSYS rule any more
    assert all(not rule.get("args") for rule in _rules(oci, "clone"))
    assert "keyctl" not in allowed  # never, whatever the capabilities
    assert "chroot" in _always_allowed(_oci()) and "chroot" not in _always_allowed(_oci([]))
    assert {"init_module", "finit_module"} <= _always_allowed(_oci(["CAP_SYS_MODULE"]))
    assert {"settimeofday", "clock_settime"} <= _always_allowed(_oci(["CAP_SYS_TIME"]))


def test_architectures_come_from_the_machine() -> None:
    assert _oci()["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert _oci(machine="aarch64")["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "arch_prctl" not in _always_allowed(_oci(machine="aarch64"))
    assert "set_tls" in _always_allowed(_oci(machine="aarch64"))
    s390 = _oci(machine="s390x")
    assert [r["args"][0]["index"] for r in _rules(s390, "clone")] == [1]


def test_a_profile_in_dockers_format() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 0o4000, "valueTwo": 0o4000,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
        ],
    }  # fmt: skip
    oci = _oci(profile=profile)
    assert oci["architectures"] == ["SCMP_ARCH_X86_64"]
    assert oci["syscalls"][0] == {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
    assert oci["syscalls"][1]["args"][0]["valueTwo"] == 0o4000
    assert seccomp.for_container("{}", DOCKER_CAPS) is None  # nothing asked: no filter


@pytest.mark.parametrize(
    "profile",
    [
        {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
         "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]},
        {"defaultAction": "SCMP_ACT_ERRNO",
         "syscalls": [{"name": "read", "names": ["write"], "action": "SCMP_ACT_ALLOW"}]},
        {"defaultAction": "SCMP_ACT_NOPE"},
        {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "x"}]},
        {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"],
         "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_IS"}]}]},
    ],
)  # fmt: skip
def test_invalid_profiles_are_refused(profile: dict) -> None:
    with pytest.raises(InvalidArgument):
        seccomp.for_container(json.dumps(profile), DOCKER_CAPS, "x86_64", "6.1")


def test_profile_that_is_not_json() -> None:
    with pytest.raises(InvalidArgument, match="decoding seccomp profile"):
        seccomp.for_container("{nope", DOCKER_CAPS)


def test_security_options() -> None:
    assert spec.security_options([]) == (False, None)
    assert spec.security_options(["no-new-privileges"]) == (True, None)
    assert spec.security_options(["no-new-privileges=false"]) == (False, None)
    assert spec.security_options(["no-new-privileges:true", "seccomp:unconfined"]) == (
        True,
        "unconfined",
    )
    assert spec.security_options(["seccomp=builtin"]) == (False, None)
    assert spec.security_options(['seccomp={"defaultAction":"SCMP_ACT_LOG"}'])[1] == (
        '{"defaultAction":"SCMP_ACT_LOG"}'
    )
    for bad in ("apparmor=unconfined", "no-new-privileges=maybe", "seccomp=", "bogus"):
        with pytest.raises(InvalidArgument):
            spec.security_options([bad])


def _build(**host: object) -> dict:
    record = {
        "Name": "/web",
        "Config": {"Hostname": "h", "Env": [], "Cmd": ["sh"], "Entrypoint": None, "Tty": False},
        "HostConfig": {"NetworkMode": "none", "Binds": [], "CapAdd": [], "CapDrop": [], **host},
    }
    return spec.build(record, {}, rootfs="rootfs", cgroup_path="x", identity=(0, 0, []),
                      etc_files={}, network_path=None, host_hard_limits={})  # fmt: skip


def test_spec_carries_the_filter_unless_unconfined_or_privileged() -> None:
    s = _build()
    assert s["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert s["process"]["noNewPrivileges"] is False
    assert "seccomp" not in _build(SecurityOpt=["seccomp=unconfined"])["linux"]
    assert "seccomp" not in _build(Privileged=True)["linux"]  # as Docker: privileged = unconfined
    assert _build(SecurityOpt=["no-new-privileges"])["process"]["noNewPrivileges"] is True
    admin = _build(CapAdd=["SYS_ADMIN"])["linux"]["seccomp"]
    assert "mount" in _always_allowed(admin)


def test_tmpfs_mounts_get_dockers_flags_and_nest_in_order() -> None:
    s = _build(Tmpfs={"/data/cache": "", "/run": "exec,size=64m"}, Binds=["/src:/data"])
    user = [m for m in s["mounts"] if m["destination"] in ("/run", "/data", "/data/cache")]
    assert [m["destination"] for m in user] == ["/data", "/run", "/data/cache"]
    assert user[1]["options"] == ["noexec", "nosuid", "nodev", "exec", "size=64m"]
    assert user[2]["options"] == ["noexec", "nosuid", "nodev"]


def test_cli_reads_a_profile_file_and_parses_tmpfs(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "profile.json"
    path.write_text('{\n  "defaultAction": "SCMP_ACT_LOG"\n}\n')
    assert _security_opt(f"seccomp={path}") == 'seccomp={"defaultAction":"SCMP_ACT_LOG"}'
    assert _security_opt(f"seccomp:{path}") == 'seccomp={"defaultAction":"SCMP_ACT_LOG"}'
    assert _security_opt("seccomp=unconfined") == "seccomp=unconfined"
    assert _security_opt("no-new-privileges") == "no-new-privileges"
    with pytest.raises(MinidockError, match="seccomp profile"):
        _security_opt(f"seccomp={tmp_path / 'missing.json'}")
    assert _tmpfs("/run") == ("/run", "")
    assert _tmpfs("/run:size=1m,mode=700") == ("/run", "size=1m,mode=700")
    for bad in ("run", "/", ""):
        with pytest.raises(MinidockError):
            _tmpfs(bad)


def test_compile_skips_unknown_calls_and_splits_same_argument_conditions() -> None:
    program = seccomp.compile_filter(_oci())
    assert len(program) % 8 == 0 and len(program) // 8 > 300
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["no_such_call", "read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
        ],
    }  # fmt: skip
    assert seccomp.compile_filter(_oci(profile=profile))


def test_compiled_filters_are_kept_and_checked_before_use(tmp_path) -> None:  # noqa: ANN001
    cache = tmp_path / "seccomp-cache"
    program = seccomp.cached_filter(_oci(), str(cache))
    assert program == seccomp.compile_filter(_oci())
    (kept,) = cache.iterdir()
    assert cache.stat().st_mode & 0o777 == 0o700 and kept.stat().st_mode & 0o777 == 0o600
    assert kept.read_bytes() == hashlib.sha256(program).digest() + program
    # A file that passes the checks is used as it is: libseccomp isn't asked again.
    allow_all = bytes([0x06, 0, 0, 0, 0, 0, 0xFF, 0x7F])  # BPF_RET | BPF_K, SECCOMP_RET_ALLOW
    kept.write_bytes(hashlib.sha256(allow_all).digest() + allow_all)
    assert seccomp.cached_filter(_oci(), str(cache)) == allow_all
    # A damaged one is compiled again and replaced.
    for damaged in (b"", kept.read_bytes()[:-1], kept.read_bytes()[:-8] + program[:8]):
        kept.write_bytes(damaged)
        assert seccomp.cached_filter(_oci(), str(cache)) == program
        assert kept.read_bytes().endswith(program)
    # Another profile is another file.
    seccomp.cached_filter(_oci(profile={"defaultAction": "SCMP_ACT_LOG"}), str(cache))
    assert len(list(cache.iterdir())) == 2


def test_a_cache_others_could_write_to_is_not_used(tmp_path) -> None:  # noqa: ANN001
    cache = tmp_path / "seccomp-cache"
    program = seccomp.cached_filter(_oci(), str(cache))
    (kept,) = cache.iterdir()
    allow_all = bytes([0x06, 0, 0, 0, 0, 0, 0xFF, 0x7F])
    planted = hashlib.sha256(allow_all).digest() + allow_all
    kept.write_bytes(planted)
    kept.chmod(0o666)  # a file anyone may rewrite
    assert seccomp.cached_filter(_oci(), str(cache)) == program
    kept.unlink()
    (tmp_path / "elsewhere").write_bytes(planted)
    kept.symlink_to(tmp_path / "elsewhere")  # a link to a file we didn't write there
    assert seccomp.cached_filter(_oci(), str(cache)) == program
    kept.write_bytes(planted)
    cache.chmod(0o777)  # a directory anyone may write to: compiled, and nothing kept
    assert seccomp.cached_filter(_oci(), str(cache)) == program
    assert kept.read_bytes() == planted


#: x86_64 system call numbers for the probes (the C library wraps none of them usefully).
_NR = {"keyctl": 250, "unshare": 272, "clone3": 435, "personality": 135, "socket": 41}


def _probe() -> dict[str, str]:
    libc = ctypes.CDLL(None, use_errno=True)

    def call(name: str, *args: int) -> str:
        ret = libc.syscall(ctypes.c_long(_NR[name]), *(ctypes.c_long(a) for a in args))
        return "ok" if ret >= 0 else errno.errorcode[ctypes.get_errno()]

    return {
        "getpid": "ok" if os.getpid() > 0 else "?",
        "keyctl": call("keyctl", 9999, 0, 0, 0, 0),  # a bad operation: harmless if it runs
        "unshare": call("unshare", 0),  # no flags: does nothing, needs no privilege
        "clone3": call("clone3", 0, 0),
        "personality_query": call("personality", 0xFFFFFFFF),
        "personality_bsd": call("personality", 0x0006),
        "socket_vsock": call("socket", 40, 1, 0),
    }


def _in_child(install: bool) -> dict[str, str]:
    """Run the probes in a forked child, with or without Docker's filter installed."""
    program = seccomp.compile_filter(_oci()) if install else b""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            if install:
                syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
                syscalls.seccomp_set_mode_filter(program)
            os.write(write_end, json.dumps(_probe()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        result = json.loads(f.read())
    os.waitpid(pid, 0)
    return result


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 system call numbers")
def test_the_kernel_enforces_the_compiled_filter() -> None:
    unfiltered = _in_child(install=False)
    filtered = _in_child(install=True)
    assert unfiltered["keyctl"] != "EPERM" and filtered["keyctl"] == "EPERM"
    assert unfiltered["unshare"] == "ok" and filtered["unshare"] == "EPERM"
    assert filtered["clone3"] == "ENOSYS"  # so that the C library falls back to clone
    assert filtered["personality_query"] == "ok" and filtered["personality_bsd"] == "EPERM"
    assert unfiltered["socket_vsock"] != "EPERM" and filtered["socket_vsock"] == "EPERM"
    assert filtered["getpid"] == "ok"
