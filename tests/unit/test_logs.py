"""Unit tests for minidock.logs: the json-file writer, its rotation, and the reader."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from minidock import logfile, logs
from minidock.logfile import MAX_LINE, JsonFileWriter, format_timestamp, json_string
from minidock.logs import LogRecord, parse_timestamp, read_logs, render

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
# /work/shared/reference.md: {"log":"hello\n","stream":"stdout","time":"2019-...Z"}
RECORD_LINE = re.compile(r'^\{"log":".*","stream":"(stdout|stderr)","time":"[^"]+"\}$')


def lines_of(path: Path) -> list[dict]:
    """The JSON objects of one log file, checking each is exactly one line."""
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def logs_of(path: Path) -> list[str]:
    return [obj["log"] for obj in lines_of(path)]


def write_raw(path: Path, times: list[int], stream: str = "stdout") -> None:
    """Append records whose "log" is the index and "time" is given, bypassing the writer."""
    with path.open("a") as file:
        for t in times:
            record = {"log": f"{t}\n", "stream": stream, "time": format_timestamp(t)}
            file.write(json.dumps(record) + "\n")


def texts(records: list[LogRecord]) -> list[str]:
    return [record.log for record in records]


# --- timestamps ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01T00:00:00.000000000Z"),
        (1546341071111111111, "2019-01-01T11:11:11.111111111Z"),
        (1709164800000000001, "2024-02-29T00:00:00.000000001Z"),
        (-1, "1969-12-31T23:59:59.999999999Z"),
        (253402300799999999999, "9999-12-31T23:59:59.999999999Z"),
    ],
)
def test_format_timestamp_known_values(ns: int, text: str) -> None:
    assert format_timestamp(ns) == text
    assert TIMESTAMP.match(text)
    assert parse_timestamp(text) == ns


def test_format_parse_round_trip() -> None:
    now = time.time_ns()
    for ns in (now, now - 1, now + 123_456_789, 951782400 * 10**9, 4102444800 * 10**9 - 7):
        assert TIMESTAMP.match(format_timestamp(ns))
        assert parse_timestamp(format_timestamp(ns)) == ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2019-01-01T11:11:11Z", 1546341071 * 10**9),
        ("2019-01-01T11:11:11.5Z", 1546341071 * 10**9 + 500_000_000),
        ("2019-01-01T12:11:11.000000001+01:00", 1546341071 * 10**9 + 1),
        ("2019-01-01T06:41:11-04:30", 1546341071 * 10**9),
    ],
)
def test_parse_timestamp_other_rfc3339_forms(text: str, ns: int) -> None:
    assert parse_timestamp(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2019-01-01",
        "2019-01-01T11:11:11",  # no zone
        "2019-01-01 11:11:11Z",
        "2019-01-01T11:11:11.Z",
        "2019-01-01T11:11:11.1234567890Z",  # 10 fraction digits
        "2019-02-30T00:00:00Z",
        "2019-13-01T00:00:00Z",
        "2019-00-01T00:00:00Z",
        "2019-01-01T24:00:00Z",
        "2019-01-01T00:60:00Z",
        "2019-01-01T00:00:00+24:00",
        "2019-01-01T00:00:00+01",
        "2019-01-01T00:00:00Zjunk",
        "٢٠١٩-01-01T00:00:00Z",  # non-ASCII digits
    ],
)
def test_parse_timestamp_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(text)


# --- writer: record format ----------------------------------------------------------


def test_record_format_matches_docker(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    before = time.time_ns()
    with JsonFileWriter(str(path)) as writer:
        writer.write("stdout", b"hello\n")
        writer.write("stderr", b'oops "quoted" \\ \t\x01\n')
    after = time.time_ns()
    raw = path.read_text().splitlines()
    assert len(raw) == 2
    for line in raw:
        assert RECORD_LINE.match(line), line
    first, second = (json.loads(line) for line in raw)
    assert list(first) == ["log", "stream", "time"]
    assert first["log"] == "hello\n"
    assert first["stream"] == "stdout"
    assert TIMESTAMP.match(first["time"])
    assert before <= parse_timestamp(first["time"]) <= parse_timestamp(second["time"]) <= after
    assert second == {
        "log": 'oops "quoted" \\ \t\x01\n',
        "stream": "stderr",
        "time": second["time"],
    }


def test_non_ascii_is_written_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path)) as writer:
        writer.write("stdout", "héllo ☃\n".encode())
    assert "héllo ☃" in path.read_text(encoding="utf-8")
    assert logs_of(path) == ["héllo ☃\n"]


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path)) as writer:
        writer.write("stdout", b"bad \xff\xfe bytes\n")
    assert logs_of(path) == ["bad \ufffd\ufffd bytes\n"]


def test_file_mode_is_0640_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    old = os.umask(0o077)
    try:
        JsonFileWriter(str(path)).close()
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def test_writer_rejects_bad_limits(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        JsonFileWriter(str(tmp_path / "a.log"), max_size=0)
    with pytest.raises(ValueError):
        JsonFileWriter(str(tmp_path / "b.log"), max_files=0)


def test_defaults() -> None:
    assert logfile.DEFAULT_MAX_SIZE == 10 * 1024 * 1024
    assert logfile.DEFAULT_MAX_FILES == 3


# --- writer: line splitting ---------------------------------------------------------


def test_each_complete_line_is_one_record(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path)) as writer:
        writer.write("stdout", b"one\ntwo\n\nthree\n")
    assert logs_of(path) == ["one\n", "two\n", "\n", "three\n"]


def test_partial_line_waits_for_its_end(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path))
    writer.write("stdout", b"hel")
    writer.write("stdout", b"lo")
    assert path.read_text() == ""
    writer.write("stdout", b" world\nnext")
    assert logs_of(path) == ["hello world\n"]
    writer.close()
    assert logs_of(path) == ["hello world\n", "next"]


def test_partial_lines_are_buffered_per_stream(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path)) as writer:
        writer.write("stdout", b"out-")
        writer.write("stderr", b"err-")
        writer.write("stderr", b"line\n")
        writer.write("stdout", b"line\n")
    assert [(o["stream"], o["log"]) for o in lines_of(path)] == [
        ("stderr", "err-line\n"),
        ("stdout", "out-line\n"),
    ]


def test_flush_emits_partial_lines_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path))
    writer.write("stdout", b"no newline")
    writer.write("stderr", b"$ ")
    writer.flush()
    assert [(o["stream"], o["log"]) for o in lines_of(path)] == [
        ("stdout", "no newline"),
        ("stderr", "$ "),
    ]
    writer.flush()  # nothing left to emit
    writer.write("stdout", b"later\n")
    writer.close()
    assert logs_of(path) == ["no newline", "$ ", "later\n"]


def test_empty_write_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path)) as writer:
        writer.write("stdout", b"")
    assert path.read_text() == ""


def test_multibyte_character_split_across_writes(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    data = "snow ☃\n".encode()
    with JsonFileWriter(str(path)) as writer:
        for i in range(len(data)):
            writer.write("stdout", data[i : i + 1])
    assert logs_of(path) == ["snow ☃\n"]


def test_line_of_exactly_16k_is_one_record(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path)) as writer:
        writer.write("stdout", b"x" * MAX_LINE + b"\n")
    assert logs_of(path) == ["x" * MAX_LINE + "\n"]


def test_long_line_is_cut_into_16k_pieces(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path)) as writer:
        writer.write("stdout", b"y" * (2 * MAX_LINE + 5) + b"\nshort\n")
    assert logs_of(path) == ["y" * MAX_LINE, "y" * MAX_LINE, "y" * 5 + "\n", "short\n"]


def test_long_partial_line_is_written_before_its_end(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path))
    for _ in range(MAX_LINE // 1024):
        writer.write("stdout", b"z" * 1024)
    assert path.read_text() == ""  # exactly 16 KiB: could still be a complete line
    writer.write("stdout", b"z")
    assert logs_of(path) == ["z" * MAX_LINE]
    writer.write("stdout", b"\n")
    writer.close()
    assert logs_of(path) == ["z" * MAX_LINE, "z\n"]


def test_long_line_is_not_cut_inside_a_character(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    text = "a" + "é" * MAX_LINE + "\n"  # byte 16384 is the second byte of an é
    with JsonFileWriter(str(path)) as writer:
        writer.write("stdout", text.encode())
    pieces = logs_of(path)
    assert len(pieces) == 3
    assert all(len(piece.encode()) <= MAX_LINE + 1 for piece in pieces)
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == text


# --- writer: rotation ---------------------------------------------------------------


def test_rotation_bounds_file_count_and_size(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path), max_size=1000, max_files=3) as writer:
        for i in range(200):
            writer.write("stdout", f"record {i:04d}\n".encode())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.log", "c.log.1", "c.log.2"]
    for name in ("c.log", "c.log.1", "c.log.2"):
        assert 0 < (tmp_path / name).stat().st_size <= 1000
    # Newest content in path, older in .1 then .2, and continuous across files.
    assert logs_of(path)[-1] == "record 0199\n"
    combined = logs_of(tmp_path / "c.log.2") + logs_of(tmp_path / "c.log.1") + logs_of(path)
    first = int(combined[0].split()[1])
    assert first > 0  # the oldest records were dropped
    assert combined == [f"record {i:04d}\n" for i in range(first, 200)]


def test_rotation_fills_files_up_to_max_size(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path), max_size=1000, max_files=3) as writer:
        for i in range(100):
            writer.write("stdout", f"record {i:04d}\n".encode())
    record_size = len((tmp_path / "c.log.1").read_text().splitlines()[0]) + 1
    assert (tmp_path / "c.log.1").stat().st_size > 1000 - record_size


def test_rotation_with_one_file_truncates_in_place(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path), max_size=500, max_files=1) as writer:
        for i in range(100):
            writer.write("stdout", f"r{i}\n".encode())
    assert [p.name for p in tmp_path.iterdir()] == ["c.log"]
    assert path.stat().st_size <= 500
    assert logs_of(path)[-1] == "r99\n"
    assert "r0\n" not in logs_of(path)


def test_record_bigger_than_max_size_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path), max_size=100, max_files=2) as writer:
        writer.write("stdout", b"small\n")
        writer.write("stdout", b"B" * 300 + b"\n")
        writer.write("stdout", b"after\n")
    assert logs_of(tmp_path / "c.log.1") == ["B" * 300 + "\n"]
    assert logs_of(path) == ["after\n"]


def test_reopened_writer_appends_and_counts_existing_size(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path), max_size=400, max_files=2) as writer:
        writer.write("stdout", b"first\n")
    size = path.stat().st_size
    with JsonFileWriter(str(path), max_size=400, max_files=2) as writer:
        writer.write("stdout", b"second\n")
        assert logs_of(path) == ["first\n", "second\n"]
        for _ in range((400 - 2 * size) // size + 1):
            writer.write("stdout", b"filler\n")
    assert (tmp_path / "c.log.1").exists()
    assert path.stat().st_size <= 400


# --- reader -------------------------------------------------------------------------


def test_read_logs_across_rotated_files_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path), max_size=600, max_files=5) as writer:
        for i in range(30):
            writer.write("stdout" if i % 2 else "stderr", f"{i}\n".encode())
    assert (tmp_path / "c.log.3").exists()
    records = list(read_logs(str(path)))
    assert texts(records) == [f"{i}\n" for i in range(30)]
    assert [r.stream for r in records[:2]] == ["stderr", "stdout"]
    assert all(a.time_ns <= b.time_ns for a, b in zip(records, records[1:], strict=False))


def test_read_logs_of_missing_file_is_empty(tmp_path: Path) -> None:
    assert list(read_logs(str(tmp_path / "nothing.log"))) == []
    assert list(read_logs(str(tmp_path / "nothing.log"), tail=3)) == []


def test_torn_and_garbage_lines_are_not_yielded(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_raw(path, [1, 2])
    with path.open("a") as file:
        file.write("not json\n")
        file.write('{"log":"no time"}\n')
        file.write('["a list"]\n')
        file.write('{"log":"x\\n","stream":"stdout","time":"yesterday"}\n')
    write_raw(path, [3])
    with path.open("a") as file:
        file.write('{"log":"torn\\n","stream":"stdout","ti')
    assert texts(read_logs(str(path))) == ["1\n", "2\n", "3\n"]
    assert texts(read_logs(str(path), tail=1)) == ["3\n"]
    assert texts(read_logs(str(path), tail=10)) == ["1\n", "2\n", "3\n"]


@pytest.fixture
def three_files(tmp_path: Path) -> Path:
    """c.log.2 has times 1-10, c.log.1 11-20, c.log 21-30 (the "log" is the time)."""
    path = tmp_path / "c.log"
    write_raw(tmp_path / "c.log.2", list(range(1, 11)))
    write_raw(tmp_path / "c.log.1", list(range(11, 21)))
    write_raw(path, list(range(21, 31)))
    return path


def numbers(records: object) -> list[int]:
    return [int(record.log) for record in records]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (None, list(range(1, 31))),
        (0, []),
        (1, [30]),
        (10, list(range(21, 31))),
        (15, list(range(16, 31))),
        (30, list(range(1, 31))),
        (100, list(range(1, 31))),
        (-1, list(range(1, 31))),
    ],
)
def test_tail_across_files(three_files: Path, tail: int | None, expected: list[int]) -> None:
    assert numbers(read_logs(str(three_files), tail=tail)) == expected


def test_since_and_until_are_inclusive(three_files: Path) -> None:
    path = str(three_files)
    assert numbers(read_logs(path, since_ns=18)) == list(range(18, 31))
    assert numbers(read_logs(path, until_ns=12)) == list(range(1, 13))
    assert numbers(read_logs(path, since_ns=9, until_ns=22)) == list(range(9, 23))
    assert numbers(read_logs(path, since_ns=31)) == []
    assert numbers(read_logs(path, until_ns=0)) == []


def test_tail_counts_records_inside_the_window(three_files: Path) -> None:
    path = str(three_files)
    assert numbers(read_logs(path, tail=3, until_ns=15)) == [13, 14, 15]
    assert numbers(read_logs(path, tail=5, since_ns=28)) == [28, 29, 30]
    assert numbers(read_logs(path, tail=4, since_ns=5, until_ns=25)) == [22, 23, 24, 25]


def test_rotated_files_are_read_until_the_first_gap(three_files: Path) -> None:
    write_raw(three_files.parent / "c.log.4", [0])  # .3 is missing: not part of the set
    assert numbers(read_logs(str(three_files)))[0] == 1


def test_tail_reads_big_files_backwards_correctly(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with JsonFileWriter(str(path), max_size=300_000, max_files=3) as writer:
        for i in range(6000):
            # Varying lengths, some records far longer than the reader's 64 KiB block.
            body = "x" * (i % 97) if i % 1000 else "L" * 70_000
            writer.write("stdout", f"{i} {body}\n".encode())
    everything = texts(read_logs(str(path)))
    assert (tmp_path / "c.log.2").exists()
    for n in (1, 2, 999, 1000, 1001, 2500, len(everything), len(everything) + 5):
        assert texts(read_logs(str(path), tail=n)) == everything[-n:]


def test_render() -> None:
    record = LogRecord(time_ns=1546341071111111111, stream="stdout", log="hello\n")
    assert render(record, timestamps=False) == "hello\n"
    assert render(record, timestamps=True) == "2019-01-01T11:11:11.111111111Z hello\n"


def test_stopping_early_closes_files(three_files: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    records = read_logs(str(three_files))
    next(records)
    assert len(os.listdir("/proc/self/fd")) > before
    records.close()
    assert len(os.listdir("/proc/self/fd")) == before


# --- reader: follow -----------------------------------------------------------------


class Collector:
    """Runs read_logs(follow=True) in a thread until ``join`` (or the test's end) stops it."""

    def __init__(self, path: Path, **options: object) -> None:
        self.records: list[LogRecord] = []
        self.stopped = threading.Event()
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(str(path), options), daemon=True)
        self.thread.start()

    def _run(self, path: str, options: dict) -> None:
        try:
            for record in read_logs(
                path, follow=True, stop_following=self.stopped.is_set, **options
            ):
                with self.cond:
                    self.records.append(record)
                    self.cond.notify_all()
        except BaseException as e:  # reported by join()
            self.error = e

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.records) >= count, timeout), (
                f"got {len(self.records)} of {count}: {texts(self.records)[-3:]}"
            )

    def join(self) -> list[str]:
        self.stopped.set()
        self.thread.join(5)
        assert not self.thread.is_alive()
        assert self.error is None
        return texts(self.records)


