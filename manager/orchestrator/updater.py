"""Rolling updates and rollbacks (leader only): replace a service's outdated tasks in batches.

A task is outdated when its spec differs from the service's task template. One updater runs
per service while it has outdated tasks. Per batch (`parallelism` tasks) it:
- stop-first: tells the old tasks to shut down and creates their replacements "ready", in one
  transaction; the orchestrator starts each replacement once the task it replaces has stopped;
- start-first: creates the replacements, waits until they are up, then shuts the old ones down;
and waits until every new task of the batch is *up* before the next batch (after `delay`). Up
means running and, if the container has a health check, healthy: the agent reports the health
with the running state, so a task whose check has not passed yet is not up.

Each new task is then watched for `monitor` seconds from when it came up, as Swarm does, while
the next batches go on (the monitor period does not slow the rollout down). A new task that
fails, ends, or turns unhealthy before it came up or within its monitor period is a failure.
When more than `max_failure_ratio` of the tasks replaced so far failed, `failure_action` applies:
- pause: stop here and say why in the update status;
- continue: go on;
- rollback: put the previous spec back and roll back with `rollback_config`.
The update completes once every task is replaced and the last ones passed their monitor period.
The status (updating, paused, completed, rollback_started, rollback_paused, rollback_completed)
is part of the service object, so `service inspect` shows it and a new leader picks it up.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Optional, Protocol

from common import errors
from common.model import Service, Task, UpdateConfig
from manager.allocator.allocator import networks_outdated
from manager.state.replica import Replica
from manager.state.store import Transaction


log = logging.getLogger("shoal.updater")

# A new task that is neither up nor failed after this long counts as failed; one whose health
# check is still starting is left to its check (start period and retries bound it).
_START_TIMEOUT = 120.0
_POLL = 0.05   # after a conflicting write, before reading again
_TICK = 1.0    # the longest an update waits without looking (start timeouts are counted in s)


def outdated(svc: Service, tasks: list[Task]) -> list[Task]:
    template = svc.spec.task_template
    return sorted((t for t in tasks if t.desired_up
                   and (t.spec != template or networks_outdated(svc, t))),
                  key=lambda t: (t.slot, t.node_id))


def rolling_back(svc: Service) -> bool:
    return svc.update_status.state.startswith("rollback")


def is_up(task: Task) -> bool:
    """Running, and healthy if it has a health check ("" means it has none)."""
    return task.status.state == "running" and task.status.health in ("", "healthy")


def failure_of(task: Task) -> Optional[str]:
    """Why a new task counts as failed, or None. It failed if it ended by itself (the
    orchestrator may already have told it to shut down since) or turned unhealthy; a task
    someone shut down (scale down, a drained node: "shutdown") or whose node went away
    ("orphaned") is not the new version's fault."""
    if task.status.state in ("failed", "rejected", "complete"):
        if task.status.health == "unhealthy":
            return "unhealthy container"
        why = task.status.err or task.status.message or task.status.state
        return why.removeprefix("task: ")
    if task.status.health == "unhealthy" and task.desired_up:
        return "unhealthy container"
    return None


class _Exceeded(Exception):
    """More new tasks failed than the max failure ratio allows."""


class TaskBuilder(Protocol):
    """How the orchestrator makes a slot's new task and shuts an old one down."""

    def new_task(self, svc: Service, slot: int, node_id: str, now: float,
                 ready: bool = False) -> Task: ...

    def shut_down(self, task: Task, reason: str) -> Task: ...


