"""``minidock events``: the journal every command and monitor appends to, read back and
streamed as it grows."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

from tests.conftest import Minidock


def _past(md: Minidock, *args: str) -> list[dict]:
    out = md("events", "--since", "1h", "--until", "0s", "--format", "json", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_a_run_stop_rm_is_journaled_in_order(md: Minidock) -> None:
    cid = md("run", "-d", "--network", "none", "--name", "seq", "busybox",
             "sh", "-c", "trap 'exit 7' TERM; sleep 60 & wait").stdout  # fmt: skip
    md("stop", "-t", "5", "seq")
    md("rm", "seq")
    events = _past(md)
    assert [e["Action"] for e in events] == ["create", "start", "kill", "die", "stop", "destroy"]
    assert {e["id"] for e in events} == {cid.strip()}
    assert all(e["Actor"]["Attributes"]["name"] == "seq" for e in events)
    assert events[2]["Actor"]["Attributes"]["signal"] == "15"
    assert events[3]["Actor"]["Attributes"]["exitCode"] == "7"
    stamps = [e["timeNano"] for e in events]
    assert stamps == sorted(stamps)
    text = md("events", "--since", "1h", "--until", "0s").stdout.splitlines()
    assert text[0].endswith(f"container create {cid.strip()} (image=busybox, name=seq)")


def test_oom_and_filters(md: Minidock) -> None:
    md("run", "--network", "none", "--name", "oom", "-m", "32m", "busybox",
       "dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1", check=False)  # fmt: skip
    md("run", "--network", "none", "--name", "other", "busybox", "true")
    assert [e["Action"] for e in _past(md, "--filter", "container=oom")] == [
        "create", "start", "oom", "die"]  # fmt: skip
    dies = _past(md, "--filter", "event=die")
    assert [e["Actor"]["Attributes"]["name"] for e in dies] == ["oom", "other"]
    assert [e["Actor"]["Attributes"]["exitCode"] for e in dies] == ["137", "0"]
    both = _past(md, "--filter", "event=oom", "--filter", "event=create")
    assert [e["Action"] for e in both] == ["create", "oom", "create"]
    bad = md("events", "--filter", "colour=red", "--until", "0s", check=False)
    assert bad.returncode == 125 and "invalid filter" in bad.stderr


def _read_lines(fd: int, count: int, timeout: float = 30) -> list[str]:
    """The next ``count`` lines from the pipe ``fd``, waiting at most ``timeout`` seconds
    in all (read unbuffered, byte by byte, so no line is held back in a buffer)."""
    deadline = time.monotonic() + timeout
    data = b""
    while data.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready or not (chunk := os.read(fd, 1)):
            break
        data += chunk
    return data.decode().splitlines()


def test_events_streams_as_things_happen(md: Minidock) -> None:
    """``events`` without --until follows the journal: each event is printed as it is
    appended, by whichever process appends it (here the CLI and the monitor)."""
    since = f"{time.time():.9f}"
    follower = subprocess.Popen(
        [sys.executable, "-m", "minidock", "events", "--since", since,
         "--format", "{{.Action}} {{.Actor.Attributes.name}}", "--filter", "container=live"],
        env=md.env, stdout=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        md("run", "-d", "--network", "none", "--name", "live", "busybox", "sleep", "60")
        assert _read_lines(follower.stdout.fileno(), 2) == [
            "create live", "start live"]  # fmt: skip
        # The follower has printed those, so it is following now: what comes next it can
        # only learn by reading what is appended from here on.
        md("kill", "live")
        md("wait", "live")
        md("rm", "live")
        assert _read_lines(follower.stdout.fileno(), 3) == [
            "kill live", "die live", "destroy live"]  # fmt: skip
        assert follower.poll() is None  # still following
    finally:
        follower.kill()
        follower.wait()
