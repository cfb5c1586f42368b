"""The escape battery: classic ways out of a container, each tried from inside one.

Every attack must fail by default. Each is also run once where it should succeed — with
``--privileged``, the relevant ``--cap-add``, ``seccomp=unconfined``, or on the host
itself — so that a probe which could never detect success can't pass by accident. No
probe changes anything outside its container but files the test made for it (a copy of
python to overwrite, a directory to escape to), controls included: device and /proc files
are opened and closed, never written; kernel calls get arguments the kernel rejects
harmlessly once the permission checks have passed (so "EPERM" versus any other errno
tells which layer refused).

Busybox can't make most of these calls, so the host's Debian python is bound in read-only
and drives them through ctypes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, Minidock, wait_for

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 system call numbers")

HOST_PYTHON = ["-v", "/usr:/usr:ro", "-v", "/lib:/lib:ro", "-v", "/lib64:/lib64:ro"]

#: Defines ``call(name, *args)`` (a raw system call → "ok" or its errno's name) and
#: ``opens(path, flags)`` (open and close) for the probes.
_PRELUDE = r"""
import ctypes, errno, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
NR = {"mount": 165, "unshare": 272, "setns": 308, "keyctl": 250, "bpf": 321,
      "init_module": 175, "finit_module": 313, "settimeofday": 164, "clock_settime": 227,
      "sethostname": 170}
def call(name, *args):
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ret = libc.syscall(ctypes.c_long(NR[name]), *args)
    return "ok" if ret >= 0 else errno.errorcode[ctypes.get_errno()]
def attempt(fn, *args):
    try:
        result = fn(*args)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    if isinstance(result, int):
        os.close(result)
    else:
        result.close()
    return "ok"
def opens(path, flags=os.O_RDONLY):
    return attempt(os.open, path, flags)
