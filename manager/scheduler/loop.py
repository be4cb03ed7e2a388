"""The scheduling loop (leader only): feeds the scheduler with nodes and placed tasks, and
binds pending tasks to nodes in batches.

The scheduler itself (manager/scheduler/scheduler.py) is a pure in-memory engine with per-node counters;
this loop keeps it in sync from store events instead of rescanning, and commits each batch of
decisions in one transaction.
"""
from __future__ import annotations

import asyncio
import logging
import time
from common import errors
from common.model import Task
from manager.scheduler.scheduler import Scheduler
from manager.state.replica import Replica
from manager.state.store import Transaction


log = logging.getLogger("shoal.scheduling")

_BATCH = 500


def host_ports(task: Task) -> list[tuple[str, int]]:
    return [(p.protocol, p.published_port) for p in task.ports
            if p.publish_mode == "host" and p.published_port]


def _holds_resources(task: Task) -> bool:
    return bool(task.node_id) and task.desired_up and not task.terminal


class SchedulingLoop:
    def __init__(self, replica: Replica) -> None:
        self.m = replica
        self.scheduler = Scheduler()
        self._pending: set[str] = set()
        self._waiting: set[str] = set()   # pending but nothing fitted: retried when capacity changes
        self._placed: set[str] = set()

    def _track(self, task: Task) -> None:
        if _holds_resources(task):
            if task.id not in self._placed:
                self.scheduler.task_placed(task, host_ports(task))
                self._placed.add(task.id)
        elif task.id in self._placed:
            self.scheduler.task_removed(task)
            self._placed.discard(task.id)
            self._retry_waiting()
        if task.status.state == "pending" and not task.node_id and task.desired_up:
            if task.id not in self._waiting:
                self._pending.add(task.id)
        else:
            self._pending.discard(task.id)
            self._waiting.discard(task.id)

    def _forget(self, task: Task) -> None:
        if task.id in self._placed:
            self.scheduler.task_removed(task)
            self._placed.discard(task.id)
            self._retry_waiting()
        self._pending.discard(task.id)
        self._waiting.discard(task.id)

    def _retry_waiting(self) -> None:
        self._pending |= self._waiting
        self._waiting.clear()

    async def run(self) -> None:
        queue = self.m.watch(lambda e: e.table in ("nodes", "tasks"))
        try:
            for node in self.m.store.list("nodes"):
                self.scheduler.upsert_node(node)
            for task in self.m.store.list("tasks"):
                self._track(task)
            while True:
                if self._pending:
                    try:
                        await self._schedule_pending()
                    except (errors.Conflict, errors.NotFound):
                        pass  # something moved under us: the events say what, go again
                    except errors.Unavailable as exc:
                        log.info("scheduling round failed: %s", exc.message)
                        await asyncio.sleep(0.5)
                events = await queue.get()
                await asyncio.sleep(0.01)  # gather a burst into one batch
                while True:
                    for e in events:
                        if e.table == "nodes":
                            if e.action == "delete":
                                self.scheduler.remove_node(e.obj.id)
                            else:
                                self.scheduler.upsert_node(e.obj)
                            self._retry_waiting()
                        elif e.action == "delete":
                            self._forget(e.obj)
                        else:
                            self._track(e.obj)
                    if queue.empty():
                        break
                    events = queue.get_nowait()
        finally:
            self.m.unwatch(queue)

    async def _schedule_pending(self) -> None:
        store = self.m.store
        tasks = [t for t in (store.get("tasks", tid) for tid in list(self._pending)[:_BATCH]) if t]
        if not tasks:
            return
        decisions = self.scheduler.schedule(tasks, host_ports=host_ports)
        by_id = {t.id: t for t in tasks}
        txn = Transaction()
        now = time.time()
        placed = []
        for d in decisions:
            task = by_id[d.task_id]
            if d.node_id:
                task.node_id = d.node_id
                task.status.state = "assigned"
                task.status.message = "scheduler assigned task to node"
                task.status.timestamp = now
                placed.append(task)
            elif task.status.message != d.message:
                task.status.message = d.message
            else:
                continue
            task.meta.updated_at = now
            txn.update("tasks", task)
        unplaced = {t.id for t in tasks} - {t.id for t in placed}
        if txn.ops:
            try:
                await self.m.propose(txn, timeout=5)
            except Exception:
                # Not committed: the scheduler counted these placements; take them back, and
                # everything stays pending for the next round.
                for t in placed:
                    self.scheduler.task_removed(t)
                raise
        # Placed ones come back through the commit's events; the rest wait for capacity to change.
        self._pending.difference_update(by_id)
        self._waiting |= unplaced
