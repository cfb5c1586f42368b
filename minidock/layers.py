"""Image layers: unpacking a layer tarball safely, and turning a directory back into one.

A layer is a tar archive of the changes one build step made. Unpacking one is where a
hostile image attacks: a member named ``../../etc/cron.d/x`` or ``/etc/passwd``, a symlink
``evil -> /etc`` followed by a member ``evil/passwd``, a hard link to ``/etc/shadow``.
Python's ``tarfile`` ``data`` filter stops these but also refuses what OS layers need
(absolute symlinks such as ``etc/localtime -> /usr/share/zoneinfo/UTC``, setuid bits,
device nodes), so :func:`unpack` is its own small extractor:

* member names are split into components; an absolute name or a ``..`` refuses the layer;
* every parent directory is opened one component at a time relative to the previous one
  with ``O_NOFOLLOW``, so no write ever goes through a symlink (one in the way refuses the
  layer), and the final name is created with ``*at`` calls relative to that directory;
* a hard link must point at an earlier non-directory member of the same layer;
* ownership (numeric uid/gid), modes with setuid/setgid, mtimes, device nodes and fifos
  are kept, as the image's filesystem needs them.

Whiteouts are Docker's way of recording a deletion in a tar: ``.wh.<name>`` deletes
``<name>`` from the layers below, ``.wh..wh..opq`` in a directory hides everything below it.
A layer unpacked for overlayfs says the same in overlayfs's words: a 0/0 character device
named ``<name>``, and the xattr ``trusted.overlay.opaque=y`` on the directory.
:func:`write_layer` translates back, so a container's overlay upper directory becomes a
layer tarball.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import zstandard

from minidock.errors import MinidockError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_COPY_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Magic numbers at the start of a compressed stream (gzip and zstd name OCI media types too).
_COMPRESSIONS = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)


_DECOMPRESSORS: dict[str, Callable[[BinaryIO], Any]] = {
    "gzip": lambda f: gzip.GzipFile(fileobj=f),
    "zstd": lambda f: zstandard.ZstdDecompressor().stream_reader(f),
    "bzip2": bz2.BZ2File,
    "xz": lzma.LZMAFile,
}


class LayerError(MinidockError):
    """A layer that cannot or must not be unpacked: corrupt, or trying to leave its root."""


def compression(path: str) -> str | None:
    """Which compression ``path`` uses, by its first bytes: gzip, zstd, bzip2, xz or None."""
    with open(path, "rb") as f:
        head = f.read(6)
    return next((name for magic, name in _COMPRESSIONS if head.startswith(magic)), None)


@contextlib.contextmanager
def open_uncompressed(path: str) -> Iterator[BinaryIO]:
    """Open ``path`` for reading its decompressed bytes, whichever compression it uses."""
    kind = compression(path)
    with open(path, "rb") as raw:
        stream = _DECOMPRESSORS[kind](raw) if kind else contextlib.nullcontext(raw)
        with stream as readable:
            yield readable


def is_tar(path: str) -> bool:
    """Is ``path`` a (possibly compressed) tar archive? (``ADD`` unpacks those.)"""
    try:
        with open_uncompressed(path) as f:
            header = f.read(512)
    except (OSError, EOFError, zstandard.ZstdError):
        return False
    return len(header) == 512 and header[257:262] == b"ustar"


class _DigestReader:
    """Passes reads through, hashing and counting every byte (the layer's DiffID)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.hash.update(data)
        return data

    def digest(self) -> str:
        """Read to the end (tar padding counts too) and return ``sha256:<hex>``."""
        while self.read(_COPY_CHUNK):
            pass
        return f"sha256:{self.hash.hexdigest()}"


def member_path(name: str) -> list[str]:
    """A member name as path components relative to the root; refuses names that could
    leave it (absolute, or with a ``..`` component). ``./a//b/`` becomes ``["a", "b"]``."""
    if name.startswith("/"):
        raise LayerError(f"refusing layer: member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"refusing layer: member {name!r} contains '..'")
    return parts


class _Root:
    """The directory a layer is unpacked into, reached only through directory fds."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, _DIR_FLAGS)

    def close(self) -> None:
        os.close(self.fd)

    def open_dir(self, parts: list[str], create: bool) -> int:
        """Open the directory ``parts`` one component at a time without following a
        symlink (``O_NOFOLLOW``); missing ones are made (0755, root) when ``create``.
        Returns a new fd the caller closes."""
        fd = os.dup(self.fd)
        try:
            for i, name in enumerate(parts):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(name, 0o755, dir_fd=fd)
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = "/".join(parts[: i + 1])
                    raise LayerError(
                        f"refusing layer: {where} is a symlink or file, not a directory; "
                        "members beneath it would be written through it"
                    ) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd


def _remove(parent: int, name: str) -> None:
    """Remove whatever ``name`` is in the directory ``parent`` (never following a link)."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent)
    else:
        os.unlink(name, dir_fd=parent)


def _set_owner_and_mode(parent: int, name: str, member: tarfile.TarInfo) -> None:
    """chown first: chown(2) clears setuid/setgid, so the mode goes on after it. The name
    was just created by us as a non-symlink, so chmod(2) by name reaches that very node."""
    os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
    os.chmod(name, stat.S_IMODE(member.mode), dir_fd=parent)


def unpack(stream: BinaryIO, dest: str, whiteouts: bool = True) -> str:
    """Unpack the tar ``stream`` (uncompressed) into the existing directory ``dest`` and
    return its DiffID (``sha256:`` of the uncompressed stream).

    With ``whiteouts`` (a layer for overlayfs), ``.wh.`` members become overlayfs
    whiteouts; without (``ADD`` of a tarball), they are ordinary files. Raises
    :class:`LayerError` for a corrupt or hostile archive; what was unpacked so far stays in
    ``dest`` (the caller unpacks into a temporary directory and removes it).
    """
    reader = _DigestReader(stream)
    root = _Root(dest)
    directories: list[tuple[list[str], int]] = []  # mtimes are set last: children change them
    earlier: set[tuple[str, ...]] = set()  # non-directory members so far, for hard links
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                parts = member_path(member.name)
                if not parts:
                    continue  # the root itself ("./")
                parent = root.open_dir(parts[:-1], create=True)
                try:
                    if _unpack_member(tar, member, parts, parent, root, earlier, whiteouts):
                        directories.append((parts, int(member.mtime)))
                finally:
                    os.close(parent)
            for parts, mtime in reversed(directories):
                with contextlib.suppress(LayerError, FileNotFoundError):  # replaced since
                    fd = root.open_dir(parts, create=False)
                    os.utime(fd, ns=(mtime * 10**9, mtime * 10**9))
                    os.close(fd)
            return reader.digest()
    except (tarfile.TarError, EOFError, zstandard.ZstdError, lzma.LZMAError) as exc:
        raise LayerError(f"corrupt layer: {exc}") from None
    except OSError as exc:
        raise LayerError(f"cannot unpack layer: {exc}") from None
    finally:
        root.close()


def _unpack_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    parts: list[str],
    parent: int,
    root: _Root,
    earlier: set[tuple[str, ...]],
    whiteouts: bool,
) -> bool:
    """Create one member in the directory ``parent``. Returns True for a directory (whose
    mtime the caller sets at the end)."""
    name = parts[-1]
    if whiteouts and name.startswith(WHITEOUT_PREFIX):
        if name == OPAQUE_MARKER:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
        elif not name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):  # .wh..wh.* is aufs's
            hidden = name.removeprefix(WHITEOUT_PREFIX)
            _remove(parent, hidden)
            os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
            os.chown(hidden, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        return False
    if member.isdir():
        try:
            existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            _remove(parent, name)
            os.mkdir(name, 0o700, dir_fd=parent)
        _set_owner_and_mode(parent, name, member)
        return True
    _remove(parent, name)
    mtime_ns = int(member.mtime) * 10**9
    if member.isreg():
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=parent,
        )
        try:
            source = tar.extractfile(member)
            assert source is not None  # a regular file always has data
            with open(fd, "wb", closefd=False) as out:
                shutil.copyfileobj(source, out, _COPY_CHUNK)
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, stat.S_IMODE(member.mode))
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
    elif member.issym():
        os.symlink(member.linkname, name, dir_fd=parent)
        os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)
    elif member.islnk():
        target = member_path(member.linkname)
        if tuple(target) not in earlier:
            raise LayerError(
                f"refusing layer: hard link {member.name!r} -> {member.linkname!r} does not "
                "point at an earlier file of the layer"
            )
        source_dir = root.open_dir(target[:-1], create=False)
        try:
            os.link(
                target[-1],
                name,
                src_dir_fd=source_dir,
                dst_dir_fd=parent,
                follow_symlinks=False,
            )
        finally:
            os.close(source_dir)
    elif member.ischr() or member.isblk() or member.isfifo():
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
        device = os.makedev(member.devmajor, member.devminor) if not member.isfifo() else 0
        os.mknod(name, kind | 0o600, device, dir_fd=parent)
        _set_owner_and_mode(parent, name, member)
        os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)
    else:
        raise LayerError(f"refusing layer: member {member.name!r} has unknown type {member.type!r}")
    earlier.add(tuple(parts))
    return False


