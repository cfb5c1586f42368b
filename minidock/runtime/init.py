"""The container's first process, from fork to exec (runc's ``init`` / crun's ``container.c``).

``runtime.create`` forks this process into a fresh PID namespace, where it is PID 1. It
then, in order:

1. waits for the parent to put it into its cgroup (so even its setup is accounted for);
2. joins or creates the other namespaces (mount, UTS, IPC, network, cgroup);
3. makes itself non-dumpable — it is the *host's* python, and until it execs, a process in
   the container must not be able to reach it through ``/proc/1/exe`` (CVE-2019-5736);
4. builds the root filesystem and pivots into it (``rootfs.py``);
5. sets hostname, rlimits, capabilities, uid/gid and no_new_privs, and installs the
   seccomp filter (which the runtime compiled before forking it, with the host's libseccomp);
6. tells the parent it is ready (OCI state ``created``) and blocks on the exec FIFO;
7. when ``start`` opens the FIFO, marks every inherited descriptor close-on-exec and execs
   the user's program — through a sealed trampoline (``dmz.py``) — which replaces this
   Python process entirely.

Any failure before step 6 is sent to the parent as a message, so ``create`` can report it
(command not found → exit 127) and clean up; this process then exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import signal
import socket
import termios

from minidock import caps, syscalls
from minidock.errors import (
    CommandNotFound,
    CommandNotInvocable,
    InvalidArgument,
    KernelError,
    MinidockError,
)
from minidock.runtime import dmz, rootfs

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def send(sock: socket.socket, message: dict) -> None:
    sock.send(json.dumps(message).encode())


def receive(sock: socket.socket) -> dict:
    data = sock.recv(65536)
    if not data:
        return {"type": "eof"}
    return json.loads(data)


def container_init(
    spec: dict,
    sync: socket.socket,
    fifo_fd: int,
    console: socket.socket | None,
    cgroup_paths: dict[str, str],
    ns_fds: dict[str, int],
    seccomp_program: bytes | None,
) -> None:
    """Body of the forked child. Never returns: execs the program, or exits on error.
    ``seccomp_program`` is the filter the runtime compiled for it (None: no filter)."""
    try:
        syscalls.prctl(
            syscalls.PR_SET_PDEATHSIG,
            signal.SIGKILL,
            reason="die with the runtime if it dies during setup",
        )
        if receive(sync).get("type") != "go":
            os._exit(1)
        set_oom_score_adj(spec["process"])
        if in_user_namespace(spec["linux"]):
            _become_user_namespace_root()
        _enter_namespaces(spec, ns_fds)
        # The namespaces exist: the runtime runs its createRuntime hooks now (e.g. to plug
        # a veth into our network namespace), before the root filesystem is switched.
        send(sync, {"type": "namespaces"})
        if receive(sync).get("type") != "continue":
            os._exit(1)
        syscalls.prctl(
            syscalls.PR_SET_DUMPABLE,
            0,
            reason="hide this host python from /proc/<pid>/exe (CVE-2019-5736)",
        )
        _build_rootfs(spec, cgroup_paths)
        process = spec["process"]
        if process.get("terminal"):
            open_console(console)
        set_process_attributes(spec, seccomp_program)
        program = find_program(process)
        send(sync, {"type": "ready"})
        sync.close()
        syscalls.prctl(
            syscalls.PR_SET_PDEATHSIG,
            0,
            reason="created: the container outlives the command that created it",
        )
        # Blocks here, in OCI state "created", until `start` opens the FIFO's read end.
        fifo = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
        os.write(fifo, b"0")
        os.close(fifo)
        os.close(fifo_fd)
        exec_program(
            program, process, spec.get("annotations", {}).get("org.minidock.init") == "true"
        )
    except MinidockError as exc:
        _report(sync, str(exc), exc.exit_code)
    except Exception as exc:  # noqa: BLE001 — anything at all must reach the parent
        _report(sync, f"container init: {exc}", 125)
    os._exit(1)


def reset_signals() -> None:
    """Give the program default signal handling. execve(2) resets caught signals but keeps
    *ignored* ones and the blocked mask — and Python ignores SIGPIPE and SIGXFSZ, so
    without this every container would inherit that (``yes | head -1`` would complain of
    a broken pipe instead of ``yes`` dying quietly)."""
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            with contextlib.suppress(OSError, ValueError):  # the kernel keeps 32 and 33
                signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def exec_program(program: str, process: dict, with_reaper: bool = False) -> None:
    """The last step: no inherited descriptor may survive, then execve(2) — by way of the
    sealed trampoline (``dmz.py``), so that not even ``#!/proc/self/exe`` finds the host's
    python. From here on the process is the container's program and nothing of the runtime
    is left in it. Never returns; if exec fails, exits 126 (not executable) or 127 (not
    found)."""
    syscalls.close_range_cloexec(3, reason="no host descriptor may reach the program")
    reset_signals()
    env = dict(e.split("=", 1) for e in process.get("env", []) if "=" in e)
    if with_reaper:
        from minidock.runtime.reaper import run_reaper

        run_reaper(program, process["args"], env)
    try:
        dmz.execve(program, process["args"], env, reason="become the container's program")
    except (OSError, KernelError) as exc:
        os.write(2, f"minidock: exec {process['args'][0]}: {exc}\n".encode())
        os._exit(126)


def _report(sync: socket.socket, message: str, exit_code: int) -> None:
    try:
        send(sync, {"type": "error", "message": message, "exit_code": exit_code})
    except OSError:
        os.write(2, f"minidock: {message}\n".encode())


def _enter_namespaces(spec: dict, ns_fds: dict[str, int]) -> None:
    """Join the namespaces given by path, then unshare the new ones (except PID and user:
    the parent already created those by forking or cloning us into them). Made after the
    user namespace, each new one is owned by it: root inside has its powers over them."""
    for kind, fd in ns_fds.items():
        syscalls.setns(
            fd, syscalls.NAMESPACE_FLAGS[kind], reason=f"join an existing {kind} namespace"
        )
        os.close(fd)
    flags = 0
    for ns in spec["linux"].get("namespaces", []):
        if ns["type"] not in ("pid", "user") and not ns.get("path"):
            flags |= syscalls.NAMESPACE_FLAGS[ns["type"]]
    if flags:
        syscalls.unshare(flags, reason="give the container its own namespaces")
    if flags & syscalls.CLONE_NEWNET:
        syscalls.link_up("lo", reason="a new network namespace's loopback starts down")


def in_user_namespace(linux: dict) -> bool:
    """Whether the spec's ``linux`` section gives the container a user namespace."""
    return any(ns["type"] == "user" for ns in linux.get("namespaces", []))


