"""Unit tests for minidock.parse: every parser's accepted forms and its rejections."""

from __future__ import annotations

import calendar
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from minidock import logfile
from minidock.errors import InvalidArgument
from minidock.parse import (
    VolumeSpec,
    generate_name,
    parse_cpu_shares,
    parse_cpus,
    parse_duration_or_timestamp,
    parse_env,
    parse_env_file,
    parse_log_opts,
    parse_memory_swap,
    parse_pids_limit,
    parse_signal,
    parse_size,
    parse_ulimit,
    parse_user,
    parse_volume,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
NS = 1_000_000_000


def rejects(func: Callable[..., object], *args: object, naming: str | None = None) -> str:
    """Assert ``func`` raises InvalidArgument, on one line, quoting ``naming``; return the text."""
    with pytest.raises(InvalidArgument) as info:
        func(*args)
    message = str(info.value)
    assert "\n" not in message
    if naming is not None:
        assert naming in message, message
    assert info.value.exit_code == 125
    return message


# --- sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        ("10b", 10),
        ("1k", KiB),
        ("1K", KiB),
        ("1kb", KiB),
        ("1KiB", KiB),
        ("1ki", KiB),
        ("64m", 64 * MiB),
        ("64M", 64 * MiB),
        ("64mb", 64 * MiB),
        ("64MiB", 64 * MiB),
        ("64 m", 64 * MiB),
        ("1g", GiB),
        ("1.5g", 3 * GiB // 2),
        ("0.5k", 512),
        ("2t", 2 << 40),
        ("1p", 1 << 50),
        ("1.5", 1),  # truncated like Go's int64(float)
        ("1ib", 1),  # go-units makes "i" and "b" optional even without a unit
    ],
)
def test_parse_size_accepts(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "abc", "-1", "-64m", "1x", "m", "1.2.3", "1e6", ".5m", "5.m", "64  m", " 64m", "64m ",
     "1mm", "1bb", "0x10", "١٢m"],
)  # fmt: skip
def test_parse_size_rejects(text: str) -> None:
    message = rejects(parse_size, text, naming=f'"{text}"')
    assert message == f'invalid value "{text}" for --memory: expected a size like 64m or 1g'


def test_parse_size_names_the_flag() -> None:
    rejects(parse_size, "lots", "--shm-size", naming='invalid value "lots" for --shm-size')


# --- CPUs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "nano"),
    [("0.5", 500_000_000), (".5", 500_000_000), ("1", NS), ("1.", NS), ("0.01", 10_000_000),
     ("0.123456789", 123_456_789), ("1.000000000", NS)],
)  # fmt: skip
def test_parse_cpus_accepts(text: str, nano: int) -> None:
    assert parse_cpus(text) == nano


def test_parse_cpus_accepts_every_available_cpu() -> None:
    available = len(os.sched_getaffinity(0))
    assert parse_cpus(str(available)) == available * NS


@pytest.mark.parametrize("text", ["", "abc", "-1", "1/2", "1e0", "0.5 ", "nan", "inf", "."])
def test_parse_cpus_rejects_junk(text: str) -> None:
    rejects(parse_cpus, text, naming=f'invalid value "{text}" for --cpus')


def test_parse_cpus_rejects_too_precise() -> None:
    rejects(parse_cpus, "0.0000000001", naming="too precise")


@pytest.mark.parametrize("text", ["0", "0.0", "0.001", "0.009999999"])
def test_parse_cpus_rejects_below_the_range(text: str) -> None:
    available = len(os.sched_getaffinity(0))
    message = rejects(parse_cpus, text, naming=f'"{text}"')
    assert message.endswith(
        f"range of CPUs is from 0.01 to {available}.00, "
        f"as there are only {available} CPUs available"
    )


