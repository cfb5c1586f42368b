"""--explain narrates what the syscall layer and the cgroup library really do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cgroups
from tests.conftest import Minidock

FLAG_TO_NS = {
    "CLONE_NEWNS": "mnt",
    "CLONE_NEWUTS": "uts",
    "CLONE_NEWIPC": "ipc",
    "CLONE_NEWNET": "net",
    "CLONE_NEWCGROUP": "cgroup",
    "CLONE_NEWPID": "pid",
}


def test_explain_does_not_change_the_output(md: Minidock) -> None:
    plain = md("run", "--rm", "--network", "none", "busybox", "echo", "hi")
    explained = md("--explain", "run", "--rm", "--network", "none", "busybox", "echo", "hi")
    assert plain.stdout == explained.stdout == "hi\n"
    assert plain.stderr == ""
    assert "pivot_root" in explained.stderr and "see pivot_root(2)" in explained.stderr


def test_narrated_steps_match_what_the_kernel_reports(md: Minidock) -> None:
    proc = md("--explain=json", "run", "-d", "--name", "narrated", "--network", "none", "-m", "48m",
              "busybox", "sleep", "60")  # fmt: skip
    events = [json.loads(line) for line in proc.stderr.splitlines()]
    unshared = set()
    for e in events:
        if e["kind"] == "syscall" and e["call"].startswith("unshare("):
            unshared |= set(e["call"][len("unshare(") : -1].split("|"))
    pid = md.pid("narrated")
    tree = [e["call"] for e in events if e["call"].startswith("process tree")]
    assert len(tree) == 1 and f"container PID 1 (host PID {pid}," in tree[0]
    assert {FLAG_TO_NS[f] for f in unshared} == set(FLAG_TO_NS.values())
    for ns in FLAG_TO_NS.values():
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    limit = "memory.max" if cgroups.backend_name() == "v2" else "memory.limit_in_bytes"
    writes = [e for e in events if e["kind"] == "cgroup" and e["file"].endswith("/" + limit)]
    assert [w["value"] for w in writes] == [str(48 << 20)]
    with open(writes[0]["file"]) as f:
        assert f.read().strip() == str(48 << 20)


def test_explain_exec_and_a_reader_that_goes_away(md: Minidock) -> None:
    md("run", "-d", "--name", "narrated", "--network", "none", "busybox", "sleep", "60")
    proc = md("--explain", "exec", "narrated", "echo", "inside")
    assert proc.stdout == "inside\n" and "setns(" in proc.stderr
    # Narration into a pipe nobody reads any more must not break the command.
    script = (f"{sys.executable} -m minidock --explain run --rm --network none busybox true "
              "2>&1 >/dev/null | head -c1 >/dev/null; echo $?")  # fmt: skip
    out = subprocess.run(["bash", "-o", "pipefail", "-c", script], env=md.env,
                         capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    assert out.strip() == "0"
    assert md("ps", "-aq").stdout.split() == [md.inspect("narrated")["Id"][:12]]
