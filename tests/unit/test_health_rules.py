"""Healthchecks, the pure parts: durations, the --health-* flags and their merge with the
image's HEALTHCHECK, the state machine of a result, and the CLI's one-line errors."""

from __future__ import annotations

import os

import pytest

from minidock import health, parse
from minidock.cli import main
from minidock.errors import InvalidArgument

MS = 1_000_000
S = 1000 * MS


# --- durations ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "ns"),
    [("30s", 30 * S), ("1m30s", 90 * S), ("500ms", 500 * MS), ("1.5s", 1500 * MS),
     ("0", 0), ("-0", 0), ("1h", 3600 * S), ("250us", 250_000), ("-2s", -2 * S)],
)  # fmt: skip
def test_durations_parse_like_go(text: str, ns: int) -> None:
    assert parse.parse_duration(text, "--health-interval") == ns


@pytest.mark.parametrize("text", ["1", "30", "s", "1d", "abc", "1 s", ""])
def test_a_duration_needs_a_unit(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse.parse_duration(text, "--health-timeout")
    assert str(info.value) == (
        f'invalid value "{text}" for --health-timeout: expected a duration like 30s, 1m30s or 500ms'
    )


@pytest.mark.parametrize(
    ("ns", "text"),
    [(0, "0s"), (30 * S, "30s"), (90 * S, "1m30s"), (1500 * MS, "1.5s"), (200 * MS, "200ms"),
     (3600 * S, "1h0m0s"), (3725 * S, "1h2m5s"), (1500, "1.5µs"), (7, "7ns"),
     (1_234_500 * MS, "20m34.5s"), (-2 * S, "-2s")],
)  # fmt: skip
def test_durations_print_like_go(ns: int, text: str) -> None:
    assert health.format_duration(ns) == text


def test_retries_are_a_whole_number_not_negative() -> None:
    assert parse.parse_health_retries("5") == 5
    for bad, why in (("x", "expected an integer"), ("-1", "cannot be negative")):
        with pytest.raises(InvalidArgument, match=why):
            parse.parse_health_retries(bad)


# --- the flags and the image's HEALTHCHECK -------------------------------------------------------
def test_no_flag_means_the_images_healthcheck() -> None:
    assert health.user_config("") is None


def test_flags_become_dockers_healthcheck_config() -> None:
    assert health.user_config(
        "curl -f localhost", interval=5 * S, timeout=2 * S, start_period=10 * S, retries=4
    ) == {  # fmt: skip
        "Test": ["CMD-SHELL", "curl -f localhost"],
        "Interval": 5 * S,
        "Timeout": 2 * S,
        "StartPeriod": 10 * S,
        "Retries": 4,
    }
    assert health.user_config("", interval=5 * S) == {"Interval": 5 * S}  # keeps the image's test


def test_no_healthcheck_disables_and_conflicts_with_any_health_flag() -> None:
    assert health.user_config("", disabled=True) == {"Test": ["NONE"]}
    for given in ({"command": "true"}, {"interval": S}, {"retries": 2}, {"start_period": S}):
        kwargs = {"command": "", **given}
        with pytest.raises(InvalidArgument, match="^--no-healthcheck conflicts with --health-"):
            health.user_config(disabled=True, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"interval": -S}, "--health-interval cannot be negative"),
     ({"timeout": -S}, "--health-timeout cannot be negative"),
     ({"start_period": -S}, "--health-start-period cannot be negative"),
     ({"retries": -1}, "--health-retries cannot be negative"),
     ({"interval": MS // 2}, "Interval in Healthcheck cannot be less than 1ms"),
     ({"timeout": 10}, "Timeout in Healthcheck cannot be less than 1ms")],
)  # fmt: skip
def test_dockers_validation_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        health.user_config("true", **kwargs)
    assert str(info.value) == message


def test_flags_override_the_images_fields_one_by_one() -> None:
    image = {"Test": ["CMD", "wget", "-q", "localhost"], "Interval": 10 * S, "Retries": 5}
    assert health.merge(None, image) == image
    assert health.merge({"Interval": 2 * S}, image) == {**image, "Interval": 2 * S}
    assert health.merge({"Test": ["CMD-SHELL", "true"], "Timeout": S}, image) == {
        "Test": ["CMD-SHELL", "true"], "Interval": 10 * S, "Retries": 5, "Timeout": S}  # fmt: skip
    assert health.command(health.merge({"Test": ["NONE"]}, image)) is None
    assert health.merge({"Retries": 2}, None) == {"Retries": 2}
    assert health.merge(None, None) is None
    assert image == {"Test": ["CMD", "wget", "-q", "localhost"], "Interval": 10 * S, "Retries": 5}


