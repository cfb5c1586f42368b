"""cgroup v2's device controller: an eBPF program the kernel asks before each device access.

cgroup v1 has files for this (``devices.deny``, ``devices.allow``). cgroup v2 has none.
Instead, a program of type ``BPF_PROG_TYPE_CGROUP_DEVICE`` is attached to the cgroup's
directory (attach type ``BPF_CGROUP_DEVICE``). Whenever a process of that cgroup opens a
device node, or creates one with mknod(2), the kernel runs the program with a
``struct bpf_cgroup_dev_ctx``::

    struct bpf_cgroup_dev_ctx {
        __u32 access_type;   /* (access << 16) | type */
        __u32 major;
        __u32 minor;
    };

where ``type`` is ``BPF_DEVCG_DEV_BLOCK`` or ``BPF_DEVCG_DEV_CHAR`` and ``access`` is a mask of
``BPF_DEVCG_ACC_MKNOD``, ``_READ`` and ``_WRITE``. The program returns 1 to allow and 0 to deny;
a denied open(2) or mknod(2) fails with ``EPERM``.

This module does what runc (``libcontainer/cgroups/devices/devicefilter.go``) and crun
(``src/libcrun/ebpf.c``) do, without a compiler or libbpf:

* :func:`assemble` turns v1-style rules (``"c 1:3 rwm"``, ``"b *:* m"``, ``"a"``) into eBPF
  instructions, eight bytes each (``struct bpf_insn``), written out here one by one. Like
  the v1 backend (``a`` to ``devices.deny``, then each rule to ``devices.allow``) the program
  denies everything that no rule allows.
* :func:`load` hands them to the kernel with ``bpf(BPF_PROG_LOAD)``; the in-kernel *verifier*
  checks the program (no loops, no out-of-bounds reads, every path returns) before it can run.
* :func:`apply` attaches the program to the cgroup with ``bpf(BPF_PROG_ATTACH)`` and detaches
  the one it replaces.

The file descriptor that ``BPF_PROG_LOAD`` returns is closed right after the attach: the
attachment holds its own reference, so the program lives exactly as long as the cgroup (or
until it is detached). Nothing needs to be pinned in ``/sys/fs/bpf`` or cleaned up.

Each ``bpf(2)`` call is reported to :data:`cgroups.fs.observer` (``--explain``) as
``observer(cgroup directory, "bpf(...)")``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from dataclasses import dataclass
from typing import NamedTuple

from . import fs
from .fs import CgroupError
from .limits import DEVICE_RULE

#: The bpf(2) system call number (x86_64: arch/x86/entry/syscalls/syscall_64.tbl; arm64 uses
#: the generic table, include/uapi/asm-generic/unistd.h). glibc has no wrapper for it.
SYS_BPF = {"x86_64": 321, "aarch64": 280}

# bpf(2) commands (enum bpf_cmd, include/uapi/linux/bpf.h).
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16

#: enum bpf_prog_type: a program that decides device access for a cgroup.
BPF_PROG_TYPE_CGROUP_DEVICE = 15
#: enum bpf_attach_type: where in the cgroup such a program hooks in.
BPF_CGROUP_DEVICE = 6
#: Attach flag: more programs may be attached here and below; a device access must pass them
#: all (the cgroup's own and every ancestor's), so a child cgroup can only narrow access.
BPF_F_ALLOW_MULTI = 1 << 1
#: The kernel's limit of programs per cgroup and attach type (BPF_CGROUP_MAX_PROGS).
BPF_CGROUP_MAX_PROGS = 64
#: BPF_OBJ_NAME_LEN: a program's name, as ``bpftool prog show`` lists it, NUL included.
BPF_OBJ_NAME_LEN = 16

# struct bpf_cgroup_dev_ctx: the low 16 bits of access_type are the type, the high 16 the access.
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
ACCESS_ALL = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE

_TYPES = {"a": None, "b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}
_ACCESS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}

# Instruction encoding (include/uapi/linux/bpf_common.h and bpf.h): the opcode byte is
# class | operation | source, where source BPF_K means "the immediate operand".
BPF_LDX = 0x01  # class: load from memory into a register
BPF_ALU = 0x04  # class: 32-bit arithmetic (the result's upper 32 bits are zeroed)
BPF_JMP = 0x05  # class: jumps, compare 64-bit registers
BPF_ALU64 = 0x07  # class: 64-bit arithmetic
BPF_W = 0x00  # size: 32-bit word
BPF_MEM = 0x60  # mode: register + offset
BPF_K = 0x00
BPF_AND = 0x50
BPF_RSH = 0x70
BPF_MOV = 0xB0
BPF_JNE = 0x50  # jump if dst != imm
BPF_JSET = 0x40  # jump if dst & imm != 0
BPF_EXIT = 0x90

# Registers: R0 holds the return value, R1 the context pointer on entry.
R0, R1, R2, R3, R4, R5 = range(6)

#: How much of the verifier's log to keep when it rejects a program.
_LOG_SIZE = 1 << 16


class Insn(NamedTuple):
    """One ``struct bpf_insn``: opcode, destination and source register, offset, immediate."""

    code: int
    dst: int
    src: int = 0
    off: int = 0
    imm: int = 0

    def pack(self) -> bytes:
        """The 8 bytes the kernel reads: ``u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm``.

        The register bit-fields share one byte, destination in the low nibble (the layout on
        little-endian machines, which both entries of :data:`SYS_BPF` are).
        """
        return struct.pack("<BBhi", self.code, self.src << 4 | self.dst, self.off, self.imm)


def _load_word(dst: int, src: int, off: int) -> Insn:
    """``dst = *(u32 *)(src + off)``: read one field of the context."""
    return Insn(BPF_LDX | BPF_MEM | BPF_W, dst, src, off)


def _alu32(op: int, dst: int, imm: int) -> Insn:
    """``dst = (u32)dst OP imm``."""
    return Insn(BPF_ALU | op | BPF_K, dst, imm=imm)


def _jump(op: int, dst: int, imm: int, off: int) -> Insn:
    """``if (dst OP imm) goto pc + 1 + off``: only forward jumps, so the verifier sees no loop."""
    return Insn(BPF_JMP | op | BPF_K, dst, off=off, imm=imm)


def _return(value: int) -> list[Insn]:
    """``r0 = value; exit``: 1 allows the access, 0 denies it with EPERM."""
    return [Insn(BPF_ALU64 | BPF_MOV | BPF_K, R0, imm=value), Insn(BPF_JMP | BPF_EXIT, 0)]


#: Unpack the context once: r2 = type, r3 = access, r4 = major, r5 = minor.
PROLOGUE = [
    _load_word(R2, R1, 0),  # access_type...
    _alu32(BPF_AND, R2, 0xFFFF),  # ...low half: BPF_DEVCG_DEV_*
    _load_word(R3, R1, 0),
    _alu32(BPF_RSH, R3, 16),  # ...high half: BPF_DEVCG_ACC_*
    _load_word(R4, R1, 4),  # major
    _load_word(R5, R1, 8),  # minor
]


@dataclass(frozen=True)
class DeviceRule:
    """One v1 allow rule, decoded: ``None`` for a wildcard type (``a``), major or minor (``*``)."""

    type: int | None
    major: int | None
    minor: int | None
    access: int


def parse_rule(rule: str) -> DeviceRule:
    """Decode a ``devices.allow`` line (:data:`cgroups.limits.DEVICE_RULE`).

    Raises ``ValueError`` for anything else, and for a number that does not fit the 32-bit
    signed immediate of an eBPF instruction.
    """
    match = DEVICE_RULE.fullmatch(rule)
    if match is None:
        raise ValueError(f"bad device rule {rule!r} (expected e.g. 'c 1:3 rwm')")
    if rule == "a":
        return DeviceRule(None, None, None, ACCESS_ALL)
    major, minor = (None if n == "*" else int(n) for n in match.group("major", "minor"))
    if any(n is not None and n >= 1 << 31 for n in (major, minor)):
        raise ValueError(f"device rule {rule!r}: major and minor must be below 2**31")
    access = 0
    for letter in match["access"]:
        access |= _ACCESS[letter]
    return DeviceRule(_TYPES[match["type"]], major, minor, access)


def _allow_block(rule: DeviceRule) -> list[Insn]:
    """Instructions that return 1 if the access matches ``rule``, else fall through past them.

    Each field the rule pins down costs one jump to the end of the block. The access test
    is one ``JSET``: a request that asks for anything beyond the rule's letters skips it, so
    ``c 1:5 r`` allows reading /dev/zero but not opening it for writing — v1's rule too
    (a request must be a subset of a single rule's access).
    """
    checks: list[tuple[int, int, int]] = []  # (jump operation, register, immediate)
    if rule.type is not None:
        checks.append((BPF_JNE, R2, rule.type))
    if rule.access != ACCESS_ALL:
        checks.append((BPF_JSET, R3, ~rule.access & ACCESS_ALL))
    if rule.major is not None:
        checks.append((BPF_JNE, R4, rule.major))
    if rule.minor is not None:
        checks.append((BPF_JNE, R5, rule.minor))
    # After check i come the remaining checks and the two instructions of the return.
    jumps = [_jump(op, reg, imm, len(checks) - i + 1) for i, (op, reg, imm) in enumerate(checks)]
    return jumps + _return(1)


def assemble(rules: list[str]) -> list[Insn]:
    """The device program for ``rules``: allow what any rule allows, deny everything else.

    v1 semantics, as the v1 backend sets them: ``a`` to ``devices.deny`` (deny all, forget
    all exceptions), then each rule to ``devices.allow``. With allow rules only, the order
    does not matter, so the rules are checked in the order given and the first match
    returns 1. (runc's generator, which also handles deny rules, checks them last to first
    so that the last matching rule wins.) A rule that matches everything (``"a"``, or
    ``"a *:* rwm"``) ends the program there: any instruction after it would be unreachable,
    which the verifier refuses.
    """
    program = list(PROLOGUE)
    for rule in rules:
        block = _allow_block(parse_rule(rule))
        program += block
        if len(block) == len(_return(1)):  # no condition: everything is allowed
            return program
    return program + _return(0)


# ---------------------------------------------------------------------------------------------
# bpf(2)


class _ProgLoadAttr(ctypes.Structure):
    """``union bpf_attr`` as BPF_PROG_LOAD reads it (the fields up to ``prog_name``)."""

    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class _ProgAttachAttr(ctypes.Structure):
    """``union bpf_attr`` as BPF_PROG_ATTACH and BPF_PROG_DETACH read it."""

    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
    ]


class _ProgQueryAttr(ctypes.Structure):
    """``union bpf_attr`` as BPF_PROG_QUERY reads and fills it."""

    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("prog_cnt", ctypes.c_uint32),
    ]


class _ProgGetFdAttr(ctypes.Structure):
    """``union bpf_attr`` as BPF_PROG_GET_FD_BY_ID reads it."""

    _fields_ = [
        ("prog_id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(2): ``syscall(SYS_bpf, cmd, &attr, sizeof attr)``; the result, or ``OSError``.

    The kernel reads only ``sizeof attr`` bytes and requires the rest of its ``union
    bpf_attr`` to be zero, so a short structure with the fields a command needs is enough.
    """
    machine = os.uname().machine
    if machine not in SYS_BPF:
        raise OSError(errno.ENOSYS, f"bpf(2): no system call number known for {machine}")
    result = _libc.syscall(
        ctypes.c_long(SYS_BPF[machine]), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.sizeof(attr)
    )
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _narrate(directory: str, call: str) -> None:
    """Tell the ``--explain`` observer about a bpf(2) call made for the cgroup ``directory``."""
    if fs.observer is not None:
        fs.observer(directory, call)


def load(program: list[Insn], directory: str) -> int:
    """``bpf(BPF_PROG_LOAD)``: verify ``program`` in the kernel; return the program's fd.

    If the verifier rejects the program, the load is repeated with a log buffer so that the
    error can quote the verifier's reason (what libbpf does too). ``directory`` is the
    cgroup the program is for, only for narration and errors.
    """
    code = ctypes.create_string_buffer(b"".join(insn.pack() for insn in program))
    gpl = ctypes.create_string_buffer(b"GPL")  # a license: not needed by this type; harmless
    attr = _ProgLoadAttr(
        prog_type=BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt=len(program),
        insns=ctypes.addressof(code),
        license=ctypes.addressof(gpl),
        prog_name=b"cgroup_devices",
    )
    call = f"bpf(BPF_PROG_LOAD, BPF_PROG_TYPE_CGROUP_DEVICE, {len(program)} insns)"
    _narrate(directory, call)
    try:
        return bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EACCES):
            raise CgroupError.from_os(call + " for", directory, exc) from exc
        log = ctypes.create_string_buffer(_LOG_SIZE)
        attr.log_level, attr.log_size, attr.log_buf = 1, _LOG_SIZE, ctypes.addressof(log)
        with contextlib.suppress(OSError):  # the same program: it fails again, now with a log
            os.close(bpf(BPF_PROG_LOAD, attr))
        reason = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise CgroupError(
            f"{call} for {directory}: the verifier refused it: {' / '.join(reason)}",
            directory,
            exc.errno,
        ) from exc


