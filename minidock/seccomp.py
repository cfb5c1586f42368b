"""seccomp: a filter on the system calls themselves.

Capabilities decide what root may do; seccomp decides which system calls a process may
make at all. A process hands the kernel a small classic-BPF program (seccomp(2),
SECCOMP_SET_MODE_FILTER); from then on the kernel runs it on every system call, with the
call's number, architecture and arguments, and the program's verdict — allow, fail with an
errno, kill — is final. The filter is inherited by children, survives execve, and can
never be removed: later filters can only be stacked on top.

Docker's default profile (``seccomp_default.py``) allows the ~370 calls ordinary programs
make and fails the rest with EPERM. The work is split as between dockerd and runc:

* :func:`for_container` (engine): a profile in Docker's format → the spec's
  ``linux.seccomp`` (runtime-spec config-linux.md), keeping only the rules that apply to
  this container's capabilities, architecture and kernel (moby ``setupSeccomp``);
* :func:`compile_filter` (runtime): ``linux.seccomp`` → the BPF program, compiled by
  libseccomp (through pyseccomp, imported only then, in the process that needs it);
  :func:`cached_filter` keeps each program it compiled, so the next container with the
  same profile skips libseccomp altogether;
* ``syscalls.seccomp_set_mode_filter`` (runtime, just before exec): install it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import stat
import sys
from types import ModuleType

from minidock import store
from minidock.errors import InvalidArgument, MinidockError
from minidock.seccomp_default import DEFAULT_PROFILE

#: uname(2)'s machine → (the name moby's ``includes``/``excludes`` use for it, which is
#: Go's, and libseccomp's name for its native ABI, as ``archMap`` uses it).
_MACHINES = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
}

#: The filter's verdicts: the kernel's SECCOMP_RET_* values (linux/seccomp.h), which
#: libseccomp uses as they are. ERRNO and TRACE carry a 16-bit errno/tracer value.
_RET_KILL_PROCESS = 0x80000000
_RET_KILL_THREAD = 0x00000000
_RET_TRAP = 0x00030000
_RET_ERRNO = 0x00050000
_RET_TRACE = 0x7FF00000
_RET_LOG = 0x7FFC0000
_RET_ALLOW = 0x7FFF0000
_ACTIONS = {
    "SCMP_ACT_KILL": _RET_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": _RET_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _RET_KILL_PROCESS,
    "SCMP_ACT_TRAP": _RET_TRAP,
    "SCMP_ACT_ERRNO": _RET_ERRNO,
    "SCMP_ACT_TRACE": _RET_TRACE,
    "SCMP_ACT_LOG": _RET_LOG,
    "SCMP_ACT_ALLOW": _RET_ALLOW,
}
#: Argument comparisons (libseccomp's enum scmp_compare). MASKED_EQ is (arg & value) == valueTwo.
_OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
_NR_UNKNOWN = -1  # libseccomp's __NR_SCMP_ERROR: a name it doesn't know
#: runc turns on libseccomp's binary-tree layout for longer rule lists, so that a call is
#: found in about log2(n) comparisons instead of n.
_TREE_THRESHOLD = 32


def for_container(
    profile_json: str | None,
    capabilities: list[str],
    machine: str | None = None,
    kernel: str | None = None,
) -> dict | None:
    """The spec's ``linux.seccomp`` for a container holding ``capabilities`` (its bounding
    set), from a profile's JSON text or, for None, Docker's default profile. None if the
    profile asks for no filter (no default action and no rules, as Docker reads it)."""
    if profile_json is None:
        profile = DEFAULT_PROFILE
    else:
        try:
            profile = json.loads(profile_json)
        except ValueError as exc:
            raise InvalidArgument(f"decoding seccomp profile failed: {exc}") from None
    host = os.uname()
    return to_oci(profile, capabilities, machine or host.machine, kernel or host.release)


def to_oci(profile: dict, capabilities: list[str], machine: str, kernel: str) -> dict | None:
    """Docker's profile format → OCI ``linux.seccomp``, as moby's ``setupSeccomp`` does it:
    ``archMap`` becomes the list of ABIs for this machine, and each rule is kept only if
    its ``includes`` hold (every listed capability, one of the architectures, a new enough
    kernel) and its ``excludes`` don't (any listed capability or architecture, or a kernel
    at least that new)."""
    if not profile.get("defaultAction") and not profile.get("syscalls"):
        return None
    if profile.get("architectures") and profile.get("archMap"):
        raise InvalidArgument(
            "'architectures' and 'archMap' were specified in the seccomp profile, "
            "use either 'architectures' or 'archMap'"
        )
    if profile.get("defaultAction") not in _ACTIONS:
        raise InvalidArgument(
            f"seccomp profile: invalid defaultAction {profile.get('defaultAction')!r}"
        )
    arch, native = _MACHINES.get(machine, ("", ""))
    architectures = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if entry["architecture"] == native:
            architectures += [native, *(entry.get("subArchitectures") or [])]
    oci: dict = {"defaultAction": profile["defaultAction"], "architectures": architectures}
    if profile.get("defaultErrnoRet") is not None:
        oci["defaultErrnoRet"] = profile["defaultErrnoRet"]
    held = set(capabilities)
    oci["syscalls"] = [
        _oci_rule(rule)
        for rule in profile.get("syscalls") or []
        if _applies(rule, held, arch, kernel)
    ]
    return oci


def _applies(rule: dict, held: set[str], arch: str, kernel: str) -> bool:
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    if arch in (excludes.get("arches") or []) or held & set(excludes.get("caps") or []):
        return False
    if excludes.get("minKernel") and _kernel_at_least(kernel, excludes["minKernel"]):
        return False
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if not set(includes.get("caps") or []) <= held:
        return False
    return not includes.get("minKernel") or _kernel_at_least(kernel, includes["minKernel"])


def _oci_rule(rule: dict) -> dict:
    if rule.get("name") and rule.get("names"):
        raise InvalidArgument(
            "'name' and 'names' were specified in the seccomp profile, use either 'name' or 'names'"
        )
    if rule.get("action") not in _ACTIONS:
        raise InvalidArgument(f"seccomp profile: invalid action {rule.get('action')!r}")
    result = {"names": rule.get("names") or [rule["name"]], "action": rule["action"]}
    if rule.get("errnoRet") is not None:
        result["errnoRet"] = rule["errnoRet"]
    if rule.get("args"):
        for arg in rule["args"]:
            if arg.get("op") not in _OPERATORS:
                raise InvalidArgument(f"seccomp profile: invalid operator {arg.get('op')!r}")
        result["args"] = [
            {
                "index": a["index"],
                "value": a["value"],
                "valueTwo": a.get("valueTwo", 0),
                "op": a["op"],
            }
            for a in rule["args"]
        ]
    return result


def _kernel_at_least(release: str, wanted: str) -> bool:
    """Whether kernel ``release`` (``6.1.0-18-amd64``) is at least version ``wanted`` (``4.8``)."""
    return _version(release) >= _version(wanted)


def _version(text: str) -> tuple[int, int, int]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        raise InvalidArgument(f"invalid kernel version {text!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def compile_filter(oci: dict) -> bytes:
    """Compile ``linux.seccomp`` into the BPF program the kernel will run: 8-byte
    instructions that check the architecture, then look the call up and return a verdict.

    This is libseccomp's job, as under runc: it knows every architecture's call numbers
    and lays the checks out as a tree. It must run while the host's libraries are still
    reachable (before pivot_root). Names this libseccomp doesn't know are skipped, as runc
    skips them; in an allow-list that just leaves such a call with the default verdict.
    """
    pyseccomp = _import_pyseccomp()
    default = _verdict(oci["defaultAction"], oci.get("defaultErrnoRet"))
    syscall_filter = pyseccomp.SyscallFilter(default)
    for name in oci.get("architectures") or []:
        arch = getattr(pyseccomp.Arch, name.removeprefix("SCMP_ARCH_"), None)
        if arch is None:
            raise InvalidArgument(f"seccomp: unknown architecture {name}")
        if not syscall_filter.exist_arch(arch):
            syscall_filter.add_arch(arch)
    rules = oci.get("syscalls") or []
    if sum(len(rule["names"]) for rule in rules) > _TREE_THRESHOLD:
        syscall_filter.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    for rule in rules:
        verdict = _verdict(rule["action"], rule.get("errnoRet"))
        if verdict == default:
            continue  # says what the default says (and libseccomp refuses such rules)
        args = rule.get("args") or []
        conditions = [
            pyseccomp.Arg(a["index"], _OPERATORS[a["op"]], a["value"], a.get("valueTwo", 0))
            for a in args
        ]
        # Conditions on different arguments must all hold (AND). libseccomp can't AND two
        # conditions on the same argument, so then runc adds one rule per condition (OR).
        indexes = [a["index"] for a in args]
        groups = [[c] for c in conditions] if len(set(indexes)) < len(indexes) else [conditions]
        for name in rule["names"]:
            number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
            if number == _NR_UNKNOWN:
                continue
            for group in groups:
                try:
                    syscall_filter.add_rule(verdict, number, *group)
                except OSError as exc:
                    raise InvalidArgument(f"seccomp rule for {name}: {exc.strerror}") from None
    with os.fdopen(os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC), "w+b") as program:
        syscall_filter.export_bpf(program)
        program.seek(0)
        return program.read()


def cached_filter(oci: dict, cache_dir: str) -> bytes:
    """:func:`compile_filter`, remembered in ``cache_dir`` from one container to the next.

    Compiling Docker's profile takes libseccomp ~30 ms, and loading pyseccomp ~20 ms more,
    on every start, although the program depends only on the profile, the machine and
    libseccomp's version. So each program is kept in a file named by the sha256 of those
    three, and compiled only when its file is missing or fails the checks below.

    What the file holds ends up as the container's filter, so it is trusted no more than
    the runtime's own state: the directory must be ours and writable by nobody else (the
    runtime's root, owned by root, is never visible inside a container), and a file is
    used only if we own it, it starts with the sha256 of the rest, and the rest is a whole
    number of BPF instructions the kernel could load. A file that fails is compiled again
    and replaced, atomically (:func:`store.write_file`): two starts that both miss the
    cache each write a complete file, and the last rename wins.
    """
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    if not _private_directory(cache_dir):
        return compile_filter(oci)  # not a place to trust: compile, and keep nothing
    path = os.path.join(cache_dir, _cache_key(oci))
    program = _read_cached(path)
    if program is None:
        program = compile_filter(oci)
        # No fsync: a file a power cut damaged fails the checks and is compiled again.
        digest = hashlib.sha256(program).digest()
        store.write_file(path, digest + program, 0o600, durable=False)
    return program


#: The most instructions a classic-BPF program may have (BPF_MAXINSNS, linux/bpf_common.h).
_MAX_INSTRUCTIONS = 4096
_INSTRUCTION_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
_DIGEST_SIZE = 32  # sha256


def _cache_key(oci: dict) -> str:
    """What a compiled program depends on, hashed: the profile, the machine (libseccomp
    resolves call names for the native architecture) and libseccomp's version (a newer
    one knows more call names, so it compiles the same profile into a longer program)."""
    profile = json.dumps(oci, sort_keys=True, separators=(",", ":"))
    inputs = f"{os.uname().machine}\n{_libseccomp_version()}\n{profile}"
    return hashlib.sha256(inputs.encode()).hexdigest()


class _Version(ctypes.Structure):
    """libseccomp's ``struct scmp_version``."""

    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


