"""`minidock run`: namespaces, root filesystem, capabilities, PID 1 — checked against what
the kernel reports."""

from __future__ import annotations

import os

from tests.conftest import Minidock, wait_for

NAMESPACES = ("pid", "mnt", "uts", "ipc", "net", "cgroup")


def test_echo_hello(md: Minidock) -> None:
    proc = md("run", "--rm", "busybox", "echo", "hello")
    assert proc.stdout == "hello\n"
    assert md("ps", "-aq").stdout == ""


def test_every_namespace_is_new(md: Minidock) -> None:
    md("run", "-d", "--name", "ns", "busybox", "sleep", "30")
    pid = md.pid("ns")
    for ns in NAMESPACES:
        inside = os.readlink(f"/proc/{pid}/ns/{ns}")
        host = os.readlink(f"/proc/self/ns/{ns}")
        assert inside != host, f"{ns} namespace is shared with the host"


def test_network_host_shares_the_host_network_namespace(md: Minidock) -> None:
    md("run", "-d", "--name", "hostnet", "--network", "host", "busybox", "sleep", "30")
    pid = md.pid("hostnet")
    assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")


def test_network_none_has_only_loopback_up(md: Minidock) -> None:
    out = md(
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "ls /sys/class/net; cat /sys/class/net/lo/operstate;"
        "ping -c1 -W1 127.0.0.1 >/dev/null && echo ping-ok",
    ).stdout
    lines = out.split()
    assert lines[0] == "lo" and "ping-ok" in lines
    assert "eth0" not in lines


def test_entrypoint_is_pid_1_and_host_processes_are_invisible(md: Minidock) -> None:
    out = md("run", "--rm", "busybox", "sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'").stdout
    pid1, visible = out.split()
    assert pid1 == "1"
    assert int(visible) <= 3  # sh, ls and grep: nothing of the host's


def test_hostname_and_etc_files(md: Minidock) -> None:
    out = md(
        "run",
        "--rm",
        "-h",
        "box",
        "busybox",
        "sh",
        "-c",
        "hostname; cat /etc/hostname; grep box /etc/hosts",
    ).stdout
    assert out.splitlines()[:2] == ["box", "box"]
    assert "box" in out.splitlines()[2]


def test_host_mounts_are_invisible_and_root_is_overlay(md: Minidock) -> None:
    mounts = md("run", "--rm", "busybox", "cat", "/proc/self/mounts").stdout.splitlines()
    assert mounts[0].split()[:3] == ["overlay", "/", "overlay"]
    targets = {line.split()[1] for line in mounts}
    with open("/proc/self/mounts") as f:
        host_only = {line.split()[1] for line in f} - targets
    assert host_only, "expected host mounts that the container doesn't see"
    assert not any(t.startswith(("/work", "/var/lib", "/home", "/boot")) for t in targets)


def test_masked_and_readonly_proc_paths(md: Minidock) -> None:
    script = (
        "cat /proc/timer_list | wc -c; ls /proc/acpi | wc -l; "
        "echo 1 > /proc/sys/vm/drop_caches && echo writable || echo refused; "
        "echo x > /sys/kernel/x 2>/dev/null && echo sys-writable || echo sys-refused"
    )
    out = md("run", "--rm", "busybox", "sh", "-c", script).stdout.split()
    assert out == ["0", "0", "refused", "sys-refused"]
    out = md(
        "run", "--rm", "--privileged", "busybox", "sh", "-c", "cat /proc/timer_list | wc -c"
    ).stdout.split()
    assert int(out[0]) > 0, "privileged containers are not masked"


def _caps(md: Minidock, *flags: str) -> int:
    out = md("run", "--rm", *flags, "busybox", "grep", "CapEff", "/proc/self/status").stdout
    return int(out.split()[1], 16)


def test_capabilities(md: Minidock) -> None:
    docker_default = 0xA80425FB  # the 14 capabilities of moby's defaults
    assert _caps(md) == docker_default
    assert _caps(md, "--cap-drop", "ALL") == 0
    assert _caps(md, "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE") == 1 << 10
    assert _caps(md, "--cap-add", "SYS_ADMIN") == docker_default | 1 << 21
    with open("/proc/self/status") as f:
        bounding = int(next(x for x in f if x.startswith("CapBnd:")).split()[1], 16)
    assert _caps(md, "--privileged") == bounding


def test_user_and_workdir_and_env(md: Minidock) -> None:
    env_file = os.path.join(md.root, "env")
    os.makedirs(md.root, exist_ok=True)
    with open(env_file, "w") as f:
        f.write("# comment\nFROM_FILE=yes\n")
    out = md(
        "run",
        "--rm",
        "-u",
        "web",
        "-w",
        "/tmp/work",
        "-e",
        "A=1",
        "--env-file",
        env_file,
        "busybox",
        "sh",
        "-c",
        "id -u; id -g; pwd; echo $A $FROM_FILE; grep CapEff /proc/self/status",
    ).stdout.split()
    assert out[:6] == ["1000", "1000", "/tmp/work", "1", "yes", "CapEff:"]
    assert int(out[6], 16) == 0, "a non-root user has no effective capabilities"