class Updater:
    def __init__(self, replica: Replica, tasks: TaskBuilder, service_id: str) -> None:
        self.o = tasks
        self.m = replica
        self.service_id = service_id
        self.replaced = 0
        self.failed = 0
        self.first_failure: Optional[tuple[str, str]] = None  # task id, why
        # New task id -> end of its monitor window (monotonic); inf until it is up.
        self.watch: dict[str, float] = {}
        self.seen: set[str] = set()  # watched tasks this replica's store has shown already
        self.monitor = 0.0

    async def run(self) -> None:
        exceeded = False
        # What moves an update on arrives as store events: the service's tasks and the service.
        sid = self.service_id
        self._events = self.m.watch(lambda e: (e.table == "tasks" and e.obj.service_id == sid)
                                    or (e.table == "services" and e.obj.id == sid))
        try:
            while True:
                try:
                    if exceeded:
                        if not await self._on_failure():
                            return
                        exceeded = False
                    elif not await self._step():
                        return
                except _Exceeded:
                    exceeded = True
                except errors.Conflict:
                    # A concurrent writer (status reports, the orchestrator): nothing of this
                    # step was written; read again and redo it, keeping what was counted.
                    await asyncio.sleep(_POLL)
        except asyncio.CancelledError:
            raise
        except errors.ShoalError as exc:
            log.info("update of %s interrupted: %s", self.service_id, exc.message)
        except Exception:
            log.exception("update of %s", self.service_id)
        finally:
            self.m.unwatch(self._events)

    def _service(self) -> Service | None:
        return self.m.store.get("services", self.service_id)

    def _config(self, svc: Service) -> UpdateConfig:
        return svc.spec.rollback_config if rolling_back(svc) else svc.spec.update_config

    async def _set_status(self, svc: Service, state: str, message: str) -> None:
        svc.update_status.state = state
        svc.update_status.message = message
        if state in ("completed", "rollback_completed", "paused", "rollback_paused"):
            svc.update_status.completed_at = time.time()
        await self.m.propose(Transaction().update("services", svc))

    async def _step(self) -> bool:
        """One batch (or the final wait); False when the update is over (done, paused, or the
        service is gone). Raises _Exceeded when the failures pass the ratio."""
        svc = self._service()
        if svc is None or svc.update_status.state in ("paused", "rollback_paused"):
            return False
        cfg = self._config(svc)
        self.monitor = cfg.monitor
        self._check(cfg)
        old = outdated(svc, self.m.store.by_index("tasks", "service_id", svc.id))
        if not old:
            if self.watch:  # the last batches are still in their monitor period
                await self._wait(cfg, lambda: not self.watch)
                return True
            if svc.update_status.state in ("updating", "rollback_started"):
                if rolling_back(svc):
                    # Keep why it rolled back: that is what the operator needs to read.
                    why = svc.update_status.message
                    await self._set_status(svc, "rollback_completed",
                                           f"rollback completed ({why})" if why else "rollback completed")
                else:
                    await self._set_status(svc, "completed", "update completed")
            return False
        batch = old[: cfg.parallelism or len(old)]
        now = time.time()
        stop_first = cfg.order == "stop-first"
        fresh = [self.o.new_task(svc, t.slot, t.node_id if svc.spec.mode.is_global else "", now,
                                 ready=stop_first and not t.terminal)
                 for t in batch]
        txn = Transaction()
        for t in fresh:
            txn.create("tasks", t)
        if stop_first:
            for t in batch:
                txn.update("tasks", self.o.shut_down(t, "replaced by a rolling update"))
        await self.m.propose(txn, timeout=5)
        self.replaced += len(fresh)
        ids = [t.id for t in fresh]
        for i in ids:
            self.watch[i] = math.inf
        started: dict[str, float] = {}
        try:
            await self._wait(cfg, lambda: self._batch_settled(ids, started))
        finally:
            if cfg.order == "start-first":
                await self._shut_down_old(batch)
        if cfg.delay:
            await self._wait(cfg, lambda: False, cfg.delay)
        return True

    async def _shut_down_old(self, batch: list[Task]) -> None:
        # Retried here, not by redoing the step: that would start a second new task per slot.
        for attempt in range(20):
            txn = Transaction()
            for t in batch:
                current = self.m.store.get("tasks", t.id)
                if current is not None and current.desired_up:
                    txn.update("tasks", self.o.shut_down(current, "replaced by a rolling update"))
            if not txn.ops:
                return
            try:
                await self.m.propose(txn, timeout=5)
                return
            except errors.Conflict:
                await asyncio.sleep(_POLL)

    def _batch_settled(self, ids: list[str], started: dict[str, float]) -> bool:
        """Every new task of the batch is up or counted as failed. A task's start timeout runs
        from when it may start: a stop-first replacement first waits ("ready") for the task it
        replaces, for as long as that one's stop grace (the orchestrator bounds that wait)."""
        now = time.monotonic()
        for i in ids:
            if i not in self.watch or self.watch[i] != math.inf:
                continue  # failed (counted, unwatched) or up (its monitor window runs)
            t = self.m.store.get("tasks", i)
            if t is not None and t.desired_state == "ready":
                return False
            late = now - started.setdefault(i, now) > _START_TIMEOUT
            if late and not (t is not None and t.status.state == "running"
                             and t.status.health == "starting"):
                self._count_failure(i, f"not running after {_START_TIMEOUT:g}s "
                                       f"(state {t.status.state if t else 'unknown'})")
                continue
            return False
        return True

    async def _wait(self, cfg: UpdateConfig, done, period: Optional[float] = None) -> None:
        """Until done() (or for `period`), checking the watched tasks at each change of the
        service's tasks, and when a monitor window ends."""
        deadline = None if period is None else time.monotonic() + period
        while True:
            self._check(cfg)
            now = time.monotonic()
            if done() or (deadline is not None and now >= deadline):
                return
            # Time moves things too: a monitor window ending, a start timeout (checked at
            # least every _TICK).
            wake = min([_TICK] + [until - now for until in self.watch.values() if until > now]
                       + ([deadline - now] if deadline is not None else []))
            try:
                await asyncio.wait_for(self._events.get(), timeout=max(wake, 0.001))
            except asyncio.TimeoutError:
                pass
            while not self._events.empty():
                self._events.get_nowait()

    def _check(self, cfg: UpdateConfig) -> None:
        """Count the watched tasks that failed, start the monitor window of those that came
        up, drop those whose window passed; raise _Exceeded past the failure ratio."""
        now = time.monotonic()
        for i, until in list(self.watch.items()):
            t = self.m.store.get("tasks", i)
            if t is None:
                # Not applied here yet (just proposed), or reaped after someone shut it down.
                if i in self.seen:
                    del self.watch[i]
                continue
            self.seen.add(i)
            why = failure_of(t)
            if why is not None:
                self._count_failure(i, why)
            elif not t.desired_up or now >= until:
                del self.watch[i]  # shut down by someone else, or its window passed
                self.seen.discard(i)
            elif until == math.inf and is_up(t):
                self.watch[i] = now + self.monitor
        if self.failed and self.failed / max(1, self.replaced) > cfg.max_failure_ratio:
            raise _Exceeded()

    def _count_failure(self, task_id: str, why: str) -> None:
        self.watch.pop(task_id, None)
        self.seen.discard(task_id)
        self.failed += 1
        if self.first_failure is None:
            self.first_failure = (task_id, why)
        log.info("update of %s: new task %s failed: %s", self.service_id, task_id[:12], why)

    async def _on_failure(self) -> bool:
        """Apply the failure action; True to go on (continue, or the rollback that starts)."""
        svc = self._service()
        if svc is None:
            return False
        cfg = self._config(svc)
        task_id, why = self.first_failure or ("?", "failed")
        detail = (f"due to failure or early termination of task {task_id}: {why} "
                  f"({self.failed} of {self.replaced} updated tasks failed, max failure ratio "
                  f"{cfg.max_failure_ratio:g})")
        if cfg.failure_action == "continue":
            # Go on without raising again for the same failures: only new ones count.
            self.replaced, self.failed, self.first_failure = max(0, self.replaced - self.failed), 0, None
            return True
        if rolling_back(svc):
            await self._set_status(svc, "rollback_paused", f"rollback paused {detail}")
            return False
        if cfg.failure_action == "rollback" and svc.previous_spec is not None:
            svc.spec, svc.previous_spec = svc.previous_spec, svc.spec
            svc.update_status.started_at = time.time()
            await self._set_status(svc, "rollback_started", f"update rolled back {detail}")
            self.replaced = self.failed = 0
            self.first_failure = None
            self.watch.clear()
            self.seen.clear()
            return True
        await self._set_status(svc, "paused", f"update paused {detail}")
        return False
