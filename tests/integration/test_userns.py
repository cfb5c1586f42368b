"""User namespaces (``--userns=auto``, ``--uidmap``): root inside is an unprivileged uid
on the host — checked from the host in /proc/<pid>/status and uid_map — while the image's
files still belong to root inside, and root's capabilities reach nothing of the host's.

The first ``--userns=auto`` adds a ``containers`` entry to /etc/subuid and /etc/subgid:
every test here puts both files back as they were. The container's root must be able to
walk to its root filesystem, and pytest's temporary directories are 0700, so these tests
keep their state root in a directory of /tmp that others may search.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from minidock import userns
from tests.conftest import Minidock

RUN = ("run", "--rm", "--network", "none")


@pytest.fixture
def subids() -> Iterator[None]:
    """/etc/subuid and /etc/subgid exactly as they were before the test, afterwards."""
    saved = {
        p: Path(p).read_bytes() if os.path.exists(p) else None
        for p in (userns.SUBUID, userns.SUBGID)
    }
    try:
        yield
    finally:
        for path, content in saved.items():
            if content is None:
                Path(path).unlink(missing_ok=True)
            else:
                Path(path).write_bytes(content)


@contextlib.contextmanager
def _private_minidock(base: str, busybox_rootfs: str) -> Iterator[Minidock]:
    """A minidock with its state root in ``base`` (searchable by others) and busybox;
    everything it made is removed afterwards, ``base`` too — unless something is still
    mounted there, which rmtree would otherwise delete files through."""
    os.chmod(base, 0o711)
    m = Minidock(os.path.join(base, "root"), f"minidock-test-{secrets.token_hex(4)}")
    try:
        m("import", "--change", 'CMD ["sh"]', busybox_rootfs, "busybox")
        yield m
    finally:
        m.cleanup()
        assert not [p for p in userns.mount_points() if p.startswith(f"{base}/")]
        shutil.rmtree(os.path.join(base, "root"))


@pytest.fixture
def umd(busybox_rootfs: str, subids: None) -> Iterator[Minidock]:
    if os.geteuid() != 0:
        pytest.skip("needs root and a real kernel")
    base = tempfile.mkdtemp(prefix="minidock-userns-")
    try:
        with _private_minidock(base, busybox_rootfs) as m:
            yield m
    finally:
        shutil.rmtree(base)


def _host_range(md: Minidock, name: str) -> tuple[int, int]:
    """(first host uid, size) of the container's uid map, as inspect shows it."""
    mappings = md.inspect(name)["HostConfig"]["IDMappings"]
    assert mappings["GidMap"] == mappings["UidMap"]
    inside, start, size = map(int, mappings["UidMap"][0].split(":"))
    assert inside == 0
    return start, size


def _status(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/status") as f:
        return {key: value.split() for key, _, value in (line.partition(":") for line in f)}


def test_root_inside_is_an_unprivileged_uid_on_the_host(umd: Minidock) -> None:
    umd("run", "-d", "--name", "un", "--network", "none", "--userns=auto", "busybox", "sleep", "60")
    start, size = _host_range(umd, "un")
    assert umd.inspect("un")["HostConfig"]["UsernsMode"] == "auto"
    ranges = userns.read_ranges(userns.SUBUID)
    assert any(s <= start and start + size <= s + n for s, n in ranges), (start, ranges)
    assert start >= 100000 and size == 65536
    pid = umd.pid("un")
    status = _status(pid)
    assert status["Uid"] == [str(start)] * 4 and status["Gid"] == [str(start)] * 4
    for kind in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{kind}") as f:
            assert f.read().split() == ["0", str(start), str(size)]
    assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    # Inside: root, the image's files are root's, and / is writable.
    script = "id -u; id -g; stat -c '%u %g' /bin/busybox /etc/passwd /; touch /x && stat -c %u /x"
    assert umd("exec", "un", "sh", "-c", script).stdout.split() == ["0"] * 9
    # On the host, the file it made belongs to the range's first uid.
    upper = umd.inspect("un")["GraphDriver"]["Data"]["UpperDir"]
    made = os.stat(os.path.join(upper, "x"))
    assert (made.st_uid, made.st_gid) == (start, start)


def test_auto_ranges_are_disjoint_and_rm_frees_them(umd: Minidock) -> None:
    # Four creates at once: allocation and recording happen under one lock.
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "minidock",
                "create",
                "--name",
                f"c{n}",
                "--network",
                "none",
                "--userns=auto",
                "busybox",
            ],
            env=umd.env,
            stdout=subprocess.DEVNULL,
        )
        for n in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    ranges = sorted(_host_range(umd, f"c{n}") for n in range(4))
    for (start, size), (next_start, _) in zip(ranges, ranges[1:], strict=False):
        assert start + size <= next_start, ranges
    freed = _host_range(umd, "c0")
    umd("rm", "c0")
    umd("create", "--name", "again", "--network", "none", "--userns=auto", "busybox")
    assert _host_range(umd, "again") == freed, ranges


