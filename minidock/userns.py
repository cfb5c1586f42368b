"""User namespaces, the engine's half: which host ids a container gets, and files that fit.

In a user namespace ids are translated. The container's uid 0 *is* an unprivileged host
uid (say 2147483647): root inside holds its capabilities only over what the namespace owns
— its mounts, network, hostname — and meets the host's files and devices as any other
user would. The runtime creates the namespace and writes its maps (``runtime/__init__.py``);
the engine chooses the maps and makes the image's files fit them:

* **ranges** — /etc/subuid and /etc/subgid (subuid(5)) say which host ids each user may
  hand to user namespaces. ``--userns=auto`` takes, as Podman does, an unused block of
  65536 from the range of the user ``containers`` (added on first use, with the range
  Podman suggests). The blocks in use are those the existing containers recorded; choosing
  one and recording it happen under the state root's lock, so no two containers of a
  state root share one, and ``rm`` frees it.
* **files** — the image's files are owned by 0 on disk: inside the namespace, by no one
  (65534). So each image layer is mounted again as an *idmapped mount* through the
  container's maps, and the overlay is built on those: the files show as owned by the
  container's root, and nothing is copied (containers/storage does the same for Podman).
  Where the filesystem can't be idmapped, the container gets a copy of the image with
  every owner shifted — what Docker's ``userns-remap`` keeps per remapped root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

from minidock import store, syscalls
from minidock.errors import Conflict, InvalidArgument, KernelError, MinidockError

SUBID_USER = "containers"
SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
#: The range Podman's documentation suggests for ``containers`` (podman-run(1) --userns):
#: the upper half of the uid space, far from the ranges useradd hands to users.
FIRST_USE_RANGE = (2147483647, 2147483648)
#: Ids per ``--userns=auto`` container (CRI-O's default; enough for any image's users).
DEFAULT_SIZE = 65536
#: What an id that the map does not cover shows as (/proc/sys/kernel/overflowuid).
OVERFLOW_ID = 65534
_MAX_ID = 2**32 - 1  # (uid_t)-1 is no id


@dataclass(frozen=True)
class IdMaps:
    """A container's uid and gid maps, as OCI ``LinuxIDMapping`` objects
    (``{"containerID", "hostID", "size"}``)."""

    uids: list[dict]
    gids: list[dict]

    @classmethod
    def from_host_config(cls, host: dict) -> IdMaps | None:
        """The maps recorded in a container's HostConfig.IDMappings (Podman's shape:
        ``{"UidMap": ["0:2147483647:65536"], "GidMap": [...]}``); None: no user namespace."""
        recorded = host.get("IDMappings") or {}
        if not recorded.get("UidMap"):
            return None
        return cls([parse_mapping(m) for m in recorded["UidMap"]],
                   [parse_mapping(m) for m in recorded["GidMap"]])  # fmt: skip

    def __post_init__(self) -> None:
        if to_host(0, self.uids) is None or to_host(0, self.gids) is None:
            raise InvalidArgument("the id maps must map the container's root (id 0)")

    @property
    def root(self) -> tuple[int, int]:
        """The host uid and gid that the container's root is."""
        return to_host(0, self.uids) or 0, to_host(0, self.gids) or 0


# --- flags -------------------------------------------------------------------------------------
def parse_mode(value: str) -> int | None:
    """``--userns``: "" or "host" → None (no user namespace, the default); "auto" or
    "auto:size=N" → the number of ids to allocate."""
    if value in ("", "host"):
        return None
    mode, _, options = value.partition(":")
    key, _, number = options.partition("=")
    if mode == "auto" and not options:
        return DEFAULT_SIZE
    if mode == "auto" and key == "size" and number.isdigit() and 0 < int(number) <= _MAX_ID:
        return int(number)
    raise InvalidArgument(f'invalid --userns "{value}": want host, auto or auto:size=N')


