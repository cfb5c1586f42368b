"""Pure parsers for the values given to minidock's CLI flags.

Each parser accepts what Docker accepts (the upstream function is named where one is
copied) and raises ``InvalidArgument`` with a one-line message that quotes the value.

Every ``minidock`` command imports this module, so it stays cheap to import: patterns
are kept as strings (``re`` compiles each on first use and caches it), and ``decimal``
and ``ipaddress`` are imported by the few parsers that need them.
"""

from __future__ import annotations

import os
import random
import re
import signal
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from types import ModuleType

from minidock import logfile
from minidock.errors import InvalidArgument

_NS = 1_000_000_000
_DECIMAL = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)"  # what Go accepts: 5, 5., .5, 5.5


def _invalid(text: str, flag: str, why: str) -> InvalidArgument:
    return InvalidArgument(f'invalid value "{text}" for {flag}: {why}')


def _parse_int(text: str, flag: str) -> int:
    """A base-10 integer with an optional sign, as Go's strconv.ParseInt reads it."""
    if re.fullmatch(r"[+-]?[0-9]+", text) is None:
        raise _invalid(text, flag, "expected an integer")
    return int(text)


# go-units RAMInBytes: sizeRegex, with binary multipliers; "i" and "b" are both optional.
_SIZE = r"(?i)([0-9]+(?:\.[0-9]+)?) ?([kmgtp])?i?b?"
_BINARY = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str, flag: str = "--memory") -> int:
    """Bytes from a size like ``64m``, ``1.5g``, ``512MiB`` or ``4096`` (k = 1024, m = 1024k...)."""
    from decimal import Decimal

    match = re.fullmatch(_SIZE, text)
    if match is None:
        raise _invalid(text, flag, "expected a size like 64m or 1g")
    number, unit = match.group(1), (match.group(2) or "").lower()
    return int(Decimal(number) * _BINARY[unit])


def parse_cpus(text: str) -> int:
    """``--cpus``: how many CPUs' worth of time the container may use, in nano-CPUs.

    ``0.5`` -> 500_000_000; the runtime makes it a CFS quota (``cgroups.limits.cpus_to_quota``).
    """
    from decimal import Decimal

    if re.fullmatch(_DECIMAL, text) is None:
        raise _invalid(text, "--cpus", "expected a number of CPUs like 0.5 or 2")
    nano = Decimal(text) * _NS
    if nano != nano.to_integral_value():
        raise _invalid(text, "--cpus", "value is too precise")
    # Docker's NumCPU is the affinity mask's size, not the machine's CPU count.
    available = len(os.sched_getaffinity(0))
    # moby verifyPlatformContainerResources; Docker lets the kernel reject values under
    # 0.01 (a quota below its 1 ms minimum), minidock enforces the range it prints.
    if not 10_000_000 <= nano <= available * _NS:
        raise _invalid(
            text,
            "--cpus",
            f"range of CPUs is from 0.01 to {available}.00, "
            f"as there are only {available} CPUs available",
        )
    return int(nano)


def parse_memory_swap(text: str, memory: int) -> int:
    """``--memory-swap``: the memory plus swap limit in bytes; -1 unlimited, 0 unset.

    Docker's default when it is unset is twice ``--memory``; equal to it means no swap.
    """
    if text == "-1":
        return -1
    swap = parse_size(text, "--memory-swap")
    if swap == 0:
        return 0
    if memory <= 0:
        raise _invalid(
            text,
            "--memory-swap",
            "you should always set the memory limit when using memoryswap limit, see usage",
        )
    if swap < memory:
        raise _invalid(
            text,
            "--memory-swap",
            "minimum memoryswap limit should be larger than memory limit, see usage",
        )
    return swap


def parse_pids_limit(text: str) -> int:
    """``--pids-limit``: the most tasks the container may have; 0 or less means -1, unlimited."""
    limit = _parse_int(text, "--pids-limit")
    return limit if limit > 0 else -1


def parse_health_retries(text: str) -> int:
    """``--health-retries``: how many failed checks in a row make a container unhealthy
    (0: Docker's default, 3)."""
    retries = _parse_int(text, "--health-retries")
    if retries < 0:
        raise _invalid(text, "--health-retries", "cannot be negative")
    return retries


def parse_cpu_shares(text: str) -> int:
    """``--cpu-shares``: relative CPU weight (1024 is the default share; 0 means unset).

    The runtime clamps it to the kernel's 2..262144.
    """
    shares = _parse_int(text, "--cpu-shares")
    if shares < 0:
        raise _invalid(text, "--cpu-shares", "must not be negative")
    return shares


