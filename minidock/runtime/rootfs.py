"""Build the container's root filesystem view inside its new mount namespace.

The steps, in the order the kernel needs them (runc ``libcontainer/rootfs_linux.go``):

1. make every mount private, so nothing we mount leaks back to the host and nothing the
   host mounts later appears in the container;
2. bind the rootfs onto itself (pivot_root(2) needs a mount point);
3. mount the spec's filesystems inside it: /proc, /dev (tmpfs + device nodes), /dev/pts,
   /dev/shm, /dev/mqueue, /sys, /sys/fs/cgroup, and the user's bind mounts;
4. pivot_root into it and detach the old root, so the host's files are unreachable;
5. mask and read-only-remount the sensitive /proc and /sys paths.
"""

from __future__ import annotations

import os
import stat

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
    out of the container (the CVE-2021-30465 class); this walk never leaves ``root``.
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


def _make_target(target: str, like_file: bool) -> None:
    """Create the mount point: a directory, or an empty file when binding a file."""
    if os.path.lexists(target):
        return
    if like_file:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    else:
        os.makedirs(target, mode=0o755, exist_ok=True)


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


def mount_one(rootfs: str, m: dict, cgroup_paths: dict[str, str]) -> None:
    """Mount one entry of the spec's ``mounts`` list under ``rootfs``."""
    flags, data = parse_options(m.get("options", []))
    fstype = m.get("type") or ""
    source = m.get("source") or fstype
    target = resolve_in_root(rootfs, m["destination"])
    if flags & MS_BIND:
        if not os.path.exists(source):
            raise InvalidArgument(f"bind source path does not exist: {source}")
        _make_target(target, like_file=not os.path.isdir(source))
        syscalls.mount(
            source,
            target,
            None,
            flags & (MS_BIND | MS_REC),
            reason=f"bind {source} into the container at {m['destination']}",
        )
        extra = flags & ~(MS_BIND | MS_REC)
        if extra:
            syscalls.mount(
                None,
                target,
                None,
                MS_BIND | MS_REMOUNT | extra,
                reason="bind mounts take their flags (ro, nosuid…) in a remount",
            )
        return
    _make_target(target, like_file=False)
    if fstype == "cgroup":
        _mount_cgroups(target, flags, cgroup_paths)
        return
    syscalls.mount(
        source, target, fstype, flags, data or None, reason=f"mount {fstype} at {m['destination']}"
    )


def _mount_cgroups(target: str, flags: int, cgroup_paths: dict[str, str]) -> None:
    """Show the container its own cgroup at /sys/fs/cgroup, read-only.

    In a new cgroup namespace a fresh cgroup mount's root *is* the container's cgroup,
    so it cannot see or climb to its siblings. v2 has one hierarchy; v1 has one per
    controller, each mounted under a tmpfs like the host's layout.
    """
    if "" in cgroup_paths:
        syscalls.mount(
            "cgroup2",
            target,
            "cgroup2",
            flags | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            reason="the container's own cgroup v2 tree (cgroup namespace root)",
        )
        return
    syscalls.mount(
        "tmpfs",
        target,
        "tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "mode=755",
        reason="a tmpfs to hold one mount per cgroup v1 controller",
    )
    for controller in sorted(cgroup_paths):
        sub = os.path.join(target, controller)
        os.makedirs(sub, exist_ok=True)
        syscalls.mount(
            "cgroup",
            sub,
            "cgroup",
            flags | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            controller,
            reason=f"the container's own {controller} cgroup (v1)",
        )
    syscalls.mount(
        None,
        target,
        None,
        MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
        reason="the cgroup tmpfs is read-only",
    )


def create_devices(rootfs: str, devices: list[dict]) -> None:
    """Create the spec's device nodes in the container's /dev, plus the standard links."""
    for dev in devices:
        path = resolve_in_root(rootfs, dev["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        kind = stat.S_IFCHR if dev["type"] == "c" else stat.S_IFBLK
        mode = dev.get("fileMode", 0o666)
        syscalls.mknod(
            path,
            kind | mode,
            os.makedev(dev["major"], dev["minor"]),
            reason=f"device node {dev['path']}",
        )
        os.chmod(path, mode)
        os.chown(path, dev.get("uid", 0), dev.get("gid", 0))
    dev_dir = resolve_in_root(rootfs, "/dev")
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ):
        link = os.path.join(dev_dir, name)
        if not os.path.lexists(link):
            os.symlink(target, link)


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


def mask_paths(paths: list[str]) -> None:
    """Hide sensitive kernel files: bind /dev/null over files, an empty read-only tmpfs over
    directories (Docker's maskedPaths). The /dev/null used is checked to really be the
    null device (char 1:3), so a container can't swap in a file of its own."""
    null = os.stat("/dev/null")
    if not stat.S_ISCHR(null.st_mode) or null.st_rdev != os.makedev(1, 3):
        raise KernelError("mask", 1, "/dev/null is not the null device")
    for path in paths:
        if not os.path.exists(path):
            continue
        if os.path.isdir(path):
            syscalls.mount(
                "tmpfs",
                path,
                "tmpfs",
                MS_RDONLY,
                None,
                reason=f"mask {path}: an empty read-only directory",
            )
        else:
            syscalls.mount(
                "/dev/null", path, None, MS_BIND, reason=f"mask {path}: reads come from /dev/null"
            )


def readonly_paths(paths: list[str]) -> None:
    """Bind each path onto itself and remount it read-only (Docker's readonlyPaths)."""
    for path in paths:
        if not os.path.exists(path):
            continue
        syscalls.mount(path, path, None, MS_BIND | MS_REC, reason=f"{path} becomes read-only")
        syscalls.mount(
            None,
            path,
            None,
            MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            reason=f"{path} becomes read-only",
        )


def readonly_root() -> None:
    """Remount the root filesystem read-only (``--read-only``)."""
    syscalls.mount(
        None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY, reason="the root filesystem is read-only"
    )
