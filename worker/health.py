"""Health checks: the image's HEALTHCHECK or the service's, run inside the container.

The rules are Docker's (daemon/health.go):
- the first probe runs one interval after the container started, each next one an interval
  after the previous one ended;
- a probe is the test command run in the container (`runc exec`, the container's user, env and
  cwd): ["CMD", argv...] as is, ["CMD-SHELL", "cmd"] through `/bin/sh -c`; exit 0 is healthy,
  anything else, an exec error or running past the timeout is a failure;
- the status starts as "starting"; a passing probe makes it "healthy" and clears the failing
  streak; a failure adds to the streak, and `retries` failures in a row make it "unhealthy";
- during the start period failures do not count while the status is still "starting" (a
  container that was healthy once is judged normally from then on).
A task whose container turns unhealthy is failed by its controller (worker/taskrunner.py), and
the restart policy replaces it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from common import errors, linux
from common.model import HealthConfig
from worker.executor import ExecTimeout, Executor

log = logging.getLogger("shoal.health")

STARTING = "starting"
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"

# Docker's defaults for what neither the service nor the image sets.
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
MAX_OUTPUT = 4096          # as Docker: the probe's output is cut to this many bytes
LOG_LENGTH = 5             # probe results kept, as Docker's Health.Log

_NS = 1e9


@dataclass
class ProbeResult:
    started: float          # epoch seconds
    ended: float
    exit_code: int          # -1: the probe timed out or could not be run
    output: str


def from_image(image_config: Optional[dict]) -> Optional[HealthConfig]:
    """The Healthcheck of an OCI/Docker image config ({Test, Interval, Timeout, StartPeriod,
    Retries}, durations in nanoseconds), or None if the image has none."""
    hc = (image_config or {}).get("Healthcheck")
    if not isinstance(hc, dict):
        return None

    def seconds(key: str) -> float:
        value = hc.get(key) or 0
        return float(value) / _NS if isinstance(value, (int, float)) and value > 0 else 0.0

    test = hc.get("Test") or []
    if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        return None
    retries = hc.get("Retries") or 0
    return HealthConfig(test=list(test), interval=seconds("Interval"), timeout=seconds("Timeout"),
                        start_period=seconds("StartPeriod"),
                        retries=retries if isinstance(retries, int) and retries > 0 else 0)


def effective(service: Optional[HealthConfig], image: Optional[HealthConfig]) -> Optional[HealthConfig]:
    """What runs: the service's settings over the image's (field by field, as Docker merges
    them), with Docker's defaults under both; None when there is no test or it is ["NONE"]."""
    svc = service or HealthConfig()
    img = image or HealthConfig()
    test = svc.test or img.test
    if not test or test[0] == "NONE":
        return None
    return HealthConfig(test=list(test),
                        interval=svc.interval or img.interval or DEFAULT_INTERVAL,
                        timeout=svc.timeout or img.timeout or DEFAULT_TIMEOUT,
                        start_period=svc.start_period or img.start_period,
                        retries=svc.retries or img.retries or DEFAULT_RETRIES)


def probe_argv(test: list[str]) -> list[str]:
    kind, rest = test[0], test[1:]
    if kind == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(rest)]
    if kind == "CMD":
        return list(rest)
    # Docker accepts a bare command list written without the kind: run it as CMD.
    return list(test)


class HealthMonitor:
    """Probes one running container until it turns unhealthy (or is cancelled).

    The status begins as "starting" (the caller reports that with the task's "running");
    `on_change(status, last_result)` is called on every change after that.
    """

    def __init__(self, executor: Executor, container_id: str, config: HealthConfig,
                 on_change: Callable[[str, Optional[ProbeResult]], None],
                 started_at: Optional[float] = None) -> None:
        self.executor = executor
        self.container_id = container_id
        self.config = config
        self.on_change = on_change
        self.started_at = time.monotonic() if started_at is None else started_at
        self.status = STARTING
        self.failing_streak = 0
        self.log: deque[ProbeResult] = deque(maxlen=LOG_LENGTH)

    async def run(self) -> str:
        """Returns UNHEALTHY once the container is; returns early if the container stops."""
        argv = probe_argv(self.config.test)
        while True:
            await asyncio.sleep(self.config.interval)
            try:
                result = await self.probe(argv)
            except errors.FailedPrecondition:
                return self.status  # the container is not running any more: nothing to judge
            self._judge(result)
            if self.status == UNHEALTHY:
                return self.status

    async def probe(self, argv: list[str]) -> ProbeResult:
        started = time.time()
        try:
            code, output = await self.executor.exec(self.container_id, argv,
                                                    timeout=self.config.timeout)
        except ExecTimeout:
            code, output = -1, f"Health check exceeded timeout ({self.config.timeout:g}s)"
        except errors.NotFound:
            raise errors.FailedPrecondition(f"container {self.container_id} is gone") from None
        except errors.FailedPrecondition:
            if self.executor.inspect(self.container_id).state != "running":
                raise
            code, output = -1, "the health check could not be run"
        except OSError as exc:  # e.g. runc could not be spawned: a failed probe, not a crash
            code, output = -1, f"the health check could not be run: {exc}"
        if code != 0 and await self._exited():
            # The container ended under the probe: that says nothing about its health.
            raise errors.FailedPrecondition(f"container {self.container_id} stopped")
        return ProbeResult(started=started, ended=time.time(), exit_code=code,
                           output=output[:MAX_OUTPUT])

    async def _exited(self) -> bool:
        """Whether the container has stopped; its exit is noticed a moment after it happens
        (pidfd), so a failed probe gives it that moment; on a loaded machine the moment can be
        longer, so a dead or zombie init process counts as stopped too."""
        try:
            await asyncio.wait_for(asyncio.shield(self.executor.wait(self.container_id)), 0.05)
            return True
        except asyncio.TimeoutError:
            pid = self.executor.inspect(self.container_id).pid
            return pid > 0 and not linux.pid_alive(pid)
        except errors.NotFound:
            return True

    def _judge(self, result: ProbeResult) -> None:
        self.log.append(result)
        before = self.status
        if result.exit_code == 0:
            self.failing_streak = 0
            self.status = HEALTHY
        elif not (self.status == STARTING and self.config.start_period > 0
                  and time.monotonic() - self.started_at < self.config.start_period):
            self.failing_streak += 1
            if self.failing_streak >= self.config.retries:
                self.status = UNHEALTHY
        if self.status != before:
            log.info("container %s: %s -> %s (probe exit %d)", self.container_id[:12], before,
                     self.status, result.exit_code)
            self.on_change(self.status, result)

    def describe_failure(self) -> str:
        """Why it is unhealthy, from the last probe: for the task's status message."""
        last = self.log[-1] if self.log else None
        if last is None:
            return "unhealthy container"
        output = " ".join(last.output.split())
        if len(output) > 200:
            output = output[:197] + "..."
        what = "timed out" if last.exit_code == -1 and "timeout" in last.output else \
            f"exit code {last.exit_code}"
        return (f"unhealthy container: {self.failing_streak} failed health checks in a row "
                f"(last: {what}{': ' + output if output else ''})")
