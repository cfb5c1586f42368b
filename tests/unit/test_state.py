"""The state table: what each status allows."""

from __future__ import annotations

import pytest

from minidock.errors import InvalidState
from minidock.state import Operation, Status, can_delete, can_kill, can_start, oci_status, require


def test_start_only_from_created_or_exited() -> None:
    assert [s for s in Status if can_start(s)] == [Status.CREATED, Status.EXITED]


def test_kill_only_while_processes_exist() -> None:
    assert [s for s in Status if can_kill(s)] == [Status.RUNNING, Status.PAUSED]


def test_delete_without_force_only_when_nothing_runs() -> None:
    assert [s for s in Status if can_delete(s)] == [Status.CREATED, Status.EXITED]


def test_require_names_the_container_and_the_reason() -> None:
    with pytest.raises(InvalidState, match="container web is already running"):
        require(Status.RUNNING, Operation.START, "web")
    with pytest.raises(InvalidState, match="stop the container before removing or force remove"):
        require(Status.RUNNING, Operation.REMOVE, "web")
    with pytest.raises(InvalidState, match="unpause it first"):
        require(Status.PAUSED, Operation.START, "web")


def test_transitions_lead_where_docker_goes() -> None:
    assert require(Status.RUNNING, Operation.EXIT, "c") is Status.EXITED
    assert require(Status.EXITED, Operation.START, "c") is Status.RUNNING
    assert require(Status.RUNNING, Operation.FORCE_REMOVE, "c") is None


def test_oci_names() -> None:
    assert [oci_status(s) for s in Status] == [
        "created", "running", "running", "stopped", "stopped"]  # fmt: skip


def test_restarting_waits_for_the_monitor_or_a_stop() -> None:
    assert require(Status.RUNNING, Operation.BACK_OFF, "c") is Status.RESTARTING
    assert require(Status.RESTARTING, Operation.AUTO_RESTART, "c") is Status.RUNNING
    assert require(Status.RESTARTING, Operation.STOP, "c") is Status.EXITED
    for op in (Operation.START, Operation.KILL, Operation.REMOVE, Operation.PAUSE):
        with pytest.raises(InvalidState, match="container c is restarting"):
            require(Status.RESTARTING, op, "c")