@pytest.fixture
def follow() -> Iterator[Callable[..., Collector]]:
    """Start Collectors; whatever happens in the test, they are stopped at its end."""
    started: list[Collector] = []

    def start(path: Path, **options: object) -> Collector:
        started.append(Collector(path, **options))
        return started[-1]

    yield start
    for collector in started:
        collector.stopped.set()
        collector.thread.join(5)


def test_follow_yields_appended_lines(tmp_path: Path, follow: Callable[..., Collector]) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path))
    writer.write("stdout", b"old\n")
    collector = follow(path, poll_interval=0.01)
    collector.wait_for(1)
    for i in range(5):
        writer.write("stdout", f"new {i}\n".encode())
        collector.wait_for(2 + i)
    writer.close()
    assert collector.join() == ["old\n"] + [f"new {i}\n" for i in range(5)]


def test_follow_drains_what_was_written_before_stopping(
    tmp_path: Path, follow: Callable[..., Collector]
) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path), max_size=2000, max_files=3)
    collector = follow(path, poll_interval=0.5)
    for i in range(30):  # rotates while the follower sleeps
        writer.write("stdout", f"{i}\n".encode())
    writer.close()
    assert collector.join() == [f"{i}\n" for i in range(30)]


def test_follow_with_tail_starts_at_the_end(
    tmp_path: Path, follow: Callable[..., Collector]
) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path))
    for i in range(10):
        writer.write("stdout", f"{i}\n".encode())
    collector = follow(path, tail=2, poll_interval=0.01)
    collector.wait_for(2)
    writer.write("stdout", b"10\n")
    collector.wait_for(3)
    writer.close()
    assert collector.join() == ["8\n", "9\n", "10\n"]


