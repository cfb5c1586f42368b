"""Docker's ``json-file`` log format, the writing half: records, timestamps, rotation.

Every line a container prints becomes one JSON object on its own line::

    {"log":"hello\\n","stream":"stdout","time":"2019-01-01T11:11:11.111111111Z"}

The writer runs in the per-container monitor loop (``relay.py``), one process per
container for as long as it runs, so this module imports almost nothing: it formats
timestamps and JSON strings itself (``json`` and ``datetime`` would cost the monitor
a megabyte or more each). ``logs.py`` has the reading half.

Rotation follows ``--log-opt max-size=10m --log-opt max-file=3``: when the next record
would push ``path`` past ``max_size`` bytes, ``path.1`` becomes ``path.2``, ``path``
becomes ``path.1`` (the oldest file falls off the end) and a fresh ``path`` is started.
Docker rotates nothing by default, the most common way its logs fill a disk; minidock
defaults to 10 MiB x 3 files.
"""

from __future__ import annotations

import fcntl
import os
import time

DEFAULT_MAX_SIZE = 10 * 1024 * 1024  # bytes per file
DEFAULT_MAX_FILES = 3  # files in total, path included

# moby daemon/logger/copier.go: a line longer than 16 KiB is cut into 16 KiB pieces;
# every piece but the last is written without a trailing newline.
MAX_LINE = 16 * 1024

_NS = 1_000_000_000
#: JSON (RFC 8259) must escape the quote, the backslash and control characters.
_JSON_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)} | {
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def format_timestamp(ns: int) -> str:
    """Nanoseconds since the epoch as Docker's RFC3339Nano UTC, always 9 fraction digits."""
    seconds, fraction = divmod(ns, _NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def json_string(text: str) -> str:
    """``text`` as a JSON string literal. Non-ASCII stays raw UTF-8, as Docker writes it."""
    return '"' + text.translate(_JSON_ESCAPES) + '"'


class RotationLock:
    """Hold an flock on ``path``'s directory, LOCK_EX to rotate or LOCK_SH to list files.

    Readers then never see a rotation half done: a gap in path.1, path.2, ... or no
    ``path`` at all, which would make them skip files. (A plain class rather than
    ``contextlib.contextmanager``: this module is imported by the lean monitor loop.)
    """

    def __init__(self, path: str, operation: int) -> None:
        self.path = path
        self.operation = operation
        self.fd = -1

    def __enter__(self) -> None:
        directory = os.path.dirname(self.path) or "."
        self.fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self.fd, self.operation)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # and with it the lock


def _utf8_cut(data: bytes, limit: int) -> int:
    """Where to cut ``data`` at most ``limit`` bytes in without splitting a UTF-8 character."""
    cut = limit
    # Step back over continuation bytes (0b10xxxxxx), at most 3 of them.
    while cut > limit - 3 and data[cut] & 0xC0 == 0x80:
        cut -= 1
    return cut


class JsonFileWriter:
    """Append a container's output to ``path`` as json-file records, rotating by size."""

    def __init__(
        self, path: str, max_size: int = DEFAULT_MAX_SIZE, max_files: int = DEFAULT_MAX_FILES
    ) -> None:
        if max_size < 1 or max_files < 1:
            raise ValueError("max_size and max_files must be at least 1")
        self.path = path
        self.max_size = max_size
        self.max_files = max_files
        self._partial: dict[str, bytes] = {}
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size  # a restarted monitor appends

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        os.fchmod(fd, 0o640)  # whatever the umask
        return fd

    def write(self, stream: str, data: bytes) -> None:
        """Record ``data`` read from the container's ``stream`` ("stdout" or "stderr").

        Complete lines are written at once; a trailing partial line waits for the rest
        (or for ``flush``) unless it grows past 16 KiB, which is written in pieces.
        """
        buffered = self._partial.pop(stream, b"") + data
        start = 0
        while True:
            newline = buffered.find(b"\n", start, start + MAX_LINE + 1)
            if newline >= 0:
                self._record(stream, buffered[start : newline + 1])
                start = newline + 1
            elif len(buffered) - start > MAX_LINE:
                cut = _utf8_cut(buffered, start + MAX_LINE)
                self._record(stream, buffered[start:cut])
                start = cut
            else:
                break
        if start < len(buffered):
            self._partial[stream] = buffered[start:]

    def flush(self) -> None:
        """Write the buffered partial lines as they are, without a trailing newline."""
        for stream, data in self._partial.items():
            self._record(stream, data)
        self._partial.clear()

    def close(self) -> None:
        """Flush partial lines and close the file."""
        self.flush()
        os.close(self._fd)

    def __enter__(self) -> JsonFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _record(self, stream: str, line: bytes) -> None:
        """Encode one record and append it with a single write, rotating first if needed."""
        text = json_string(line.decode("utf-8", errors="replace"))
        stamp = format_timestamp(time.time_ns())
        encoded = f'{{"log":{text},"stream":"{stream}","time":"{stamp}"}}\n'.encode()
        if self._size and self._size + len(encoded) > self.max_size:
            self._rotate()
        # One write on an O_APPEND fd: a crash leaves whole records or none. Only a full
        # disk makes a regular-file write short, and then the next write raises.
        view = memoryview(encoded)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(encoded)

    def _rotate(self) -> None:
        """Shift path.N-1 -> path.N ... path -> path.1 and start an empty path."""
        if self.max_files == 1:
            os.ftruncate(self._fd, 0)  # O_APPEND: the next write lands at offset 0
        else:
            os.close(self._fd)
            with RotationLock(self.path, fcntl.LOCK_EX):
                for n in range(self.max_files - 1, 0, -1):
                    older = f"{self.path}.{n - 1}" if n > 1 else self.path
                    try:  # noqa: SIM105 — contextlib stays out of the lean monitor
                        os.replace(older, f"{self.path}.{n}")  # replaces (drops) the oldest
                    except FileNotFoundError:
                        pass
                self._fd = self._open()
        self._size = 0
