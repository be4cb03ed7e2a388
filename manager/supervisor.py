"""The leader's loops (dispatcher, allocator, orchestrator, scheduler) under supervision.

A leader loop must never end. One that raises anyway (a bug, a value in the store it did not
expect) is logged with its traceback and started again, fresh, after a backoff, so one bad round
does not stop scheduling for good; its failures are kept for `shoal info`, so that it is not
only the log that knows."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Awaitable, Callable

log = logging.getLogger("shoal.manager")

# Makes one fresh loop object and returns its run() coroutine: a loop whose state was corrupted
# by the failure starts clean.
LoopFactory = Callable[[], Awaitable[None]]


@dataclass
class Backoff:
    first: float = 0.1        # the first restart comes quickly: most failures are one bad round
    limit: float = 10.0       # a loop failing at once on every start does not spin
    healthy_after: float = 60.0   # a run this long was not part of a crash series

    def next(self, previous: float | None, ran_for: float) -> float:
        """The wait before the next start, given the previous wait (None: none yet)."""
        if previous is None or ran_for >= self.healthy_after:
            return self.first
        return min(previous * 2, self.limit)


@dataclass
class LoopFailure:
    loop: str
    count: int = 0
    last_error: str = ""
    last_at: float = 0.0      # wall clock, for people
    restarting: bool = False  # waiting out its backoff now

    def view(self) -> dict:
        return asdict(self)


class LoopSupervisor:
    """Runs one leader loop until cancelled, starting it again whenever it ends."""

    def __init__(self, name: str, factory: LoopFactory, failures: dict[str, LoopFailure], *,
                 backoff: Backoff | None = None) -> None:
        self.name = name
        self._factory = factory
        self._failures = failures      # shared by a manager's supervisors: what `info` shows
        self._backoff = backoff or Backoff()

    def start(self) -> asyncio.Task:
        # The first loop object is made now, not once the task first runs: whatever the factory
        # sets up (the manager's dispatcher) is in place when this returns.
        first = self._factory()
        task = asyncio.create_task(self._supervise(first), name=self.name)
        # Cancelled before its first step, the task never awaits `first`: close it (a no-op
        # once it has run) so that it is not reported as never awaited.
        task.add_done_callback(lambda _: _close(first))
        return task

    async def _supervise(self, first: Awaitable[None]) -> None:
        run: Awaitable[None] | None = first
        wait: float | None = None
        while True:
            started = time.monotonic()
            try:
                await (run if run is not None else self._factory())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error, exc_info = f"{type(exc).__name__}: {exc}", exc
            else:
                error, exc_info = "ended by itself", None
            run = None
            wait = self._backoff.next(wait, time.monotonic() - started)
            failure = self._record(error)
            log.error("leader loop %s %s (failure %d): starting it again in %.1f s", self.name,
                      "failed" if exc_info else "ended by itself", failure.count, wait,
                      exc_info=exc_info)
            try:
                await asyncio.sleep(wait)
            finally:
                failure.restarting = False

    def _record(self, error: str) -> LoopFailure:
        failure = self._failures.setdefault(self.name, LoopFailure(self.name))
        failure.count += 1
        failure.last_error = error[:500]
        failure.last_at = time.time()
        failure.restarting = True
        return failure


def _close(run: Awaitable[None]) -> None:
    close = getattr(run, "close", None)
    if close is not None:
        close()
