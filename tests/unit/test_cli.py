"""The CLI as a thin layer, through click's CliRunner: flag errors need no root."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from minidock.cli import cli, main


def test_help_lists_the_docker_verbs() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    for verb in ("run", "ps", "logs", "stop", "rm", "inspect", "stats", "top", "wait", "runtime"):
        assert verb in result.output


def test_bad_values_are_engine_errors(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setattr(
        "sys.argv", ["minidock", "--root", str(tmp_path), "run", "-m", "abc", "busybox", "true"]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 125
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and '"abc"' in err


def test_unknown_flag_is_125(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr("sys.argv", ["minidock", "--root", str(tmp_path), "ps", "--bogus"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 125