def test_follow_with_tail_zero_shows_only_new_lines(
    tmp_path: Path, follow: Callable[..., Collector]
) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path))
    writer.write("stdout", b"before\n")
    collector = follow(path, tail=0, poll_interval=0.01)
    time.sleep(0.05)
    writer.write("stdout", b"after\n")
    collector.wait_for(1)
    writer.close()
    assert collector.join() == ["after\n"]


def test_follow_survives_rotation_in_lockstep(
    tmp_path: Path, follow: Callable[..., Collector]
) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path), max_size=400, max_files=2)
    collector = follow(path, poll_interval=0.005)
    for i in range(60):
        writer.write("stdout", f"line {i}\n".encode())
        collector.wait_for(i + 1)
    writer.close()
    assert (tmp_path / "c.log.1").exists()
    assert collector.join() == [f"line {i}\n" for i in range(60)]


def test_follow_survives_rotation_from_a_writer_thread(
    tmp_path: Path, follow: Callable[..., Collector]
) -> None:
    path = tmp_path / "c.log"
    total = 500
    writer = JsonFileWriter(str(path), max_size=1500, max_files=100)

    def produce() -> None:
        for i in range(total):
            writer.write("stderr" if i % 3 else "stdout", f"message {i}\n".encode())
            if i % 10 == 0:
                time.sleep(0.001)
        writer.close()

    collector = follow(path, poll_interval=0.002)
    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(10)
    assert len(list(tmp_path.iterdir())) > 10  # it did rotate, many times
    assert collector.join() == [f"message {i}\n" for i in range(total)]


