"""Linux capabilities: names, numbers, and the set a container gets by default.

Root's power is split into ~41 capabilities (capabilities(7)). A container keeps only a
few: Docker's default set (moby ``oci/caps/defaults.go``) is enough for ordinary programs
run as root (chown files, bind port 80, setuid to a service user) but withholds the ones
that reach the host (CAP_SYS_ADMIN for mount, CAP_SYS_MODULE, CAP_SYS_TIME, …).
"""

from __future__ import annotations

from minidock.errors import InvalidArgument

#: Capability name → bit number, from linux/capability.h.
CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

#: Docker's 14 default capabilities (moby oci/caps/defaults.go).
DOCKER_DEFAULT: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


def normalize(name: str) -> str:
    """``net_admin``, ``NET_ADMIN`` and ``CAP_NET_ADMIN`` all name the same capability."""
    upper = name.strip().upper()
    full = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if full != "CAP_ALL" and full not in CAPABILITIES:
        raise InvalidArgument(f'unknown capability: "{name}"')
    return full


def bounding_set() -> list[str]:
    """The capabilities this process could ever hold (``CapBnd`` in /proc/self/status).
    A runtime cannot grant more than it has: on hosts that withhold some (this project's CI
    lacks CAP_SYS_RESOURCE), ``--privileged`` means "everything we have"."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("CapBnd:"))
    held = int(line.split()[1], 16)
    return [name for name, bit in CAPABILITIES.items() if held & (1 << bit)]


def resolve(
    add: list[str], drop: list[str], privileged: bool = False, available: list[str] | None = None
) -> list[str]:
    """The capability list a container gets: Docker's defaults, plus ``--cap-add``, minus
    ``--cap-drop`` (``ALL`` allowed on either side; a drop of ALL then add re-grants).
    ``--privileged`` gets every capability in ``available`` (default: all known)."""
    if privileged:
        return sorted(available or CAPABILITIES, key=CAPABILITIES.__getitem__)
    added = [normalize(n) for n in add]
    dropped = [normalize(n) for n in drop]
    if "CAP_ALL" in added:  # everything but what is dropped
        caps = set(CAPABILITIES) - set(dropped)
    else:
        caps = (set() if "CAP_ALL" in dropped else set(DOCKER_DEFAULT)) - set(dropped)
        caps |= set(added)
    caps.discard("CAP_ALL")
    return sorted(caps, key=CAPABILITIES.__getitem__)


def mask(names: list[str]) -> int:
    """The 64-bit mask (bit N set for capability N) that capset(2) takes."""
    result = 0
    for name in names:
        result |= 1 << CAPABILITIES[name]
    return result