def test_parse_cpus_rejects_more_than_available() -> None:
    available = len(os.sched_getaffinity(0))
    too_many = f"{available}.000000001"
    rejects(parse_cpus, too_many, naming=f"as there are only {available} CPUs available")
    rejects(parse_cpus, str(available + 1), naming=f'"{available + 1}"')


def test_parse_cpus_counts_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert parse_cpus("1") == NS
    rejects(parse_cpus, "1.5", naming="from 0.01 to 1.00, as there are only 1 CPUs available")


# --- memory-swap, pids, shares -------------------------------------------------------


def test_parse_memory_swap() -> None:
    assert parse_memory_swap("-1", 64 * MiB) == -1
    assert parse_memory_swap("128m", 64 * MiB) == 128 * MiB
    assert parse_memory_swap("64m", 64 * MiB) == 64 * MiB  # equal: no swap at all
    assert parse_memory_swap("0", 64 * MiB) == 0  # unset


def test_parse_memory_swap_rejects_less_than_memory() -> None:
    message = rejects(parse_memory_swap, "32m", 64 * MiB, naming='invalid value "32m"')
    assert "minimum memoryswap limit should be larger than memory limit, see usage" in message


def test_parse_memory_swap_needs_memory() -> None:
    rejects(parse_memory_swap, "1g", 0, naming="always set the memory limit")


@pytest.mark.parametrize("text", ["", "-2", "abc", "-1m"])
def test_parse_memory_swap_rejects_junk(text: str) -> None:
    rejects(parse_memory_swap, text, 64 * MiB, naming=f'invalid value "{text}" for --memory-swap')