def test_follow_catches_up_after_several_rotations_between_polls(
    tmp_path: Path, follow: Callable[..., Collector]
) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path), max_size=300, max_files=20)
    writer.write("stdout", b"start\n")
    collector = follow(path, poll_interval=0.3)
    collector.wait_for(1)
    for i in range(40):  # about 10 rotations, all while the follower sleeps
        writer.write("stdout", f"{i}\n".encode())
    collector.wait_for(41)
    writer.close()
    assert collector.join() == ["start\n"] + [f"{i}\n" for i in range(40)]


def test_follow_continues_with_the_oldest_file_left_when_its_file_was_dropped(
    tmp_path: Path, follow: Callable[..., Collector]
) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path), max_size=300, max_files=2)
    writer.write("stdout", b"0\n")
    collector = follow(path, poll_interval=0.3)
    collector.wait_for(1)
    for i in range(1, 40):  # the follower's file is rotated away and then deleted
        writer.write("stdout", f"{i}\n".encode())
    writer.close()
    kept = logs_of(tmp_path / "c.log.1") + logs_of(path)
    collector.wait_for(len(kept) + 1)
    received = collector.join()
    assert received[-len(kept) :] == kept
    got = [int(text) for text in received]
    assert got == sorted(set(got))  # in order, nothing twice
    assert got[0] == 0 and got[-1] == 39


