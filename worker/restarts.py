"""Docker's restart policies for standalone containers (`container run --restart`): whether a
container that exited runs again, and after how long.

A service's task is never run twice: the orchestrator replaces it with a new task. A standalone
container has no orchestrator behind it, so its node runs the same container again, as Docker
does, keeping its name, addresses, writable layer and log.
"""
from __future__ import annotations

from typing import Optional

from common.model import ContainerRestartPolicy

# Docker's backoff: 100 ms, doubled before each restart up to a minute, and back to 100 ms once
# a run has lasted 10 s.
FIRST_DELAY = 0.1
MAX_DELAY = 60.0
STEADY_RUN = 10.0


class Restarts:
    def __init__(self, policy: Optional[ContainerRestartPolicy], count: int = 0) -> None:
        self.policy = policy
        self.count = count  # restarts so far, kept across agent restarts by the executor
        self._delay = 0.0

    def after_exit(self, exit_code: Optional[int], ran_for: float) -> Optional[float]:
        """Seconds to wait before the next run, or None: the container stays exited. An exit
        code that could not be known counts as a failure."""
        policy = self.policy
        if policy is None or policy.name == "no":
            return None
        if policy.name == "on-failure":
            if exit_code == 0:
                return None
            if policy.maximum_retry_count and self.count >= policy.maximum_retry_count:
                return None
        if not self._delay or ran_for >= STEADY_RUN:
            self._delay = FIRST_DELAY
        else:
            self._delay = min(self._delay * 2, MAX_DELAY)
        self.count += 1
        return self._delay

    def describe(self) -> str:
        policy = self.policy
        if policy is None:
            return "no"
        if policy.name == "on-failure" and policy.maximum_retry_count:
            return f"on-failure:{policy.maximum_retry_count}"
        return policy.name
