"""``--explain``: narrate every kernel-facing step as it happens, on stderr.

The narration is not a set of print statements: the syscall layer (``syscalls.py``) and
the cgroup library (``cgroups.fs``) report each call to an *observer* function, and this
module installs one. When nothing is installed the layers skip all formatting, so the
feature costs nothing when it is off.

``MINIDOCK_EXPLAIN`` (``text`` or ``json``) carries the choice to the processes minidock
starts (the monitor, hooks), so their steps are narrated too, each line tagged with the
narrating process's PID.
"""

from __future__ import annotations

import json
import os

import cgroups.fs
from minidock import syscalls

#: Where to read more about a call (the man page section that documents it).
_MAN_PAGES = {
    "unshare": "unshare(2)",
    "setns": "setns(2)",
    "mount": "mount(2)",
    "umount2": "umount2(2)",
    "pivot_root": "pivot_root(2)",
    "sethostname": "sethostname(2)",
    "prctl": "prctl(2)",
    "capset": "capset(2)",
    "close_range": "close_range(2)",
    "mknod": "mknod(2)",
    "mknodat": "mknod(2)",
    "openat2": "openat2(2)",
    "memfd_create": "memfd_create(2)",
    "execveat": "execveat(2)",
    "kill": "kill(2)",
    "execve": "execve(2)",
    "setgroups": "setresuid(2)",
    "ioctl": "netdevice(7)",
    "clone": "clone(2)",
    "write": "proc(5)",
    "open_tree": "open_tree(2)",
    "mount_setattr": "mount_setattr(2)",
    "move_mount": "move_mount(2)",
}
#: Why cgroup v2 device rules are bpf(2) calls rather than file writes.
_DEVICE_PROGRAM = (
    "cgroup v2 has no devices.allow: an eBPF program attached to the cgroup decides each "
    "open or mknod of a device node by its processes (1 allows, 0 is EPERM)"
)
ENV = "MINIDOCK_EXPLAIN"
#: The descriptor narration goes to (a duplicate of stderr), or None when off.
narration_fd: int | None = None


def _man_page(call: str) -> str:
    name = call.split("(", 1)[0]
    return _MAN_PAGES.get(name, "")


def enable(mode: str) -> None:
    """Narrate from now on, in ``mode`` ("text" or "json"), here and in child processes.

    Lines go to a duplicate of the current stderr, so that the container's first process,
    which narrates its own setup after its stderr became the container's, still reports
    to the user's terminal and not into the container's log.
    """
    global narration_fd
    os.environ[ENV] = mode
    out = narration_fd = os.dup(2)

    def emit(event: dict[str, str]) -> None:
        event = {"pid": str(os.getpid()), **event}
        if mode == "json":
            line = json.dumps(event)
        else:
            see = f"  (see {event['man']})" if event.get("man") else ""
            why = f"\n{'':8}# {event['reason']}{see}" if event.get("reason") else see
            line = f"[{event['pid']}] {event['call']}{why}"
        data = (line + "\n").encode()
        try:
            while data:
                data = data[os.write(out, data) :]
        except OSError:  # nobody reads any more (a closed pipe): stop narrating
            syscalls.observer = cgroups.fs.observer = None

    def on_syscall(call: str, reason: str) -> None:
        emit({"kind": "syscall", "call": call, "reason": reason, "man": _man_page(call)})

    def on_cgroup_write(path: str, value: str) -> None:
        if value.startswith("bpf("):  # cgroups.devices_bpf: v2's device program, not a file
            emit({"kind": "cgroup", "call": f"{value}  ({path})", "reason": _DEVICE_PROGRAM,
                  "man": "bpf(2)", "file": path, "value": value})  # fmt: skip
            return
        name = os.path.basename(path)
        emit({"kind": "cgroup", "call": f"{name} ← {value.strip()}  ({path})",
              "reason": "a cgroup setting: the kernel enforces it for every process in it",
              "man": "cgroups(7)", "file": path, "value": value.strip()})  # fmt: skip

    syscalls.observer = on_syscall
    cgroups.fs.observer = on_cgroup_write


def from_environment() -> None:
    """Turn narration on if the process that started us asked for it."""
    mode = os.environ.get(ENV, "")
    if mode in ("text", "json", "1"):
        enable("json" if mode == "json" else "text")
