"""Docker's ``json-file`` log driver, the reading half: ``minidock logs``.

The writer (records, timestamps, rotation) is in ``logfile.py``, kept apart so the
per-container monitor loop doesn't pay for this module's imports. The reader goes through
the rotated files oldest first (path.N … path.1, path) and, with ``follow``, keeps
reading as the monitor appends — across rotations, which it detects by inode.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from minidock.logfile import _NS, RotationLock, format_timestamp

_BLOCK = 64 * 1024  # read size for the reader
_RFC3339 = re.compile(  # json imports re anyway
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:Z|([+-])(\d\d):(\d\d))",
    re.ASCII,
)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def parse_timestamp(text: str) -> int:
    """Parse an RFC3339 timestamp (``Z`` or ``+hh:mm``, 0-9 fraction digits) into ns.

    The inverse of ``format_timestamp``. Raises ``ValueError`` on anything else,
    including impossible dates such as February 30th.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = fields = tuple(map(int, match.group(1, 2, 3, 4, 5, 6)))
    fraction, zone_sign, zone_hours, zone_minutes = match.group(7, 8, 9, 10)
    if not 1 <= month <= 12:
        raise ValueError(f"no such date: {text!r}")
    local = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    # gmtime normalises out-of-range fields (Feb 30 -> Mar 2): a round trip catches them.
    if tuple(time.gmtime(local)[:6]) != fields:
        raise ValueError(f"no such date or time: {text!r}")
    offset = 0
    if zone_sign:
        if int(zone_hours) > 23 or int(zone_minutes) > 59:
            raise ValueError(f"bad zone offset: {text!r}")
        offset = (int(zone_hours) * 3600 + int(zone_minutes) * 60) * (-1 if zone_sign == "-" else 1)
    return (local - offset) * _NS + int((fraction or "").ljust(9, "0"))


@dataclass
class LogRecord:
    """One decoded json-file record."""

    time_ns: int
    stream: str
    log: str


def render(record: LogRecord, timestamps: bool) -> str:
    """What ``minidock logs`` prints for a record, with ``-t`` its RFC3339Nano time first."""
    return f"{format_timestamp(record.time_ns)} {record.log}" if timestamps else record.log


def _decode(line: bytes) -> LogRecord | None:
    """A record from one line of a log file, or None for a line that is not one."""
    try:
        obj = json.loads(line)
        return LogRecord(parse_timestamp(obj["time"]), obj["stream"], obj["log"])
    except (ValueError, KeyError, TypeError):
        return None


