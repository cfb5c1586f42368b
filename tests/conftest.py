"""Shared fixtures. Integration tests get an isolated minidock (``md``): its own state root,
its own cgroup parent and its own busybox image, and a finaliser that removes every
container, mount, cgroup and process it made — even when the test fails."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and a real kernel")
CGROUP_FS = "/sys/fs/cgroup"
#: A hybrid host's cgroup2 mount: no resource controllers, but it nests, freezes, kills and
#: runs device programs like any v2 tree (point ``MINIDOCK_CGROUP_MOUNT`` at it to use it).
UNIFIED = os.path.join(CGROUP_FS, "unified")


def cgroup_backends() -> list[str]:
    """``"host"`` (the host's own backend), plus ``"v2-on-hybrid"`` where the host is hybrid."""
    params = ["host"]
    if not os.path.exists(os.path.join(CGROUP_FS, "cgroup.controllers")) and os.path.exists(
        os.path.join(UNIFIED, "cgroup.controllers")
    ):
        params.append("v2-on-hybrid")
    return params


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A busybox root filesystem built once per session by the sample recipe."""
    out = tmp_path_factory.mktemp("samples") / "busybox"
    subprocess.run(
        [str(REPO / "rootfs-samples/busybox/build.sh"), str(out)], check=True, capture_output=True
    )
    return str(out)


class Minidock:
    """Runs ``python -m minidock`` against one private state root, as a user would."""

    def __init__(self, root: str, cgroup_parent: str) -> None:
        self.root = root
        self.cgroup_parent = cgroup_parent
        self.env = {
            **os.environ,
            "MINIDOCK_ROOT": root,
            "MINIDOCK_CGROUP_PARENT": cgroup_parent,
            "PYTHONPATH": str(REPO),
        }

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "minidock", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            cwd="/",
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"minidock {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    @property
    def engine(self):  # noqa: ANN201 — imported lazily so unit tests need no root
        from minidock.engine import Engine

        return Engine(self.root, self.cgroup_parent)

    def inspect(self, name: str) -> dict:
        return self.engine.inspect(name)

    def pid(self, name: str) -> int:
        return self.inspect(name)["State"]["Pid"]

    def cleanup(self) -> None:
        """Remove everything this instance made: containers (their monitors, processes,
        cgroups and mounts go with them), then any leftover mount or cgroup, and last the
        networks (bridges, iptables rules) of this state root."""
        from minidock.network.networks import NetworkStore

        try:
            self._remove_containers_mounts_and_cgroups()
        finally:  # the bridge and its iptables rules go even if something above failed
            NetworkStore(self.root).remove_all()

    def _remove_containers_mounts_and_cgroups(self) -> None:
        import cgroups
        from minidock import runtime

        engine = self.engine
        for c in engine.containers():
            with contextlib.suppress(Exception):  # keep cleaning up whatever fails
                engine.remove(c, force=True)
        for cid in runtime.list_ids(engine.paths.runtime):
            with contextlib.suppress(runtime.ContainerNotFound):
                runtime.delete(engine.paths.runtime, cid, force=True)
        with open("/proc/self/mountinfo") as f:
            leftovers = [line.split()[4] for line in f if self.root in line.split()[4]]
        for target in reversed(leftovers):
            subprocess.run(["umount", "-l", target], check=False)
        parent = Path(cgroups.mount_point())
        for hierarchy in [parent, *parent.iterdir()]:
            base = hierarchy / self.cgroup_parent
            if base.is_dir():
                for child in base.iterdir():
                    if child.is_dir():
                        leaf = cgroups.open_cgroup(f"{self.cgroup_parent}/{child.name}")
                        leaf.kill_all()
                        leaf.remove()
        cgroups.remove_parent_if_empty(self.cgroup_parent)


@pytest.fixture
def md(tmp_path: Path, busybox_rootfs: str) -> Minidock:
    if os.geteuid() != 0:
        pytest.skip("needs root and a real kernel")
    m = Minidock(str(tmp_path / "root"), f"minidock-test-{secrets.token_hex(4)}")
    m("import", "--change", 'CMD ["sh"]', busybox_rootfs, "busybox")
    try:
        yield m
    finally:
        m.cleanup()


def wait_for(condition, timeout: float = 10.0, interval: float = 0.02) -> bool:  # noqa: ANN001
    """Poll ``condition`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