def _env_entry(item: str, where: str) -> str | None:
    """``KEY=VAL`` as is; a bare ``KEY`` with the host's value, or None if the host has none."""
    key, has_value, _ = item.partition("=")
    if not key:
        raise InvalidArgument(f'invalid value "{item}" {where}: no variable name')
    if " " in key or "\t" in key:
        raise InvalidArgument(
            f'invalid value "{item}" {where}: variable "{key}" contains whitespace'
        )
    if has_value:
        return item
    value = os.environ.get(key)
    return None if value is None else f"{key}={value}"


def parse_env(items: list[str]) -> list[str]:
    """``-e KEY=VAL`` kept; ``-e KEY`` copies the host's value, and is dropped if it has none."""
    entries = (_env_entry(item, "for --env") for item in items)
    return [entry for entry in entries if entry is not None]


def parse_env_file(path: str) -> list[str]:
    """``--env-file``: ``KEY=VAL`` lines, taken literally (no quotes, no trimming of VAL).

    As in Docker's opts/envfile.go: blank lines and ``#`` comments are skipped, leading
    whitespace is dropped, a bare ``KEY`` takes the host's value (or is dropped).
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as e:
        raise InvalidArgument(f"open {path}: {(e.strerror or str(e)).lower()}") from None
    entries = []
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        try:
            line = raw.removesuffix(b"\r").decode().lstrip()
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"env file {path} contains invalid utf8 bytes at line {number}"
            ) from None
        if line and not line.startswith("#"):
            entry = _env_entry(line, f"in env file {path} line {number}")
            if entry is not None:
                entries.append(entry)
    return entries


@dataclass(frozen=True)
class VolumeSpec:
    """A bind mount: host ``source`` appears at ``destination`` in the container."""

    source: str
    destination: str
    read_only: bool


def _clean_path(path: str) -> str:
    """``path`` normalised, with POSIX's special leading ``//`` folded to ``/``."""
    return "/" + os.path.normpath(path).lstrip("/")


