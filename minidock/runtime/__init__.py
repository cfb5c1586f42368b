"""The OCI runtime: takes any bundle (``config.json`` + rootfs) through create → start → kill
→ delete.

This is the part runc and crun play under Docker and Podman (runtime-spec ``runtime.md``):

* ``create`` builds the container — cgroup, namespaces, root filesystem — around a process
  that stops just short of running the user's program (state ``created``);
* ``start`` lets that process exec the program (state ``running``);
* ``kill`` signals it; when it exits the state is ``stopped``;
* ``delete`` removes what ``create`` made (the cgroup and the runtime's record).

The engine drives it in-process from the container's monitor (so the monitor is the
container's parent and can reap it), and ``minidock runtime …`` exposes the same calls
with runc's command-line interface.

The runtime's own record lives in ``<runtime root>/<id>/``: ``state.json`` and the exec
FIFO on which a created container waits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field

import cgroups
from minidock import store, syscalls
from minidock.errors import (
    CommandNotFound,
    CommandNotInvocable,
    Conflict,
    ContainerNotFound,
    InvalidArgument,
    MinidockError,
)
from minidock.logfile import format_timestamp
from minidock.runtime.init import container_init, in_user_namespace, receive, send
from minidock.state import Operation, Status, oci_status, require

OCI_VERSION = "1.0.2"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Beside the containers' records in the runtime's root: compiled seccomp programs.
SECCOMP_CACHE = ".seccomp-cache"


@dataclass
class OciState:
    """The state the OCI spec defines (``runtime.md`` "State"), plus what we need to find
    the container's processes again safely."""

    id: str
    status: Status
    pid: int
    bundle: str
    created: str
    cgroup: str = ""
    pid_start: int = 0  # the init's start time, to tell it from a later process reusing its pid
    annotations: dict[str, str] = field(default_factory=dict)

    def to_oci(self) -> dict:
        """The JSON ``minidock runtime state`` prints, shaped exactly like runc's."""
        data: dict = {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": oci_status(self.status),
            "bundle": self.bundle,
            "created": self.created,
            "annotations": self.annotations,
        }
        if self.status in (Status.CREATED, Status.RUNNING):
            data["pid"] = self.pid
        return data


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot.
    Together with the pid it identifies one process for good (pids get reused)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    return int(data[data.rindex(b")") + 2 :].split()[19])


def is_alive(pid: int, start_time: int) -> bool:
    """Whether ``pid`` is still the process that started at ``start_time`` and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0] != b"Z" and int(fields[19]) == start_time


def _state_dir(root: str, cid: str) -> str:
    return os.path.join(root, cid)


def state(root: str, cid: str) -> OciState:
    """The container's current OCI state, read from its record and the live kernel."""
    path = os.path.join(_state_dir(root, cid), "state.json")
    try:
        data = store.read_json(path)
    except FileNotFoundError:
        raise ContainerNotFound(f"container {cid} does not exist") from None
    st = OciState(**{**data, "status": Status(data["status"])})
    if not is_alive(st.pid, st.pid_start):
        st.status = Status.EXITED
    elif os.path.exists(os.path.join(_state_dir(root, cid), "exec.fifo")):
        st.status = Status.CREATED
    else:
        st.status = Status.RUNNING
    return st


def limits_from_spec(resources: dict) -> cgroups.Limits:
    """Translate the spec's ``linux.resources`` into the cgroups library's limits."""
    memory = resources.get("memory", {})
    cpu = resources.get("cpu", {})
    rules = [
        f"{d.get('type', 'a')} {_dev_num(d.get('major'))}:{_dev_num(d.get('minor'))} "
        f"{d.get('access', 'rwm')}"
        for d in resources.get("devices", [])
        if d.get("allow")
    ]
    return cgroups.Limits(
        memory=memory.get("limit"),
        memory_swap=memory.get("swap"),
        cpu_quota=cpu.get("quota"),
        cpu_period=cpu.get("period"),
        cpu_shares=cpu.get("shares"),
        pids=resources.get("pids", {}).get("limit"),
        device_rules=rules,
    )


def _dev_num(n: int | None) -> str:
    return "*" if n is None or n < 0 else str(n)