def _libseccomp_version() -> str:
    """libseccomp's version, from seccomp_version(3). Asked directly, by the library's
    soname: importing pyseccomp just for this would cost what the cache saves."""
    try:
        library = ctypes.CDLL("libseccomp.so.2")
    except OSError as exc:
        raise MinidockError(f"seccomp: cannot load libseccomp: {exc}") from None
    library.seccomp_version.restype = ctypes.POINTER(_Version)
    version = library.seccomp_version().contents
    return f"{version.major}.{version.minor}.{version.micro}"


def _private_directory(path: str) -> bool:
    """Whether ``path`` is a real directory (not a symlink) that we own and that nobody
    else may write to."""
    info = os.lstat(path)
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.geteuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def _read_cached(path: str) -> bytes | None:
    """The program kept at ``path``, or None if there is none or it fails a check."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return None
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        data = f.read()
    digest, program = data[:_DIGEST_SIZE], data[_DIGEST_SIZE:]
    instructions, remainder = divmod(len(program), _INSTRUCTION_SIZE)
    if remainder or not 0 < instructions <= _MAX_INSTRUCTIONS:
        return None
    return program if hashlib.sha256(program).digest() == digest else None


def _import_pyseccomp() -> ModuleType:
    """pyseccomp (libseccomp through ctypes), imported only when a filter must be compiled
    (it isn't in the cache). The monitor runs ``python -S`` to start fast, so site-packages
    may not be on the path: add its directories (without running any ``.pth`` file)."""
    if sys.flags.no_site:
        import site

        sys.path += [d for d in site.getsitepackages() if d not in sys.path]
    import pyseccomp

    return pyseccomp


def _verdict(action: str, errno_ret: int | None) -> int:
    """A rule's action as the filter's return value; ERRNO and TRACE default to EPERM."""
    value = _ACTIONS[action]
    if value in (_RET_ERRNO, _RET_TRACE):
        value |= (errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF
    return value