"""


def _probe(md: Minidock, code: str, *flags: str) -> dict:
    """Run python ``code`` (which sets ``result``, a dict) in a fresh container started
    with ``flags``; return that dict."""
    script = f"{_PRELUDE}\nresult = {{}}\n{code}\nprint(json.dumps(result))"
    out = md("run", "--rm", "--network", "none", *HOST_PYTHON, *flags,
             "busybox", "/usr/bin/python3", "-I", "-c", script).stdout  # fmt: skip
    return json.loads(out.splitlines()[-1])


def _sh(md: Minidock, script: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return md("run", "--rm", "--network", "none", *flags, "busybox", "sh", "-c", script,
              check=False)  # fmt: skip


def _host_sh(busybox_rootfs: str, script: str) -> str:
    """The same busybox shell script, run on the host: the control for the PID namespace."""
    busybox = os.path.join(busybox_rootfs, "bin", "busybox")
    return subprocess.run([busybox, "sh", "-c", script], capture_output=True, text=True,
                          check=False).stdout  # fmt: skip


# --- the PID namespace: host processes, and their roots, are out of sight ----------------------
def test_host_processes_and_their_roots_are_unreachable(
    md: Minidock, busybox_rootfs: str, tmp_path
) -> None:  # noqa: ANN001
    marker = tmp_path / "host-secret"
    marker.write_text("host-secret\n")
    script = (
        "ls /proc | grep '^[0-9]' | tr '\\n' ' '; echo; "
        f"for p in /proc/[0-9]*; do cat $p/root{marker} 2>/dev/null; done; echo end"
    )
    inside = _sh(md, script).stdout.splitlines()
    pids = {int(p) for p in inside[0].split()}
    assert os.getpid() not in pids and max(pids) < 10, f"host PIDs visible: {pids}"
    assert "host-secret" not in inside, "a host file was read through /proc/<pid>/root"
    # Control: on the host the same probe sees our PID and reads the file through /proc/1/root.
    on_host = _host_sh(busybox_rootfs, script).splitlines()
    assert os.getpid() in {int(p) for p in on_host[0].split()}
    assert "host-secret" in on_host


# --- mounts: remounting / or mounting anything is refused ----------------------------------
def test_mounting_is_refused(md: Minidock) -> None:
    script = (
        "mount -t tmpfs none /tmp && echo mounted; "
        "mount -t proc proc /var/www && echo proc-mounted; "
        "mount -o remount,rw / && touch /rw && echo remounted"
    )
    out = _sh(md, script, "--read-only").stdout.split()
    assert out == []
    # Control: --privileged may, and it stays in the container's own mount namespace.
    out = _sh(md, script, "--read-only", "--privileged").stdout.split()
    assert out == ["mounted", "proc-mounted", "remounted"]
    with open("/proc/self/mountinfo") as f:
        targets = [line.split()[4] for line in f]
    assert not [t for t in targets if t.startswith(md.root) and t.endswith(("/tmp", "/www"))]


# --- /proc: the kernel's knobs are read-only, its secrets masked --------------------------------
def test_proc_knobs_are_read_only(md: Minidock) -> None:
    # (Some kernels, like this project's CI one, have no /proc/sysrq-trigger at all.)
    code = (
        "for path in ('/proc/sysrq-trigger', '/proc/sys/kernel/hostname',\n"
        "             '/proc/sys/kernel/core_pattern'):\n"
        "    if os.path.exists(path):  # opened and closed: nothing is written\n"
        "        result[path] = opens(path, os.O_WRONLY)\n"
    )
    inside = _probe(md, code)
    assert "/proc/sys/kernel/hostname" in inside and set(inside.values()) == {"EROFS"}
    assert set(_probe(md, code, "--privileged").values()) == {"ok"}  # control


def test_kernel_memory_and_secrets_are_masked_or_absent(md: Minidock) -> None:
    """Masked files read as /dev/null. A kernel without /proc/kcore (this project's CI
    kernel has none) can only show it absent."""
    paths = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"]
    code = (
        f"for path in {paths!r}:\n"
        "    if not os.path.exists(path):\n"
        "        result[path] = 'absent'\n"
        "        continue\n"
        "    st = os.stat(path)\n"
        "    null = st.st_rdev == os.makedev(1, 3) and not os.path.getsize(path)\n"
        "    result[path] = 'null' if null else 'readable'\n"
    )
    inside = _probe(md, code)
    assert set(inside.values()) <= {"null", "absent"}
    present = {p for p in paths if os.path.exists(p)}
    assert {p for p, v in inside.items() if v == "null"} == present
    privileged = _probe(md, code, "--privileged")  # control: unmasked
    assert {p for p, v in privileged.items() if v == "readable"} == present


# --- devices: a disk node can be made, but not opened ----------------------------------------
def _block_devices() -> tuple[str, str]:
    """The host's root disk (major:minor, from mountinfo), and a block device this host lets
    root open at all (the sandbox here refuses even the host's own root disk)."""
    with open("/proc/self/mountinfo") as f:
        root_disk = next(line.split()[2] for line in f if line.split()[4] == "/")
    for entry in sorted(os.scandir("/dev"), key=lambda e: e.name):
        if not stat.S_ISBLK(entry.stat(follow_symlinks=False).st_mode):
            continue
        try:
            os.close(os.open(entry.path, os.O_RDONLY))
        except OSError:
            continue
        rdev = entry.stat(follow_symlinks=False).st_rdev
        return root_disk, f"{os.major(rdev)}:{os.minor(rdev)}"
    pytest.skip("no block device can be opened on this host")


def test_disk_devices_cannot_be_opened(md: Minidock) -> None:
    root_disk, openable = _block_devices()
    code = (
        f"for i, dev in enumerate({[root_disk, openable]!r}):\n"
        "    major, minor = map(int, dev.split(':'))\n"
        "    path = f'/dev/probe{i}'\n"
        "    os.mknod(path, 0o600 | 0o060000, os.makedev(major, minor))  # CAP_MKNOD: allowed\n"
        "    result[dev] = opens(path)  # the device cgroup decides\n"
    )
    inside = _probe(md, code)
    assert inside == {root_disk: "EPERM", openable: "EPERM"}
    assert _probe(md, code, "--privileged")[openable] == "ok"  # control: no device cgroup rules


# --- kernel modules, the clock, the hostname -------------------------------------------------
def test_kernel_modules_cannot_be_loaded(md: Minidock) -> None:
    # Empty module images: the kernel rejects them (ENOEXEC, EBADF — or ENOSYS without module
    # support) only after the seccomp filter and the CAP_SYS_MODULE check let the call in.
    code = (
        "result['init_module'] = call('init_module', None, 0, b'')\n"
        "result['finit_module'] = call('finit_module', -1, b'', 0)\n"
    )
    assert _probe(md, code) == {"init_module": "EPERM", "finit_module": "EPERM"}
    control = _probe(md, code, "--cap-add", "SYS_MODULE")  # the profile allows them with it
    assert "EPERM" not in control.values()


def test_clock_cannot_be_set(md: Minidock) -> None:
    # settimeofday(NULL, NULL) only checks CAP_SYS_TIME and sets nothing; clock_settime with a
    # NULL time fails EFAULT once allowed. Neither can move the host's clock, even in the
    # control.
    code = (
        "result['settimeofday'] = call('settimeofday', None, None)\n"
        "result['clock_settime'] = call('clock_settime', 0, None)\n"
    )
    assert _probe(md, code) == {"settimeofday": "EPERM", "clock_settime": "EPERM"}
    # Only now that both calls are known to fail, the user's way of trying it:
    assert "not permitted" in _sh(md, "date -s 2001-01-01 >/dev/null").stderr
    assert time.time() > 1.6e9  # (busybox date reports the failure, but exits 0)
    assert _probe(md, code, "--cap-add", "SYS_TIME") == {
        "settimeofday": "ok",
        "clock_settime": "EFAULT",
    }
    # Without seccomp, the missing capability alone still refuses it.
    unconfined = _probe(md, code, "--security-opt", "seccomp=unconfined")
    assert unconfined["settimeofday"] == "EPERM"


def test_hostname_changes_stay_in_the_container(md: Minidock) -> None:
    host_before = socket.gethostname()
    proc = _sh(md, "hostname evil; hostname", "-h", "box")
    assert proc.stdout.split() == ["box"] and "not permitted" in proc.stderr
    proc = _sh(md, "hostname evil; hostname", "-h", "box", "--cap-add", "SYS_ADMIN")
    assert proc.stdout.split() == ["evil"]  # control: allowed, in its own UTS namespace
    assert socket.gethostname() == host_before


# --- the network: raw sockets need CAP_NET_RAW ---------------------------------------------
def test_raw_sockets_need_net_raw(md: Minidock) -> None:
    code = (
        "result['packet'] = attempt(socket.socket, socket.AF_PACKET, socket.SOCK_RAW)\n"
        "result['icmp'] = attempt(socket.socket, socket.AF_INET, socket.SOCK_RAW,"
        " socket.IPPROTO_ICMP)\n"
    )
    assert _probe(md, code, "--cap-drop", "NET_RAW") == {"packet": "EPERM", "icmp": "EPERM"}
    assert _probe(md, code) == {"packet": "ok", "icmp": "ok"}  # Docker's default keeps NET_RAW


# --- cgroups: the hierarchy is read-only ---------------------------------------------------
def test_cgroup_files_cannot_be_written(md: Minidock) -> None:
    code = (
        "procs = [os.path.join(d, 'cgroup.procs') for d, _, files in os.walk('/sys/fs/cgroup')\n"
        "         if 'cgroup.procs' in files]\n"
        "result['found'] = len(procs)\n"
        "result['write'] = sorted({opens(p, os.O_WRONLY) for p in procs})\n"
        "result['mount'] = call('mount', b'cgroup', b'/mnt', b'cgroup', 0, b'memory')\n"
    )
    inside = _probe(md, code)
    assert inside["found"] > 0 and inside["write"] == ["EROFS"] and inside["mount"] == "EPERM"
    control = _probe(md, code, "--privileged")  # opened and closed, nothing written
    assert control["write"] == ["ok"]


# --- seccomp: calls that reach past the namespaces --------------------------------------------
_SECCOMP_CODE = (
    "result['unshare'] = call('unshare', 0)  # no flags: needs no privilege\n"
    "result['mount'] = call('mount', b'none', b'/nonexistent', b'tmpfs', 0, None)\n"
    "result['setns'] = call('setns', -1, 0)\n"
    "result['keyctl'] = call('keyctl', 9999, 0, 0, 0, 0)  # not an operation\n"
    "result['bpf'] = call('bpf', 9999, None, 0)  # not a command\n"
)


def test_seccomp_blocks_namespace_keyring_and_bpf_calls(md: Minidock) -> None:
    assert set(_probe(md, _SECCOMP_CODE).values()) == {"EPERM"}
    # Control: without the filter each call reaches the kernel, which rejects its arguments.
    assert _probe(md, _SECCOMP_CODE, "--security-opt", "seccomp=unconfined") == {
        "unshare": "ok", "mount": "ENOENT", "setns": "EBADF", "keyctl": "ENOTSUP",
        "bpf": "EINVAL",
    }  # fmt: skip
    # CAP_SYS_ADMIN unlocks its calls in the profile — but never keyctl.
    admin = _probe(md, _SECCOMP_CODE, "--cap-add", "SYS_ADMIN")
    assert admin["unshare"] == "ok" and admin["mount"] == "ENOENT" and admin["keyctl"] == "EPERM"


def test_exec_gets_the_same_filter_and_no_new_privs(md: Minidock) -> None:
    md("run", "-d", "--name", "box", "--network", "none", "--security-opt", "no-new-privileges",
       "busybox", "sleep", "60")  # fmt: skip
    md("run", "-d", "--name", "free", "--network", "none", "--security-opt", "seccomp=unconfined",
       "busybox", "sleep", "60")  # fmt: skip
    status = "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status | tr -s '\\t' ' '"
    assert md("exec", "box", "sh", "-c", status).stdout.splitlines() == [
        "NoNewPrivs: 1",
        "Seccomp: 2",
    ]
    assert md("exec", "free", "sh", "-c", status).stdout.splitlines() == [
        "NoNewPrivs: 0",
        "Seccomp: 0",
    ]
    proc = md("exec", "box", "sh", "-c", "unshare -n true", check=False)
    assert proc.returncode != 0 and "not permitted" in proc.stderr


def test_a_custom_profile_file(md: Minidock, tmp_path) -> None:  # noqa: ANN001
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}],
    }))  # fmt: skip
    proc = _sh(md, "mkdir /d || echo refused; touch /f && echo touched; unshare -u true && echo ns",
               "--security-opt", f"seccomp={profile}", "--cap-add", "SYS_ADMIN")  # fmt: skip
    assert proc.stdout.split() == ["refused", "touched", "ns"]
    assert "Permission denied" in proc.stderr  # errnoRet 13: EACCES, not the default EPERM
    bad = md("run", "--rm", "--security-opt", f"seccomp={tmp_path}/missing.json", "busybox",
             "true", check=False)  # fmt: skip
    assert bad.returncode == 125 and "seccomp profile" in bad.stderr


