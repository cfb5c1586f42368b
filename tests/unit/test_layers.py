"""Layer tarballs: the root-confined extractor refuses what would leave its root, keeps what
OS layers need, and whiteouts translate between Docker's and overlayfs's forms."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from minidock import layers
from minidock.layers import LayerError, member_path, unpack, write_layer

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, xattrs)")


def make_tar(*members: tuple[str, str, str | bytes]) -> bytes:
    """A tar of ``(name, kind, data)`` members: kind is file, dir, symlink or hardlink
    (data is then the link target)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                body = data.encode() if isinstance(data, str) else data
                info.size, info.mode = len(body), 0o644
                tar.addfile(info, io.BytesIO(body))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(data)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, str(data)
            tar.addfile(info)
    return out.getvalue()


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """A destination directory, and beside it a sentinel file a hostile layer aims at."""
    dest = tmp_path / "store" / "layer"
    dest.mkdir(parents=True)
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("untouched\n")
    return dest, sentinel


# --- confinement -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "parts"),
    [("a/b", ["a", "b"]), ("./a//b/", ["a", "b"]), ("./", []), ("a/./b", ["a", "b"])],
)
def test_member_path_accepts_relative_names(name: str, parts: list[str]) -> None:
    assert member_path(name) == parts


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a/..", "//etc"])
def test_member_path_refuses_names_that_leave_the_root(name: str) -> None:
    with pytest.raises(LayerError, match="refusing layer"):
        member_path(name)