def parse_mapping(text: str) -> dict:
    """``CONTAINER_ID:HOST_ID:SIZE`` (Podman's ``--uidmap``) → an OCI ``LinuxIDMapping``."""
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise InvalidArgument(f'invalid id mapping "{text}": want CONTAINER_ID:HOST_ID:SIZE')
    inside, outside, size = map(int, parts)
    if size == 0 or max(inside, outside) + size > _MAX_ID:
        raise InvalidArgument(f'invalid id mapping "{text}": ids go up to {_MAX_ID - 1}')
    return {"containerID": inside, "hostID": outside, "size": size}


def format_mapping(mapping: dict) -> str:
    return f"{mapping['containerID']}:{mapping['hostID']}:{mapping['size']}"


def to_host(container_id: int, mappings: list[dict]) -> int | None:
    """The host id that ``container_id`` is under ``mappings`` (None: not mapped)."""
    for m in mappings:
        if m["containerID"] <= container_id < m["containerID"] + m["size"]:
            return m["hostID"] + container_id - m["containerID"]
    return None


# --- the ranges: /etc/subuid, /etc/subgid --------------------------------------------------------
def _entries(path: str) -> list[tuple[str, int, int]]:
    """(name, start, count) for each line of a subuid(5)-format file (none if it is missing)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            entries.append((fields[0], int(fields[1]), int(fields[2])))
    return entries


def read_ranges(path: str, user: str = SUBID_USER) -> list[tuple[int, int]]:
    """The (start, count) ranges that ``user`` (by name, or by uid if it has one) owns."""
    names = {user}
    with contextlib.suppress(KeyError):
        names.add(str(pwd.getpwnam(user).pw_uid))
    return [(start, count) for name, start, count in _entries(path) if name in names]


def free_start(available: list[tuple[int, int]], used: list[tuple[int, int]],
               size: int) -> int | None:  # fmt: skip
    """The lowest first id of ``size`` consecutive ids that lie inside one ``available``
    range and overlap no ``used`` one — the allocator's whole policy; None if none is free."""
    for start, count in sorted(available):
        candidate = start
        for used_start, used_count in sorted(used):
            if used_start < candidate + size and candidate < used_start + used_count:
                candidate = used_start + used_count  # overlaps: try just after it
        if candidate + size <= start + count:
            return candidate
    return None


def _lock_holder_alive(lock: str) -> bool:
    try:
        with open(lock) as f:
            pid = int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return pid > 0


@contextlib.contextmanager
def shadow_lock(path: str, timeout: float = 15.0) -> Iterator[None]:
    """Hold shadow-utils' lock on ``path`` while we change it, so that useradd or usermod
    never edit it at the same time. Their lock is ``path.lock``, made with link(2) — which
    fails if the name exists, so only one process can make it — holding its maker's PID; a
    lock whose maker is dead is stale and broken (shadow's lib/commonio.c)."""
    lock, mine = f"{path}.lock", f"{path}.{os.getpid()}"
    with open(mine, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                os.link(mine, lock)
                break
            except FileExistsError:
                if not _lock_holder_alive(lock):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lock)
                elif time.monotonic() > deadline:
                    raise MinidockError(f"{lock} is held by another process") from None
                else:
                    time.sleep(0.05)
    finally:
        os.unlink(mine)
    try:
        yield
    finally:
        os.unlink(lock)


def ensure_ranges(path: str, user: str = SUBID_USER) -> list[tuple[int, int]]:
    """``user``'s ranges in ``path``; on first use an entry with Podman's suggested range
    is added, as usermod --add-subuids would add it (under the file's lock, a new copy
    renamed over the old one)."""
    ranges = read_ranges(path, user)
    if ranges:
        return ranges
    with shadow_lock(path):
        ranges = read_ranges(path, user)
        if ranges:
            return ranges  # added while we waited for the lock
        start, count = FIRST_USE_RANGE
        if free_start([FIRST_USE_RANGE], [(s, n) for _, s, n in _entries(path)], count) is None:
            raise MinidockError(f"{path} has no range for {user} and {start}:{count} is "
                                f"taken: add one (subuid(5))")  # fmt: skip
        try:
            with open(path) as f:
                content = f.read()
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            content, mode = "", 0o644
        if content and not content.endswith("\n"):
            content += "\n"
        syscalls.narrate(lambda: f'add "{user}:{start}:{count}" to {path}',
                         f"first use: the ids that --userns=auto hands out ({user}'s)")  # fmt: skip
        store.write_file(path, f"{content}{user}:{start}:{count}\n".encode(), mode)
        return [FIRST_USE_RANGE]