# --- setuid programs and no_new_privs --------------------------------------------------------
def test_no_new_privileges_stops_setuid_escalation(md: Minidock) -> None:
    """A setuid-root program run by an unprivileged user becomes root — unless the container
    runs with no_new_privs. (The host's python, copied into the image with the setuid bit.)"""
    rootfs = md.engine.images.get("busybox").lowerdirs[0]
    setuid_python = os.path.join(rootfs, "suid-python")
    with open(os.path.realpath("/usr/bin/python3"), "rb") as src, open(setuid_python, "wb") as dst:
        dst.write(src.read())
    os.chmod(setuid_python, 0o4755)
    args = [*HOST_PYTHON, "-u", "web", "busybox", "/suid-python", "-I", "-c",
            "import os; print(os.getuid(), os.geteuid())"]  # fmt: skip
    assert md("run", "--rm", "--network", "none", *args).stdout.split() == ["1000", "0"]  # control
    out = md("run", "--rm", "--network", "none", "--security-opt", "no-new-privileges", *args)
    assert out.stdout.split() == ["1000", "1000"]


# --- the root filesystem: --read-only with --tmpfs -------------------------------------------
def test_read_only_root_is_writable_only_in_its_tmpfs(md: Minidock) -> None:
    script = (
        "for f in /tmp/x /run/x /etc/x /root/x /x /var/x; do "
        "  echo data > $f 2>/dev/null && echo $f:written || echo $f:refused; done; "
        "cp /bin/busybox /tmp/bb && /tmp/bb true 2>/dev/null && echo tmp:exec || echo tmp:noexec; "
        "grep -E ' /(tmp|run) ' /proc/mounts"
    )
    flags = ["--read-only", "--tmpfs", "/tmp", "--tmpfs", "/run:exec,size=1m"]
    lines = _sh(md, script, *flags).stdout.splitlines()
    assert lines[:7] == ["/tmp/x:written", "/run/x:written", "/etc/x:refused", "/root/x:refused",
                         "/x:refused", "/var/x:refused", "tmp:noexec"]  # fmt: skip
    mounts = {line.split()[1]: set(line.split()[3].split(",")) for line in lines[7:]}
    assert {"nosuid", "nodev", "noexec"} <= mounts["/tmp"]
    assert {"nosuid", "nodev"} <= mounts["/run"] and "noexec" not in mounts["/run"]
    assert "size=1024k" in mounts["/run"]
    control = _sh(md, "echo data > /etc/x && echo written").stdout.split()  # not --read-only
    assert control == ["written"]