def write_layer(source: str, out: BinaryIO) -> None:
    """Write the tree ``source`` as a layer tarball to ``out``, translating overlayfs
    whiteouts (0/0 character devices) into ``.wh.<name>`` and opaque directories into
    ``.wh..wh..opq``. Entries go in sorted order with numeric owners and no user or group
    names, so the same tree always gives the same bytes (and the same digest)."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _write_tree(tar, source, "", {})


def _header(name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = int(st.st_mtime)
    return info


def _marker(name: str, st: os.stat_result) -> tarfile.TarInfo:
    """An empty whiteout file, as Docker writes them."""
    info = _header(name, st, tarfile.REGTYPE)
    info.mode = 0o600
    return info


def _write_tree(
    tar: tarfile.TarFile, directory: str, prefix: str, links: dict[tuple[int, int], str]
) -> None:
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        name = prefix + entry.name
        st = entry.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISCHR(mode) and st.st_rdev == 0:
            tar.addfile(_marker(prefix + WHITEOUT_PREFIX + entry.name, st))
        elif stat.S_ISDIR(mode):
            tar.addfile(_header(name, st, tarfile.DIRTYPE))
            with contextlib.suppress(OSError):  # no xattr, or a filesystem without them
                if os.getxattr(entry.path, OPAQUE_XATTR, follow_symlinks=False) == b"y":
                    tar.addfile(_marker(f"{name}/{OPAQUE_MARKER}", st))
            _write_tree(tar, entry.path, name + "/", links)
        elif stat.S_ISREG(mode):
            first = links.get((st.st_dev, st.st_ino))
            if first is not None:
                info = _header(name, st, tarfile.LNKTYPE)
                info.linkname = first
                tar.addfile(info)
                continue
            if st.st_nlink > 1:
                links[(st.st_dev, st.st_ino)] = name
            info = _header(name, st, tarfile.REGTYPE)
            info.size = st.st_size
            with open(entry.path, "rb") as f:
                tar.addfile(info, f)
        elif stat.S_ISLNK(mode):
            info = _header(name, st, tarfile.SYMTYPE)
            info.linkname = os.readlink(entry.path)
            tar.addfile(info)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            kind = (
                tarfile.CHRTYPE
                if stat.S_ISCHR(mode)
                else tarfile.BLKTYPE
                if stat.S_ISBLK(mode)
                else tarfile.FIFOTYPE
            )
            info = _header(name, st, kind)
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            tar.addfile(info)
        # sockets are left out, as Docker does: they mean nothing outside a running program