def allocate(size: int, in_use: list[dict]) -> dict:
    """HostConfig.IDMappings for a new ``--userns=auto`` container: a free block of ``size``
    uids and one of ``size`` gids from the ``containers`` ranges, container ids 0..size-1.
    ``in_use`` holds the IDMappings of every other container; the caller holds the state
    root's lock until the new container's record is written."""
    allocated = {}
    for key, path in (("UidMap", SUBUID), ("GidMap", SUBGID)):
        used = [(m["hostID"], m["size"]) for recorded in in_use
                for m in map(parse_mapping, recorded.get(key, []))]  # fmt: skip
        start = free_start(ensure_ranges(path), used, size)
        if start is None:
            raise Conflict(f"no free range of {size} ids left for {SUBID_USER} in {path}")
        allocated[key] = [format_mapping({"containerID": 0, "hostID": start, "size": size})]
    return allocated


def check_reachable(path: str, uid: int, gid: int) -> None:
    """Refuse, as Docker does for ``userns-remap``, a state root that the container's root
    can't reach: it walks to ``path`` to mount its root filesystem, and on the host it is
    an ordinary user, so every directory on the way must let it search (``x``)."""
    directory = os.path.abspath(path)
    while True:
        st = os.stat(directory)
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        else:
            bit = stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            raise InvalidArgument(
                f"{directory} restricts access to the container's root (host uid {uid}): "
                f"a user namespace needs search permission on it for others (chmod o+x)"
            )
        if directory == "/":
            return
        directory = os.path.dirname(directory)


# --- the files: idmapped layers, or a shifted copy -----------------------------------------------
@contextlib.contextmanager
def _user_namespace(maps: IdMaps) -> Iterator[int]:
    """A descriptor of a user namespace with ``maps``. Maps are written for a process, so a
    child is cloned into a new user namespace and waits; once its maps are in, we open
    /proc/<child>/ns/user and let it exit: the descriptor keeps the namespace alive."""
    wait_end, release_end = os.pipe()
    pid = syscalls.clone(syscalls.CLONE_NEWUSER, reason="a user namespace to idmap through")
    if pid == 0:
        try:
            os.close(release_end)
            os.read(wait_end, 1)  # returns at end-of-file: when the parent lets go
        finally:
            os._exit(0)
    os.close(wait_end)
    try:
        syscalls.write_id_maps(pid, maps.uids, maps.gids)
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(release_end)
        os.waitpid(pid, 0)
    try:
        yield fd
    finally:
        os.close(fd)


def layers_for(container_dir: str, lowerdirs: list[str], maps: IdMaps) -> list[str]:
    """The image's layers as a container with ``maps`` must see them, for its overlay's
    lowerdir: each one idmapped (``container_dir/idmapped/N``) or, where the filesystem
    can't do that, one copy of the whole image with shifted owners (``…/shifted``)."""
    targets = [os.path.join(container_dir, "idmapped", str(n)) for n in range(len(lowerdirs))]
    copy = os.path.join(container_dir, "shifted")
    if set(targets) <= mount_points():
        return targets
    if os.path.isdir(copy):
        return [copy]
    with _user_namespace(maps) as userns:
        try:
            for layer, target in zip(lowerdirs, targets, strict=True):
                _idmap(layer, target, userns)
            return targets
        except KernelError as exc:
            if exc.errno != errno.EINVAL:
                raise
            unmount_layers(container_dir)
    syscalls.narrate(
        lambda: f"copy the image to {copy}, owners shifted through the maps",
        "this filesystem can't be idmapped (EINVAL): a chowned copy instead",
    )
    _copy_shifted(lowerdirs, copy, maps)
    return [copy]