def _become_user_namespace_root() -> None:
    """Become uid and gid 0 *of the user namespace* — on the host, the first ids of the
    container's range — as soon as the maps are written, before making the other
    namespaces (as runc's nsexec). Until now we were host root, unmapped here; from now on
    what we create (the IPC namespace's mqueue, the /dev tmpfs, mount points, the workdir)
    belongs to the container's root, and host files open to us only as to any other user.
    Changing uid clears the parent-death signal, so it is set again."""
    syscalls.set_identity(0, 0, [], reason="root of the user namespace: an ordinary host uid")
    syscalls.prctl(
        syscalls.PR_SET_PDEATHSIG,
        signal.SIGKILL,
        reason="the uid change cleared it: die with the runtime during setup",
    )


def _build_rootfs(spec: dict, cgroup_paths: dict[str, str]) -> None:
    root = spec["root"]["path"]
    linux = spec["linux"]
    rootfs.make_private()
    rootfs.bind_rootfs(root)
    # Opened after the bind: lookups from it must start in the bind mount, not beneath it.
    with rootfs.opened(rootfs.open_root(root)) as root_fd:
        for m in spec.get("mounts", []):
            rootfs.mount_one(root_fd, m, cgroup_paths)
        rootfs.create_devices(root_fd, linux.get("devices", []), bind=in_user_namespace(linux))
    if spec.get("hostname"):
        syscalls.sethostname(spec["hostname"], reason="the container's own hostname (UTS ns)")
    rootfs.pivot_root(root)
    rootfs.mask_paths(linux.get("maskedPaths", []))
    rootfs.readonly_paths(linux.get("readonlyPaths", []))
    if spec["root"].get("readonly"):
        rootfs.readonly_root()


def open_console(console: socket.socket | None, bind_dev_console: bool = True) -> None:
    """Allocate the container's terminal from its own devpts and hand the master side to the
    runtime's caller over the console socket (SCM_RIGHTS), as runc's --console-socket does.
    The slave side becomes this process's controlling terminal and stdin/stdout/stderr
    (and, for the container's first process, /dev/console)."""
    if console is None:
        raise InvalidArgument("terminal requested but no console socket given")
    master, slave = os.openpty()
    socket.send_fds(console, [b"console"], [master])
    os.close(master)
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if not bind_dev_console:
        os.close(slave)
        return
    with rootfs.opened(rootfs.open_root("/")) as root:  # the slave itself, onto /dev/console
        rootfs.bind_mount(root, rootfs.fd_path(slave), "/dev/console",
                          reason="/dev/console is the container's terminal")  # fmt: skip
    os.close(slave)


