"""The event journal: lines written, filtered, rotated and followed (files only, no root)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from minidock import events
from minidock.errors import InvalidArgument


def _emit(root: Path, action: str, name: str, **extra: str) -> None:
    events.emit(str(root), action, name * 8, {"name": name, "image": "busybox", **extra})


def test_past_events_in_order_with_filters(tmp_path: Path) -> None:
    _emit(tmp_path, "create", "aaaa")
    _emit(tmp_path, "start", "aaaa")
    _emit(tmp_path, "die", "bbbb", exitCode="1")
    _emit(tmp_path, "health_status: healthy", "aaaa")

    def actions(*filters: str) -> list[str]:
        found = events.read_events(str(tmp_path), since_ns=0, follow=False,
                                   event_filter=events.EventFilter.parse(list(filters)))
        return [e["Action"] for e in found]  # fmt: skip

    assert actions() == ["create", "start", "die", "health_status: healthy"]
    assert actions("container=aaaa") == ["create", "start", "health_status: healthy"]
    assert actions("container=bbbbbbbb") == ["die"]  # an ID prefix
    assert actions("event=die", "event=create") == ["create", "die"]
    assert actions("event=health_status") == ["health_status: healthy"]
    assert actions("event=start", "container=bbbb") == []
    with pytest.raises(InvalidArgument, match="invalid filter"):
        events.EventFilter.parse(["state=running"])


def test_since_and_until_bound_the_times(tmp_path: Path) -> None:
    _emit(tmp_path, "create", "aaaa")
    middle = time.time_ns()
    _emit(tmp_path, "start", "aaaa")
    after = [e["Action"] for e in events.read_events(str(tmp_path), since_ns=middle, follow=False)]
    before = [e["Action"] for e in events.read_events(str(tmp_path), since_ns=0, until_ns=middle,
                                                      follow=False)]  # fmt: skip
    assert (after, before) == (["start"], ["create"])


def test_text_form_is_dockers(tmp_path: Path) -> None:
    _emit(tmp_path, "die", "abcd", exitCode="3")
    (event,) = events.read_events(str(tmp_path), since_ns=0, follow=False)
    line = events.format_event(event)
    assert line.endswith(" container die abcdabcdabcdabcdabcdabcdabcdabcd "
                         "(exitCode=3, image=busybox, name=abcd)")  # fmt: skip
    assert line[:4].isdigit() and line[29] == "Z"


def test_rotation_keeps_one_old_journal_and_following_survives_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "MAX_SIZE", 2000)
    seen: list[str] = []
    done = threading.Event()

    def follow() -> None:
        for e in events.read_events(str(tmp_path), stop=done.is_set):
            seen.append(e["Actor"]["Attributes"]["name"])

    follower = threading.Thread(target=follow)
    follower.start()
    time.sleep(0.1)
    for i in range(40):  # ~250 bytes each: the journal rotates several times
        _emit(tmp_path, "start", f"c{i:03d}")
        time.sleep(0.01)
    deadline = time.monotonic() + 5
    while len(seen) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    done.set()
    follower.join()
    assert (tmp_path / "events.log.1").exists()
    assert not (tmp_path / "events.log.2").exists()
    assert seen[-5:] == [f"c{i:03d}" for i in range(35, 40)]
    assert seen == sorted(seen)  # in order, none twice