def _fork_into_pid_namespace(spec: dict) -> int:
    """fork(2) so that the child is PID 1 of the container's PID namespace.

    unshare(CLONE_NEWPID) does not move the caller: it only decides where the caller's
    *next* child is born. So: unshare (or setns to a given namespace), fork, then setns
    back to our own namespace so later children are ordinary again. The container's
    first process is thus our direct child, and we (the monitor) can reap it. (With a user
    namespace the child is cloned into both at once: :func:`_clone_into_user_namespace`.)
    """
    if _new_user_namespace(spec["linux"]):
        return _clone_into_user_namespace(spec["linux"]["namespaces"])
    pid_ns = next((ns for ns in spec["linux"].get("namespaces", []) if ns["type"] == "pid"), None)
    if pid_ns is None:
        return os.fork()
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if pid_ns.get("path"):
            target = os.open(pid_ns["path"], os.O_RDONLY | os.O_CLOEXEC)
            try:
                syscalls.setns(target, syscalls.CLONE_NEWPID, reason="join the PID namespace")
            finally:
                os.close(target)
        else:
            syscalls.unshare(
                syscalls.CLONE_NEWPID, reason="the next child is PID 1 of a new PID namespace"
            )
        pid = os.fork()
        if pid != 0:
            syscalls.setns(
                own,
                syscalls.CLONE_NEWPID,
                reason="later children go back to the host's PID namespace",
            )
        return pid
    finally:
        os.close(own)


def seccomp_filter(root: str, profile: dict | None) -> bytes | None:
    """The spec's ``linux.seccomp`` as the BPF program the container's process installs
    just before it execs (None: no filter). The runtime makes it before it forks, while it
    still sees the host's libseccomp, and usually finds it already compiled in its cache
    (``root/.seccomp-cache``, a name no container ID can have)."""
    if not profile:
        return None
    from minidock import seccomp  # not at the top: state, kill and delete don't need it

    return seccomp.cached_filter(profile, os.path.join(root, SECCOMP_CACHE))


def _new_user_namespace(linux: dict) -> bool:
    """Whether the spec asks for a user namespace (it must then say how its ids map)."""
    if not in_user_namespace(linux):
        return False
    if not linux.get("uidMappings") or not linux.get("gidMappings"):
        raise InvalidArgument("a user namespace needs linux.uidMappings and linux.gidMappings")
    return True


def _clone_into_user_namespace(namespaces: list[dict]) -> int:
    """clone(2) the container's first process into a new user namespace and, in the same
    call, a new PID namespace that the user namespace owns (as crun does; runc unshares
    both in a child that forks again). unshare(CLONE_NEWPID) here would give the PID
    namespace to the host's user namespace, and the container's root could never mount
    a /proc for it. ``create`` then writes the child's id maps before letting it go on."""
    if any(ns.get("path") for ns in namespaces if ns["type"] in ("user", "pid")):
        raise InvalidArgument("a new user namespace can't join a user or PID namespace by path")
    new_pid = any(ns["type"] == "pid" for ns in namespaces)
    return syscalls.clone(
        syscalls.CLONE_NEWUSER | (syscalls.CLONE_NEWPID if new_pid else 0),
        reason="a user namespace that owns the new PID namespace: the child is its PID 1",
    )