def attached(dir_fd: int) -> list[int]:
    """``bpf(BPF_PROG_QUERY)``: the IDs of the device programs attached to this cgroup itself.

    Only the cgroup's own attachments, not the ones it inherits from its ancestors
    (``query_flags`` without ``BPF_F_QUERY_EFFECTIVE``). ``bpftool cgroup show DIR`` lists
    the same.
    """
    ids = (ctypes.c_uint32 * BPF_CGROUP_MAX_PROGS)()
    attr = _ProgQueryAttr(
        target_fd=dir_fd,
        attach_type=BPF_CGROUP_DEVICE,
        prog_ids=ctypes.addressof(ids),
        prog_cnt=BPF_CGROUP_MAX_PROGS,
    )
    bpf(BPF_PROG_QUERY, attr)
    return list(ids[: attr.prog_cnt])


def get_fd_by_id(prog_id: int) -> int:
    """``bpf(BPF_PROG_GET_FD_BY_ID)``: a new fd for the loaded program ``prog_id``.

    ``ENOENT`` once the kernel has freed the program, which it does when the last reference
    (an fd, an attachment, a pin) is gone.
    """
    return bpf(BPF_PROG_GET_FD_BY_ID, _ProgGetFdAttr(prog_id=prog_id))


def _detach(dir_fd: int, prog_id: int, directory: str) -> None:
    """``bpf(BPF_PROG_DETACH)`` of program ``prog_id``, named by an fd from its ID.

    With several programs attached (BPF_F_ALLOW_MULTI) the kernel needs to be told which
    one to detach, and it takes a file descriptor, not an ID.
    """
    prog_fd = get_fd_by_id(prog_id)
    try:
        _narrate(directory, f"bpf(BPF_PROG_DETACH, BPF_CGROUP_DEVICE, prog id {prog_id})")
        bpf(
            BPF_PROG_DETACH,
            _ProgAttachAttr(target_fd=dir_fd, attach_bpf_fd=prog_fd, attach_type=BPF_CGROUP_DEVICE),
        )
    finally:
        os.close(prog_fd)


