"""The thin system-call layer: every kernel-facing call minidock makes goes through here.

Python 3.11's ``os`` module lacks ``unshare``, ``setns``, ``mount``, ``pivot_root`` and the
capability calls, so this module reaches them through ``ctypes`` and libc. Each wrapper turns
a failure (-1 and ``errno``) into :class:`minidock.errors.KernelError` carrying the call's name.

Because every call funnels through :func:`narrate`, this module is also where ``--explain``
listens: when :data:`observer` is set, each call is reported as it happens with its decoded
arguments. When it is ``None`` (the default) nothing is formatted.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import socket
from collections.abc import Callable

from minidock.errors import KernelError

# The C library this interpreter is already linked with: dlopen(NULL) finds its symbols
# without a search (ctypes.util.find_library would run ``ldconfig -p`` on every start).
_libc = ctypes.CDLL(None, use_errno=True)

#: Called as ``observer(call, reason)`` for every system call when set (``--explain``).
observer: Callable[[str, str], None] | None = None

# --- namespace flags: clone(2), unshare(2), setns(2) ---------------------------------------
CLONE_NEWNS = 0x00020000  # mount namespace
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000  # hostname and domain name
CLONE_NEWIPC = 0x08000000  # System V IPC, POSIX message queues
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

#: OCI namespace type → clone flag (runtime-spec config-linux.md "Namespaces").
NAMESPACE_FLAGS: dict[str, int] = {
    "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET,
    "mount": CLONE_NEWNS,
    "ipc": CLONE_NEWIPC,
    "uts": CLONE_NEWUTS,
    "user": CLONE_NEWUSER,
    "cgroup": CLONE_NEWCGROUP,
}
#: OCI namespace type → the file under /proc/<pid>/ns/ that names it.
NAMESPACE_FILES: dict[str, str] = {
    "pid": "pid",
    "network": "net",
    "mount": "mnt",
    "ipc": "ipc",
    "uts": "uts",
    "user": "user",
    "cgroup": "cgroup",
}

# --- mount(2) flags ---------------------------------------------------------------------------
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2

# --- prctl(2) options -------------------------------------------------------------------------
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

_PRCTL_NAMES = {
    PR_SET_PDEATHSIG: "PR_SET_PDEATHSIG",
    PR_SET_DUMPABLE: "PR_SET_DUMPABLE",
    PR_SET_KEEPCAPS: "PR_SET_KEEPCAPS",
    PR_SET_NAME: "PR_SET_NAME",
    PR_CAPBSET_DROP: "PR_CAPBSET_DROP",
    PR_SET_CHILD_SUBREAPER: "PR_SET_CHILD_SUBREAPER",
    PR_SET_NO_NEW_PRIVS: "PR_SET_NO_NEW_PRIVS",
    PR_CAP_AMBIENT: "PR_CAP_AMBIENT",
}

# x86_64 system call numbers for calls glibc does not wrap (or wraps only recently).
_SYS_PIVOT_ROOT = 155
_SYS_CAPSET = 126
_SYS_CLOSE_RANGE = 436
_SYS_SECCOMP = 317
_SYS_CLONE = 56
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442
CLOSE_RANGE_CLOEXEC = 0x4
SECCOMP_SET_MODE_FILTER = 1
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def flag_names(value: int, table: dict[str, int]) -> str:
    """Decode a bit mask into ``A|B|C`` using ``table`` (name → bit), for narration and errors."""
    names = [name for name, bit in table.items() if bit and value & bit == bit]
    return "|".join(names) or "0"


_CLONE_TABLE = {
    "CLONE_NEWNS": CLONE_NEWNS,
    "CLONE_NEWCGROUP": CLONE_NEWCGROUP,
    "CLONE_NEWUTS": CLONE_NEWUTS,
    "CLONE_NEWIPC": CLONE_NEWIPC,
    "CLONE_NEWUSER": CLONE_NEWUSER,
    "CLONE_NEWPID": CLONE_NEWPID,
    "CLONE_NEWNET": CLONE_NEWNET,
}
_MS_TABLE = {name: value for name, value in globals().items() if name.startswith("MS_")}


def narrate(call: Callable[[], str], reason: str) -> None:
    """Report a kernel-facing step to the ``--explain`` observer; free when nobody listens.
    The wrappers below call it for each system call; the netlink and iptables code, and
    the monitor (for the process tree), call it too."""
    if observer is not None:
        observer(call(), reason)


def _check(result: int, call: str, detail: str = "") -> int:
    return _check_errno(result, ctypes.get_errno(), call, detail)


def _check_errno(result: int, err: int, call: str, detail: str = "") -> int:
    if result == -1:
        raise KernelError(call, err, detail)
    return result


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


# --- namespaces -------------------------------------------------------------------------------
def unshare(flags: int, reason: str = "") -> None:
    """Move the calling process into new namespaces of the kinds in ``flags`` (unshare(2)).

    CLONE_NEWPID is special: the caller stays where it is and only its *next child* is
    born into the new PID namespace, as its PID 1.
    """
    narrate(lambda: f"unshare({flag_names(flags, _CLONE_TABLE)})", reason)
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare", flag_names(flags, _CLONE_TABLE))


def setns(fd: int, nstype: int, reason: str = "") -> None:
    """Join the namespace that ``fd`` (an open /proc/<pid>/ns/* file) refers to (setns(2))."""
    narrate(lambda: f"setns({fd}, {flag_names(nstype, _CLONE_TABLE)})", reason)
    _check(
        _libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)),
        "setns",
        flag_names(nstype, _CLONE_TABLE),
    )


# The same libc, but called with the GIL held: clone(2) must not let another thread run
# Python while the address space is being copied (os.fork holds it too).
_libc_gil = ctypes.PyDLL(None, use_errno=True)


def clone(flags: int, reason: str = "") -> int:
    """fork(2) with namespace flags (clone(2)): the child is born in new namespaces of the
    kinds in ``flags``. Returns the child's PID in the parent and 0 in the child.

    Namespaces made in one call are created in order, user namespace first, and each new
    one is *owned* by the new user namespace. That is why a container with a user
    namespace gets its PID namespace here and not by unshare(2) in the parent: a PID
    namespace belongs to its creator's user namespace, and only a process privileged there
    may mount a /proc for it. Python's os.fork takes no flags, so this makes the system call
    itself (no new stack: the child goes on with a copy of ours, as after fork) and runs the
    interpreter's own fork hooks around it, exactly as os.fork does.
    """
    narrate(lambda: f"clone({flag_names(flags, _CLONE_TABLE)}|SIGCHLD)", reason)
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _libc_gil.syscall(
        ctypes.c_long(_SYS_CLONE), ctypes.c_ulong(flags | signal.SIGCHLD), None, None, None, None
    )
    err = ctypes.get_errno()
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    return _check_errno(pid, err, "clone", flag_names(flags, _CLONE_TABLE))


def write_proc(path: str, text: str, reason: str = "") -> None:
    """Write ``text`` to a kernel file under /proc (proc(5)) in a single write(2): files
    such as ``uid_map`` take their whole content in one write, and only once. (The cgroup
    library has its own: it is used without minidock.)"""
    narrate(lambda: f'write("{path}", {text!r})', reason)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise KernelError("write", exc.errno or 0, path) from None


def write_id_maps(pid: int, uid_mappings: list[dict], gid_mappings: list[dict]) -> None:
    """Give the user namespace of process ``pid`` its id maps (user_namespaces(7)).

    Until ``uid_map`` and ``gid_map`` are written every id in the namespace is unmapped (it
    shows as 65534) and its processes can't set any. Each line maps a range: "ID-INSIDE
    ID-OUTSIDE COUNT". ``setgroups`` stays "allow": the maps are written by a process
    privileged in the parent namespace, so the container's root may call setgroups(2).
    """

    def lines(mappings: list[dict]) -> str:
        return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in mappings)

    write_proc(f"/proc/{pid}/uid_map", lines(uid_mappings),
               reason="the container's uids: which host uid each one is")  # fmt: skip
    write_proc(f"/proc/{pid}/setgroups", "allow",
               reason="setgroups(2) stays allowed: a privileged parent wrote the maps")  # fmt: skip
    write_proc(f"/proc/{pid}/gid_map", lines(gid_mappings),
               reason="the container's gids: which host gid each one is")  # fmt: skip


# --- mounts -----------------------------------------------------------------------------------
def mount(
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int = 0,
    data: str | None = None,
    reason: str = "",
) -> None:
    """Attach a filesystem, or change a mount's flags or propagation (mount(2))."""
    narrate(
        lambda: (
            f'mount("{source or ""}", "{target}", "{fstype or ""}", '
            f'{flag_names(flags, _MS_TABLE)}, "{data or ""}")'
        ),
        reason,
    )
    result = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(result, "mount", f"{source or fstype or ''} on {target}")


def umount2(target: str, flags: int = 0, reason: str = "") -> None:
    """Detach the filesystem mounted at ``target`` (umount2(2)); MNT_DETACH does it lazily."""
    narrate(lambda: f'umount2("{target}", {"MNT_DETACH" if flags & MNT_DETACH else flags})', reason)
    _check(_libc.umount2(_b(target), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root: str, put_old: str, reason: str = "") -> None:
    """Make ``new_root`` the root mount of this mount namespace (pivot_root(2)).

    Unlike chroot, which only changes one process's view of ``/``, pivot_root swaps the
    namespace's root mount, so the old root can then be unmounted and is gone for good.
    """
    narrate(lambda: f'pivot_root("{new_root}", "{put_old}")', reason)
    _check(_libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), "pivot_root", new_root)


# --- openat2(2): a path lookup the kernel confines --------------------------------------------
_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01  # never cross into another mount
RESOLVE_NO_MAGICLINKS = 0x02  # never jump through /proc/<pid>/fd/N, /proc/<pid>/root, …
RESOLVE_NO_SYMLINKS = 0x04  # never follow any symlink
RESOLVE_BENEATH = 0x08  # fail rather than leave the starting directory
RESOLVE_IN_ROOT = 0x10  # the starting directory is "/": "/", ".." and absolute links stop there
_RESOLVE_TABLE = {name: value for name, value in globals().items() if name.startswith("RESOLVE_")}
_OPEN_TABLE = {
    "O_PATH": os.O_PATH,
    "O_DIRECTORY": os.O_DIRECTORY,
    "O_NOFOLLOW": os.O_NOFOLLOW,
    "O_CLOEXEC": os.O_CLOEXEC,
}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, reason: str = "") -> int:
    """Open ``path`` relative to ``dirfd`` with the lookup itself restricted by ``resolve``
    (openat2(2)); returns the new descriptor.

    The kernel checks every component as it walks them, in the same walk that opens the
    result: there is no moment between a check and a use for another process to swap a
    directory for a symlink, which is what a check in user space can't avoid.
    """
    narrate(
        lambda: (
            f'openat2({dirfd}, "{path}", {flag_names(flags, _OPEN_TABLE)}, '
            f"{flag_names(resolve, _RESOLVE_TABLE)})"
        ),
        reason,
    )
    how = _OpenHow(flags, 0, resolve)
    return _check(
        _libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), _b(path),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))),
        "openat2",
        path,
    )  # fmt: skip


# --- the new mount API: detached mounts, idmapped mounts --------------------------------------
OPEN_TREE_CLONE = 0x1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x100000


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def open_tree_clone(path: str, reason: str = "") -> int:
    """A copy of the mount at ``path`` (and those under it) that is attached nowhere yet
    (open_tree(2), OPEN_TREE_CLONE). The descriptor holds it: its attributes can be
    changed before it is attached with move_mount, and closing it unattached unmounts it."""
    narrate(lambda: f'open_tree(AT_FDCWD, "{path}", OPEN_TREE_CLONE|AT_RECURSIVE)', reason)
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE
    return _check(
        _libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(-100), _b(path),
                      ctypes.c_uint(flags)),
        "open_tree",
        path,
    )  # fmt: skip


def mount_setattr_idmap(tree: int, userns: int, reason: str = "") -> None:
    """Make the detached mount ``tree`` an *idmapped mount* (mount_setattr(2) with
    MOUNT_ATTR_IDMAP): every owner is seen through the id map of the user namespace
    ``userns`` — a file owned by 0 on disk shows as that namespace's host id for 0, and
    nothing on disk changes. Filesystems opt in (ext4, xfs, btrfs, tmpfs since 6.3…);
    the others, and overlayfs itself, answer EINVAL."""
    narrate(lambda: f"mount_setattr({tree}, AT_RECURSIVE, {{MOUNT_ATTR_IDMAP, {userns}}})", reason)
    attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns)
    _check(
        _libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(tree), b"",
                      ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE), ctypes.byref(attr),
                      ctypes.c_size_t(ctypes.sizeof(attr))),
        "mount_setattr",
    )  # fmt: skip


def move_mount(tree: int, target: str, reason: str = "") -> None:
    """Attach the detached mount ``tree`` at ``target`` (move_mount(2))."""
    narrate(lambda: f'move_mount({tree}, "", AT_FDCWD, "{target}", MOVE_MOUNT_F_EMPTY_PATH)',
            reason)  # fmt: skip
    _check(
        _libc.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(tree), b"", ctypes.c_int(-100),
                      _b(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)),
        "move_mount",
        target,
    )  # fmt: skip


# --- process attributes -----------------------------------------------------------------------
def sethostname(name: str, reason: str = "") -> None:
    """Set the hostname of the calling process's UTS namespace (sethostname(2))."""
    narrate(lambda: f'sethostname("{name}")', reason)
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, reason: str = "") -> int:
    """Change a per-process attribute (prctl(2)): dumpable, subreaper, no_new_privs, caps…"""
    narrate(lambda: f"prctl({_PRCTL_NAMES.get(option, option)}, {arg2}, {arg3})", reason)
    return _check(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        ),
        "prctl",
        _PRCTL_NAMES.get(option, str(option)),
    )


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capset(effective: int, permitted: int, inheritable: int, reason: str = "") -> None:
    """Set this thread's effective, permitted and inheritable capability sets (capset(2)).

    Each set is a 64-bit mask (bit N = capability N), split across two 32-bit words.
    """
    narrate(
        lambda: (
            f"capset(effective={effective:#x}, permitted={permitted:#x}, "
            f"inheritable={inheritable:#x})"
        ),
        reason,
    )
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in (0, 1):
        shift = 32 * word
        data[word].effective = (effective >> shift) & 0xFFFFFFFF
        data[word].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[word].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(_SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")


def close_range_cloexec(first: int, reason: str = "") -> None:
    """Mark every descriptor from ``first`` upwards close-on-exec (close_range(2)).

    Run just before exec, this guarantees no host file descriptor survives into the
    container's program (the runc CVE-2024-21626 class of leak).
    """
    narrate(lambda: f"close_range({first}, ~0U, CLOSE_RANGE_CLOEXEC)", reason)
    _check(
        _libc.syscall(
            _SYS_CLOSE_RANGE,
            ctypes.c_uint(first),
            ctypes.c_uint(0xFFFFFFFF),
            ctypes.c_uint(CLOSE_RANGE_CLOEXEC),
        ),
        "close_range",
    )


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def seccomp_set_mode_filter(program: bytes, reason: str = "") -> None:
    """Install a classic-BPF program (8-byte instructions) that the kernel runs on every
    later system call of this thread and its descendants (seccomp(2)).

    Without no_new_privs the kernel demands CAP_SYS_ADMIN: otherwise an unprivileged user
    could make a call fail inside a setuid program that doesn't expect it to.
    """
    count = len(program) // 8
    narrate(lambda: f"seccomp(SECCOMP_SET_MODE_FILTER, 0, {{len={count}}})", reason)
    fprog = _SockFprog(count, program)
    _check(
        _libc.syscall(
            _SYS_SECCOMP,
            ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
            ctypes.c_uint(0),
            ctypes.byref(fprog),
        ),
        "seccomp",
    )


def mknod(path: str, mode: int, device: int, reason: str = "", dir_fd: int | None = None) -> None:
    """Create a device node (mknod(2)); ``device`` is ``os.makedev(major, minor)``. With
    ``dir_fd``, ``path`` is a name in that directory (mknodat(2)), not a path to walk."""
    at = "" if dir_fd is None else f"{dir_fd}, "
    narrate(
        lambda: (
            f'mknod{"at" if at else ""}({at}"{path}", {mode:#o}, '
            f"makedev({os.major(device)}, {os.minor(device)}))"
        ),
        reason,
    )
    try:
        os.mknod(path, mode, device, dir_fd=dir_fd)
    except OSError as exc:
        raise KernelError("mknod", exc.errno or 0, path) from None


def kill(pid: int, sig: int, reason: str = "") -> None:
    """Send signal ``sig`` to process ``pid`` (kill(2))."""
    narrate(lambda: f"kill({pid}, {sig})", reason)
    try:
        os.kill(pid, sig)
    except OSError as exc:
        raise KernelError("kill", exc.errno or 0, str(pid)) from None


def fexecve(fd: int, args: list[str], env: dict[str, str], reason: str = "") -> None:
    """Replace this process's program with the file open as ``fd`` (execveat(2) with
    AT_EMPTY_PATH): no path is looked up, so it runs exactly the file that was opened.
    Returns only on failure (OSError)."""
    narrate(lambda: f'execveat({fd}, "", {args!r}, AT_EMPTY_PATH)', reason)
    os.execve(fd, args, env)


_MFD_EXEC = 0x10  # memfd_create(2) since Linux 6.3: "this memfd may be executed"
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def sealed_memfd(name: str, data: bytes, reason: str = "") -> int:
    """A file that exists only in memory holding ``data``, sealed so that nobody — not even
    through /proc/<pid>/fd or /proc/<pid>/exe — can ever change it again (memfd_create(2),
    then fcntl(F_ADD_SEALS): write, grow, shrink, and adding or removing seals)."""
    narrate(
        lambda: (
            f'memfd_create("{name}", MFD_CLOEXEC|MFD_ALLOW_SEALING|MFD_EXEC); '
            f"write({len(data)} bytes); fcntl(F_ADD_SEALS, F_SEAL_SEAL|F_SEAL_SHRINK|"
            "F_SEAL_GROW|F_SEAL_WRITE)"
        ),
        reason,
    )
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        try:
            fd = os.memfd_create(name, flags | _MFD_EXEC)
        except OSError as exc:  # before 6.3 the flag is unknown, and every memfd executable
            if exc.errno != errno.EINVAL:
                raise
            fd = os.memfd_create(name, flags)
    except OSError as exc:
        raise KernelError("memfd_create", exc.errno or 0, name) from None
    try:
        os.write(fd, data)  # a memfd takes a small buffer whole
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except OSError as exc:
        os.close(fd)
        raise KernelError("fcntl(F_ADD_SEALS)", exc.errno or 0, name) from None
    return fd


def set_identity(uid: int, gid: int, additional_gids: list[int], reason: str = "") -> None:
    """Become ``uid``/``gid`` with these supplementary groups (setgroups(2), setresgid(2),
    setresuid(2)). Groups first: once the uid is not 0, changing groups is no longer allowed."""
    narrate(lambda: f"setgroups({additional_gids}); setresgid({gid}); setresuid({uid})", reason)
    try:
        os.setgroups(additional_gids)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise KernelError("setresuid", exc.errno or 0, f"{uid}:{gid}") from None


class _IfReq(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char * 16),
        ("flags", ctypes.c_short),
        ("pad", ctypes.c_char * 22),
    ]


_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def link_up(name: str, reason: str = "") -> None:
    """Bring a network interface up (SIOCSIFFLAGS on a socket; see netdevice(7)).

    A new network namespace has only ``lo``, and it starts down: without this even
    127.0.0.1 would not work inside the container.
    """
    narrate(lambda: f'ioctl(SIOCSIFFLAGS, "{name}", IFF_UP)', reason)
    request = _IfReq(name.encode(), 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
            request.flags |= _IFF_UP
            fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, request)
        except OSError as exc:
            raise KernelError("ioctl(SIOCSIFFLAGS)", exc.errno or 0, name) from None