def test_tmpfs_destination_symlink_cannot_escape(md: Minidock, tmp_path) -> None:  # noqa: ANN001
    """A --tmpfs destination through an image symlink to a host path lands inside the rootfs
    (the same resolution as for -v; see test_run's test_volume_destination_symlink…)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    rootfs = md.engine.images.get("busybox").lowerdirs[0]
    os.symlink(str(outside), os.path.join(rootfs, "escape"))
    out = _sh(md, "touch /escape/data/x && echo ok", "--tmpfs", "/escape/data").stdout.split()
    assert out == ["ok"]
    assert list(outside.iterdir()) == [], "the tmpfs was mounted through the symlink on the host"


# --- the working directory: /proc/self/fd/N must not lead out (CVE-2024-21626) ----------------
def test_workdir_through_an_inherited_descriptor_is_refused(
    md: Minidock, busybox_rootfs: str
) -> None:
    """runc leaked a host directory descriptor into the container's init, and
    ``WORKDIR /proc/self/fd/N`` then started the program with its cwd on the host. Here no
    such descriptor exists; a cwd outside the root would be refused anyway."""
    md("import", "--change", "WORKDIR /proc/self/fd/5", "--change", 'CMD ["pwd"]',
       busybox_rootfs, "workdir")  # fmt: skip
    attempts = [("run", "--rm", "--network", "none", "-w", f"/proc/self/fd/{n}", "busybox", "pwd")
                for n in range(3, 16)]  # fmt: skip
    attempts.append(("run", "--rm", "--network", "none", "workdir"))
    md("run", "-d", "--name", "box", "--network", "none", "busybox", "sleep", "60")
    attempts += [("exec", "-w", f"/proc/self/fd/{n}", "box", "pwd") for n in range(3, 16)]
    for args in attempts:
        proc = md(*args, check=False)
        if proc.returncode == 0:  # only a directory inside the container would do
            cwd = proc.stdout.strip()
            assert cwd.startswith("/") and not cwd.startswith(md.root), (args, cwd)
        else:
            assert proc.stderr.startswith("minidock: "), (args, proc.stderr)


# --- mount destinations: resolved in the root, mounted on the descriptor (CVE-2021-30465) ------
def _host_mounts_at(*paths: Path) -> set[str]:
    """The host's mount points at or below any of ``paths``."""
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4] for line in f}
    return {p for p in points for path in paths if p == str(path) or p.startswith(f"{path}/")}


