"""cgroups.devices_bpf's assembler: v1 device rules → eBPF instructions, checked byte for byte.

The expected programs are written out as raw ``(opcode, dst, src, off, imm)`` tuples, not with
the module's own helpers; the kernel runs them in tests/integration/test_cgroups.py.
"""

from __future__ import annotations

import pytest

from cgroups.devices_bpf import DeviceRule, Insn, assemble, parse_rule

#: r2 = type, r3 = access, r4 = major, r5 = minor, from struct bpf_cgroup_dev_ctx in r1.
PROLOGUE = [
    (0x61, 2, 1, 0, 0),  # ldxw r2, [r1 + 0]
    (0x54, 2, 0, 0, 0xFFFF),  # and32 r2, 0xffff
    (0x61, 3, 1, 0, 0),  # ldxw r3, [r1 + 0]
    (0x74, 3, 0, 0, 16),  # rsh32 r3, 16
    (0x61, 4, 1, 4, 0),  # ldxw r4, [r1 + 4]
    (0x61, 5, 1, 8, 0),  # ldxw r5, [r1 + 8]
]
ALLOW = [(0xB7, 0, 0, 0, 1), (0x95, 0, 0, 0, 0)]  # mov r0, 1; exit
DENY = [(0xB7, 0, 0, 0, 0), (0x95, 0, 0, 0, 0)]  # mov r0, 0; exit


def test_one_device_then_deny() -> None:
    assert assemble(["c 1:3 rwm"]) == [
        *PROLOGUE,
        (0x55, 2, 0, 4, 2),  # if type != CHAR goto +4 (past the block)
        (0x55, 4, 0, 3, 1),  # if major != 1 goto +3
        (0x55, 5, 0, 2, 3),  # if minor != 3 goto +2
        *ALLOW,
        *DENY,
    ]


def test_wildcards_and_access_subset() -> None:
    assert assemble(["c *:* m", "b 8:* rw"]) == [
        *PROLOGUE,
        (0x55, 2, 0, 3, 2),  # type CHAR
        (0x45, 3, 0, 2, 0b110),  # if access & (READ|WRITE) goto +2: asks for more than mknod
        *ALLOW,
        (0x55, 2, 0, 4, 1),  # type BLOCK
        (0x45, 3, 0, 3, 0b001),  # asks for MKNOD
        (0x55, 4, 0, 2, 8),  # major 8, any minor
        *ALLOW,
        *DENY,
    ]


def test_rule_matching_everything_ends_the_program() -> None:
    # Nothing may follow an unconditional return: the verifier rejects unreachable code.
    assert assemble(["c 1:3 rwm", "a", "c 1:5 rwm"]) == [
        *PROLOGUE,
        (0x55, 2, 0, 4, 2),
        (0x55, 4, 0, 3, 1),
        (0x55, 5, 0, 2, 3),
        *ALLOW,
        *ALLOW,
    ]
    assert assemble(["a *:* rwm"]) == [*PROLOGUE, *ALLOW]
    # Type "a" with numbers: any type, so no type check, and the program goes on.
    assert assemble(["a 1:3 rwm"]) == [
        *PROLOGUE,
        (0x55, 4, 0, 3, 1),
        (0x55, 5, 0, 2, 3),
        *ALLOW,
        *DENY,
    ]


def test_no_rules_deny_everything() -> None:
    assert assemble([]) == [*PROLOGUE, *DENY]


def test_insn_encoding() -> None:
    # struct bpf_insn: code, dst_reg in the low nibble and src_reg in the high one, s16 off,
    # s32 imm, little-endian.
    assert Insn(0x61, 2, 1, 4, 0).pack() == bytes([0x61, 0x12, 4, 0, 0, 0, 0, 0])
    assert Insn(0x55, 5, 0, -2, -1).pack() == bytes([0x55, 0x05, 0xFE, 0xFF]) + b"\xff" * 4
    assert Insn(0x54, 2, imm=0xFFFF).pack() == bytes([0x54, 0x02, 0, 0, 0xFF, 0xFF, 0, 0])


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("a", DeviceRule(None, None, None, 0b111)),
        ("c 1:3 rwm", DeviceRule(2, 1, 3, 0b111)),
        ("b *:* m", DeviceRule(1, None, None, 0b001)),
        ("c 136:* rw", DeviceRule(2, 136, None, 0b110)),
        ("a 5:* w", DeviceRule(None, 5, None, 0b100)),
    ],
)
def test_parse_rule(rule: str, expected: DeviceRule) -> None:
    assert parse_rule(rule) == expected


@pytest.mark.parametrize(
    "rule",
    ["", "x 1:3 r", "c 1:3", "c 1:3 rwx", "c a:3 r", "c 1-3 r", "c 2147483648:0 r", "c 1:3 rwm "],
)
def test_parse_rule_rejects(rule: str) -> None:
    with pytest.raises(ValueError, match="device rule"):
        parse_rule(rule)
