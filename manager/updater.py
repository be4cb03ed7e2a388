"""Rolling updates and rollbacks (leader only): replace a service's outdated tasks in batches.

A task is outdated when its spec differs from the service's task template. One updater runs
per service while it has outdated tasks. Per batch (`parallelism` tasks) it:
- stop-first: tells the old tasks to shut down and creates their replacements, in one
  transaction;
- start-first: creates the replacements, waits until they run, then shuts the old ones down.
It then watches the new tasks for `monitor` seconds. If more than `max_failure_ratio` of the
tasks replaced so far failed, it applies `failure_action`:
- pause: stop here and say why in the update status;
- continue: go on;
- rollback: put the previous spec back and roll back with `rollback_config`.
The status (updating, paused, completed, rollback_started, rollback_paused, rollback_completed)
is part of the service object, so `service inspect` shows it and a new leader picks it up.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from common import codec, errors
from common.model import Service, Task, UpdateConfig
from manager.store import Transaction

if TYPE_CHECKING:
    from manager.orchestrator import Orchestrator

log = logging.getLogger("shoal.updater")

_START_TIMEOUT = 120.0


def outdated(svc: Service, tasks: list[Task]) -> list[Task]:
    template = svc.spec.task_template
    return sorted((t for t in tasks if t.desired_state == "running" and t.spec != template),
                  key=lambda t: (t.slot, t.node_id))


def rolling_back(svc: Service) -> bool:
    return svc.update_status.state.startswith("rollback")


class Updater:
    def __init__(self, orchestrator: "Orchestrator", service_id: str) -> None:
        self.o = orchestrator
        self.m = orchestrator.m
        self.service_id = service_id
        self.replaced = 0
        self.failed = 0

    async def run(self) -> None:
        try:
            while await self._batch():
                pass
        except asyncio.CancelledError:
            raise
        except errors.ShoalError as exc:
            log.info("update of %s interrupted: %s", self.service_id, exc.message)
        except Exception:
            log.exception("update of %s", self.service_id)

    def _service(self) -> Service | None:
        return self.m.store.get("services", self.service_id)

    async def _set_status(self, svc: Service, state: str, message: str) -> None:
        svc.update_status.state = state
        svc.update_status.message = message
        if state in ("completed", "rollback_completed", "paused", "rollback_paused"):
            svc.update_status.completed_at = time.time()
        await self.m.propose(Transaction().update("services", svc))

    async def _batch(self) -> bool:
        """One batch; False when the update is over (done, paused, or the service is gone)."""
        svc = self._service()
        if svc is None or svc.update_status.state in ("paused", "rollback_paused"):
            return False
        cfg: UpdateConfig = svc.spec.rollback_config if rolling_back(svc) else svc.spec.update_config
        tasks = self.m.store.by_index("tasks", "service_id", svc.id)
        old = outdated(svc, tasks)
        if not old:
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
        fresh = [self.o.new_task(svc, t.slot, t.node_id if svc.spec.mode.is_global else "", now)
                 for t in batch]
        txn = Transaction()
        for t in fresh:
            txn.create("tasks", t)
        if cfg.order == "stop-first":
            for t in batch:
                txn.update("tasks", self.o.shut_down(t, "replaced by a rolling update"))
        await self.m.propose(txn, timeout=5)
        started = await self._wait_started([t.id for t in fresh])
        if cfg.order == "start-first":
            txn = Transaction()
            for t in batch:
                current = self.m.store.get("tasks", t.id)
                if current is not None and current.desired_state == "running":
                    txn.update("tasks", self.o.shut_down(current, "replaced by a rolling update"))
            if txn.ops:
                await self.m.propose(txn, timeout=5)
        failures = len(fresh) - started
        if started and cfg.monitor > 0:
            failures += await self._monitor([t.id for t in fresh], cfg.monitor) - (len(fresh) - started)
        self.replaced += len(fresh)
        self.failed += max(0, failures)
        if self.failed and self.failed / self.replaced > cfg.max_failure_ratio:
            return await self._on_failure(cfg)
        if cfg.delay:
            await asyncio.sleep(cfg.delay)
        return True

    async def _wait_started(self, ids: list[str]) -> int:
        """Until each new task runs or ended; how many run."""
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            tasks = [self.m.store.get("tasks", i) for i in ids]
            if all(t is None or t.status.state == "running" or t.terminal for t in tasks):
                return sum(1 for t in tasks if t is not None and t.status.state == "running")
            await asyncio.sleep(0.05)
        return sum(1 for i in ids if (t := self.m.store.get("tasks", i)) and t.status.state == "running")

    async def _monitor(self, ids: list[str], period: float) -> int:
        """Failures among the new tasks within the monitor period."""
        deadline = time.monotonic() + period
        while True:
            failed = sum(1 for i in ids if (t := self.m.store.get("tasks", i)) is None
                         or (t.terminal and t.status.state != "complete"))
            if time.monotonic() >= deadline:
                return failed
            await asyncio.sleep(0.1)

    async def _on_failure(self, cfg: UpdateConfig) -> bool:
        svc = self._service()
        if svc is None:
            return False
        reason = (f"{self.failed} of {self.replaced} updated tasks failed (max failure ratio "
                  f"{cfg.max_failure_ratio:g})")
        if rolling_back(svc):
            if cfg.failure_action == "continue":
                return True
            await self._set_status(svc, "rollback_paused", f"rollback paused: {reason}")
            return False
        if cfg.failure_action == "continue":
            return True
        if cfg.failure_action == "rollback" and svc.previous_spec is not None:
            svc.spec, svc.previous_spec = svc.previous_spec, svc.spec
            svc.update_status.started_at = time.time()
            await self._set_status(svc, "rollback_started", f"update rolled back: {reason}")
            self.replaced = self.failed = 0
            return True
        await self._set_status(svc, "paused", f"update paused: {reason}")
        return False
