"""One container's record on disk and its root filesystem mount.

Shared by the engine (the CLI's verbs) and the monitor, so it stays small and imports
nothing heavy. ``container.json`` holds what the user asked for, shaped like the
``Config``/``HostConfig`` of ``docker inspect``; ``state.json`` holds what happened
(status, pids, exit code, times) and is only ever changed under ``state.lock``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from minidock import events, runtime, store, syscalls, userns
from minidock.errors import ContainerNotFound, KernelError, MinidockError
from minidock.logfile import format_timestamp
from minidock.state import Status

ZERO_TIME = "0001-01-01T00:00:00Z"  # Docker's "never" for StartedAt/FinishedAt


def now() -> str:
    return format_timestamp(time.time_ns())


def initial_state() -> dict[str, Any]:
    return {
        "Status": Status.CREATED.value,
        "Pid": 0,
        "PidStart": 0,
        "MonitorPid": 0,
        "ExitCode": 0,
        "OOMKilled": False,
        "Error": "",
        "StartedAt": ZERO_TIME,
        "FinishedAt": ZERO_TIME,
        "RestartCount": 0,  # restarts by the restart policy since the user's last start
        "RestartDelay": 0,  # the back-off before the policy's next restart, in seconds
        "ManuallyStopped": False,  # stopped or killed by the user: no policy restart
    }


class Container:
    """Handle on ``ROOT/containers/<id>``. Cheap to make; reads files on demand."""

    def __init__(self, paths: store.Paths, cid: str) -> None:
        self.paths = paths
        self.id = cid
        self.dir = paths.container(cid)

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    @property
    def bundle(self) -> str:
        return self.path("bundle")

    @property
    def rootfs(self) -> str:
        return self.path("bundle", "rootfs")

    @property
    def log_path(self) -> str:
        return self.path("container.log")

    @property
    def runtime_root(self) -> str:
        return self.paths.runtime

    def exists(self) -> bool:
        return os.path.isfile(self.path("container.json"))

    def record(self) -> dict[str, Any]:
        return store.read_json(self.path("container.json"))

    @property
    def name(self) -> str:
        return self.record()["Name"].lstrip("/")

    def state(self) -> dict[str, Any]:
        return store.read_json(self.path("state.json"))

    def status(self) -> Status:
        return Status(self.state()["Status"])

    def update_state(self, **changes: Any) -> dict[str, Any]:
        """Read-modify-write ``state.json`` under its lock; returns the new state."""
        return self.change_state(lambda _: changes)

    def change_state(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        """Like :meth:`update_state`, for changes that depend on the current state:
        ``change(state)`` returns the fields to set (an empty dict leaves the file as it
        is). Returns the state after."""
        with store.locked(self.path("state.lock")):
            data = self.state()
            changes = change(data)
            if changes:
                data.update(changes)
                store.write_json(self.path("state.json"), data)
            return data

    def emit(self, action: str, **extra: str) -> None:
        """Append an event about this container to the journal (``minidock events``)."""
        record = self.record()
        attributes = {"name": record["Name"].lstrip("/"), "image": record["Config"]["Image"]}
        events.emit(self.paths.root, action, self.id, {**attributes, **extra})

    def operation_lock(self) -> Any:
        """Serialises commands that change this container (start, stop, rm, …)."""
        return store.locked(self.path("lock"))

    # --- liveness -------------------------------------------------------------------------
    def init_alive(self, state: dict[str, Any] | None = None) -> bool:
        st = state or self.state()
        return bool(st["Pid"]) and runtime.is_alive(st["Pid"], st["PidStart"])

    def monitor_alive(self, state: dict[str, Any] | None = None) -> bool:
        st = state or self.state()
        pid = st.get("MonitorPid") or 0
        return bool(pid) and runtime.is_alive(pid, st.get("MonitorPidStart", 0))

    def repair(self) -> None:
        """Fix the record after a monitor died without writing the exit (``kill -9``): if
        the state says running but the monitor is gone, learn the truth from the kernel."""
        st = self.state()
        live = (Status.RUNNING, Status.PAUSED, Status.RESTARTING)
        if st["Status"] not in live or self.monitor_alive(st):
            return
        if st["Status"] != Status.RESTARTING and self.init_alive(st):
            return  # still running, just unsupervised: stop/kill still work on it
        if st["Status"] == Status.RESTARTING:  # the exit was recorded: only the restart is lost
            self.update_state(Status=Status.EXITED.value, MonitorPid=0,
                              Error="monitor died before restarting the container")  # fmt: skip
            return
        self.cleanup_after_exit()
        self.update_state(
            Status=Status.EXITED.value,
            Pid=0,
            MonitorPid=0,
            ExitCode=255,
            Error="monitor died; exit status unknown",
            FinishedAt=now(),
        )

    # --- root filesystem ------------------------------------------------------------------
    def mount_rootfs(self, lowerdirs: list[str], id_maps: userns.IdMaps | None = None) -> None:
        """Mount the container's root: an overlayfs whose read-only lower layers are the
        image and whose upper layer (``upper/``) receives every write the container makes.
        ``work/`` is scratch space overlayfs needs on the same filesystem as ``upper/``.
        In a user namespace (``id_maps``) the layers are first made to show the container's
        root as their owner (:func:`userns.layers_for`), and ``upper/`` belongs to it."""
        if os.path.ismount(self.rootfs):
            return
        for d in ("upper", "work"):
            os.makedirs(self.path(d), mode=0o755, exist_ok=True)
        os.makedirs(self.rootfs, mode=0o755, exist_ok=True)
        if id_maps is not None:
            lowerdirs = userns.layers_for(self.dir, lowerdirs, id_maps)
            os.chown(self.path("upper"), *id_maps.root)
        options = (
            f"lowerdir={':'.join(lowerdirs)},upperdir={self.path('upper')},"
            f"workdir={self.path('work')}"
        )
        syscalls.mount(
            "overlay",
            self.rootfs,
            "overlay",
            0,
            options,
            reason="the container's root: image layers + a private writable layer",
        )

    def unmount_rootfs(self) -> None:
        if os.path.ismount(self.rootfs):
            try:
                syscalls.umount2(self.rootfs, 0, reason="the container stopped")
            except KernelError:
                syscalls.umount2(self.rootfs, syscalls.MNT_DETACH, reason="still busy: detach")
        userns.unmount_layers(self.dir)

    def cleanup_after_exit(self) -> None:
        """What must not outlive the container's processes: its runtime record (and with
        it the cgroup) and the overlay mount."""
        with contextlib.suppress(ContainerNotFound):
            runtime.delete(self.runtime_root, self.id, force=True)
        self.unmount_rootfs()

    def remove_files(self) -> None:
        """Delete the container directory (the caller made sure nothing is mounted: were an
        image layer still mounted in it, rmtree would delete the image's files through it)."""
        if any(p.startswith(f"{self.dir}/") for p in userns.mount_points()):
            raise MinidockError(f"container {self.id[:12]} still has mounts: not removing it")
        self.emit("destroy")
        trash = os.path.join(self.paths.containers, f".removing-{self.id}")
        os.rename(self.dir, trash)
        shutil.rmtree(trash)
