"""Build the container's root filesystem view inside its new mount namespace.

The steps, in the order the kernel needs them (runc ``libcontainer/rootfs_linux.go``):

1. make every mount private, so nothing we mount leaks back to the host and nothing the
   host mounts later appears in the container;
2. bind the rootfs onto itself (pivot_root(2) needs a mount point);
3. mount the spec's filesystems inside it: /proc, /dev (tmpfs + device nodes), /dev/pts,
   /dev/shm, /dev/mqueue, /sys, /sys/fs/cgroup, and the user's bind mounts;
4. pivot_root into it and detach the old root, so the host's files are unreachable;
5. mask and read-only-remount the sensitive /proc and /sys paths.

Every mount target is a path *inside* the container, chosen by whoever made the image or
shares a volume with it — so it may contain symlinks, and they may change while we work.
Targets are therefore never mounted by path: :func:`open_in_root` has the kernel resolve
the path with openat2(2) confined to the rootfs (RESOLVE_IN_ROOT), and the mount is made on
``/proc/self/fd/N`` of the resulting descriptor — the very inode that was checked (runc's
fix for CVE-2021-30465).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from typing import Literal

from minidock import syscalls
from minidock.errors import InvalidArgument, KernelError
from minidock.syscalls import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    MS_STRICTATIME,
    RESOLVE_BENEATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    RESOLVE_NO_SYMLINKS,
    RESOLVE_NO_XDEV,
)

#: OCI mount option → (flag, set it?) — the rest of the options are passed as ``data``.
_MOUNT_FLAGS: dict[str, tuple[int, bool]] = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "relatime": (MS_RELATIME, True),
    "strictatime": (MS_STRICTATIME, True),
    "bind": (MS_BIND, True),
    "rbind": (MS_BIND | MS_REC, True),
}
_PROPAGATION = {"private", "rprivate", "shared", "rshared", "slave", "rslave"}
_MAX_SYMLINKS = 40
_PATH = os.O_PATH | os.O_CLOEXEC
#: How a container path is looked up: "/", ".." and absolute symlinks stop at the rootfs,
#: and procfs magic links (/proc/self/fd/N, /proc/1/root…), which jump anywhere, fail.
_IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
#: How a name we have just made is reopened: that entry itself, not a symlink or a mount
#: someone put in its place since.
_JUST_MADE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV


def parse_options(options: list[str]) -> tuple[int, str]:
    """Split OCI mount options into mount(2) flags and the filesystem's data string."""
    flags = 0
    data: list[str] = []
    for opt in options:
        if opt in _MOUNT_FLAGS:
            bit, on = _MOUNT_FLAGS[opt]
            flags = flags | bit if on else flags & ~bit
        elif opt not in _PROPAGATION:
            data.append(opt)
    return flags, ",".join(data)