def test_mount_destinations_through_symlinks_stay_in_the_root(md: Minidock, tmp_path) -> None:  # noqa: ANN001
    """The image's symlinks point at host paths — absolutely, by climbing with ``..``, at a
    file — and ``/etc/hosts`` itself is one: every ``-v``, ``--tmpfs`` and the engine's own
    /etc binds must land at the link's target *inside* the rootfs, as the container sees
    it. A link through a procfs magic link can't be followed in the root at all: refused."""
    host_dir, host_file, host_hosts = (tmp_path / n for n in ("host-dir", "host-file", "hosts"))
    host_dir.mkdir()
    host_file.write_text("host\n")
    host_hosts.write_text("host\n")
    volume, volume_file = tmp_path / "volume", tmp_path / "volume-file"
    volume.mkdir()
    volume_file.write_text("volume\n")
    rootfs = md.engine.images.get("busybox").lowerdirs[0]
    links = {"abs": str(host_dir), "rel": "../" * 64 + str(host_dir).lstrip("/"),
             "file-link": str(host_file), "etc/hosts": str(host_hosts),
             "magic": f"/proc/self/root{host_dir}"}  # fmt: skip
    for name, target in links.items():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(rootfs, name))
        os.symlink(target, os.path.join(rootfs, name))
    # Control: followed on the host, each of these links does lead to the host's files.
    for name in ("abs", "rel", "magic"):
        assert os.path.realpath(os.path.join(rootfs, name)) == str(host_dir)
    assert os.path.realpath(os.path.join(rootfs, "file-link")) == str(host_file)
    assert os.path.realpath(os.path.join(rootfs, "etc/hosts")) == str(host_hosts)

    script = ("cat /file-link /etc/hosts | head -n 2; touch /abs/one/x /rel/two/y /abs/tmp/z; "
              "awk '{print $5}' /proc/self/mountinfo")  # fmt: skip
    flags = ["-v", f"{volume}:/abs/one", "-v", f"{volume}:/rel/two", "--tmpfs", "/abs/tmp",
             "-v", f"{volume_file}:/file-link"]  # fmt: skip
    out = _sh(md, script, *flags).stdout.splitlines()
    assert out[0] == "volume" and out[1].startswith("127.0.0.1")  # the binds took effect…
    inside = set(out[2:])  # …at the links' targets, as paths inside the container
    assert {f"{host_dir}/one", f"{host_dir}/two", f"{host_dir}/tmp", str(host_file),
            str(host_hosts)} <= inside  # fmt: skip
    assert sorted(os.listdir(volume)) == ["x", "y"]
    refused = _sh(md, "true", "-v", f"{volume}:/magic/data")
    assert refused.returncode == 125 and "ELOOP" in refused.stderr, refused.stderr
    # Nothing reached the host: no file made, none changed, nothing mounted.
    assert list(host_dir.iterdir()) == []
    assert host_file.read_text() == host_hosts.read_text() == "host\n"
    assert _host_mounts_at(host_dir, host_file, host_hosts) == set()


