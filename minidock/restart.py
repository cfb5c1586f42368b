"""Restart policies: when the monitor starts an exited container again, and how long it
waits first (``--restart``). Pure logic, the same rules as Docker's restart manager
(moby ``restartmanager/restartmanager.go``):

* ``no`` never restarts; ``always`` always does; ``unless-stopped`` does unless the user
  stopped it; ``on-failure[:N]`` does when the exit code is not 0, at most N times
  (no N: no limit).
* A stop or kill by the user (``minidock stop``/``kill``) is never undone by the policy.
* The delay before each restart starts at 100 ms and doubles, up to one minute; a run
  that lasted 10 seconds or more resets it to 100 ms. A container that crashes at once
  is thus not restarted in a tight loop.
* When the host boots (``minidock start --boot``), ``always`` containers come back even
  if they had been stopped by hand, ``unless-stopped`` ones only if they had not.
"""

from __future__ import annotations

from minidock.errors import InvalidArgument

POLICIES = ("no", "always", "unless-stopped", "on-failure")
INITIAL_DELAY = 0.1  # seconds
MAX_DELAY = 60.0
RESET_AFTER = 10.0  # a run at least this long resets the delay


def parse_policy(text: str) -> dict[str, str | int]:
    """``--restart NAME[:N]`` as Docker's HostConfig.RestartPolicy."""
    name, sep, count = text.partition(":")
    if name not in POLICIES:
        raise InvalidArgument(
            f"invalid restart policy '{text}': use no, always, unless-stopped or on-failure[:N]"
        )
    retries = 0
    if sep:
        if name != "on-failure":
            raise InvalidArgument(
                f"maximum retry count cannot be used with restart policy '{name}'"
            )
        if not count.isdigit():
            raise InvalidArgument(f"invalid maximum retry count in restart policy '{text}'")
        retries = int(count)
    return {"Name": name, "MaximumRetryCount": retries}


def should_restart(policy: dict, exit_code: int, manually_stopped: bool, restarts: int) -> bool:
    """After PID 1 exited: start it again? ``restarts`` is how often the policy already did."""
    if manually_stopped:
        return False
    name = policy.get("Name") or "no"
    if name in ("always", "unless-stopped"):
        return True
    if name == "on-failure":
        limit = int(policy.get("MaximumRetryCount") or 0)
        return exit_code != 0 and (limit == 0 or restarts < limit)
    return False


def next_delay(previous: float, ran_for: float) -> float:
    """The back-off before the next restart, given the last one and how long the container
    ran this time (seconds)."""
    if ran_for >= RESET_AFTER or previous <= 0:
        return INITIAL_DELAY
    return min(previous * 2, MAX_DELAY)


def starts_on_boot(policy: dict, manually_stopped: bool) -> bool:
    """Should a container come back when the host (Docker: the daemon) starts?"""
    name = policy.get("Name") or "no"
    return name == "always" or (name == "unless-stopped" and not manually_stopped)