def resolve_in_root(root: str, path: str) -> str:
    """The host path of ``path`` as seen from inside ``root``, following symlinks *as the
    container would* — an absolute link target restarts at ``root`` and ``..`` stops there.

    A naive ``os.path.join(root, path)`` would follow a link such as ``/etc -> /host/etc``
    out of the container (the CVE-2021-30465 class); this walk never leaves ``root``. It
    is for reading an image's files (``build``, ``users``): the path it returns is looked
    up again when used, so where a process may be changing the tree at the same time —
    the runtime's mounts — :func:`open_in_root` is used instead.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    followed = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        host = os.path.join(root, *resolved, name)
        if os.path.islink(host):
            followed += 1
            if followed > _MAX_SYMLINKS:
                raise InvalidArgument(f"too many levels of symbolic links in {path}")
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(name)
    return os.path.join(root, *resolved)


@contextlib.contextmanager
def opened(fd: int) -> Iterator[int]:
    """Close the descriptor ``fd`` when the ``with`` block ends, however it ends."""
    try:
        yield fd
    finally:
        os.close(fd)


def fd_path(fd: int) -> str:
    """The procfs magic link to what ``fd`` is open on. A mount(2) given this path acts on
    that very inode, whatever has happened to the path it was opened by since."""
    return f"/proc/self/fd/{fd}"


def open_root(path: str) -> int:
    """An O_PATH descriptor of the directory :func:`open_in_root` is to treat as "/"."""
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def open_in_root(
    root: int, path: str, create: Literal["directory", "file"] | None = None
) -> int:
    """An O_PATH descriptor of ``path`` as the container sees it, below the directory open
    as ``root``: the kernel resolves it, symlinks and ``..`` included, and never leaves
    ``root`` (openat2(2) with RESOLVE_IN_ROOT), so there is no path string left to swap.

    With ``create``, what is missing is made: each directory by mkdirat(2) in its parent's
    descriptor, never by a path, and the last component as ``create`` says. A dangling
    symlink on the way is followed as the container would follow it, so its target is made
    — inside ``root``.
    """
    for _ in range(_MAX_SYMLINKS):
        try:
            return syscalls.openat2(root, path, _PATH, _IN_ROOT, reason=f"find {path} in the root")
        except KernelError as exc:
            if exc.errno != errno.ENOENT or create is None:
                raise
        parent, found, missing = _deepest_existing(root, path)
        try:
            link = os.readlink(missing[0], dir_fd=parent)
        except OSError:  # not a symlink (EINVAL) or not there at all (ENOENT): make it
            return _make_missing(parent, missing, create)
        os.close(parent)
        # An absolute target restarts at the root: os.path.join drops what precedes it.
        path = os.path.join("/", *found, link, *missing[1:])
    raise InvalidArgument(f"too many levels of symbolic links in {path}")


def _deepest_existing(root: int, path: str) -> tuple[int, list[str], list[str]]:
    """The deepest directory of ``path`` that exists (a descriptor), the components that
    led there, and the rest, which don't exist."""
    names = [name for name in path.split("/") if name not in ("", ".")]
    for depth in range(len(names) - 1, 0, -1):
        prefix = "/" + "/".join(names[:depth])
        try:
            fd = syscalls.openat2(root, prefix, _PATH | os.O_DIRECTORY, _IN_ROOT,
                                  reason=f"does {prefix} exist?")  # fmt: skip
        except KernelError as exc:
            if exc.errno != errno.ENOENT:
                raise
            continue
        return fd, names[:depth], names[depth:]
    return os.dup(root), [], names


def _make_missing(parent: int, names: list[str], create: Literal["directory", "file"]) -> int:
    """Make ``names`` one below the other in the directory open as ``parent`` (which this
    closes); return a descriptor of the last. mkdirat(2) and O_CREAT|O_EXCL never follow a
    symlink, and each new entry is reopened with RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV: if
    anyone swapped it for a symlink or a mount meanwhile, this fails instead of following."""
    if ".." in names:
        os.close(parent)
        raise InvalidArgument(f"cannot make a path through '..': {'/'.join(names)}")
    current = parent
    for position, name in enumerate(names):
        with opened(current) as directory:
            if create == "file" and position == len(names) - 1:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(name, flags, 0o644, dir_fd=directory))
            else:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=directory)
            current = syscalls.openat2(directory, name, _PATH, _JUST_MADE,
                                       reason=f"the new {name}")  # fmt: skip
    return current


def make_private() -> None:
    """Stop mount events propagating between this mount namespace and the host's."""
    syscalls.mount(
        None,
        "/",
        None,
        MS_REC | MS_PRIVATE,
        reason="make every mount private: nothing we mount reaches the host",
    )


def bind_rootfs(rootfs: str) -> None:
    """Bind the rootfs onto itself: pivot_root(2) requires the new root to be a mount point."""
    syscalls.mount(
        rootfs,
        rootfs,
        None,
        MS_BIND | MS_REC,
        reason="pivot_root needs the new root to be a mount point",
    )