def apply(directory: str, rules: list[str]) -> None:
    """Restrict the devices of the cgroup ``directory`` to ``rules``, replacing earlier rules.

    Loads the program, attaches it with ``BPF_F_ALLOW_MULTI`` (as runc and systemd do), then
    detaches the programs that were attached here before. Why multi rather than a single
    exclusive program (flags 0): an exclusive attachment forbids *any* program in the cgroups
    below, so a runtime nested in the container (or systemd inside it) could not restrict its
    own children; with multi, theirs run in addition to ours and can only deny more. Because
    the new program is attached before the old one is detached, there is no moment in which
    the cgroup's processes are unrestricted.
    """
    prog_fd = load(assemble(rules), directory)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            previous = attached(dir_fd)
            _narrate(directory, "bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)")
            bpf(
                BPF_PROG_ATTACH,
                _ProgAttachAttr(
                    target_fd=dir_fd,
                    attach_bpf_fd=prog_fd,
                    attach_type=BPF_CGROUP_DEVICE,
                    attach_flags=BPF_F_ALLOW_MULTI,
                ),
            )
            for prog_id in previous:
                _detach(dir_fd, prog_id, directory)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise CgroupError.from_os("attach the device program (bpf(2)) to", directory, exc) from exc
    finally:
        os.close(prog_fd)  # the attachment keeps the program alive