def _idmap(layer: str, target: str, userns: int) -> None:
    """Mount ``layer`` again at ``target``, its owners seen through ``userns``'s maps."""
    os.makedirs(target, mode=0o755, exist_ok=True)
    tree = syscalls.open_tree_clone(layer, reason="a detached copy of the image layer")
    try:
        syscalls.mount_setattr_idmap(
            tree, userns, reason="idmapped: owner 0 on disk shows as the container's root"
        )
        syscalls.move_mount(tree, target, reason="the idmapped layer, for the container's overlay")
    finally:
        os.close(tree)


def unmount_layers(container_dir: str) -> None:
    """Detach the container's idmapped layers (once its overlay is unmounted)."""
    mapped = os.path.join(container_dir, "idmapped")
    mounted = mount_points() if os.path.isdir(mapped) else set()
    for name in sorted(os.listdir(mapped)) if mounted else []:
        target = os.path.join(mapped, name)
        if target in mounted:
            syscalls.umount2(target, syscalls.MNT_DETACH, reason="the idmapped layer is unused")


def mount_points() -> set[str]:
    """Where things are mounted in our mount namespace (/proc/self/mountinfo, field 5).
    os.path.ismount can't tell: a layer mounted again is a directory of the same
    filesystem, so its device number is its parent's."""
    with open("/proc/self/mountinfo") as f:
        return {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4]) for line in f}


def _copy_shifted(lowerdirs: list[str], dest: str, maps: IdMaps) -> None:
    """Copy the image, as its layers stack up, to ``dest`` with every owner shifted. The
    layers are merged by a read-only overlay first, so whiteouts need no special care."""
    partial = f"{dest}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    if len(lowerdirs) == 1:  # overlayfs wants two lower layers when there is no upper one
        _copy_tree(lowerdirs[0], partial, maps, {})
    else:
        merged = f"{dest}.merged"
        os.makedirs(merged, exist_ok=True)
        lower = f"lowerdir={':'.join(lowerdirs)}"
        syscalls.mount(
            "overlay", merged, "overlay", syscalls.MS_RDONLY, lower, reason="the image, merged"
        )
        try:
            _copy_tree(merged, partial, maps, {})
        finally:
            syscalls.umount2(merged, syscalls.MNT_DETACH, reason="the image is copied")
            os.rmdir(merged)
    os.rename(partial, dest)


def _host_owner(container_id: int, mappings: list[dict]) -> int:
    """The host id a file owned by ``container_id`` gets in the copy: its mapped id, else
    the mapped overflow id, so that it shows inside as 65534 as through an idmapped mount."""
    for candidate in (container_id, OVERFLOW_ID):
        host = to_host(candidate, mappings)
        if host is not None:
            return host
    return OVERFLOW_ID


def _copy_tree(source: str, dest: str, maps: IdMaps, links: dict[tuple[int, int], str]) -> None:
    """Copy one file or tree with its mode, times, extended attributes and hard links, its
    owner shifted through ``maps`` (ids the maps don't cover become 65534 inside)."""
    st = os.lstat(source)
    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) in links:
        os.link(links[st.st_dev, st.st_ino], dest)
        return
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(dest, 0o700)
        for name in sorted(os.listdir(source)):
            _copy_tree(os.path.join(source, name), os.path.join(dest, name), maps, links)
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(source, dest, follow_symlinks=False)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), dest)
    else:  # device nodes, FIFOs, sockets
        os.mknod(dest, st.st_mode, st.st_rdev)
    os.lchown(dest, _host_owner(st.st_uid, maps.uids), _host_owner(st.st_gid, maps.gids))
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dest, stat.S_IMODE(st.st_mode))  # after chown, which clears set-id bits
    for name in os.listxattr(source, follow_symlinks=False):
        value = os.getxattr(source, name, follow_symlinks=False)
        os.setxattr(dest, name, value, follow_symlinks=False)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    if st.st_nlink > 1:
        links[st.st_dev, st.st_ino] = dest