@pytest.mark.parametrize(
    ("text", "expected"), [("100", 100), ("+5", 5), ("1", 1), ("0", -1), ("-1", -1), ("-7", -1)]
)
def test_parse_pids_limit(text: str, expected: int) -> None:
    assert parse_pids_limit(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.5", "10k", " 5", "1_000", "٥"])
def test_parse_pids_limit_rejects(text: str) -> None:
    rejects(parse_pids_limit, text, naming=f'invalid value "{text}" for --pids-limit')


@pytest.mark.parametrize(("text", "expected"), [("0", 0), ("2", 2), ("1024", 1024), ("512", 512)])
def test_parse_cpu_shares(text: str, expected: int) -> None:
    assert parse_cpu_shares(text) == expected


@pytest.mark.parametrize("text", ["-1", "", "abc", "1.5"])
def test_parse_cpu_shares_rejects(text: str) -> None:
    rejects(parse_cpu_shares, text, naming=f'invalid value "{text}" for --cpu-shares')


# --- environment ---------------------------------------------------------------------


def test_parse_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIDOCK_TEST_SET", "from host")
    monkeypatch.setenv("MINIDOCK_TEST_EMPTY", "")
    monkeypatch.delenv("MINIDOCK_TEST_UNSET", raising=False)
    items = [
        "A=1",
        "B=",
        "C=x=y",
        "D= spaced ",
        "MINIDOCK_TEST_SET",
        "MINIDOCK_TEST_EMPTY",
        "MINIDOCK_TEST_UNSET",
        "A=2",
    ]
    assert parse_env(items) == [
        "A=1",
        "B=",
        "C=x=y",
        "D= spaced ",
        "MINIDOCK_TEST_SET=from host",
        "MINIDOCK_TEST_EMPTY=",
        "A=2",
    ]
    assert parse_env([]) == []


@pytest.mark.parametrize("item", ["=value", "", "A B=1", "A\tB=1", " A=1", "A =1", "A B"])
def test_parse_env_rejects(item: str) -> None:
    rejects(parse_env, ["OK=1", item], naming=f'invalid value "{item}" for --env')


def test_parse_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIDOCK_TEST_SET", "from host")
    monkeypatch.delenv("MINIDOCK_TEST_UNSET", raising=False)
    path = tmp_path / "env"
    path.write_bytes(
        b"\xef\xbb\xbfFIRST=1\n"
        b"# a comment\n"
        b"\n"
        b"   \n"
        b"   # an indented comment\n"
        b"  INDENTED=yes\n"
        b'QUOTED="not unquoted"\n'
        b"SPACES=  kept as is  \n"
        b"HASH=a # not a comment\n"
        b"EMPTY=\n"
        b"CRLF=windows\r\n"
        b"MINIDOCK_TEST_SET\n"
        b"MINIDOCK_TEST_UNSET\n"
        b"UNICODE=h\xc3\xa9\n"
        b"LAST=no newline"
    )
    assert parse_env_file(str(path)) == [
        "FIRST=1",
        "INDENTED=yes",
        'QUOTED="not unquoted"',
        "SPACES=  kept as is  ",
        "HASH=a # not a comment",
        "EMPTY=",
        "CRLF=windows",
        "MINIDOCK_TEST_SET=from host",
        "UNICODE=hé",
        "LAST=no newline",
    ]


def test_parse_env_file_empty(tmp_path: Path) -> None:
    path = tmp_path / "env"
    path.write_text("")
    assert parse_env_file(str(path)) == []


def test_parse_env_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    message = rejects(parse_env_file, str(path))
    assert message == f"open {path}: no such file or directory"


def test_parse_env_file_is_a_directory(tmp_path: Path) -> None:
    rejects(parse_env_file, str(tmp_path), naming=f"open {tmp_path}: ")


@pytest.mark.parametrize(
    ("content", "naming"),
    [
        (b"OK=1\nBAD KEY=1\n", 'invalid value "BAD KEY=1" in env file'),
        (b"OK=1\n=novar\n", "line 2"),
        (b"OK=1\nKEY =1\n", "contains whitespace"),
        (b"OK=1\nBAD=\xff\n", "invalid utf8 bytes at line 2"),
    ],
)
def test_parse_env_file_rejects(tmp_path: Path, content: bytes, naming: str) -> None:
    path = tmp_path / "env"
    path.write_bytes(content)
    message = rejects(parse_env_file, str(path), naming=naming)
    assert str(path) in message


# --- volumes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/host:/ctr", VolumeSpec("/host", "/ctr", False)),
        ("/host:/ctr:ro", VolumeSpec("/host", "/ctr", True)),
        ("/host:/ctr:rw", VolumeSpec("/host", "/ctr", False)),
        ("/host:/ctr:z", VolumeSpec("/host", "/ctr", False)),
        ("/host:/ctr:ro,Z", VolumeSpec("/host", "/ctr", True)),
        ("/host:/ctr:Z,ro", VolumeSpec("/host", "/ctr", True)),
        ("/host/./a/../b/:/ctr//data/", VolumeSpec("/host/b", "/ctr/data", False)),
        ("//host:///ctr", VolumeSpec("/host", "/ctr", False)),
        ("/:/hostroot:ro", VolumeSpec("/", "/hostroot", True)),
    ],
)
def test_parse_volume(text: str, expected: VolumeSpec) -> None:
    assert parse_volume(text) == expected


def test_volume_spec_is_frozen() -> None:
    spec = parse_volume("/a:/b")
    with pytest.raises(AttributeError):
        spec.read_only = True  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "naming"),
    [
        ("/data", "expected HOST:CONTAINER"),
        ("", "expected HOST:CONTAINER"),
        ("/a:/b:ro:extra", "expected HOST:CONTAINER"),
        ("data:/ctr", 'host path "data" must be absolute (named volumes'),
        ("./data:/ctr", "must be absolute"),
        (":/ctr", 'host path ""'),
        ("/host:ctr", 'container path "ctr" must be absolute'),
        ("/host:", 'container path ""'),
        ("/host:/", "cannot be /"),
        ("/host:/a/..", "cannot be /"),
        ("/host://", "cannot be /"),
        ("/host:/ctr:rx", 'unknown option "rx"'),
        ("/host:/ctr:", 'unknown option ""'),
        ("/host:/ctr:ro,shared", 'unknown option "shared"'),
        ("/host:/ctr:ro,rw", "at most one of ro and rw"),
        ("/host:/ctr:ro,ro", "at most one of ro and rw"),
    ],
)
def test_parse_volume_rejects(text: str, naming: str) -> None:
    message = rejects(parse_volume, text, naming=naming)
    assert f'invalid value "{text}" for --volume' in message