def test_follow_after_truncation_with_one_file(
    tmp_path: Path, follow: Callable[..., Collector]
) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path), max_size=300, max_files=1)
    collector = follow(path, poll_interval=0.005)
    for i in range(30):
        writer.write("stdout", f"line {i}\n".encode())
        collector.wait_for(i + 1)
    writer.close()
    assert collector.join() == [f"line {i}\n" for i in range(30)]


def test_follow_waits_for_the_file_to_appear(
    tmp_path: Path, follow: Callable[..., Collector]
) -> None:
    path = tmp_path / "c.log"
    collector = follow(path, poll_interval=0.01)
    time.sleep(0.05)
    with JsonFileWriter(str(path)) as writer:
        writer.write("stdout", b"hello\n")
    collector.wait_for(1)
    assert collector.join() == ["hello\n"]


def test_follow_waits_for_a_torn_line_to_be_completed(
    tmp_path: Path, follow: Callable[..., Collector]
) -> None:
    path = tmp_path / "c.log"
    write_raw(path, [1])
    line = json.dumps({"log": "2\n", "stream": "stdout", "time": format_timestamp(2)}) + "\n"
    collector = follow(path, poll_interval=0.01)
    collector.wait_for(1)
    with path.open("a") as file:
        file.write(line[:20])
    time.sleep(0.1)
    assert texts(collector.records) == ["1\n"]
    with path.open("a") as file:
        file.write(line[20:])
    collector.wait_for(2)
    assert collector.join() == ["1\n", "2\n"]