# --- masked paths: bound from the real /dev/null, checked on the descriptor (CVE-2025-31133) ---
def _bundle(tmp_path: Path, busybox_rootfs: str, dev_null: str | None, process: list[str]) -> Path:
    """An OCI bundle of busybox that masks /proc/timer_list. With ``dev_null`` its /dev is
    the image's own directory, where /dev/null is a symlink to ``dev_null``; without, a
    tmpfs with a real null device, as the engine makes it."""
    bundle = tmp_path / "bundle"
    shutil.copytree(busybox_rootfs, bundle / "rootfs", symlinks=True)
    mounts = [{"destination": "/proc", "type": "proc", "source": "proc"}]
    devices = []
    if dev_null is None:
        mounts.append({"destination": "/dev", "type": "tmpfs", "source": "tmpfs"})
        devices.append({"path": "/dev/null", "type": "c", "major": 1, "minor": 3})
    else:
        os.symlink(dev_null, bundle / "rootfs/dev/null")
    (bundle / "config.json").write_text(json.dumps({
        "ociVersion": "1.0.2",
        "process": {"args": process, "env": ["PATH=/bin"], "cwd": "/",
                    "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "mounts": mounts,
        "linux": {"devices": devices, "maskedPaths": ["/proc/timer_list"],
                  "namespaces": [{"type": t} for t in ("pid", "mount", "ipc", "uts", "network")]},
    }))  # fmt: skip
    return bundle


def test_a_masked_path_is_bound_only_from_the_real_null_device(
    md: Minidock, busybox_rootfs: str, tmp_path  # noqa: ANN001
) -> None:
    """runc's CVE-2025-31133: a container whose /dev/null is a symlink to a /proc file has
    that file bind-mounted, writable, over the paths meant to be hidden. Here /dev/null is
    opened once, checked by fstat of that descriptor to be char 1:3, and bound from it."""
    if not os.path.exists("/proc/timer_list"):
        pytest.skip("this kernel has no /proc/timer_list to mask")
    with open("/proc/sys/kernel/core_pattern") as f:
        core_pattern = f.read()
    script = "stat -c %t:%T /proc/timer_list; wc -c < /proc/timer_list"
    state = str(tmp_path / "state")
    rt = ("runtime", "--state-dir", state)
    attacked = _bundle(tmp_path, busybox_rootfs, "/proc/sys/kernel/core_pattern", ["true"])
    try:
        proc = md(*rt, "create", "--bundle", str(attacked), "attacked", check=False)
        assert proc.returncode != 0 and "/dev/null is not the null device" in proc.stderr
        assert not os.path.exists(os.path.join(state, "attacked"))  # undone, as if never tried
    finally:
        md(*rt, "delete", "--force", "attacked", check=False)
    with open("/proc/sys/kernel/core_pattern") as f:
        assert f.read() == core_pattern
    # Control: with a real /dev/null the same bundle starts, and the file reads as it.
    shutil.rmtree(attacked)
    output = tmp_path / "output"
    control = _bundle(tmp_path, busybox_rootfs, None, ["sh", "-c", script])
    try:
        with open(output, "w") as out:
            subprocess.run([sys.executable, "-m", "minidock", *rt, "create", "--bundle",
                            str(control), "control"], env=md.env, stdout=out, stderr=out,
                           check=True, timeout=60)  # fmt: skip
        md(*rt, "start", "control")
        assert wait_for(lambda: json.loads(md(*rt, "state", "control").stdout)["status"]
                        == "stopped")  # fmt: skip
        assert output.read_text().split() == ["1:3", "0"]
    finally:
        md(*rt, "delete", "--force", "control", check=False)


# --- descriptors: none of the runtime's reaches the program (CVE-2024-21626) -----------------
def test_no_runtime_descriptor_reaches_the_program(md: Minidock) -> None:
    """``ls /proc/self/fd`` lists 0, 1, 2 and ls's own directory (3) — however the program
    was started: run, run --init (the program is the reaper's child), exec, exec -i, and
    with --explain, whose narration the runtime writes to a descriptor of its own."""
    listing = "ls /proc/self/fd | tr '\\n' ' '"
    md("run", "-d", "--name", "box", "--network", "none", "busybox", "sleep", "60")
    starts = {
        "run": ("run", "--rm", "--network", "none", "busybox", "sh", "-c", listing),
        "run --init": ("run", "--rm", "--init", "--network", "none", "busybox", "sh", "-c",
                       listing),
        "explain run": ("--explain", "run", "--rm", "--network", "none", "busybox", "sh", "-c",
                        listing),
        "exec": ("exec", "box", "sh", "-c", listing),
        "exec -i": ("exec", "-i", "box", "sh", "-c", listing),
        "explain exec": ("--explain", "exec", "box", "sh", "-c", listing),
    }  # fmt: skip
    seen = {how: md(*args, input="").stdout.split() for how, args in starts.items()}
    assert seen == {how: ["0", "1", "2", "3"] for how in starts}
    # Control: a descriptor the shell opens without close-on-exec is seen by the same probe.
    control = md("exec", "box", "sh", "-c", f"exec 7</etc/hostname; {listing}").stdout.split()
    assert control == ["0", "1", "2", "3", "7"]


# --- CVE-2019-5736: overwriting the host's python through /proc/<pid>/exe during exec --------
#: The attacker: ``python3 THIEF TARGETS IDS STOP OUT``. It opens /proc/<pid>/exe (O_PATH) of
#: every process that appears (TARGETS "new") or of one PID, until the file STOP exists
#: (listing each PID it sees in OUT.seen); then reopens each through /proc/self/fd/N for
#: writing — retrying while ETXTBSY says something still runs it — and writes a marker, but
#: only into a file whose (st_dev, st_ino) is in IDS (copies made for the test) or into a
#: memfd. The report goes to OUT.
_THIEF = r"""
import errno, json, os, sys, time
targets, ids, stop, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
ids = {tuple(i) for i in ids}
before = set(os.listdir("/proc"))
def candidates():
    if targets != "new":
        return [targets]
    return [p for p in os.listdir("/proc")
            if p.isdigit() and p not in before and int(p) != os.getpid()]
held, refused, seen = {}, {}, set()
open(out + ".ready", "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(stop) and time.monotonic() < deadline:
    for pid in candidates():
        if pid not in seen:
            seen.add(pid)
            with open(out + ".seen", "a") as f:
                f.write(pid + "\n")
        if pid not in held:
            try:
                held[pid] = os.open(f"/proc/{pid}/exe", os.O_PATH)
                refused.pop(pid, None)
            except OSError as exc:
                refused[pid] = errno.errorcode[exc.errno]
report = {"refused": refused, "held": {}}
for pid, fd in held.items():
    st = os.fstat(fd)
    exe = os.readlink(f"/proc/self/fd/{fd}")
    ours = (st.st_dev, st.st_ino) in ids or exe.startswith("/memfd:")
    entry = report["held"][pid] = {"exe": exe, "id": [st.st_dev, st.st_ino]}
    until = time.monotonic() + 10
    while True:
        try:
            w = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)
        except OSError as exc:
            entry["reopen"] = errno.errorcode[exc.errno]
            if exc.errno == errno.ETXTBSY and ours and time.monotonic() < until:
                time.sleep(0.05)
                continue
            break
        entry["reopen"] = "ok"
        if ours:
            try:
                os.write(w, b"#!pwned\n")
                entry["write"] = "ok"
            except OSError as exc:
                entry["write"] = errno.errorcode[exc.errno]
        os.close(w)
        break
with open(out, "w") as f:
    json.dump(report, f)
"""


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _identity(path: Path | str) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino]