# --- log options ---------------------------------------------------------------------


def test_parse_log_opts() -> None:
    assert parse_log_opts([]) == (logfile.DEFAULT_MAX_SIZE, logfile.DEFAULT_MAX_FILES)
    assert parse_log_opts(["max-size=1m"]) == (MiB, logfile.DEFAULT_MAX_FILES)
    assert parse_log_opts(["max-file=5"]) == (logfile.DEFAULT_MAX_SIZE, 5)
    assert parse_log_opts(["max-size=512k", "max-file=1"]) == (512 * KiB, 1)
    assert parse_log_opts(["max-size=1m", "max-size=2m"]) == (2 * MiB, logfile.DEFAULT_MAX_FILES)


@pytest.mark.parametrize(
    ("items", "naming"),
    [
        (["max-size=abc"], 'invalid value "abc" for --log-opt max-size'),
        (["max-size=0"], 'invalid value "0" for --log-opt max-size: must be a positive size'),
        (["max-size="], 'invalid value "" for --log-opt max-size'),
        (["max-file=0"], 'invalid value "0" for --log-opt max-file: cannot be less than 1'),
        (["max-file=-1"], 'invalid value "-1" for --log-opt max-file'),
        (["max-file=two"], 'invalid value "two" for --log-opt max-file'),
        (["compress=true"], 'invalid value "compress=true" for --log-opt: unknown log opt'),
        (["max-size"], 'invalid value "max-size" for --log-opt: expected KEY=VALUE'),
        (["Max-Size=1m"], "unknown log opt"),
    ],
)
def test_parse_log_opts_rejects(items: list[str], naming: str) -> None:
    rejects(parse_log_opts, items, naming=naming)


# --- signals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("KILL", signal.SIGKILL),
        ("SIGKILL", signal.SIGKILL),
        ("kill", signal.SIGKILL),
        ("sigkill", signal.SIGKILL),
        ("SigTerm", signal.SIGTERM),
        ("9", 9),
        ("15", 15),
        ("sigusr1", signal.SIGUSR1),
        ("HUP", signal.SIGHUP),
        ("WINCH", signal.SIGWINCH),
        ("IOT", signal.SIGABRT),  # an alias
        ("RTMIN", signal.SIGRTMIN),
        ("RTMIN+3", signal.SIGRTMIN + 3),
        ("SIGRTMAX-2", signal.SIGRTMAX - 2),
        ("rtmax", signal.SIGRTMAX),
        ("64", 64),
    ],
)
def test_parse_signal(text: str, expected: int) -> None:
    assert parse_signal(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "0", "65", "-9", "+9", " 9", "FOO", "SIG", "SIGSIGKILL", "KILL ", "SIG_DFL", "DFL",
     "RTMIN-1", "RTMAX+1", "RTMIN+31", "RTMAX-31", "RTMIN+", "1.0"],
)  # fmt: skip
def test_parse_signal_rejects(text: str) -> None:
    assert rejects(parse_signal, text) == f"invalid signal: {text}"


# --- logs --since / --until ----------------------------------------------------------

