"""The escape battery: classic ways out of a container, each tried from inside one.

Every attack must fail by default. Each is also run once where it should succeed — with
``--privileged``, the relevant ``--cap-add``, ``seccomp=unconfined``, or on the host
itself — so that a probe which could never detect success can't pass by accident. No
probe changes anything outside its container, controls included: device and /proc files
are opened and closed, never written; kernel calls get arguments the kernel rejects
harmlessly once the permission checks have passed (so "EPERM" versus any other errno
tells which layer refused).

Busybox can't make most of these calls, so the host's Debian python is bound in read-only
and drives them through ctypes.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import stat
import subprocess
import time

import pytest

from tests.conftest import Minidock

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