def test_follow_ends_when_the_clock_passes_until(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    write_raw(path, [1])
    until = time.time_ns() + 100_000_000
    started = time.monotonic()
    records = list(read_logs(str(path), follow=True, until_ns=until, poll_interval=0.01))
    assert texts(records) == ["1\n"]
    assert 0.05 < time.monotonic() - started < 3


def test_follow_skips_records_outside_the_window(
    tmp_path: Path, follow: Callable[..., Collector]
) -> None:
    path = tmp_path / "c.log"
    write_raw(path, [5])
    collector = follow(path, since_ns=10, poll_interval=0.01)
    write_raw(path, [7, 12])
    collector.wait_for(1)
    assert collector.join() == ["12\n"]


def test_follow_reads_the_end_of_a_file_renamed_during_a_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.log"
    writer = JsonFileWriter(str(path), max_size=200, max_files=3)
    writer.write("stdout", b"first\n")
    real_is_at = logs._LogFile.is_at
    raced: list[bool] = []

    def racing_is_at(self: logs._LogFile, where: str) -> bool:
        # Between the follower's read and its check, the writer appends one more
        # record to the old file and then rotates for the next.
        if not raced:
            raced.append(True)
            writer.write("stdout", b"late\n")
            writer.write("stdout", b"rotated\n")
            assert (tmp_path / "c.log.1").exists()
        return real_is_at(self, where)

    monkeypatch.setattr(logs._LogFile, "is_at", racing_is_at)
    records = read_logs(str(path), follow=True, stop_following=lambda: True)
    assert texts(list(records)) == ["first\n", "late\n", "rotated\n"]
    writer.close()


@pytest.mark.parametrize(
    "text", ["plain", 'quote " and back\\slash', "ctl \x01\x1f\n\t\r", "héllo ✓", ""]
)
def test_json_string_is_valid_json(text: str) -> None:
    assert json.loads(json_string(text)) == text
