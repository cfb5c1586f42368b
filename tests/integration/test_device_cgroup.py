"""A container's device cgroup, end to end: ``minidock run`` restricts device nodes the same way
on cgroup v1 (``devices.allow``) and on cgroup v2 (an eBPF program attached to the container's
cgroup), and ``--privileged`` lifts the restriction.

A container may *make* any device node (Docker allows ``c *:* m`` and ``b *:* m``, and its
root has CAP_MKNOD), so the device cgroup is what stops it from opening, say, the host's disk
through a node of its own. On a hybrid host each test runs twice: on the host's v1 backend,
and on the cgroup2 mount (``MINIDOCK_CGROUP_MOUNT``), where the container's cgroup gets the
eBPF program; the VM stage (``make test-v2``) runs them on a pure cgroup v2 kernel.
"""

from __future__ import annotations

import json
import os

import pytest

import cgroups
from cgroups.devices_bpf import assemble
from minidock.runtime import limits_from_spec
from minidock.spec import DEFAULT_DEVICE_RULES
from tests.conftest import UNIFIED, Minidock, cgroup_backends

EPERM = os.strerror(1)  # "Operation not permitted", as busybox prints it

#: Each probe prints "NAME ok" or "NAME <strerror>". Nodes are made in the container's /tmp
#: (its overlay root); the kmsg node is only opened for writing, never written (an open for
#: writing needs no CAP_SYSLOG, unlike one for reading), so every probe leaves the host alone.
PROBES = r"""
probe() { if err=$(eval "$2" 2>&1 >/dev/null); then echo "$1 ok"; else echo "$1 ${err##*: }"; fi; }
probe null 'head -c1 /dev/null'
probe zero 'head -c1 /dev/zero'
probe mknod 'mknod /tmp/sda b 8 0 && mknod /tmp/kmsg c 1 11'
probe disk 'head -c1 /tmp/sda'
probe kmsg ': > /tmp/kmsg'
"""


@pytest.fixture(params=cgroup_backends())
def md_on(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, md: Minidock
) -> Minidock:
    """``md`` on the host's cgroup backend, or on a hybrid host's cgroup2 mount.

    ``monkeypatch`` comes before ``md`` in the arguments, so it is undone after ``md`` has
    cleaned up: the cleanup, in this process, looks for the cgroups where minidock made them.
    """
    if request.param == "v2-on-hybrid":
        monkeypatch.setenv("MINIDOCK_CGROUP_MOUNT", UNIFIED)
        md.env["MINIDOCK_CGROUP_MOUNT"] = UNIFIED
    return md


def _probe(md: Minidock, *flags: str) -> dict[str, str]:
    out = md("run", "--rm", "--network", "none", *flags, "busybox", "sh", "-c", PROBES).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def test_device_nodes_are_restricted(md_on: Minidock) -> None:
    assert _probe(md_on) == {
        "null": "ok",
        "zero": "ok",
        "mknod": "ok",  # making nodes is allowed...
        "disk": EPERM,  # ...opening them is not
        "kmsg": EPERM,
    }
    # Control: without device rules the same opens get past the device cgroup. The kmsg
    # open succeeds; the disk open reaches the block layer (ENXIO where there is no disk 8:0).
    privileged = _probe(md_on, "--privileged")
    assert {k: privileged[k] for k in ("null", "zero", "mknod", "kmsg")} == dict.fromkeys(
        ("null", "zero", "mknod", "kmsg"), "ok"
    )
    assert privileged["disk"] != EPERM


def test_explain_narrates_the_device_rules(md_on: Minidock) -> None:
    """``--explain`` shows Docker's default rules as ``devices.allow`` writes on v1, and on v2
    as the bpf(2) calls that load their program and attach it to the container's cgroup."""
    proc = md_on("--explain=json", "run", "--rm", "--network", "none", "busybox", "true")
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    events = [e for e in events if e["kind"] == "cgroup" and md_on.cgroup_parent in e["file"]]
    rules = limits_from_spec({"devices": DEFAULT_DEVICE_RULES}).device_rules
    if cgroups.backend_name() == "v1":
        assert [e["value"] for e in events if e["file"].endswith("/devices.allow")] == rules
        return
    assert [e["value"] for e in events if e["man"] == "bpf(2)"] == [
        f"bpf(BPF_PROG_LOAD, BPF_PROG_TYPE_CGROUP_DEVICE, {len(assemble(rules))} insns)",
        "bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)",  # nothing to replace
    ]
