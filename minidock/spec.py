"""Turn what the user asked for into an OCI runtime spec (the bundle's ``config.json``).

This is the hand-off between engine and runtime, as between dockerd and runc: everything
the runtime does is written down here first — namespaces, mounts, devices, capabilities,
masked paths, the seccomp filter, cgroup limits — with Docker's defaults (moby
``oci/defaults.go``). The functions are pure: the same inputs give the same spec (on the
same kernel: seccomp rules can depend on its version), and the unit tests check it.
"""

from __future__ import annotations

import os
import stat

from cgroups.limits import cpus_to_quota
from minidock import caps, seccomp, userns
from minidock.errors import InvalidArgument

OCI_VERSION = "1.0.2"

#: Docker's maskedPaths: files get /dev/null bound over them, directories an empty tmpfs.
MASKED_PATHS = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
#: Docker's readonlyPaths: still visible, but read-only.
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

#: The device nodes every container gets in its /dev (moby oci/devices_linux.go).
DEFAULT_DEVICES = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
]
#: Device cgroup: deny everything, then allow these (runc's AllowedDevices + Docker's list).
DEFAULT_DEVICE_RULES = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": -1, "minor": -1, "access": "m"},
    {"allow": True, "type": "b", "major": -1, "minor": -1, "access": "m"},
    *(
        {"allow": True, "type": "c", "major": ma, "minor": mi, "access": "rwm"}
        for _, ma, mi in DEFAULT_DEVICES
    ),
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},  # /dev/console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # /dev/ptmx
    {"allow": True, "type": "c", "major": 136, "minor": -1, "access": "rwm"},  # /dev/pts/*
]

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_NOFILE = 1048576  # what containerd gives a container; clamped to the host's hard limit


def command_line(config: dict, image_config: dict) -> list[str]:
    """Docker's rule for the program to run: ENTRYPOINT followed by CMD, where a
    ``--entrypoint`` resets the image's CMD and arguments after the image replace CMD."""
    entrypoint = config.get("Entrypoint")
    if entrypoint is None:
        entrypoint = image_config.get("Entrypoint") or []
        cmd = config.get("Cmd") or image_config.get("Cmd") or []
    else:
        cmd = config.get("Cmd") or []
    return list(entrypoint) + list(cmd)


def environment(config: dict, image_config: dict, hostname: str) -> list[str]:
    """Image ENV, overridden by ``-e``; PATH, HOSTNAME (and TERM with a tty) as Docker sets."""
    env: dict[str, str] = {}
    for entry in [
        DEFAULT_PATH_ENV,
        f"HOSTNAME={hostname}",
        *(image_config.get("Env") or []),
        *(["TERM=xterm"] if config.get("Tty") else []),
        *(config.get("Env") or []),
    ]:
        key, _, value = entry.partition("=")
        env[key] = value
    return [f"{k}={v}" for k, v in env.items()]


def default_mounts(privileged: bool) -> list[dict]:
    """Docker's standard filesystems: /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys and
    the container's own view of /sys/fs/cgroup (read-only unless ``--privileged``)."""
    ro = [] if privileged else ["ro"]
    return [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", *ro],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", *ro],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
    ]


def bind_mount(source: str, destination: str, read_only: bool) -> dict:
    return {
        "destination": destination,
        "type": "bind",
        "source": source,
        "options": ["rbind", "rprivate", "ro" if read_only else "rw"],
    }


def tmpfs_mount(destination: str, options: str) -> dict:
    """A ``--tmpfs`` mount: Docker's noexec, nosuid, nodev, then the user's options (a later
    ``exec`` or ``suid`` wins)."""
    return {
        "destination": destination,
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["noexec", "nosuid", "nodev", *filter(None, options.split(","))],
    }


def _depth(mount: dict) -> int:
    return len(os.path.normpath(mount["destination"]).strip("/").split("/"))


#: What Go's strconv.ParseBool accepts, which Docker uses for ``no-new-privileges=…``.
_BOOLEANS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}


