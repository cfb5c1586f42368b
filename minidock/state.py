"""A container's states and the operations that move it between them — one table.

The OCI runtime spec (runtime.md, "Lifecycle") defines four states: ``creating`` →
``created`` (namespaces and root filesystem ready, the user's program not yet exec'd) →
``running`` → ``stopped``. Docker adds ``paused`` (every process frozen by the cgroup
freezer) and ``restarting`` (PID 1 exited and the restart policy will start it again after
a back-off delay), and calls ``stopped`` ``exited``. A container that was only ``minidock create``-d
is ``created`` here too: it has a record and a bundle but no process yet.

Every command checks this table before it acts (``require``), so an impossible request
("start a running container", "remove a running one without -f") is refused up front with
a clear message instead of half-failing in the kernel.
"""

from __future__ import annotations

from enum import StrEnum

from minidock.errors import InvalidState


class Status(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"
    RESTARTING = "restarting"


class Operation(StrEnum):
    START = "start"  # run the program (from created, or again after it exited)
    KILL = "kill"  # send it a signal
    STOP = "stop"  # signal, wait, then SIGKILL
    PAUSE = "pause"  # freeze every process in its cgroup
    UNPAUSE = "unpause"
    EXIT = "exit"  # the monitor saw PID 1 exit (not a request: an event)
    BACK_OFF = "back-off"  # PID 1 exited and the restart policy says: again, after a delay
    AUTO_RESTART = "auto-restart"  # the delay is over: the monitor starts it again
    UPDATE = "update"  # change its resource limits or restart policy
    REMOVE = "remove"  # delete the record, rootfs, cgroup
    FORCE_REMOVE = "force-remove"  # kill first if needed, then remove


REMOVED = None  # the "state" after a container's removal

#: (current status, operation) → the status that follows. A missing pair is not allowed.
TRANSITIONS: dict[tuple[Status, Operation], Status | None] = {
    (Status.CREATED, Operation.START): Status.RUNNING,
    (Status.CREATED, Operation.STOP): Status.CREATED,
    (Status.CREATED, Operation.REMOVE): REMOVED,
    (Status.CREATED, Operation.FORCE_REMOVE): REMOVED,
    (Status.CREATED, Operation.UPDATE): Status.CREATED,
    (Status.RUNNING, Operation.KILL): Status.RUNNING,
    (Status.RUNNING, Operation.STOP): Status.EXITED,
    (Status.RUNNING, Operation.PAUSE): Status.PAUSED,
    (Status.RUNNING, Operation.EXIT): Status.EXITED,
    (Status.RUNNING, Operation.BACK_OFF): Status.RESTARTING,
    (Status.RUNNING, Operation.FORCE_REMOVE): REMOVED,
    (Status.RUNNING, Operation.UPDATE): Status.RUNNING,
    (Status.PAUSED, Operation.UNPAUSE): Status.RUNNING,
    (Status.PAUSED, Operation.KILL): Status.PAUSED,
    (Status.PAUSED, Operation.STOP): Status.EXITED,
    (Status.PAUSED, Operation.EXIT): Status.EXITED,
    (Status.PAUSED, Operation.BACK_OFF): Status.RESTARTING,
    (Status.PAUSED, Operation.FORCE_REMOVE): REMOVED,
    (Status.PAUSED, Operation.UPDATE): Status.PAUSED,
    (Status.EXITED, Operation.START): Status.RUNNING,
    (Status.EXITED, Operation.STOP): Status.EXITED,
    (Status.EXITED, Operation.REMOVE): REMOVED,
    (Status.EXITED, Operation.FORCE_REMOVE): REMOVED,
    (Status.EXITED, Operation.UPDATE): Status.EXITED,
    (Status.RESTARTING, Operation.AUTO_RESTART): Status.RUNNING,
    (Status.RESTARTING, Operation.STOP): Status.EXITED,  # cancels the pending restart
    (Status.RESTARTING, Operation.FORCE_REMOVE): REMOVED,
    (Status.RESTARTING, Operation.UPDATE): Status.RESTARTING,
}

_REFUSALS: dict[Operation, str] = {
    Operation.START: "is already running",
    Operation.KILL: "is not running",
    Operation.PAUSE: "is not running",
    Operation.UNPAUSE: "is not paused",
    Operation.EXIT: "is not running",
    Operation.REMOVE: "is running: stop the container before removing or force remove",
}


def allowed(status: Status, op: Operation) -> bool:
    """Whether ``op`` may be applied to a container in ``status``."""
    return (status, op) in TRANSITIONS


def require(status: Status, op: Operation, name: str) -> Status | None:
    """Return the status ``op`` leads to, or raise :class:`InvalidState` naming ``name``."""
    if not allowed(status, op):
        why = _REFUSALS.get(op, f"cannot {op} from {status}")
        if op is Operation.START and status is Status.PAUSED:
            why = "is paused: unpause it first"
        elif status is Status.RESTARTING:
            why = "is restarting: wait until it runs, or stop it"
        raise InvalidState(f"container {name} {why}")
    return TRANSITIONS[(status, op)]


def can_start(status: Status) -> bool:
    return allowed(status, Operation.START)


def can_kill(status: Status) -> bool:
    return allowed(status, Operation.KILL)


def can_delete(status: Status) -> bool:
    return allowed(status, Operation.REMOVE)


def oci_status(status: Status) -> str:
    """The OCI runtime spec's name for a status (``exited`` is ``stopped`` there; a paused
    container is still ``running`` as far as the OCI state is concerned)."""
    return {
        Status.CREATED: "created",
        Status.RUNNING: "running",
        Status.PAUSED: "running",
        Status.EXITED: "stopped",
        Status.RESTARTING: "stopped",
    }[status]