HOSTILE = {
    "dot-dot": [("../sentinel", "file", "owned\n")],
    "deep dot-dot": [("a/", "dir", ""), ("a/../../sentinel", "file", "owned\n")],
    "absolute": [("/tmp/minidock-test-absolute", "file", "owned\n")],
    "symlink then write through it": [
        ("escape", "symlink", "../.."),
        ("escape/sentinel", "file", "owned\n"),
    ],
    "absolute symlink then write through it": [
        ("etc", "symlink", "/etc"),
        ("etc/minidock-test-owned", "file", "owned\n"),
    ],
    "hardlink out of the root": [("link", "hardlink", "../sentinel")],
    "hardlink to a host file": [("passwd", "hardlink", "etc/passwd")],
    "symlink dir replaced later": [
        ("d/", "dir", ""),
        ("d", "symlink", "/tmp"),
        ("d/minidock-test-owned", "file", "owned\n"),
    ],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_are_refused_and_touch_nothing_outside(
    case: str, sandbox: tuple[Path, Path]
) -> None:
    dest, sentinel = sandbox
    before = sorted(os.listdir(dest.parent.parent))
    with pytest.raises(LayerError, match="refusing layer"):
        unpack(io.BytesIO(make_tar(*HOSTILE[case])), str(dest))
    assert sentinel.read_text() == "untouched\n"
    assert os.stat(sentinel).st_nlink == 1
    assert sorted(os.listdir(dest.parent.parent)) == before
    assert not os.path.exists("/tmp/minidock-test-absolute")
    assert not os.path.exists("/etc/minidock-test-owned")
    assert not os.path.exists("/tmp/minidock-test-owned")


def test_corrupt_layer_is_a_layer_error(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="corrupt layer"):
        unpack(io.BytesIO(make_tar(("a", "file", "x" * 5000))[:1000]), str(tmp_path))


def test_hardlink_to_an_earlier_member_and_replacing_entries(tmp_path: Path) -> None:
    data = make_tar(
        ("bin/", "dir", ""),
        ("bin/tool", "file", "v1"),
        ("bin/alias", "hardlink", "bin/tool"),
        ("etc/localtime", "symlink", "/usr/share/zoneinfo/UTC"),
        ("bin/tool", "file", "v2"),  # a later member replaces an earlier one
    )
    unpack(io.BytesIO(data), str(tmp_path))
    assert (tmp_path / "bin/alias").read_text() == "v1"
    assert (tmp_path / "bin/tool").read_text() == "v2"
    assert os.readlink(tmp_path / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert (tmp_path / "bin").stat().st_mtime == 1_700_000_000


def test_diff_id_is_the_digest_of_the_uncompressed_stream(tmp_path: Path) -> None:
    import hashlib

    data = make_tar(("a", "file", "hello"))
    expected = f"sha256:{hashlib.sha256(data).hexdigest()}"
    for i, blob in enumerate([data, gzip.compress(data), zstandard.compress(data)]):
        path = tmp_path / f"blob{i}"
        path.write_bytes(blob)
        dest = tmp_path / f"out{i}"
        dest.mkdir()
        with layers.open_uncompressed(str(path)) as stream:
            assert unpack(stream, str(dest)) == expected
        assert (dest / "a").read_text() == "hello"
    assert [layers.compression(str(tmp_path / f"blob{i}")) for i in range(3)] == [
        None,
        "gzip",
        "zstd",
    ]


# --- what OS layers need -----------------------------------------------------------------------
@root_only
def test_owners_setuid_devices_and_fifos_are_kept(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        su = tarfile.TarInfo("bin/su")
        su.mode, su.uid, su.gid, su.size = 0o4755, 0, 0, 2
        tar.addfile(su, io.BytesIO(b"su"))
        home = tarfile.TarInfo("home/web")
        home.type, home.mode, home.uid, home.gid = tarfile.DIRTYPE, 0o2750, 1000, 1000
        tar.addfile(home)
        null = tarfile.TarInfo("dev/null")
        null.type, null.mode, null.devmajor, null.devminor = tarfile.CHRTYPE, 0o666, 1, 3
        tar.addfile(null)
        fifo = tarfile.TarInfo("run/pipe")
        fifo.type, fifo.mode, fifo.uid = tarfile.FIFOTYPE, 0o620, 1000
        tar.addfile(fifo)
    out.seek(0)
    unpack(out, str(tmp_path))
    assert stat.S_IMODE((tmp_path / "bin/su").stat().st_mode) == 0o4755
    home_st = (tmp_path / "home/web").stat()
    assert (stat.S_IMODE(home_st.st_mode), home_st.st_uid, home_st.st_gid) == (0o2750, 1000, 1000)
    null_st = os.lstat(tmp_path / "dev/null")
    assert stat.S_ISCHR(null_st.st_mode) and null_st.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null_st.st_mode) == 0o666
    pipe_st = os.lstat(tmp_path / "run/pipe")
    assert stat.S_ISFIFO(pipe_st.st_mode) and pipe_st.st_uid == 1000


# --- whiteouts ---------------------------------------------------------------------------------
@root_only
def test_whiteouts_become_overlayfs_whiteouts(tmp_path: Path) -> None:
    data = make_tar(
        ("etc/", "dir", ""),
        ("etc/.wh.motd", "file", ""),
        ("var/", "dir", ""),
        ("var/cache/", "dir", ""),
        ("var/cache/.wh..wh..opq", "file", ""),
        ("var/cache/new", "file", "x"),
    )
    unpack(io.BytesIO(data), str(tmp_path))
    motd = os.lstat(tmp_path / "etc/motd")
    assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == 0
    assert not (tmp_path / "etc/.wh.motd").exists()
    assert os.getxattr(tmp_path / "var/cache", layers.OPAQUE_XATTR) == b"y"
    assert not (tmp_path / "var/cache/.wh..wh..opq").exists()
    assert (tmp_path / "var/cache/new").read_text() == "x"


def test_without_whiteout_translation_wh_files_are_plain_files(tmp_path: Path) -> None:
    unpack(io.BytesIO(make_tar(("a/.wh.b", "file", "kept"))), str(tmp_path), whiteouts=False)
    assert (tmp_path / "a/.wh.b").read_text() == "kept"


@root_only
def test_write_layer_translates_overlayfs_whiteouts_back(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc/motd", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "var/cache").mkdir(parents=True)
    os.setxattr(upper / "var/cache", layers.OPAQUE_XATTR, b"y")
    (upper / "var/cache/new").write_text("x")
    os.link(upper / "var/cache/new", upper / "var/same")
    os.symlink("/bin/busybox", upper / "sh")
    out = io.BytesIO()
    write_layer(str(upper), out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == [
        "etc",
        "etc/.wh.motd",
        "sh",
        "var",
        "var/cache",
        "var/cache/.wh..wh..opq",
        "var/cache/new",
        "var/same",
    ]
    assert members["etc/.wh.motd"].isfile() and members["etc/.wh.motd"].size == 0
    assert members["var/same"].islnk() and members["var/same"].linkname == "var/cache/new"
    assert members["sh"].issym() and members["sh"].linkname == "/bin/busybox"
    assert members["var/cache/new"].uname == ""
    # and back again: the round trip gives the same overlayfs tree
    out.seek(0)
    again = tmp_path / "again"
    again.mkdir()
    unpack(out, str(again))
    assert os.lstat(again / "etc/motd").st_rdev == 0
    assert os.getxattr(again / "var/cache", layers.OPAQUE_XATTR) == b"y"
    assert os.stat(again / "var/same").st_ino == os.stat(again / "var/cache/new").st_ino


def test_write_layer_is_deterministic(tmp_path: Path) -> None:
    for name in ("b", "a", "c/d"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    first, second = io.BytesIO(), io.BytesIO()
    write_layer(str(tmp_path), first)
    write_layer(str(tmp_path), second)
    assert first.getvalue() == second.getvalue()
    with tarfile.open(fileobj=io.BytesIO(first.getvalue())) as tar:
        assert tar.getnames() == ["a", "b", "c", "c/d"]