def set_oom_score_adj(process: dict) -> None:
    """The OOM killer's bias for the process and, since it is inherited, its children. Set
    first, while still host root: in a user namespace, root can't write the /proc/self
    files of a non-dumpable process (they belong to host root) or lower the value."""
    if "oomScoreAdj" in process:
        syscalls.write_proc("/proc/self/oom_score_adj", str(process["oomScoreAdj"]),
                            reason="how readily the OOM killer picks this process")  # fmt: skip


def set_process_attributes(spec: dict, seccomp_program: bytes | None = None) -> None:
    """rlimits, then identity and capabilities, then no_new_privs; the seccomp filter goes
    in before the capabilities are dropped or after no_new_privs."""
    process = spec["process"]
    for limit in process.get("rlimits", []):
        which = getattr(resource, limit["type"])
        _, hard_now = resource.getrlimit(which)
        hard = min(limit["hard"], hard_now) if hard_now != resource.RLIM_INFINITY else limit["hard"]
        resource.setrlimit(which, (min(limit["soft"], hard), hard))
    cwd = process.get("cwd", "/")
    os.makedirs(cwd, exist_ok=True)
    no_new_privs = bool(process.get("noNewPrivileges"))
    if seccomp_program is not None and not no_new_privs:
        # Without no_new_privs, installing a filter takes CAP_SYS_ADMIN — which the next
        # step may drop. So, as runc does, install it while we still hold it; the rest of
        # the setup (capset, setresuid, chdir…) then has to pass it, as Docker's profile lets it.
        syscalls.seccomp_set_mode_filter(
            seccomp_program, reason="the seccomp filter, while we still hold CAP_SYS_ADMIN"
        )
    _set_capabilities_and_user(process)
    os.chdir(cwd)
    # Outside the root, getcwd(2) says "(unreachable)/…" (a host directory reached through
    # a leaked descriptor: CVE-2024-21626); glibc turns that into ENOENT.
    try:
        inside = os.getcwd().startswith("/")
    except FileNotFoundError:
        inside = False
    if not inside:
        raise InvalidArgument(f"working directory {cwd} is outside the container")
    if no_new_privs:
        syscalls.prctl(
            syscalls.PR_SET_NO_NEW_PRIVS, 1, reason="setuid binaries can no longer gain privileges"
        )
        if seccomp_program is not None:
            # With no_new_privs no capability is needed: install it as late as possible, so
            # the profile has to allow as few of the runtime's own calls as possible (runc).
            syscalls.seccomp_set_mode_filter(
                seccomp_program, reason="the seccomp filter: from now on, disallowed calls fail"
            )


def _set_capabilities_and_user(process: dict) -> None:
    """Drop from the bounding set what the container may never regain, switch uid/gid
    keeping capabilities across the switch, then set the exact capability sets."""
    sets = process.get("capabilities", {})
    bounding = caps.mask(sets.get("bounding", []))
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        if not bounding & (1 << cap):
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)
    user = process.get("user", {})
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 1, reason="keep capabilities across setuid")
    syscalls.set_identity(
        uid, gid, user.get("additionalGids", []), reason="become the container's user"
    )
    syscalls.capset(
        caps.mask(sets.get("effective", [])),
        caps.mask(sets.get("permitted", [])),
        caps.mask(sets.get("inheritable", [])),
        reason="the container's capability sets",
    )
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    for name in sets.get("ambient", []):
        syscalls.prctl(
            syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_RAISE, caps.CAPABILITIES[name]
        )


def find_program(process: dict) -> str:
    """Resolve ``args[0]`` the way execvp does, inside the container's root and ``$PATH``."""
    args = process.get("args") or []
    if not args:
        raise InvalidArgument("no command specified")
    name = args[0]
    if "/" in name:
        candidates = [name]
    else:
        env = dict(e.split("=", 1) for e in process.get("env", []) if "=" in e)
        dirs = env.get("PATH", DEFAULT_PATH).split(":")
        candidates = [os.path.join(d or ".", name) for d in dirs]
    for path in candidates:
        if os.path.isfile(path):
            if not os.access(path, os.X_OK):
                raise CommandNotInvocable(f'exec: "{name}": permission denied')
            return path
    if "/" in name and os.path.isdir(name):
        raise CommandNotInvocable(f'exec: "{name}": is a directory')
    where = "no such file or directory" if "/" in name else "executable file not found in $PATH"
    raise CommandNotFound(f'exec: "{name}": {where}')