def create(
    root: str,
    cid: str,
    bundle: str,
    *,
    stdio: tuple[int, int, int] | None = None,
    console: socket.socket | None = None,
    pid_file: str | None = None,
) -> OciState:
    """Create the container ``cid`` from ``bundle`` and leave it waiting in ``created``.

    ``stdio`` are the descriptors the container's program gets as 0, 1, 2 (default: ours).
    With ``process.terminal`` the program gets a pty instead and its master side is sent
    over ``console``. On failure everything made so far is undone and the error raised.
    """
    if not _ID_RE.match(cid):
        raise InvalidArgument(f"invalid container id {cid!r}")
    bundle = os.path.abspath(bundle)
    try:
        spec = store.read_json(os.path.join(bundle, "config.json"))
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read {bundle}/config.json: {exc}") from None
    spec["root"]["path"] = os.path.join(bundle, spec["root"]["path"])
    os.makedirs(root, mode=0o700, exist_ok=True)
    seccomp_program = seccomp_filter(root, spec.get("linux", {}).get("seccomp"))
    state_dir = _state_dir(root, cid)
    try:
        os.mkdir(state_dir, 0o700)
    except FileExistsError:
        raise Conflict(f"container with id {cid} already exists") from None
    cgroup: cgroups.Cgroup | None = None
    pid = 0
    linux = spec.setdefault("linux", {})
    cgroup_name = linux.get("cgroupsPath", "").strip("/")
    st = OciState(id=cid, status=Status.CREATED, pid=0, bundle=bundle, created=_now_rfc3339(),
                  cgroup=cgroup_name, annotations=spec.get("annotations", {}))  # fmt: skip
    # Recorded before anything is made ("creating": no pid yet), so that even if this
    # process is killed halfway, `delete` finds the cgroup to remove.
    _write_state(state_dir, st)
    try:
        fifo = os.path.join(state_dir, "exec.fifo")
        os.mkfifo(fifo, 0o622)
        # Writable by anyone, whatever the umask: the init opens it after becoming the
        # container's user, maybe without capabilities or as a user namespace's root. Only
        # its descriptor leads there (the directory is 0700), as in runc.
        os.chmod(fifo, 0o622)
        fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
        if cgroup_name:
            cgroup = cgroups.create(cgroup_name, limits_from_spec(linux.get("resources", {})))
        ns_fds = {
            ns["type"]: os.open(ns["path"], os.O_RDONLY | os.O_CLOEXEC)
            for ns in linux.get("namespaces", [])
            if ns.get("path") and ns["type"] != "pid"
        }
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = _fork_into_pid_namespace(spec)
        if pid == 0:
            parent_sock.close()
            if stdio is not None:
                for target, fd in enumerate(stdio):
                    os.dup2(fd, target)
            container_init(spec, child_sock, fifo_fd, console, cgroup.paths() if cgroup else {},
                           ns_fds, seccomp_program)  # fmt: skip
        child_sock.close()
        os.close(fifo_fd)
        for fd in ns_fds.values():
            os.close(fd)
        with parent_sock:
            if cgroup is not None:
                cgroup.add_process(pid)
            if _new_user_namespace(linux):  # the child waits for its ids before anything else
                syscalls.write_id_maps(pid, linux["uidMappings"], linux["gidMappings"])
            send(parent_sock, {"type": "go"})
            reply = receive(parent_sock)
            if reply.get("type") == "namespaces":
                hook_state = {
                    "ociVersion": OCI_VERSION,
                    "id": cid,
                    "status": "creating",
                    "pid": pid,
                    "bundle": bundle,
                    "annotations": spec.get("annotations", {}),
                }
                run_hooks(spec, "createRuntime", hook_state)
                send(parent_sock, {"type": "continue"})
                reply = receive(parent_sock)
        if reply.get("type") != "ready":
            raise _error_from(reply)
        st.pid, st.pid_start = pid, process_start_time(pid)
        _write_state(state_dir, st)
        if pid_file:
            with open(pid_file, "w") as f:
                f.write(str(pid))
        return st
    except BaseException:
        if pid > 0:
            _kill_and_reap(pid)
        if cgroup is not None:
            cgroup.kill_all()
            cgroup.remove()
        hook_state = {
            "ociVersion": OCI_VERSION,
            "id": cid,
            "status": "stopped",
            "bundle": bundle,
            "annotations": spec.get("annotations", {}),
        }
        run_hooks(spec, "poststop", hook_state, check=False)
        _remove_tree(state_dir)
        raise