def test_what_a_check_runs_and_how_often() -> None:
    assert health.command({"Test": ["CMD", "cat", "/ready"]}) == ["cat", "/ready"]
    assert health.command({"Test": ["CMD-SHELL", "test -e /ready"]}) == [
        "/bin/sh", "-c", "test -e /ready"]  # fmt: skip
    for none in (None, {}, {"Test": ["NONE"]}, {"Test": []}, {"Interval": S}, {"Test": ["X"]}):
        assert health.command(none) is None
        assert health.interval_ns(none) == 0
    assert health.interval_ns({"Test": ["CMD", "true"]}) == 30 * S
    assert health.interval_ns({"Test": ["CMD", "true"], "Interval": 200 * MS}) == 200 * MS


def test_on_failure_actions() -> None:
    for action in ("none", "kill", "restart", "stop"):
        assert health.on_failure_action(action) == action
    with pytest.raises(InvalidArgument, match="use none, kill, restart or stop"):
        health.on_failure_action("reboot")


# --- the state machine --------------------------------------------------------------------------
def _result(code: int, n: int = 0) -> dict:
    return {"Start": f"t{n}", "End": f"t{n}", "ExitCode": code, "Output": f"check {n}"}


def _run(codes: list[int], retries: int = 3, in_start_period: bool = False) -> list[tuple]:
    """(status, streak) after each result, from a fresh start."""
    state = health.state_at_start({"Test": ["CMD", "true"]}, None)["Health"]
    seen = []
    for n, code in enumerate(codes):
        state = health.record_result(state, _result(code, n), retries, in_start_period)
        seen.append((state["Status"], state["FailingStreak"]))
    return seen


def test_unhealthy_after_exactly_retries_failures_in_a_row() -> None:
    assert _run([1, 1, 1, 1], retries=3) == [
        ("starting", 1), ("starting", 2), ("unhealthy", 3), ("unhealthy", 4)]  # fmt: skip
    assert _run([1, 1, 0, 1, 1, 1], retries=3) == [
        ("starting", 1), ("starting", 2), ("healthy", 0),
        ("healthy", 1), ("healthy", 2), ("unhealthy", 3)]  # fmt: skip
    assert _run([1], retries=1) == [("unhealthy", 1)]
    assert _run([1, 1, 1], retries=0)[-1] == ("unhealthy", 3)  # 0: Docker's default, 3
    assert _run([2, 137, -1], retries=3)[-1] == ("unhealthy", 3)  # any exit but 0 fails


def test_a_success_makes_it_healthy_again() -> None:
    assert _run([1, 1, 1, 0], retries=3)[-2:] == [("unhealthy", 3), ("healthy", 0)]


def test_failures_in_the_start_period_do_not_count_until_a_success() -> None:
    assert _run([1, 1, 1, 1], retries=1, in_start_period=True) == [("starting", 0)] * 4
    # once healthy, the start period no longer shields anything
    assert _run([0, 1], retries=1, in_start_period=True) == [("healthy", 0), ("unhealthy", 1)]


def test_the_log_keeps_the_last_five_results() -> None:
    state = {"Status": "starting", "FailingStreak": 0, "Log": []}
    for n in range(7):
        before = state
        state = health.record_result(state, _result(0, n), 3, False)
        assert before["Log"] is not state["Log"]  # the input is left as it was
    assert [r["Output"] for r in state["Log"]] == [f"check {n}" for n in range(2, 7)]


def test_a_start_resets_the_status_and_keeps_the_log() -> None:
    old = {"Status": "unhealthy", "FailingStreak": 4, "Log": [_result(1)]}
    assert health.state_at_start({"Test": ["CMD", "true"]}, old) == {
        "Health": {"Status": "starting", "FailingStreak": 0, "Log": [_result(1)]}}  # fmt: skip
    assert health.state_at_start({"Test": ["NONE"]}, old) == {}
    assert health.state_at_start(None, None) == {}


def test_ps_words() -> None:
    assert [health.describe({"Status": s}) for s in ("starting", "healthy", "unhealthy")] == [
        "health: starting", "healthy", "unhealthy"]  # fmt: skip


def test_output_keeps_4096_bytes_and_marks_the_rest() -> None:
    read_end, write_end = os.pipe()
    out = health._Output()
    os.write(write_end, b"a" * 4000)
    assert out.read_from(read_end) and out.text() == "a" * 4000
    os.write(write_end, b"b" * 200)
    os.close(write_end)
    assert out.read_from(read_end)
    assert not out.read_from(read_end)  # end-of-file
    os.close(read_end)
    assert out.text() == "a" * 4000 + "b" * 96 + "..."


# --- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--health-interval", "1"], 'invalid value "1" for --health-interval'),
     (["--health-timeout", "-1s"], "--health-timeout cannot be negative"),
     (["--health-retries", "two"], 'invalid value "two" for --health-retries'),
     (["--no-healthcheck", "--health-cmd", "true"], "--no-healthcheck conflicts with"),
     (["--health-on-failure", "reboot"], 'invalid value "reboot" for --health-on-failure')],
)  # fmt: skip
def test_bad_health_flags_are_one_line_and_125(tmp_path, monkeypatch, capsys,  # noqa: ANN001
                                               flags: list[str], message: str) -> None:  # fmt: skip
    argv = ["minidock", "--root", str(tmp_path), "run", *flags, "busybox", "true"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 125
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
