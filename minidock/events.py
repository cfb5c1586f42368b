"""The event journal: what happened to containers, in order (``minidock events``).

Docker's daemon keeps events in memory and streams them to ``docker events``. minidock has
no daemon, so every process that changes a container — the CLI, the monitor, the
healthcheck — appends one JSON line to ``ROOT/events.log``, and ``events`` reads and
follows that file. Each line is written with a single write(2) on a file opened with
``O_APPEND``: the kernel moves to the end of the file and writes in one step, so lines
from concurrent writers never interleave or overwrite each other.

A line has Docker's event shape::

    {"Type": "container", "Action": "die", "Actor": {"ID": "…", "Attributes":
     {"name": "web", "image": "busybox", "exitCode": "0"}}, "time": 1700000000,
     "timeNano": 1700000000123456789, "status": "die", "id": "…", "from": "busybox"}

The journal is rotated once it passes ``MAX_SIZE`` (one older file is kept).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from minidock import store
from minidock.errors import InvalidArgument
from minidock.logfile import format_timestamp

MAX_SIZE = 1 << 20  # bytes; then events.log becomes events.log.1
_POLL_INTERVAL = 0.05  # seconds between looks at the journal while following


def journal_path(root: str) -> str:
    return os.path.join(root, "events.log")


def emit(root: str, action: str, cid: str, attributes: dict[str, str]) -> None:
    """Append one container event to the journal. ``attributes`` has at least ``name``
    and ``image``; ``die`` adds ``exitCode``, ``kill`` adds ``signal``."""
    now_ns = time.time_ns()
    event = {
        "status": action,
        "id": cid,
        "from": attributes.get("image", ""),
        "Type": "container",
        "Action": action,
        "Actor": {"ID": cid, "Attributes": attributes},
        "scope": "local",
        "time": now_ns // 1_000_000_000,
        "timeNano": now_ns,
    }
    path = journal_path(root)
    line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if size > MAX_SIZE:
        _rotate(root)


def _rotate(root: str) -> None:
    """Keep one old journal. Under a lock, so two writers that both see a full journal
    don't rotate twice (the second rename would throw away the first's events)."""
    path = journal_path(root)
    with store.locked(os.path.join(root, "events.lock")):
        try:
            if os.stat(path).st_size > MAX_SIZE:
                os.rename(path, path + ".1")
        except FileNotFoundError:
            pass


@dataclass
class EventFilter:
    """``--filter key=value``: values of one key are alternatives (OR), different keys
    must all match (AND) — Docker's rule. Keys: container (name or ID prefix), event
    (action, e.g. ``die`` or ``health_status``), image, type."""

    wanted: dict[str, set[str]] = field(default_factory=dict)

    KEYS = ("container", "event", "image", "type")

    @classmethod
    def parse(cls, filters: list[str]) -> EventFilter:
        wanted: dict[str, set[str]] = {}
        for item in filters:
            key, sep, value = item.partition("=")
            if not sep or key not in cls.KEYS:
                raise InvalidArgument(
                    f"invalid filter '{item}': use {', '.join(k + '=…' for k in cls.KEYS)}"
                )
            wanted.setdefault(key, set()).add(value)
        return cls(wanted)

    def matches(self, event: dict) -> bool:
        attributes = event["Actor"]["Attributes"]
        facts = {
            "event": {event["Action"], event["Action"].split(":")[0]},
            "image": {attributes.get("image", "")},
            "type": {event["Type"]},
        }
        for key, values in self.wanted.items():
            if key == "container":
                if not any(v == attributes.get("name") or event["id"].startswith(v)
                           for v in values):  # fmt: skip
                    return False
            elif not facts[key] & values:
                return False
        return True


class _Journal:
    """An open journal file read line by line, like ``tail -F``: the file stays open, so
    a rotation (a rename) can't make us skip or repeat lines; at end of file we check
    whether the name now means a new file, drain the old one and move on to the new."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.file = self._open()
        self.partial = b""

    def _open(self) -> BinaryIO | None:
        try:
            return open(self.path, "rb")  # noqa: SIM115 — kept open while following
        except FileNotFoundError:
            return None

    def read(self) -> list[dict]:
        """The complete lines appended since the last call (following a rotation)."""
        found = self._drain()
        if self.file is None or _inode(self.path) != os.fstat(self.file.fileno()).st_ino:
            if self.file is not None:
                found += self._drain()  # written to the old file just before it was renamed
                self.file.close()
            self.file, self.partial = self._open(), b""
            found += self._drain()
        return found

    def _drain(self) -> list[dict]:
        if self.file is None:
            return []
        data = self.partial + self.file.read()
        end = data.rfind(b"\n") + 1
        self.partial = data[end:]  # a line still being written is completed next time
        return [json.loads(line) for line in data[:end].splitlines() if line]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def read_events(
    root: str,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
    event_filter: EventFilter | None = None,
    follow: bool = True,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[dict]:
    """Events in the order they were written. Past ones (from ``since_ns``) first, then —
    with ``follow`` — new ones as they are appended, until the clock passes ``until_ns``
    or ``stop()`` says so. Without ``since_ns``, only events from now on."""
    path = journal_path(root)
    match = event_filter or EventFilter()
    start_ns = time.time_ns() if since_ns is None else since_ns

    def wanted(event: dict) -> bool:
        return (
            event["timeNano"] >= start_ns
            and (until_ns is None or event["timeNano"] <= until_ns)
            and match.matches(event)
        )

    current = _Journal(path)  # opened first: a rotation from here on is seen by read()
    try:
        older = _Journal(path + ".1")
        past = older.read() if older.file is not None else []
        older.close()
        yield from (e for e in past + current.read() if wanted(e))
        while follow and not stop() and (until_ns is None or time.time_ns() <= until_ns):
            time.sleep(_POLL_INTERVAL)
            yield from (e for e in current.read() if wanted(e))
    finally:
        current.close()


def _inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return 0


def format_event(event: dict) -> str:
    """Docker's text form: ``2024-01-02T03:04:05.123456789Z container die ID (exitCode=0,
    image=busybox, name=web)``."""
    attributes = ", ".join(f"{k}={v}" for k, v in sorted(event["Actor"]["Attributes"].items()))
    return (f"{format_timestamp(event['timeNano'])} {event['Type']} {event['Action']} "
            f"{event['id']} ({attributes})")  # fmt: skip