def mount_one(root: int, m: dict, cgroup_paths: dict[str, str]) -> None:
    """Mount one entry of the spec's ``mounts`` list inside the root open as ``root``, on
    the descriptor :func:`open_in_root` returns for its destination."""
    flags, data = parse_options(m.get("options", []))
    fstype = m.get("type") or ""
    source = m.get("source") or fstype
    destination = m["destination"]
    if flags & MS_BIND:
        bind_mount(root, source, destination, flags)
        return
    with opened(open_in_root(root, destination, create="directory")) as target:
        if fstype == "cgroup":
            _mount_cgroups(root, destination, target, flags, cgroup_paths)
        else:
            syscalls.mount(source, fd_path(target), fstype, flags, data or None,
                           reason=f"mount {fstype} at {destination}")  # fmt: skip


def _mount_cgroups(
    root: int, destination: str, target: int, flags: int, cgroup_paths: dict[str, str]
) -> None:
    """Show the container its own cgroup at /sys/fs/cgroup (``target``), read-only.

    In a new cgroup namespace a fresh cgroup mount's root *is* the container's cgroup,
    so it cannot see or climb to its siblings. v2 has one hierarchy; v1 has one per
    controller, each mounted under a tmpfs like the host's layout. That tmpfs is looked up
    again once mounted: ``target`` is the directory underneath it.
    """
    hidden = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if "" in cgroup_paths:
        why = "the container's own cgroup v2 tree (cgroup namespace root)"
        syscalls.mount("cgroup2", fd_path(target), "cgroup2", flags | hidden, reason=why)
        return
    syscalls.mount("tmpfs", fd_path(target), "tmpfs", hidden, "mode=755",
                   reason="a tmpfs to hold one mount per cgroup v1 controller")  # fmt: skip
    with opened(open_in_root(root, destination)) as tmpfs:
        for controller in sorted(cgroup_paths):
            with opened(open_in_root(tmpfs, controller, create="directory")) as sub:
                syscalls.mount("cgroup", fd_path(sub), "cgroup", flags | hidden, controller,
                               reason=f"the container's own {controller} cgroup (v1)")  # fmt: skip
        syscalls.mount(None, fd_path(tmpfs), None, MS_BIND | MS_REMOUNT | MS_RDONLY | hidden,
                       reason="the cgroup tmpfs is read-only")  # fmt: skip


def bind_mount(
    root: int, source: str, destination: str, flags: int = MS_BIND, reason: str = ""
) -> None:
    """Bind the host's ``source`` at the container's ``destination``. Both ends are opened
    first — the source as the host sees it, the destination by :func:`open_in_root` — and
    the mount joins the two descriptors, so what was checked is what gets mounted. A bind
    ignores its other flags (ro, nosuid…): they take a remount of the new mount."""
    try:
        src = os.open(source, _PATH)
    except FileNotFoundError:
        raise InvalidArgument(f"bind source path does not exist: {source}") from None
    with opened(src):
        kind = "directory" if stat.S_ISDIR(os.fstat(src).st_mode) else "file"
        reason = reason or f"bind {source} into the container at {destination}"
        with opened(open_in_root(root, destination, create=kind)) as target:
            syscalls.mount(fd_path(src), fd_path(target), None, flags & (MS_BIND | MS_REC),
                           reason=reason)  # fmt: skip
    extra = flags & ~(MS_BIND | MS_REC)
    if extra:
        remount(root, destination, MS_BIND | MS_REMOUNT | extra,
                reason="bind mounts take their flags (ro, nosuid…) in a remount")  # fmt: skip


def remount(root: int, destination: str, flags: int, reason: str) -> None:
    """Change the flags of the mount at ``destination`` (MS_REMOUNT). The path is resolved
    again: a descriptor taken before the mount was made is of the directory underneath."""
    with opened(open_in_root(root, destination)) as target:
        syscalls.mount(None, fd_path(target), None, flags, reason=reason)