def test_volume_bind_mount_read_write_and_read_only(md: Minidock, tmp_path) -> None:  # noqa: ANN001
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from host\n")
    md(
        "run",
        "--rm",
        "-v",
        f"{shared}:/data",
        "busybox",
        "sh",
        "-c",
        "cat /data/in.txt > /data/out.txt",
    )
    assert (shared / "out.txt").read_text() == "from host\n"
    proc = md(
        "run",
        "--rm",
        "-v",
        f"{shared}:/data:ro",
        "busybox",
        "sh",
        "-c",
        "echo x > /data/no.txt",
        check=False,
    )
    assert proc.returncode != 0 and not (shared / "no.txt").exists()


def test_volume_destination_symlink_cannot_escape(md: Minidock, tmp_path) -> None:  # noqa: ANN001
    """An image symlink pointing at a host path is resolved inside the rootfs."""
    shared = tmp_path / "vol"
    shared.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    rootfs = md.engine.images.get("busybox").lowerdirs[0]
    os.symlink(str(outside), os.path.join(rootfs, "escape"))
    md("run", "--rm", "-v", f"{shared}:/escape/data", "busybox", "true")
    assert list(outside.iterdir()) == [], "the mount went through the symlink onto the host"


def test_rlimits_are_clamped_to_the_host(md: Minidock) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out = md(
        "run", "--rm", "--ulimit", "nofile=100000000:100000000", "busybox", "sh", "-c", "ulimit -n"
    ).stdout
    assert int(out) == hard


def test_no_host_fd_leaks_into_the_container(md: Minidock) -> None:
    out = md("run", "--rm", "busybox", "ls", "/proc/self/fd").stdout.split()
    assert sorted(out) == ["0", "1", "2", "3"]  # ls's own directory fd is 3


def test_init_reaps_orphans_and_forwards_signals(md: Minidock) -> None:
    script = "(sleep 0.2 &); exec sleep 30"  # the orphaned sleep is re-parented to PID 1
    md("run", "-d", "--name", "noinit", "busybox", "sh", "-c", script)
    md("run", "-d", "--name", "withinit", "--init", "busybox", "sh", "-c", script)

    def zombies(name: str) -> int:
        """Zombie children of the container's PID 1 (cgroup.procs no longer lists zombies)."""
        pid1 = md.pid(name)
        with open(f"/proc/{pid1}/task/{pid1}/children") as f:
            children = f.read().split()
        count = 0
        for pid in children:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    count += f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except FileNotFoundError:
                pass
        return count

    assert wait_for(lambda: zombies("noinit") == 1, 5), "control: sleep as PID 1 leaves a zombie"
    assert zombies("withinit") == 0
    # --init: PID 2 is the program; a signal to the container reaches it through the reaper.
    md("kill", "-s", "USR1", "withinit")
    assert md("wait", "withinit").stdout.strip() == str(128 + 10)


def test_exit_codes_pass_through(md: Minidock) -> None:
    assert md("run", "--rm", "busybox", "sh", "-c", "exit 3", check=False).returncode == 3
    proc = md("run", "--rm", "--init", "busybox", "sh", "-c", "kill -USR2 $$", check=False)
    assert proc.returncode == 128 + 12


def test_no_host_binary_is_reachable_through_proc_exe(md: Minidock) -> None:
    """With --init, PID 1 is minidock's own reaper — the host's python. It is non-dumpable,
    so the kernel refuses to show its executable to the container (CVE-2019-5736)."""
    script = "readlink /proc/1/exe || echo refused; wc -c < /proc/1/exe || echo refused"
    out = md("run", "--rm", "--init", "busybox", "sh", "-c", script).stdout.split()
    assert out == ["refused", "refused"]
    # Control: without --init, PID 1 is the container's own program, and that is visible.
    out = md("run", "--rm", "busybox", "readlink", "/proc/1/exe").stdout.split()
    assert out == ["/bin/busybox"]


def test_the_program_starts_with_default_signal_handling(md: Minidock) -> None:
    """Python ignores SIGPIPE and SIGXFSZ; execve keeps ignored signals, so the runtime
    must reset them or every container program would inherit that."""
    for flags in ([], ["--init"]):
        out = md("run", "--rm", "--network", "none", *flags, "busybox", "sh", "-c",
                 "grep -E '^Sig(Ign|Blk)' /proc/self/status; yes | head -1").stdout  # fmt: skip
        lines = out.split()
        assert lines[0::2] == ["SigBlk:", "SigIgn:", "y"], out
        # glibc reserves signals 32 and 33 for itself (Python can't touch them) and sets
        # them up in every program it starts: they are left as they come.
        reserved = (1 << 31) | (1 << 32)
        assert int(lines[1], 16) == 0 and int(lines[3], 16) & ~reserved == 0, out