def security_options(options: list[str]) -> tuple[bool, str | None]:
    """Docker's ``--security-opt`` values → (no_new_privileges, seccomp).

    ``no-new-privileges[=bool]``; ``seccomp=unconfined``, ``seccomp=builtin`` (the default
    profile) or ``seccomp=<profile JSON>`` (the CLI has already replaced a file name by the
    file's content). ``:`` is accepted for ``=``, as Docker still does. ``seccomp`` comes
    back as ``"unconfined"``, the profile's JSON, or None for Docker's default profile.
    There is no AppArmor or SELinux here, so ``apparmor=`` and ``label=`` are refused.
    """
    no_new_privileges, profile = False, None
    for option in options:
        if option == "no-new-privileges":
            no_new_privileges = True
            continue
        separator = "=" if "=" in option else ":"
        key, _, value = option.partition(separator)
        if key == "no-new-privileges" and value.lower() in _BOOLEANS:
            no_new_privileges = _BOOLEANS[value.lower()]
        elif key == "seccomp" and value:
            profile = None if value == "builtin" else value
        else:
            raise InvalidArgument(f'invalid --security-opt: "{option}"')
    return no_new_privileges, profile


def host_devices() -> list[dict]:
    """Every character and block device directly in the host's /dev (for ``--privileged``)."""
    devices = []
    for entry in sorted(os.scandir("/dev"), key=lambda e: e.name):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            devices.append(
                {
                    "path": entry.path,
                    "type": "c" if stat.S_ISCHR(st.st_mode) else "b",
                    "major": os.major(st.st_rdev),
                    "minor": os.minor(st.st_rdev),
                    "fileMode": stat.S_IMODE(st.st_mode),
                    "uid": 0,
                    "gid": 0,
                }
            )
    return devices


def rlimits(ulimits: list[dict], host_hard: dict[str, int]) -> list[dict]:
    """The process's rlimits, each clamped to the host's hard limit (without
    CAP_SYS_RESOURCE even root cannot raise a hard limit)."""
    wanted = {"RLIMIT_NOFILE": (DEFAULT_NOFILE, DEFAULT_NOFILE)}
    for u in ulimits:
        wanted[u["Name"]] = (u["Soft"], u["Hard"])
    result = []
    for name, (soft, hard) in sorted(wanted.items()):
        ceiling = host_hard.get(name)
        if ceiling is not None and ceiling >= 0:
            hard = min(hard, ceiling)
        result.append({"type": name, "soft": min(soft, hard), "hard": hard})
    return result


def resources(host_config: dict) -> dict:
    """``linux.resources`` from Docker's HostConfig (limits the runtime writes to cgroups)."""
    res: dict = {}
    if not host_config.get("Privileged"):
        res["devices"] = DEFAULT_DEVICE_RULES
    memory: dict = {}
    if host_config.get("Memory"):
        memory["limit"] = host_config["Memory"]
        if host_config.get("MemorySwap"):
            memory["swap"] = host_config["MemorySwap"]
    if memory:
        res["memory"] = memory
    cpu: dict = {}
    if host_config.get("NanoCpus"):
        cpu["quota"], cpu["period"] = cpus_to_quota(host_config["NanoCpus"] / 1_000_000_000)
    if host_config.get("CpuShares"):
        cpu["shares"] = host_config["CpuShares"]
    if cpu:
        res["cpu"] = cpu
    if host_config.get("PidsLimit"):
        res["pids"] = {"limit": host_config["PidsLimit"]}
    return res


def namespaces(network_mode: str, network_path: str | None) -> list[dict]:
    """New PID, mount, UTS, IPC and cgroup namespaces; the network namespace is new
    (``none``/``bridge``), the host's (``host``: no entry), or another's (``container:``)."""
    result = [{"type": t} for t in ("pid", "mount", "uts", "ipc", "cgroup")]
    if network_path:
        result.append({"type": "network", "path": network_path})
    elif network_mode != "host":
        result.append({"type": "network"})
    return result