NOW = 1_700_000_000 * NS + 123_456_789


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("10m", 600 * NS),
        ("1h30m", 5400 * NS),
        ("5s", 5 * NS),
        ("250ms", 250_000_000),
        ("1.5h", 5400 * NS),
        (".5s", NS // 2),
        ("5.s", 5 * NS),
        ("1h2m3s4ms5us6ns", 3723 * NS + 4_005_006),
        ("3µs", 3000),
        ("3μs", 3000),
        ("0s", 0),
        ("+1s", NS),
        ("-1m", -60 * NS),  # a negative duration is in the future
    ],
)
def test_durations_are_before_now(text: str, ago: int) -> None:
    assert parse_duration_or_timestamp(text, NOW) == NOW - ago


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1700000000", 1_700_000_000 * NS),
        ("1700000000.5", 1_700_000_000 * NS + 500_000_000),
        ("1700000000.123456789", 1_700_000_000 * NS + 123_456_789),
        ("2024", 2024 * NS),  # Docker reads a bare number as Unix seconds too
    ],
)
def test_unix_timestamps(text: str, expected: int) -> None:
    assert parse_duration_or_timestamp(text, NOW) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05Z", 1704164645 * NS),
        ("2024-01-02T03:04:05z", 1704164645 * NS),
        ("2024-01-02T03:04:05.5Z", 1704164645 * NS + 500_000_000),
        ("2024-01-02T03:04:05.000000001Z", 1704164645 * NS + 1),
        ("2024-01-02T04:04:05+01:00", 1704164645 * NS),
        ("2024-01-01T23:34:05-03:30", 1704164645 * NS),
        ("2024-01-02T04:04:05.25+01:00", 1704164645 * NS + 250_000_000),
        ("2024-01-02T03:04Z", 1704164640 * NS),
        ("2024-01-02T03Z", 1704164400 * NS),
        ("2024-01-02Z", 1704153600 * NS),
        ("2024-01-02+02:00", 1704146400 * NS),
        ("2024-02-29T00:00:00Z", 1709164800 * NS),
    ],
)
def test_rfc3339_timestamps(text: str, expected: int) -> None:
    assert parse_duration_or_timestamp(text, NOW) == expected


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is US Eastern (a POSIX TZ rule, so no tzdata is needed)."""
    monkeypatch.setenv("TZ", "EST5EDT,M3.2.0,M11.1.0")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york")
@pytest.mark.parametrize(
    ("text", "utc", "fraction"),
    [
        ("2024-01-02", (2024, 1, 2, 5, 0, 0), 0),  # EST, UTC-5
        ("2024-01-02T03", (2024, 1, 2, 8, 0, 0), 0),
        ("2024-07-02T03:04", (2024, 7, 2, 7, 4, 0), 0),  # EDT, UTC-4
        ("2024-07-02T03:04:05", (2024, 7, 2, 7, 4, 5), 0),
        ("2024-07-02T03:04:05.25", (2024, 7, 2, 7, 4, 5), NS // 4),
    ],
)
def test_timestamps_without_zone_are_local_time(
    text: str, utc: tuple[int, ...], fraction: int
) -> None:
    assert parse_duration_or_timestamp(text, NOW) == calendar.timegm(utc) * NS + fraction


@pytest.mark.parametrize(
    "text",
    ["", "abc", "10x", "1h30", "h", ".s", "-", "2024-13-01", "2024-02-30", "2024-1-2",
     "2024-01-02T", "2024-01-02T25:00Z", "2024-01-02T03:04:05+24:00", "2024-01-02T03:04:05+01",
     "2024-01-02 03:04:05Z", "2024-01-02T03:04:05.Z", "2024-01-02T03:04:05.1234567890Z",
     "1700000000.1234567890", "1700000000.", "-1700000000", "yesterday"],
)  # fmt: skip
def test_parse_duration_or_timestamp_rejects(text: str) -> None:
    rejects(parse_duration_or_timestamp, text, NOW, naming=f'invalid value "{text}" for --since')


def test_parse_duration_or_timestamp_names_the_flag() -> None:
    rejects(parse_duration_or_timestamp, "x", NOW, "--until", naming='"x" for --until')


# --- ulimits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nofile=1024:2048", ("RLIMIT_NOFILE", 1024, 2048)),
        ("nofile=1024", ("RLIMIT_NOFILE", 1024, 1024)),
        ("nproc=0:0", ("RLIMIT_NPROC", 0, 0)),
        ("core=-1", ("RLIMIT_CORE", -1, -1)),
        ("core=0:-1", ("RLIMIT_CORE", 0, -1)),
        ("core=-1:-1", ("RLIMIT_CORE", -1, -1)),
        ("stack=infinity", ("RLIMIT_STACK", -1, -1)),
        ("memlock=64:infinity", ("RLIMIT_MEMLOCK", 64, -1)),
        ("rttime=5:5", ("RLIMIT_RTTIME", 5, 5)),
    ],
)
def test_parse_ulimit(text: str, expected: tuple[str, int, int]) -> None:
    assert parse_ulimit(text) == expected


@pytest.mark.parametrize(
    "name",
    ["core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
     "rss", "rtprio", "rttime", "sigpending", "stack"],
)  # fmt: skip
def test_parse_ulimit_knows_dockers_names(name: str) -> None:
    assert parse_ulimit(f"{name}=1:2") == (f"RLIMIT_{name.upper()}", 1, 2)


@pytest.mark.parametrize(
    ("text", "naming"),
    [
        ("nofile", "expected NAME=SOFT[:HARD]"),
        ("", "expected NAME=SOFT[:HARD]"),
        ("as=1", "NAME one of"),
        ("NOFILE=1", "NAME one of"),
        ("bogus=1:2", "NAME one of"),
        ("nofile=", "limits must be"),
        ("nofile=abc", "limits must be"),
        ("nofile=1:2:3", "limits must be"),
        ("nofile=1:", "limits must be"),
        ("nofile=-2", "limits must be"),
        ("nofile=1.5", "limits must be"),
        ("nofile=2048:1024", "soft limit must not be above the hard limit"),
        ("nofile=-1:1024", "soft limit must not be above the hard limit"),
        ("nofile=infinity:5", "soft limit must not be above the hard limit"),
    ],
)
def test_parse_ulimit_rejects(text: str, naming: str) -> None:
    message = rejects(parse_ulimit, text, naming=naming)
    assert f'invalid value "{text}" for --ulimit' in message


# --- users ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("root", ("root", None)),
        ("1000", ("1000", None)),
        ("1000:1000", ("1000", "1000")),
        ("nobody:nogroup", ("nobody", "nogroup")),
        ("www-data:0", ("www-data", "0")),
    ],
)
def test_parse_user(text: str, expected: tuple[str, str | None]) -> None:
    assert parse_user(text) == expected


@pytest.mark.parametrize("text", ["", ":", ":group", "user:", "a:b:c"])
def test_parse_user_rejects(text: str) -> None:
    rejects(parse_user, text, naming=f'invalid value "{text}" for --user')


# --- names ---------------------------------------------------------------------------


def test_generate_name_shape() -> None:
    for _ in range(200):
        name = generate_name()
        adjective, _, surname = name.partition("_")
        assert adjective.isalpha() and adjective.islower()
        assert surname.isalpha() and surname.islower()


def test_generate_name_is_reproducible_with_a_seeded_rng() -> None:
    first = [generate_name(random.Random(7)) for _ in range(3)]
    assert first == [generate_name(random.Random(7)) for _ in range(3)]
    assert len({generate_name(random.Random(seed)) for seed in range(100)}) > 50


def test_generate_name_never_says_wozniak_is_boring() -> None:
    class Rigged:
        """Picks "boring" and "wozniak" first, then the first entries."""

        def __init__(self) -> None:
            self.calls = 0

        def choice(self, seq: Sequence[str]) -> str:
            self.calls += 1
            if self.calls <= 2:
                return "boring" if "boring" in seq else "wozniak"
            return seq[0]

    rng = Rigged()
    name = generate_name(rng)  # type: ignore[arg-type]
    assert name != "boring_wozniak"
    assert rng.calls == 4
