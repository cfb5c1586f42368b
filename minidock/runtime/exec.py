"""Run one more process inside a running container (``runc exec``, ``docker exec``).

A process can't be moved into namespaces from outside: it has to join them itself with
setns(2). So we fork a helper that joins the container's cgroup and its IPC, UTS,
network, PID, mount and cgroup namespaces. Two details matter:

* joining a PID namespace only affects the *children* of the caller (as unshare does), so
  the helper forks once more; that grandchild is born inside the container's PID
  namespace and becomes the program, while the helper waits for it from outside and
  exits with its status;
* joining the mount namespace resets the root and working directory to that namespace's
  root — the container's root filesystem — so no chroot is needed.

The helper is the host's python, non-dumpable, and never visible inside the container
(it stays in the host's PID namespace). The program gets the container's capabilities,
user, no_new_privs and seccomp filter exactly as its first process did, and no host
descriptor.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket

import cgroups
from minidock import explain, store, syscalls
from minidock.errors import InvalidState, MinidockError
from minidock.runtime import _error_from, seccomp_filter, state
from minidock.runtime.init import (
    exec_program,
    find_program,
    in_user_namespace,
    open_console,
    receive,
    send,
    set_oom_score_adj,
    set_process_attributes,
)
from minidock.runtime.reaper import exit_status
from minidock.state import Status

#: The namespaces exec joins, in the order runc joins them (mount late: after it, /proc
#: paths on the host would be the container's).
_JOIN = ("ipc", "uts", "network", "pid", "mount", "cgroup")


def exec_process(root: str, cid: str, process: dict, *,
                 stdio: tuple[int, int, int] | None = None,
                 console: socket.socket | None = None) -> int:  # fmt: skip
    """Start ``process`` (an OCI ``process`` object) in the running container ``cid``.

    Returns the PID of the helper, our child, whose exit status is the program's. Raises
    (CommandNotFound → 127, …) if the program could not be started.
    """
    st = state(root, cid)
    if st.status is not Status.RUNNING:
        raise InvalidState(f"container {cid} is not running")
    linux = store.read_json(os.path.join(st.bundle, "config.json")).get("linux", {})
    seccomp_program = seccomp_filter(root, linux.get("seccomp"))
    # Its user namespace first (as runc): it owns the others, and is what makes the
    # program's uid 0 the container's root rather than the host's.
    joined = ("user", *_JOIN) if in_user_namespace(linux) else _JOIN
    ns_fds = {kind: os.open(f"/proc/{st.pid}/ns/{syscalls.NAMESPACE_FILES[kind]}",
                            os.O_RDONLY | os.O_CLOEXEC) for kind in joined}  # fmt: skip
    group = cgroups.open_cgroup(st.cgroup) if st.cgroup else None
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        parent_sock.close()
        _helper(process, seccomp_program, ns_fds, group, child_sock, stdio, console)
    child_sock.close()
    for fd in ns_fds.values():
        os.close(fd)
    with parent_sock:
        reply = receive(parent_sock)
    if reply.get("type") != "ready":
        os.waitpid(pid, 0)
        raise _error_from(reply)
    return pid


def process_of(bundle: str, args: list[str], env: list[str] | None = None) -> dict:
    """The OCI ``process`` for one more program in the container: a copy of its first
    process's (user, capabilities, rlimits, no_new_privs, working directory, environment)
    from the bundle's ``config.json``, running ``args``, without a terminal. ``env``
    entries (``KEY=VALUE``) are added to the environment or replace a variable."""
    process = dict(store.read_json(os.path.join(bundle, "config.json"))["process"])
    process["args"] = args
    process["terminal"] = False
    merged = dict(e.split("=", 1) for e in process["env"])
    merged.update(e.split("=", 1) for e in env or [] if "=" in e)
    process["env"] = [f"{k}={v}" for k, v in merged.items()]
    return process


def _close_all_but(keep: set[int]) -> None:
    """Close every inherited descriptor above stderr that isn't in ``keep``. The helper never
    execs, so close-on-exec does nothing for it: a pipe end it kept open by accident (the
    write end of the program's stdin, say) would keep the program from seeing end-of-file."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):  # includes the listdir's own descriptor
                os.close(fd)


def _helper(process: dict, seccomp_program: bytes | None, ns_fds: dict[str, int],
            group: cgroups.Cgroup | None, sync: socket.socket,
            stdio: tuple[int, int, int] | None, console: socket.socket | None) -> None:  # fmt: skip
    """Join the container, fork the program into its PID namespace, wait, exit with its
    status. Never returns."""
    try:
        keep = {
            *ns_fds.values(),
            sync.fileno(),
            *(stdio or ()),
            *([console.fileno()] if console else []),
            *([explain.narration_fd] if explain.narration_fd is not None else []),
        }
        _close_all_but(keep)
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL,
                       reason="die with the exec command")  # fmt: skip
        if group is not None:
            group.add_process(os.getpid())
        set_oom_score_adj(process)  # inherited by the program
        for kind, fd in ns_fds.items():
            syscalls.setns(fd, syscalls.NAMESPACE_FLAGS[kind],
                           reason=f"join the container's {kind} namespace")  # fmt: skip
            os.close(fd)
        syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0,
                       reason="hide this host python from /proc/<pid>/exe")  # fmt: skip
        child = os.fork()
        if child == 0:
            if stdio is not None:
                for target, fd in enumerate(stdio):
                    os.dup2(fd, target)
            if process.get("terminal"):
                open_console(console, bind_dev_console=False)
            set_process_attributes({"process": process}, seccomp_program)
            program = find_program(process)
            send(sync, {"type": "ready"})
            sync.close()
            exec_program(program, process)
        sync.close()
        _, status = os.waitpid(child, 0)
        os._exit(exit_status(status))
    except MinidockError as exc:
        send(sync, {"type": "error", "message": str(exc), "exit_code": exc.exit_code})
    except Exception as exc:  # noqa: BLE001 — anything at all must reach the caller
        send(sync, {"type": "error", "message": f"exec: {exc}", "exit_code": 126})
    os._exit(126)