def test_bind_mounts_work_but_host_files_stay_the_hosts(umd: Minidock) -> None:
    base = Path(umd.root).parent
    data, shared = base / "data", base / "shared"
    data.mkdir(mode=0o755)
    (data / "secret").write_text("host\n")
    shared.mkdir()
    shared.chmod(0o777)
    script = (
        "cat /data/secret; stat -c %u /data/secret; echo x >> /data/secret && echo appended; "
        "touch /data/new && echo created; touch /shared/made && echo made"
    )
    out = umd(
        "run",
        "--name",
        "bind",
        "--network",
        "none",
        "--userns=auto",
        "-v",
        f"{data}:/data",
        "-v",
        f"{shared}:/shared",
        "busybox",
        "sh",
        "-c",
        script,
    )
    assert out.stdout.split() == ["host", "65534", "made"]  # host root is no one inside
    assert "Permission denied" in out.stderr
    assert (data / "secret").read_text() == "host\n" and not (data / "new").exists()
    start, _ = _host_range(umd, "bind")
    assert os.stat(shared / "made").st_uid == start
    # Control: without a user namespace the same root writes the host's file.
    control = umd(*RUN, "-v", f"{data}:/data", "busybox", "sh", "-c", "echo x >> /data/secret")
    assert control.returncode == 0 and (data / "secret").read_text() == "host\nx\n"


def test_sys_admin_inside_is_no_power_over_the_host(umd: Minidock) -> None:
    """CAP_SYS_ADMIN (and seccomp off) in the user namespace: it may mount a tmpfs in its
    own mount namespace, but not make a device node to reach the host's disk."""
    flags = ("--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined")
    script = (
        "mount -t tmpfs none /tmp && echo mounted; "
        "mknod /tmp/disk b 8 0 && echo mknod; "
        "grep -c . /proc/self/uid_map"
    )
    inside = umd(*RUN, "--userns=auto", *flags, "busybox", "sh", "-c", script, check=False)
    assert inside.stdout.split() == ["mounted", "1"]
    assert "Operation not permitted" in inside.stderr
    # Control: the same container without a user namespace makes the node.
    control = umd(*RUN, *flags, "busybox", "sh", "-c", "mknod /tmp/disk b 8 0 && echo mknod")
    assert control.stdout.split() == ["mknod"]


def test_explicit_uidmap_touches_no_subuid_file(umd: Minidock) -> None:
    before = [
        Path(p).read_bytes() if os.path.exists(p) else None for p in (userns.SUBUID, userns.SUBGID)
    ]
    umd(
        "run",
        "-d",
        "--name",
        "mapped",
        "--network",
        "none",
        "--uidmap",
        "0:300000:65536",
        "busybox",
        "sleep",
        "60",
    )
    status = _status(umd.pid("mapped"))
    assert status["Uid"][0] == "300000" and status["Gid"][0] == "300000"  # gidmap = uidmap
    assert umd("exec", "mapped", "id", "-u").stdout == "0\n"
    after = [
        Path(p).read_bytes() if os.path.exists(p) else None for p in (userns.SUBUID, userns.SUBGID)
    ]
    assert after == before


def test_a_filesystem_without_idmapped_mounts_gets_a_chowned_copy(
    busybox_rootfs: str, subids: None
) -> None:
    """ramfs can't be idmapped (EINVAL): the engine copies the image with shifted owners."""
    if os.geteuid() != 0:
        pytest.skip("needs root and a real kernel")
    base = tempfile.mkdtemp(prefix="minidock-ramfs-")
    subprocess.run(["mount", "-t", "ramfs", "ramfs", base], check=True)
    try:
        with _private_minidock(base, busybox_rootfs) as m:
            out = m(
                "--explain",
                "run",
                "--name",
                "ramfs",
                "--network",
                "none",
                "--userns=auto",
                "busybox",
                "sh",
                "-c",
                "stat -c %u /bin/busybox; touch /x && echo ok",
            )
            assert out.stdout.split() == ["0", "ok"]
            assert "this filesystem can't be idmapped (EINVAL): a chowned copy" in out.stderr
            start, _ = _host_range(m, "ramfs")
            copy = Path(m.root) / "containers" / m.inspect("ramfs")["Id"] / "shifted"
            assert os.stat(copy / "bin" / "busybox").st_uid == start
    finally:
        subprocess.run(["umount", base], check=True)
        os.rmdir(base)


def test_refusals(md: Minidock, subids: None) -> None:
    for flags, message in (
        (["--userns=keep-id"], "invalid --userns"),
        (["--userns=auto", "--privileged"], "privileged mode is incompatible"),
        (["--userns=auto", "--network", "host"], "can't be shared with a user namespace"),
        (["--userns=auto", "--uidmap", "0:1:1"], "can't be combined"),
        (["--uidmap", "1:300000:10"], "must map the container's root"),
    ):
        proc = md(*RUN, *flags, "busybox", "true", check=False)
        assert proc.returncode == 125 and message in proc.stderr, (flags, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1
    # pytest's temporary directories are 0700: the remapped root can't reach this state root.
    if any(not os.stat(d).st_mode & 0o001 for d in Path(md.root).parents):
        proc = md(*RUN, "--userns=auto", "busybox", "true", check=False)
        assert proc.returncode == 125 and "restricts access to the container's root" in proc.stderr
    assert md("ps", "-aq").stdout == ""
