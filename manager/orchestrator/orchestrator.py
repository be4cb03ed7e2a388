"""The orchestrators (leader only): keep the tasks in the store equal to what services ask for.

One loop reacts to store changes (coalesced) and reconciles every service:
- replicated: one live task per slot 1..N; extra slots shut down;
- global: one live task per eligible node, including nodes that join later;
- jobs: run to completion (replicated-job: total completions, max concurrent; global-job: once
  per node);
- restarts (the restart supervisor): a task that ended, or whose node went down, drained or
  left, is replaced per the restart policy (condition, delay, max attempts in a window);
- the task reaper: keeps the newest N finished tasks per slot and drops the tasks of removed
  services once they stopped;
- depends_on (dependencies.py): a service that never had a task gets none until its
  dependencies meet their conditions; their events wake it.
Tasks are immutable once created: a restart is a new task for the same slot, and the old one is
told to shut down (desired_state). A replacement never runs beside the task it replaces: while
that one is still stopping, the new task is created "ready" (its node prepares it) and started
once the old one stopped, or after its stop grace and a margin if its node never says (as
SwarmKit). Conflicts with concurrent writers just cause another round.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Optional

from common import codec, errors
from common.ids import new_id
from common.model import (AVAILABILITY_ACTIVE, AVAILABILITY_DRAIN, NODE_STATE_READY, Node, Service,
                          Task, TaskStatus)
from manager.scheduler.constraints import node_matches
from manager.allocator.allocator import Allocator
from manager.state.replica import Replica, current_cluster
from manager.state.store import Transaction
from manager.orchestrator.dependencies import dependency_wait, dependents_by_name
from manager.orchestrator.updater import Updater, outdated


log = logging.getLogger("shoal.orchestrator")

_MAX_OPS_PER_TXN = 200
# Rejections (e.g. a missing image) back off: delay x 2^n, up to this.
_MAX_BACKOFF = 60.0
# A replacement waits at most the old task's stop grace plus this for it to be reported stopped
# (its node may be wedged while still heartbeating).
_STOP_WAIT = 15.0


def _failed(task: Task) -> bool:
    """Ended by itself (not shut down by us): the restart policy decides what follows."""
    return task.status.state in ("failed", "rejected", "orphaned") or (
        task.status.state == "complete")


class Orchestrator:
    def __init__(self, replica: Replica, allocator: Allocator) -> None:
        self.m = replica
        self.allocator = allocator
        self._wake = asyncio.Event()
        self._timers: dict[tuple, asyncio.TimerHandle] = {}
        # What the next round looks at: the services its events named, tasks of no service
        # (standalone containers, tasks of removed services), or everything (the first round,
        # a cluster change, a round that failed). At scale a round over every service per burst
        # of events would cost O(services) for each task's state change.
        self._dirty: set[str] = set()
        self._loose: set[str] = set()
        self._everything = True
        self._updaters: dict[str, asyncio.Task] = {}
        # Dependency name -> ids of the services that depend on it (depends_on). Built from the
        # store when needed and dropped on any service event, which may change it.
        self._dependents: Optional[dict[str, set[str]]] = None

    def kick(self) -> None:
        self._wake.set()

    def _kick_at(self, key: tuple, when: float) -> None:
        if key in self._timers:
            return
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.pop(key, None)
            # keys are (service id, slot or node) or ("promote", service id, slot or node)
            self._dirty.add(key[1] if key[0] == "promote" else key[0])
            self.kick()
        self._timers[key] = loop.call_later(max(0.0, when - time.time()), fire)

    async def run(self) -> None:
        queue = self.m.watch(lambda e: e.table in ("services", "tasks", "nodes", "clusters"))
        try:
            self.kick()
            while True:
                if queue.empty() and not self._wake.is_set():
                    getter = asyncio.ensure_future(queue.get())
                    waker = asyncio.ensure_future(self._wake.wait())
                    await asyncio.wait({getter, waker}, return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        self._note(getter.result())
                    getter.cancel()
                    waker.cancel()
                await asyncio.sleep(0.02)  # let a burst of changes land: one round for all
                while not queue.empty():
                    self._note(queue.get_nowait())
                self._wake.clear()
                try:
                    await self.reconcile()
                except (errors.Conflict, errors.NotFound):
                    self._everything = True
                    self.kick()
                except errors.Unavailable as exc:
                    log.info("orchestration round failed: %s", exc.message)
                    await asyncio.sleep(0.5)
                    self._everything = True
                    self.kick()
                except errors.ShoalError as exc:   # e.g. a network out of addresses: try again
                    log.warning("orchestration round failed: %s", exc.message)
                    await asyncio.sleep(1.0)
                    self._everything = True
                    self.kick()
        finally:
            self.m.unwatch(queue)
            for handle in self._timers.values():
                handle.cancel()
            for job in self._updaters.values():
                job.cancel()

    def _note(self, events: list) -> None:
        """Which services (and loose tasks) a batch of store events concerns."""
        store = self.m.store
        # Names of the services whose tasks or spec changed: their gated dependents may be
        # free to start now.
        changed: set[str] = set()
        for e in events:
            if e.table == "services":
                self._dirty.add(e.obj.id)
                changed.add(e.obj.spec.name)
                self._dependents = None
            elif e.table == "tasks":
                self._note_task(e.obj, changed)
            elif e.table == "nodes":
                # A node's state, availability or labels decide its tasks' fate, and which
                # nodes the global services run on.
                for t in store.by_index("tasks", "node_id", e.obj.id):
                    self._note_task(t, changed)
                self._dirty.update(s.id for s in store.list("services") if s.spec.mode.is_global)
            else:  # the cluster: its task history limit concerns every service
                self._everything = True
        if not self._everything:
            self._dirty |= self._gated_dependents(changed)

    def _note_task(self, task: Task, changed: set[str]) -> None:
        if task.service_id:
            self._dirty.add(task.service_id)
            changed.add(task.service_name)
        else:
            self._loose.add(task.id)

    def _gated_dependents(self, names: set[str]) -> set[str]:
        """The services still gated (no task yet) that depend on one of `names`. One that has
        tasks is never gated again: its dependencies' events are none of its business."""
        if not names:
            return set()
        store = self.m.store
        if self._dependents is None:
            self._dependents = dependents_by_name(store.list("services"))
        return {sid for name in names for sid in self._dependents.get(name, ())
                if not store.by_index("tasks", "service_id", sid)}

    # ---- one round ------------------------------------------------------------------------
    async def reconcile(self) -> None:
        store = self.m.store
        now = time.time()
        nodes = {n.id: n for n in store.list("nodes")}
        history = self._history_limit()
        ops: list[tuple[str, object]] = []
        dirty, loose, everything = self._dirty, self._loose, self._everything
        self._dirty, self._loose, self._everything = set(), set(), False
        if everything:
            services = {s.id: s for s in store.list("services")}
            candidates = [t for t in store.list("tasks") if t.service_id not in services]
        else:
            services = {sid: svc for sid in dirty
                        if (svc := store.get("services", sid)) is not None}
            candidates = [t for sid in dirty - services.keys()
                          for t in store.by_index("tasks", "service_id", sid)]
            candidates += [t for tid in loose if (t := store.get("tasks", tid)) is not None]
        for svc in services.values():
            tasks = store.by_index("tasks", "service_id", svc.id)
            if not tasks and svc.spec.depends_on and dependency_wait(svc, store) is not None:
                # Gated: no task yet. Its dependencies' events bring it back (_note); with no
                # task there is nothing to reap, and an update has nothing to replace.
                self._maybe_update(svc, tasks)
                continue
            if svc.spec.mode.is_global:
                ops += self._global(svc, tasks, nodes, now)
            else:
                ops += self._replicated(svc, tasks, nodes, now)
            ops += self._reap(svc, tasks, nodes, history)
            self._maybe_update(svc, tasks)
        ops += self._orphans(candidates, nodes)
        for i in range(0, len(ops), _MAX_OPS_PER_TXN):
            txn = Transaction()
            for action, obj in ops[i:i + _MAX_OPS_PER_TXN]:
                if action == "create":
                    txn.create("tasks", obj)
                elif action == "update":
                    txn.update("tasks", obj)
                else:
                    txn.delete("tasks", obj)
            try:
                await self.m.propose(txn, timeout=5)
            except BaseException:
                for action, obj in ops[i:i + _MAX_OPS_PER_TXN]:
                    if action == "create":
                        self.allocator.release_task(obj)
                raise

    def _maybe_update(self, svc: Service, tasks: list[Task]) -> None:
        """Outdated tasks are the updater's to replace, batch by batch; one updater per service."""
        job = self._updaters.get(svc.id)
        if job is not None and not job.done():
            return
        if svc.update_status.state in ("paused", "rollback_paused"):
            return
        if not outdated(svc, tasks) and svc.update_status.state not in ("updating", "rollback_started"):
            return  # nothing to replace and no update to mark completed
        self._updaters[svc.id] = asyncio.create_task(Updater(self.m, self, svc.id).run(),
                                                     name=f"update-{svc.id[:12]}")

    def _history_limit(self) -> int:
        cluster = current_cluster(self.m.store)
        return cluster.spec.orchestration.task_history_retention_limit if cluster else 5

    # ---- replicated and replicated jobs ---------------------------------------------------
    def _replicated(self, svc: Service, tasks: list[Task], nodes: dict[str, Node],
                    now: float) -> list:
        mode = svc.spec.mode
        by_slot: dict[int, list[Task]] = defaultdict(list)
        for t in tasks:
            by_slot[t.slot].append(t)
        ops: list = []
        if mode.is_job:
            wanted = mode.total_completions or mode.replicas
            completed = {s for s, ts in by_slot.items() if any(t.status.state == "complete" for t in ts)}
            running = sum(1 for ts in by_slot.values() for t in ts
                          if t.desired_up and not t.terminal)
            limit = mode.max_concurrent or wanted
            slots = [s for s in range(1, wanted + 1) if s not in completed]
        else:
            wanted = mode.replicas
            slots = list(range(1, wanted + 1))
        for slot in slots:
            slot_tasks = sorted(by_slot.get(slot, []), key=lambda t: t.meta.created_at)
            live = [t for t in slot_tasks if t.desired_up]
            replace = False
            for t in live:
                reason = self._needs_replacement(t, nodes)
                if reason is None:
                    continue
                ops.append(("update", self.shut_down(t, reason)))
                if t.status.state == "complete" and mode.is_job:
                    continue
                replace = True
            if live and not replace:
                ops += self._promote(live, slot_tasks, nodes, now, ("promote", svc.id, slot))
                continue
            last = slot_tasks[-1] if slot_tasks else None
            if last is not None and not self._may_restart(svc, slot_tasks, last, now, (svc.id, slot)):
                continue
            if mode.is_job:
                if running >= limit:
                    continue
                running += 1
            ops.append(("create", self.new_task(svc, slot, "", now,
                                                ready=self._any_stopping(slot_tasks, nodes))))
        # Scale down: slots above the count shut down (jobs keep their finished slots).
        if not mode.is_job:
            for slot, slot_tasks in by_slot.items():
                if slot > wanted:
                    for t in slot_tasks:
                        if t.desired_up:
                            ops.append(("update", self.shut_down(t, "scaled down")))
        return ops

    # ---- global and global jobs -----------------------------------------------------------
    def _global(self, svc: Service, tasks: list[Task], nodes: dict[str, Node], now: float) -> list:
        ops: list = []
        by_node: dict[str, list[Task]] = defaultdict(list)
        for t in tasks:
            by_node[t.node_id].append(t)
        placement = svc.spec.task_template.placement
        for node in nodes.values():
            node_tasks = sorted(by_node.get(node.id, []), key=lambda t: t.meta.created_at)
            live = [t for t in node_tasks if t.desired_up]
            eligible = (node.spec.availability != AVAILABILITY_DRAIN
                        and node_matches(node, placement.constraints))
            if not eligible:
                for t in live:
                    ops.append(("update", self.shut_down(t, "node no longer eligible")))
                continue
            replace = False
            for t in live:
                reason = self._needs_replacement(t, nodes)
                if reason is not None and reason != "node is down":
                    ops.append(("update", self.shut_down(t, reason)))
                    replace = not (svc.spec.mode.is_job and t.status.state == "complete")
            if live and not replace:
                ops += self._promote(live, node_tasks, nodes, now, ("promote", svc.id, node.id))
                continue
            if svc.spec.mode.is_job and any(t.status.state == "complete" for t in node_tasks):
                continue
            if node.status.state != NODE_STATE_READY or node.spec.availability != AVAILABILITY_ACTIVE:
                continue  # a paused or down node gets its task once it is active and ready
            last = node_tasks[-1] if node_tasks else None
            if last is not None and not self._may_restart(svc, node_tasks, last, now, (svc.id, node.id)):
                continue
            ops.append(("create", self.new_task(svc, 0, node.id, now,
                                                ready=self._any_stopping(node_tasks, nodes))))
        return ops

    # ---- replacements wait for the task they replace ---------------------------------------
    def _any_stopping(self, group: list[Task], nodes: dict[str, Node]) -> bool:
        return any(not self._stopped(t, nodes) for t in group)

    def _promote(self, live: list[Task], group: list[Task], nodes: dict[str, Node], now: float,
                 key: tuple) -> list:
        """Start a slot's "ready" replacement once the tasks it replaces have stopped."""
        ready = [t for t in live if t.desired_state == "ready"]
        if not ready:
            return []
        stopping = [t for t in group if not t.desired_up and not self._stopped(t, nodes)]
        if stopping:
            grace = max(t.spec.container.stop_grace_period for t in stopping)
            deadline = max(t.meta.created_at for t in ready) + grace + _STOP_WAIT
            if now < deadline:
                self._kick_at(key, deadline)
                return []
            log.warning("task %s was not reported stopped within its stop grace + %gs; starting "
                        "its replacement %s anyway", stopping[0].id[:12], _STOP_WAIT, ready[0].id[:12])
        out = []
        for t in ready:
            t = codec.clone(t)
            t.desired_state = "running"
            t.meta.updated_at = now
            out.append(("update", t))
        return out

    # ---- restart policy -------------------------------------------------------------------
    def _needs_replacement(self, task: Task, nodes: dict[str, Node]) -> Optional[str]:
        if task.terminal:
            return f"task {task.status.state}"
        if not task.node_id:
            return None
        node = nodes.get(task.node_id)
        if node is None:
            return "node removed"
        if node.status.state != NODE_STATE_READY and node.status.state != "unknown":
            return "node is down"
        if node.spec.availability == AVAILABILITY_DRAIN:
            return "node drained"
        return None

    def _may_restart(self, svc: Service, slot_tasks: list[Task], last: Task, now: float,
                     key: tuple) -> bool:
        """Whether a slot whose last task is `last` gets a new one now (or later, by timer)."""
        if not last.terminal and last.desired_up:
            return True
        if not _failed(last):
            return True  # we shut it down (node down, drain, scale up again): always replace
        policy = svc.spec.task_template.restart_policy
        if svc.spec.mode.is_job and last.status.state == "complete":
            return False
        if policy.condition == "none":
            return False
        if policy.condition == "on-failure" and last.status.state == "complete":
            return False
        if policy.max_attempts:
            window_start = now - policy.window if policy.window else 0.0
            attempts = sum(1 for t in slot_tasks if _failed(t) and t.status.timestamp >= window_start)
            if attempts >= policy.max_attempts:
                return False
        delay = policy.delay
        if last.status.state == "rejected":
            streak = 0
            for t in reversed(slot_tasks):
                if t.status.state != "rejected":
                    break
                streak += 1
            delay = min(_MAX_BACKOFF, max(delay, 1.0) * 2 ** (streak - 1))
        ended = last.status.timestamp or last.meta.updated_at
        if now < ended + delay:
            self._kick_at(key, ended + delay)
            return False
        return True

    # ---- reaping --------------------------------------------------------------------------
    def _reap(self, svc: Service, tasks: list[Task], nodes: dict[str, Node], keep: int) -> list:
        groups: dict[object, list[Task]] = defaultdict(list)
        for t in tasks:
            groups[t.slot if not svc.spec.mode.is_global else t.node_id].append(t)
        ops: list = []
        for group in groups.values():
            done = [t for t in group if not t.desired_up and self._stopped(t, nodes)]
            done.sort(key=lambda t: t.meta.created_at)
            excess = len(done) - keep
            for t in done[:max(0, excess)]:
                ops.append(("delete", t.id))
        return ops

    def _orphans(self, candidates: list[Task], nodes: dict[str, Node]) -> list:
        """Tasks of removed services: told to shut down, dropped once stopped. A standalone
        container's task goes once stopped if `container rm -f` or `--rm` asked for it, or with
        its node. `candidates` are tasks whose service is gone, or standalone ones."""
        ops: list = []
        for t in candidates:
            if t.standalone:
                gone = t.desired_state == "remove" or t.node_id not in nodes
                if (gone or (t.auto_remove and t.terminal)) and self._stopped(t, nodes):
                    ops.append(("delete", t.id))
                continue
            if self._stopped(t, nodes):
                ops.append(("delete", t.id))
            elif t.desired_up:
                ops.append(("update", self.shut_down(t, "service removed")))
        return ops

    @staticmethod
    def _stopped(task: Task, nodes: dict[str, Node]) -> bool:
        if task.terminal or not task.node_id or task.status.state in ("new", "pending"):
            return True
        node = nodes.get(task.node_id)
        return node is None or node.status.state != NODE_STATE_READY

    # ---- building tasks -------------------------------------------------------------------
    def shut_down(self, task: Task, reason: str) -> Task:
        t = codec.clone(task)
        t.desired_state = "shutdown"
        if not t.terminal and not t.status.message:
            t.status.message = reason
        t.meta.updated_at = time.time()
        return t

    def new_task(self, svc: Service, slot: int, node_id: str, now: float, ready: bool = False) -> Task:
        task = Task(id=new_id(), service_id=svc.id, service_name=svc.spec.name, slot=slot,
                    node_id=node_id, spec=codec.clone(svc.spec.task_template),
                    spec_version=svc.meta.version,
                    ports=[codec.clone(p) for p in svc.endpoint.ports or svc.spec.endpoint_spec.ports],
                    desired_state="ready" if ready else "running",
                    status=TaskStatus(state="assigned" if node_id else "pending", timestamp=now,
                                      message="assigned to its node" if node_id
                                      else "pending task scheduling"))
        task.meta.created_at = task.meta.updated_at = now
        self.allocator.allocate_task(task, svc)
        return task