def run_hooks(spec: dict, phase: str, hook_state: dict, check: bool = True) -> None:
    """Run the spec's hooks for ``phase`` (runtime-spec config.md "POSIX-platform Hooks"):
    each is a program that gets the container's state as JSON on stdin. A failing
    ``createRuntime`` hook fails the create; ``poststop`` failures are only reported."""
    for hook in spec.get("hooks", {}).get(phase, []):
        args = hook.get("args") or [hook["path"]]
        try:
            subprocess.run(
                args,
                executable=hook["path"],
                input=json.dumps(hook_state).encode(),
                env=dict(e.split("=", 1) for e in hook.get("env", [])) or None,
                timeout=hook.get("timeout"),
                check=True,
                stdout=subprocess.DEVNULL,
                # Captured for the error message, unless --explain wants the narration.
                stderr=None if os.environ.get("MINIDOCK_EXPLAIN") else subprocess.PIPE,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            message = f"{phase} hook {hook['path']} failed: {detail.decode().strip() or exc}"
            if check:
                raise MinidockError(message) from None
            os.write(2, f"minidock: {message}\n".encode())


def _write_state(state_dir: str, st: OciState) -> None:
    store.write_json(os.path.join(state_dir, "state.json"), {
        "id": st.id, "status": st.status.value, "pid": st.pid, "bundle": st.bundle,
        "created": st.created, "cgroup": st.cgroup, "pid_start": st.pid_start,
        "annotations": st.annotations,
    })  # fmt: skip


def _error_from(reply: dict) -> MinidockError:
    message = reply.get("message", "container init exited during setup")
    code = reply.get("exit_code", 125)
    if code == 127:
        return CommandNotFound(message)
    if code == 126:
        return CommandNotInvocable(message)
    return MinidockError(message)


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _remove_tree(path: str) -> None:
    for name in os.listdir(path) if os.path.isdir(path) else []:
        os.unlink(os.path.join(path, name))
    if os.path.isdir(path):
        os.rmdir(path)


def _now_rfc3339() -> str:
    return format_timestamp(time.time_ns())


def start(root: str, cid: str, timeout: float = 10.0) -> None:
    """Let a created container run its program: open the exec FIFO the init is blocked on.

    Opening the read end wakes the init's blocked open of the write end; it writes one
    byte and execs. We wait for that byte, so ``start`` returns once exec is imminent.
    """
    st = state(root, cid)
    require(st.status, Operation.START, cid)
    if st.status is not Status.CREATED:
        raise Conflict(f"container {cid} cannot be started again: delete and create it")
    fifo = os.path.join(_state_dir(root, cid), "exec.fifo")
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready and os.read(fd, 1):
                break
            if not is_alive(st.pid, st.pid_start):
                raise MinidockError(f"container {cid} exited before it could start")
            if time.monotonic() > deadline:
                raise MinidockError(f"container {cid} did not start within {timeout:.0f}s")
    finally:
        os.close(fd)
    os.unlink(fifo)


def kill(root: str, cid: str, sig: int, all_processes: bool = False) -> None:
    """Send ``sig`` to the container's PID 1 (or, with ``all_processes``, every process in
    its cgroup). PID 1 of a namespace ignores signals it has no handler for, except
    SIGKILL and SIGSTOP sent from outside — which is why ``stop`` ends with SIGKILL."""
    st = state(root, cid)
    if st.status not in (Status.CREATED, Status.RUNNING):
        raise Conflict(f"container {cid} is not running")
    if all_processes and st.cgroup:
        cgroups.open_cgroup(st.cgroup).kill_all(sig)
    else:
        syscalls.kill(st.pid, sig, reason="signal the container's PID 1")


def update(root: str, cid: str, resources: dict) -> None:
    """Change a running container's limits (``runc update``): the new values are written
    to its cgroup's files, and the kernel applies them at once — a lower ``memory.max``
    (v1: ``memory.limit_in_bytes``) makes it reclaim, or refuse with EBUSY when it can't.
    Device rules are left as they are: rewriting them would deny every device for a moment."""
    st = state(root, cid)
    if st.status is Status.EXITED or not st.cgroup:
        raise Conflict(f"container {cid} is not running")
    try:
        limits = dataclasses.replace(limits_from_spec(resources), device_rules=[])
        cgroups.open_cgroup(st.cgroup).set_limits(limits)
    except (ValueError, cgroups.CgroupError) as exc:
        raise InvalidArgument(f"cannot update container {cid}: {exc}") from None


def delete(root: str, cid: str, force: bool = False) -> None:
    """Remove what ``create`` made. A running container needs ``force`` (it is killed)."""
    st = state(root, cid)
    if st.status is Status.RUNNING and not force:
        require(st.status, Operation.REMOVE, cid)
    if st.status is not Status.EXITED:
        if st.cgroup:
            cgroups.open_cgroup(st.cgroup).kill_all(signal.SIGKILL)
        else:
            syscalls.kill(st.pid, signal.SIGKILL, reason="force delete")
        deadline = time.monotonic() + 5
        while is_alive(st.pid, st.pid_start) and time.monotonic() < deadline:
            time.sleep(0.01)
    # Whoever renames the record away owns the rest of the deletion; a concurrent delete
    # of the same container finds nothing left to do.
    tombstone = os.path.join(root, f".deleting-{cid}-{os.getpid()}")
    try:
        os.rename(_state_dir(root, cid), tombstone)
    except FileNotFoundError:
        return
    if st.cgroup:
        try:
            group = cgroups.open_cgroup(st.cgroup)
        except cgroups.CgroupError:
            group = None
        if group is not None:
            group.kill_all(signal.SIGKILL)
            group.remove()
    try:
        spec = store.read_json(os.path.join(st.bundle, "config.json"))
    except (OSError, ValueError):
        spec = {}
    run_hooks(spec, "poststop", {**st.to_oci(), "status": "stopped"}, check=False)
    _remove_tree(tombstone)


def list_ids(root: str) -> list[str]:
    """IDs of the containers this runtime root holds."""
    return (
        sorted(d for d in os.listdir(root) if not d.startswith(".")) if os.path.isdir(root) else []
    )