def create_devices(root: int, devices: list[dict], bind: bool = False) -> None:
    """Create the spec's device nodes in the container's /dev, plus the standard links;
    each node is made by mknodat(2) in its directory's descriptor.
    In a user namespace mknod(2) of a device is refused whatever the capabilities, so
    (``bind``) the host's own node is bind-mounted over an empty file instead, as runc
    does; the device cgroup still decides whether it may be opened."""
    for dev in devices:
        if bind:
            why = f"the host's {dev['path']}: no mknod in a user namespace"
            bind_mount(root, dev["path"], dev["path"], reason=why)
            continue
        directory, name = os.path.split(dev["path"])
        kind = stat.S_IFCHR if dev["type"] == "c" else stat.S_IFBLK
        mode = dev.get("fileMode", 0o666)
        with opened(open_in_root(root, directory, create="directory")) as parent:
            syscalls.mknod(name, kind | mode, os.makedev(dev["major"], dev["minor"]),
                           reason=f"device node {dev['path']}", dir_fd=parent)  # fmt: skip
            node = syscalls.openat2(parent, name, _PATH, _JUST_MADE, reason=f"the new {name}")
        with opened(node):  # chmod: the mode mknod got was cut by the umask
            os.chmod(fd_path(node), mode)
            os.chown(fd_path(node), dev.get("uid", 0), dev.get("gid", 0))
    with opened(open_in_root(root, "/dev", create="directory")) as dev_dir:
        for name, target in (
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ):
            with contextlib.suppress(FileExistsError):
                os.symlink(target, name, dir_fd=dev_dir)


def pivot_root(rootfs: str) -> None:
    """Make ``rootfs`` the root and detach the old one (runc's ``pivot_root(".", ".")``).

    With both arguments ".", the old root ends up mounted *underneath* the new one at "/";
    a lazy unmount of "." then removes it without needing a directory to park it in.
    """
    os.chdir(rootfs)
    syscalls.pivot_root(".", ".", reason="make the container's rootfs the root mount")
    syscalls.mount(
        None,
        ".",
        None,
        MS_REC | syscalls.MS_SLAVE,
        reason="stop the old root's unmount propagating anywhere",
    )
    syscalls.umount2(
        ".", syscalls.MNT_DETACH, reason="detach the old (host) root: host files become unreachable"
    )
    os.chdir("/")


def _open_if_present(root: int, path: str) -> int | None:
    """:func:`open_in_root`, or None where ``path`` does not exist (this kernel has no such
    /proc file, say)."""
    try:
        return open_in_root(root, path)
    except KernelError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def mask_paths(paths: list[str]) -> None:
    """Hide sensitive kernel files: bind /dev/null over files, an empty read-only tmpfs over
    directories (Docker's maskedPaths). Runs after pivot_root, in the container's own root.

    /dev/null is opened once, checked through that descriptor to be the null device (char
    1:3) and bound from it: the inode checked is the inode mounted, so nothing can be
    swapped in between — not a file of the container's, nor a symlink to a /proc file it
    wants to be able to write (runc's CVE-2025-31133)."""
    with opened(open_root("/")) as root, opened(open_in_root(root, "/dev/null")) as null:
        st = os.fstat(null)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
            raise KernelError("mask", errno.EPERM, "/dev/null is not the null device")
        for path in paths:
            target = _open_if_present(root, path)
            if target is None:
                continue
            with opened(target):
                if stat.S_ISDIR(os.fstat(target).st_mode):
                    syscalls.mount("tmpfs", fd_path(target), "tmpfs", MS_RDONLY, None,
                                   reason=f"mask {path}: an empty read-only directory")  # fmt: skip
                else:
                    syscalls.mount(fd_path(null), fd_path(target), None, MS_BIND,
                                   reason=f"mask {path}: reads come from /dev/null")  # fmt: skip


def readonly_paths(paths: list[str]) -> None:
    """Bind each path onto itself and remount it read-only (Docker's readonlyPaths)."""
    with opened(open_root("/")) as root:
        for path in paths:
            target = _open_if_present(root, path)
            if target is None:
                continue
            with opened(target):
                syscalls.mount(fd_path(target), fd_path(target), None, MS_BIND | MS_REC,
                               reason=f"{path} becomes read-only")  # fmt: skip
            remount(root, path, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                    reason=f"{path} becomes read-only")  # fmt: skip


def readonly_root() -> None:
    """Remount the root filesystem read-only (``--read-only``)."""
    syscalls.mount(
        None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY, reason="the root filesystem is read-only"
    )