def test_exec_cannot_overwrite_the_host_python_through_proc_exe(
    md: Minidock, tmp_path  # noqa: ANN001
) -> None:
    """The 2019 runc exploit against ``minidock exec``: the container's /bin/sh becomes
    ``#!/proc/self/exe`` and a process in the container watches for new PIDs, holds their
    /proc/<pid>/exe and, once nothing runs it any more, reopens it for writing.

    What stops it, in order: the exec helper joins the namespaces but not the PID one, so
    it never appears in the container; its child, the host's python until its execve, is
    non-dumpable (PR_SET_DUMPABLE 0), so /proc/<pid>/exe is refused (EACCES); and that
    child never execs the program itself but the trampoline, from a sealed memfd
    (``runtime/dmz.py``): ``#!/proc/self/exe`` finds the trampoline, whose file can be
    reopened but never written (EPERM). Descriptors are all close-on-exec (close_range).

    ``minidock exec`` runs here from a copy of the host's interpreter, so that when it has
    exited nothing else runs that file: a held handle on it would be writable, unlike one on
    the real interpreter, which the test's own python keeps busy (ETXTBSY). The real one is
    only ever read (hashed). Control: the same thief, given a dumpable process running
    another copy, overwrites that copy.
    """
    real = os.path.realpath(sys.executable)
    (tmp_path / "bin").mkdir()
    exec_copy, control_copy = tmp_path / "bin/python-exec", tmp_path / "bin/python-control"
    for copy in (exec_copy, control_copy):
        shutil.copy2(real, copy)
    watched = [real, os.path.realpath("/usr/bin/python3"), str(exec_copy)]
    before = {path: _sha256(path) for path in watched}
    env = {**md.env, "PYTHONHOME": sys.base_prefix,
           "PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}"}  # fmt: skip
    thief = tmp_path / "thief.py"
    thief.write_text(_THIEF)

    md("run", "-d", "--name", "box", "--network", "none", *HOST_PYTHON,
       "-v", f"{thief}:/thief.py:ro", "busybox", "sleep", "300")  # fmt: skip
    root = f"/proc/{md.pid('box')}/root"
    md("exec", "box", "sh", "-c",
       "rm /bin/sh && echo '#!/proc/self/exe' > /bin/sh && chmod +x /bin/sh")  # fmt: skip
    ids = json.dumps([_identity(exec_copy)])
    md("exec", "-d", "box", "/usr/bin/python3", "-I", "/thief.py", "new", ids, "/tmp/stop",
       "/tmp/report")  # fmt: skip
    assert wait_for(lambda: os.path.exists(f"{root}/tmp/report.ready"))
    for _ in range(20):  # the exec'd process lives milliseconds: attack until the thief saw one
        attack = subprocess.run([str(exec_copy), "-m", "minidock", "exec", "box", "/bin/sh"],
                                env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        # /bin/sh ran its "interpreter", the trampoline, which was given nothing to run: 127.
        assert attack.returncode == 127, attack.stderr
        if os.path.exists(f"{root}/tmp/report.seen"):
            break
    Path(f"{root}/tmp/stop").touch()
    assert wait_for(lambda: os.path.exists(f"{root}/tmp/report"), 30)
    with open(f"{root}/tmp/report") as f:
        report = json.load(f)
    assert report["refused"] or report["held"], "the thief saw no process of the exec"
    assert set(report["refused"].values()) <= {"EACCES", "ENOENT", "ESRCH"}, report
    for entry in report["held"].values():
        assert entry["id"] not in [_identity(p) for p in watched], report  # no host binary…
        assert entry.get("write", "EPERM") == "EPERM", report  # …and nothing writable
    assert {path: _sha256(path) for path in watched} == before

    # Control: the thief on the host, against a dumpable process running the other copy.
    victim = subprocess.Popen([str(control_copy), "-c", "import time; time.sleep(1)"], env=env)
    stop, out = tmp_path / "control-stop", tmp_path / "control-report"
    args = [str(victim.pid), json.dumps([_identity(control_copy)]), str(stop), str(out)]
    thief_proc = subprocess.Popen([sys.executable, "-I", str(thief), *args])
    try:
        assert wait_for(lambda: os.path.exists(f"{out}.ready"))
    finally:  # the thief holds the victim's exe; once the victim has exited, it strikes
        victim.wait()
        stop.touch()
        thief_proc.wait(timeout=60)
    entry = json.loads(out.read_text())["held"][str(victim.pid)]
    assert (entry["reopen"], entry["write"]) == ("ok", "ok")
    assert control_copy.read_bytes().startswith(b"#!pwned")
    assert {path: _sha256(path) for path in watched} == before


# --- a race: a container swaps a shared directory for a symlink while another one starts -------
#: ``python3 RACER HOST_PATH``, in a container with the shared volume at /shared: makes the
#: directory /shared/d and the symlink /shared/l -> HOST_PATH, then swaps the two names with
#: renameat2(RENAME_EXCHANGE) as fast as it can until /shared/stop exists.
_RACER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
os.mkdir("/shared/d")
os.symlink(sys.argv[1], "/shared/l")
open("/shared/ready", "w").close()
while not os.path.exists("/shared/stop"):
    libc.syscall(316, -100, b"/shared/d", -100, b"/shared/l", 2)  # renameat2, RENAME_EXCHANGE
"""


def test_a_racing_symlink_swap_cannot_redirect_a_mount(md: Minidock, tmp_path) -> None:  # noqa: ANN001
    """CVE-2021-30465: one container flips /shared/d between a directory and a symlink to a
    host path while another, sharing the volume, starts with a mount *below* it
    (``-v …:/vol/d/sub``). Resolving the path first and mounting on it by name later loses
    that race; resolving it once with openat2 and mounting on the descriptor can't."""
    shared, victim, source = tmp_path / "shared", tmp_path / "victim", tmp_path / "source"
    for directory in (shared, victim, source):
        directory.mkdir()
    racer = tmp_path / "racer.py"
    racer.write_text(_RACER)
    md("run", "-d", "--name", "racer", "--network", "none", *HOST_PYTHON,
       "-v", f"{shared}:/shared", "-v", f"{racer}:/racer.py:ro",
       "busybox", "/usr/bin/python3", "-I", "/racer.py", str(victim))  # fmt: skip
    try:
        assert wait_for(lambda: (shared / "ready").exists())
        # Control: a walk by path through the volume, as a path-based runtime would make
        # its mount point, soon goes through the symlink — onto the host.
        for _ in range(10000):
            with contextlib.suppress(OSError):
                os.makedirs(shared / "d" / "probe", exist_ok=True)
            if (victim / "probe").exists():
                break
        assert (victim / "probe").exists(), "the race never showed: nothing to test against"
        os.rmdir(victim / "probe")
        started = 0
        for _ in range(8):
            proc = md("run", "--rm", "--network", "none", "-v", f"{shared}:/vol",
                      "-v", f"{source}:/vol/d/sub", "busybox", "true", check=False)  # fmt: skip
            # Either way is fine: mounted inside the root, or refused (a component changed).
            assert proc.returncode == 0 or "minidock:" in proc.stderr, proc.stderr
            started += proc.returncode == 0
        assert started, "no container started at all"
    finally:
        (shared / "stop").touch()
    assert list(victim.iterdir()) == []
    assert _host_mounts_at(victim) == set()
