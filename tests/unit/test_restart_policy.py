"""Restart policy rules (Docker's restart manager), without a container."""

from __future__ import annotations

import pytest

from minidock.errors import InvalidArgument
from minidock.restart import next_delay, parse_policy, should_restart, starts_on_boot


def test_parse_policy() -> None:
    assert parse_policy("no") == {"Name": "no", "MaximumRetryCount": 0}
    assert parse_policy("on-failure:5") == {"Name": "on-failure", "MaximumRetryCount": 5}
    assert parse_policy("unless-stopped")["Name"] == "unless-stopped"
    for bad, message in [("sometimes", "invalid restart policy"),
                         ("always:3", "cannot be used with restart policy 'always'"),
                         ("on-failure:x", "invalid maximum retry count")]:  # fmt: skip
        with pytest.raises(InvalidArgument, match=message):
            parse_policy(bad)


def test_which_exits_restart() -> None:
    always, unless = parse_policy("always"), parse_policy("unless-stopped")
    on_failure, limited = parse_policy("on-failure"), parse_policy("on-failure:2")
    assert should_restart(always, 0, False, 100)
    assert should_restart(unless, 0, False, 0)
    assert not should_restart(parse_policy("no"), 1, False, 0)
    assert should_restart(on_failure, 1, False, 1000)
    assert not should_restart(on_failure, 0, False, 0)
    assert [should_restart(limited, 1, False, n) for n in range(4)] == [True, True, False, False]
    # A stop or kill by the user is never undone by any policy.
    assert not any(should_restart(p, 1, True, 0) for p in (always, unless, on_failure))


def test_back_off_doubles_to_a_minute_and_resets_after_a_long_run() -> None:
    delays, delay = [], 0.0
    for _ in range(12):
        delay = next_delay(delay, ran_for=0.5)
        delays.append(delay)
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == 60.0 and max(delays) == 60.0
    assert next_delay(60.0, ran_for=10.0) == 0.1
    assert next_delay(0.4, ran_for=9.9) == 0.8


def test_boot_brings_back_always_and_unless_stopped_unless_stopped_by_hand() -> None:
    assert starts_on_boot(parse_policy("always"), manually_stopped=True)
    assert starts_on_boot(parse_policy("unless-stopped"), manually_stopped=False)
    assert not starts_on_boot(parse_policy("unless-stopped"), manually_stopped=True)
    assert not starts_on_boot(parse_policy("on-failure"), manually_stopped=False)
    assert not starts_on_boot({}, manually_stopped=False)