class _LogFile:
    """An open log file and ``offset``: where the first line not yet read starts."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)
        self.offset = 0

    @classmethod
    def open(cls, path: str) -> _LogFile | None:
        """The file at ``path``, or None when there is none."""
        try:
            return cls(path)
        except FileNotFoundError:
            return None

    def is_at(self, path: str) -> bool:
        """Whether ``path`` still names this file (rotation renames it away)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self.identity

    def lines(self) -> Iterator[bytes]:
        """Complete lines from ``offset`` to the end; a torn last line is left for later."""
        if os.fstat(self.fd).st_size < self.offset:
            self.offset = 0  # truncated in place (max-file=1): start over
        pending = b""
        while chunk := os.pread(self.fd, _BLOCK, self.offset + len(pending)):
            *complete, pending = (pending + chunk).split(b"\n")
            for line in complete:
                self.offset += len(line) + 1
                yield line

    def skip_to_end(self) -> int:
        """Move ``offset`` just past the last complete line, and return it."""
        pos = os.fstat(self.fd).st_size
        while pos > 0:
            size = min(_BLOCK, pos)
            pos -= size
            newline = os.pread(self.fd, size, pos).rfind(b"\n")
            if newline >= 0:
                self.offset = pos + newline + 1
                return self.offset
        self.offset = 0
        return 0

    def lines_backward(self, end: int) -> Iterator[bytes]:
        """The lines before ``end`` (an offset just past a newline), last first."""
        if end == 0:
            return
        pos, first = end - 1, b""  # leave out the final newline
        while pos > 0:
            size = min(_BLOCK, pos)
            pos -= size
            # The first piece may continue in the block before: keep it for next time.
            first, *complete = (os.pread(self.fd, size, pos) + first).split(b"\n")
            yield from reversed(complete)
        yield first

    def close(self) -> None:
        """Close the file; closing it again does nothing."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_files(path: str) -> tuple[list[_LogFile], _LogFile | None]:
    """Open the rotated files of ``path`` (oldest first) and ``path`` itself, if they exist."""
    with RotationLock(path, fcntl.LOCK_SH):
        current = _LogFile.open(path)
        rotated: list[_LogFile] = []
        n = 1
        while (older := _LogFile.open(f"{path}.{n}")) is not None:
            rotated.insert(0, older)
            n += 1
    return rotated, current


def _next_file(path: str, old: _LogFile) -> _LogFile | None:
    """The file written after ``old``, which rotation has renamed away from ``path``.

    If ``old`` is now ``path.K``, that is ``path.K-1`` (several rotations can happen
    between two polls); if ``old`` has fallen off the end, the oldest file left.
    """
    with RotationLock(path, fcntl.LOCK_SH):
        newer, n = path, 1
        while True:
            try:
                st = os.stat(f"{path}.{n}")
            except FileNotFoundError:
                return _LogFile.open(newer)  # the oldest left: records may have been lost
            if (st.st_dev, st.st_ino) == old.identity:
                return _LogFile.open(newer)
            newer = f"{path}.{n}"
            n += 1


def read_logs(
    path: str,
    *,
    tail: int | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
    follow: bool = False,
    stop_following: Callable[[], bool] | None = None,
    poll_interval: float = 0.1,
) -> Iterator[LogRecord]:
    """Yield the records of ``path`` and its rotated files, oldest first.

    ``since_ns``/``until_ns`` bound the records' times (both inclusive). ``tail=N``
    keeps the last N records inside those bounds; ``None`` or a negative N (Docker's
    ``all``) keeps every one. ``follow`` then keeps yielding records as they are
    appended, across rotations, until ``stop_following()`` returns True (what was
    written by then is still yielded) or the clock passes ``until_ns``. A line still
    missing its newline is not yielded until it is complete; lines that are not
    records are skipped.
    """

    def matching(lines: Iterable[bytes]) -> Iterator[LogRecord]:
        for line in lines:
            record = _decode(line)
            if (
                record is not None
                and (since_ns is None or record.time_ns >= since_ns)
                and (until_ns is None or record.time_ns <= until_ns)
            ):
                yield record

    rotated, current = _open_files(path)
    files = rotated + ([current] if current is not None else [])
    try:
        if tail is None or tail < 0:
            for log_file in files:
                yield from matching(log_file.lines())
        else:
            found: deque[LogRecord] = deque()
            for log_file in reversed(files):
                end = log_file.skip_to_end()  # for `path`, also where following resumes
                found.extendleft(islice(matching(log_file.lines_backward(end)), tail - len(found)))
            yield from found
        if follow:
            yield from _follow(path, current, matching, stop_following, poll_interval, until_ns)
    finally:
        for log_file in files:
            log_file.close()


def _follow(
    path: str,
    current: _LogFile | None,
    matching: Callable[[Iterable[bytes]], Iterator[LogRecord]],
    stop_following: Callable[[], bool] | None,
    poll_interval: float,
    until_ns: int | None,
) -> Iterator[LogRecord]:
    """Poll ``path`` for new records, moving on to the new file after each rotation."""
    try:
        while True:
            # Asked before reading, so everything written before the answer gets read.
            stopping = stop_following is not None and stop_following()
            while current is not None or (current := _LogFile.open(path)) is not None:
                yield from matching(current.lines())
                if current.is_at(path):
                    break
                # Renamed away. The writer wrote its last record before renaming, so
                # read what came since our last look, then move on to the next file.
                yield from matching(current.lines())
                following = _next_file(path, current)
                current.close()
                current = following
            if stopping or (until_ns is not None and time.time_ns() > until_ns):
                return
            time.sleep(poll_interval)
    finally:
        if current is not None:
            current.close()