def build(
    container: dict,
    image_config: dict,
    *,
    rootfs: str,
    cgroup_path: str,
    identity: tuple[int, int, list[int]],
    etc_files: dict[str, str],
    network_path: str | None,
    host_hard_limits: dict[str, int],
    host_caps: list[str] | None = None,
) -> dict:
    """The complete OCI spec for one container.

    ``container`` is the engine's record (Docker-shaped ``Config`` and ``HostConfig``),
    ``identity`` the resolved (uid, gid, extra gids), ``etc_files`` maps /etc/hostname,
    /etc/hosts and /etc/resolv.conf to the host files bound over them, ``host_caps`` are
    the capabilities the runtime holds (what ``--privileged`` grants).
    """
    config, host = container["Config"], container["HostConfig"]
    privileged = bool(host.get("Privileged"))
    capabilities = caps.resolve(
        host.get("CapAdd") or [], host.get("CapDrop") or [], privileged, host_caps
    )
    uid, gid, groups = identity
    no_new_privileges, seccomp_profile = security_options(host.get("SecurityOpt") or [])
    mounts = default_mounts(privileged)
    mounts += [bind_mount(src, dst, read_only=False) for dst, src in sorted(etc_files.items())]
    user_mounts: list[dict] = []
    for bind in host.get("Binds") or []:
        source, destination, *mode = bind.split(":")
        user_mounts.append(bind_mount(source, destination, read_only=mode == ["ro"]))
    user_mounts += [tmpfs_mount(dst, opts) for dst, opts in (host.get("Tmpfs") or {}).items()]
    mounts += sorted(user_mounts, key=_depth)  # a parent before what is mounted inside it
    devices = (
        host_devices()
        if privileged
        else [
            {
                "path": p,
                "type": "c",
                "major": ma,
                "minor": mi,
                "fileMode": 0o666,
                "uid": 0,
                "gid": 0,
            }
            for p, ma, mi in DEFAULT_DEVICES
        ]
    )
    annotations = {"org.minidock.name": container["Name"].lstrip("/")}
    if host.get("Init"):
        annotations["org.minidock.init"] = "true"
    linux = {
        "namespaces": namespaces(host.get("NetworkMode", "none"), network_path),
        "cgroupsPath": cgroup_path,
        "resources": resources(host),
        "devices": devices,
        "maskedPaths": [] if privileged else MASKED_PATHS,
        "readonlyPaths": [] if privileged else READONLY_PATHS,
        "rootfsPropagation": "rprivate",
    }
    id_maps = userns.IdMaps.from_host_config(host)
    if id_maps is not None:  # the runtime creates it first: it owns the other namespaces
        linux["namespaces"].insert(0, {"type": "user"})
        linux["uidMappings"], linux["gidMappings"] = id_maps.uids, id_maps.gids
    # --privileged also means seccomp=unconfined, as in Docker.
    if not privileged and seccomp_profile != "unconfined":
        oci_seccomp = seccomp.for_container(seccomp_profile, capabilities)
        if oci_seccomp is not None:
            linux["seccomp"] = oci_seccomp
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": bool(config.get("Tty")),
            "user": {"uid": uid, "gid": gid, "additionalGids": groups},
            "args": command_line(config, image_config),
            "env": environment(config, image_config, config["Hostname"]),
            "cwd": config.get("WorkingDir") or image_config.get("WorkingDir") or "/",
            "capabilities": {
                "bounding": capabilities,
                "effective": capabilities,
                "permitted": capabilities,
                "inheritable": [],
                "ambient": [],
            },
            "rlimits": rlimits(host.get("Ulimits") or [], host_hard_limits),
            "noNewPrivileges": no_new_privileges,
            "oomScoreAdj": 0,
        },
        "root": {"path": rootfs, "readonly": bool(host.get("ReadonlyRootfs"))},
        "hostname": config["Hostname"],
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    }