def parse_volume(text: str) -> VolumeSpec:
    """``-v HOST:CTR[:OPTIONS]``: bind-mount the absolute host path HOST at CTR.

    OPTIONS is a comma list of ``ro``/``rw`` (one at most) and SELinux ``z``/``Z``,
    which minidock accepts and ignores.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise _invalid(text, "--volume", "expected HOST:CONTAINER[:OPTIONS]")
    source, destination = parts[0], parts[1]
    if not source.startswith("/"):
        raise _invalid(
            text,
            "--volume",
            f'host path "{source}" must be absolute (named volumes are not supported yet)',
        )
    if not destination.startswith("/"):
        raise _invalid(text, "--volume", f'container path "{destination}" must be absolute')
    if _clean_path(destination) == "/":
        raise _invalid(text, "--volume", "the container path cannot be /")
    options = parts[2].split(",") if len(parts) == 3 else []
    unknown = [option for option in options if option not in ("ro", "rw", "z", "Z")]
    if unknown:
        raise _invalid(text, "--volume", f'unknown option "{unknown[0]}"')
    if options.count("ro") + options.count("rw") > 1:
        raise _invalid(text, "--volume", "give at most one of ro and rw")
    return VolumeSpec(_clean_path(source), _clean_path(destination), "ro" in options)


def parse_log_opts(items: list[str]) -> tuple[int, int]:
    """``--log-opt max-size=SIZE`` and ``max-file=N`` for the json-file log: (max_size, max_files).

    Docker reads max-size with SI units (10m = 10**7 bytes); minidock uses the same
    1024-based sizes as ``--memory``.
    """
    max_size, max_files = logfile.DEFAULT_MAX_SIZE, logfile.DEFAULT_MAX_FILES
    for item in items:
        key, has_value, value = item.partition("=")
        if not has_value:
            raise _invalid(item, "--log-opt", "expected KEY=VALUE")
        if key == "max-size":
            max_size = parse_size(value, "--log-opt max-size")
            if max_size <= 0:
                raise _invalid(value, "--log-opt max-size", "must be a positive size")
        elif key == "max-file":
            max_files = _parse_int(value, "--log-opt max-file")
            if max_files < 1:
                raise _invalid(value, "--log-opt max-file", "cannot be less than 1")
        else:
            raise _invalid(item, "--log-opt", f'unknown log opt "{key}" for json-file log driver')
    return max_size, max_files


def parse_signal(text: str) -> int:
    """A signal by name or number: ``KILL``, ``SIGKILL``, ``sigusr1``, ``9``, ``RTMIN+2``."""
    name = text.upper().removeprefix("SIG")
    lowest, number = 1, None
    if re.fullmatch(r"[0-9]+", text):
        number = int(text)
    elif match := re.fullmatch(r"RTMIN\+([0-9]+)|RTMAX-([0-9]+)", name):
        # moby's SignalMap: real-time signals counted up from RTMIN or down from RTMAX.
        up, down = match.groups()
        lowest = signal.SIGRTMIN
        number = signal.SIGRTMIN + int(up) if up is not None else signal.SIGRTMAX - int(down)
    elif (member := signal.Signals.__members__.get("SIG" + name)) is not None:
        number = member.value
    if number is None or not lowest <= number <= signal.SIGRTMAX:
        raise InvalidArgument(f"invalid signal: {text}")
    return number


# Go's time.ParseDuration units.
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ms": 1_000_000,
    "s": _NS,
    "m": 60 * _NS,
    "h": 3600 * _NS,
}
_DURATION = rf"[-+]?(?:{_DECIMAL}(?:ns|us|µs|μs|ms|s|m|h))+"
# The forms moby's timetypes.GetTimestamp accepts; without a zone, the local time zone.
_TIMESTAMP = (
    r"(?i)([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:T([0-9]{2})(?::([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?)?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?"
)
_UNIX = r"([0-9]+)(?:\.([0-9]{1,9}))?"


def _duration_ns(text: str) -> int:
    """A Go duration (``1h30m``, ``-1.5s``, ``250ms``) in nanoseconds, truncated like Go."""
    from decimal import Decimal

    total = sum(
        Decimal(number) * _DURATION_UNITS[unit]
        for number, unit in re.findall(r"([0-9.]+)(ns|us|µs|μs|ms|s|m|h)", text)
    )
    return int(-total if text.startswith("-") else total)


def parse_duration(text: str, flag: str) -> int:
    """A Go duration as Docker's duration flags take it (``--health-interval 1m30s``,
    ``500ms``, ``0``): nanoseconds. A sign is allowed, as Go allows it; whether a negative
    duration makes sense is for the caller to say."""
    if re.fullmatch(r"[-+]?0", text):
        return 0  # Go's special case: the only duration without a unit
    if not re.fullmatch(_DURATION, text):
        raise _invalid(text, flag, "expected a duration like 30s, 1m30s or 500ms")
    return _duration_ns(text)


def parse_duration_or_timestamp(text: str, now_ns: int, flag: str = "--since") -> int:
    """``logs --since/--until``: a point in time as nanoseconds since the epoch.

    A Go duration (``10m``, ``1h30m``) means that long before ``now_ns``; an RFC3339
    time or date (``2024-01-02T03:04:05.5+01:00``, ``2024-01-02``; local time if it
    has no zone); or Unix seconds (``1700000000``, ``1700000000.123456789``).
    """
    if re.fullmatch(_DURATION, text):
        return now_ns - _duration_ns(text)
    if match := re.fullmatch(_UNIX, text):
        seconds, fraction = match.groups()
        return int(seconds) * _NS + int((fraction or "").ljust(9, "0"))
    match = re.fullmatch(_TIMESTAMP, text)
    if match is None:
        raise _invalid(
            text, flag, "expected a duration like 10m, an RFC3339 timestamp or Unix seconds"
        )
    *fields, fraction, zone = match.groups()
    try:
        when = datetime(*(int(field or 0) for field in fields))
    except ValueError as e:
        raise _invalid(text, flag, str(e)) from None
    if zone is None:
        when = when.astimezone()  # a naive datetime is local time
    elif zone.upper() != "Z":
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise _invalid(text, flag, "time zone offset out of range")
        offset = timedelta(hours=hours, minutes=minutes) * (-1 if zone[0] == "-" else 1)
        when = when.replace(tzinfo=timezone(offset))
    else:
        when = when.replace(tzinfo=UTC)
    seconds = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1)
    return seconds * _NS + int((fraction or "").ljust(9, "0"))


# go-units ulimitNameMapping ("as" is left out there too).
# fmt: off
_ULIMITS = (
    "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
    "rss", "rtprio", "rttime", "sigpending", "stack",
)
# fmt: on


def parse_ulimit(text: str) -> tuple[str, int, int]:
    """``--ulimit NAME=SOFT[:HARD]`` as ``("RLIMIT_NAME", soft, hard)``; -1 means unlimited.

    HARD defaults to SOFT, and ``infinity`` is another spelling of -1 (go-units ParseUlimit).
    """
    name, has_limits, limits = text.partition("=")
    if not has_limits or name not in _ULIMITS:
        names = ", ".join(_ULIMITS)
        raise _invalid(text, "--ulimit", f"expected NAME=SOFT[:HARD] with NAME one of {names}")
    if re.fullmatch(r"(-1|[0-9]+|infinity)(:(-1|[0-9]+|infinity))?", limits) is None:
        raise _invalid(text, "--ulimit", "limits must be numbers, -1 or infinity, as SOFT[:HARD]")
    values = [-1 if value == "infinity" else int(value) for value in limits.split(":")]
    soft, hard = values[0], values[-1]
    if hard != -1 and (soft == -1 or soft > hard):
        raise _invalid(text, "--ulimit", "the soft limit must not be above the hard limit")
    return f"RLIMIT_{name.upper()}", soft, hard


def parse_user(text: str) -> tuple[str, str | None]:
    """``-u USER[:GROUP]``, each a name or a numeric ID, as ``(user, group or None)``."""
    user, has_group, group = text.partition(":")
    if not user or (has_group and not group) or ":" in group:
        raise _invalid(text, "--user", "expected USER[:GROUP]")
    return user, group if has_group else None


# A few of moby pkg/namesgenerator's words.
# fmt: off
_ADJECTIVES = (
    "admiring", "agitated", "amazing", "angry", "awesome", "blissful", "bold", "boring",
    "brave", "clever", "cool", "dazzling", "eager", "ecstatic", "elegant", "epic",
    "focused", "friendly", "gifted", "happy", "hopeful", "jolly", "keen", "loving",
    "modest", "nifty", "peaceful", "quirky", "serene", "vibrant", "wizardly", "zealous",
)
_SURNAMES = (
    "babbage", "bardeen", "curie", "darwin", "dijkstra", "einstein", "euler", "feynman",
    "franklin", "galileo", "goldberg", "hamilton", "hopper", "johnson", "kepler", "knuth",
    "lamarr", "lovelace", "mccarthy", "meitner", "newton", "noether", "pasteur", "ritchie",
    "shannon", "tesla", "thompson", "torvalds", "turing", "wozniak",
)
# fmt: on


def generate_name(rng: random.Random | ModuleType = random) -> str:
    """A random Docker-style container name, ``adjective_surname`` (``focused_hopper``)."""
    while True:
        name = f"{rng.choice(_ADJECTIVES)}_{rng.choice(_SURNAMES)}"
        if name != "boring_wozniak":  # moby: "Steve Wozniak is not boring"
            return name


@dataclass(frozen=True)
class PortSpec:
    """One ``-p``: publish ``container_port``/``proto`` on ``host_ip:host_port`` (0 = any)."""

    host_ip: str
    host_port: int
    container_port: int
    proto: str


def _port_number(text: str, value: str, allow_zero: bool) -> int:
    if not text.isdigit() or not (0 if allow_zero else 1) <= int(text) <= 65535:
        raise InvalidArgument(f'invalid value "{value}" for --publish: bad port "{text}"')
    return int(text)


def parse_publish(text: str) -> PortSpec:
    """``-p [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp]`` as Docker reads it:
    ``8080:80``, ``127.0.0.1:8080:80``, ``127.0.0.1::80`` and ``80`` (any free host port)."""
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise InvalidArgument(f'invalid value "{text}" for --publish: unknown protocol "{proto}"')
    parts = spec.rsplit(":", 2)
    host_ip, host_port = "0.0.0.0", "0"
    if len(parts) == 3:
        host_ip, host_port, container = parts[0] or "0.0.0.0", parts[1] or "0", parts[2]
    elif len(parts) == 2:
        host_port, container = parts
    else:
        container = parts[0]
    import ipaddress

    try:
        ipaddress.IPv4Address(host_ip)
    except ValueError:
        raise InvalidArgument(f'invalid value "{text}" for --publish: bad IP "{host_ip}"') from None
    return PortSpec(host_ip, _port_number(host_port, text, True),
                    _port_number(container, text, False), proto)  # fmt: skip
