"""The dispatcher: every node's agent heartbeats here (on the leader); nodes go Ready on their
first heartbeat and Down when they miss three periods.

Heartbeat times live in memory only (writing each one through raft would be pure churn). A new
leader knows nobody's last heartbeat, so it gives every node a full grace period before it
judges, as SwarmKit does.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Optional, Protocol

from common import codec, errors, strict
from common.model import (NODE_STATE_DOWN, NODE_STATE_READY, TASK_STATE_RANK, TASK_STATES,
                          NodeDescription)
from manager.specs.configs import CONFIGS
from manager.dispatcher.netstate import digest, node_network_state
from manager.specs import registry_auths
from manager.specs.secrets import SECRETS
from manager.state.replica import Replica, current_cluster
from manager.state.store import Event, Transaction

log = logging.getLogger("shoal.dispatcher")


class Directory(Protocol):
    """Who the managers are, for the heartbeat answers that tell agents where to go."""
    node_id: str

    def manager_api_addrs(self) -> list[str]: ...

    def leader_api_addr(self) -> Optional[str]: ...

GRACE_MULTIPLIER = 3
# The leader answers every heartbeat itself: past this many per second the period it hands out
# grows with the number of nodes, as Nomad's max_heartbeats_per_second does. 500 nodes at the
# default 5 s are at it; 5,000 nodes heartbeat every 50 s and go Down after 150 s of silence.
# Measured (bench/scale_bench.py): 200 heartbeats/s cost a loaded leader 0.4 core of 2.
MAX_HEARTBEATS_PER_SECOND = 100
# When at least this many nodes are up and more than half of them fall silent in the same
# round, the likelier cause is this leader (overloaded, or cut off) rather than the nodes: they
# are marked Down only if the silence outlasts one more grace period. Kubernetes' node
# controller damps evictions the same way (its large-cluster and unhealthy-zone thresholds).
MASS_SILENCE_MIN_NODES = 50
_TOMBSTONE_LIMIT = 5000
_STATUS_FIELDS = ("state", "message", "err", "exit_code", "container_id", "health")
HEALTH_STATES = ("", "starting", "healthy", "unhealthy")


@dataclasses.dataclass
class StatusReport:
    """One task state an agent reports; null or absent fields are not reported."""
    task_id: str
    state: str
    message: Optional[str] = None
    err: Optional[str] = None
    exit_code: Optional[int] = None
    container_id: Optional[str] = None
    health: Optional[str] = None
    timestamp: Optional[float] = None


def effective_period(configured: float, nodes: int) -> float:
    return max(configured, nodes / MAX_HEARTBEATS_PER_SECOND)


class Dispatcher:
    def __init__(self, replica: Replica, directory: Directory) -> None:
        self.replica = replica
        self.directory = directory
        self._last_seen: dict[str, float] = {}
        self._told: dict[str, float] = {}  # node -> the heartbeat period its agent was last given
        # Assignment streams: agents ask for what changed since the index they last saw. An
        # answer's index is the last change this dispatcher has noted (tombstones included),
        # never the store's newer one: a task deleted in between would otherwise fall behind
        # the index its node goes on from, and its removal would never reach the node.
        self._start_index = replica.store.index
        self._noted_index = self._start_index
        self._changed: dict[str, asyncio.Event] = {}
        # Peer tables and backends depend on every node's tasks: such changes wake every stream.
        self._net_epoch = 0
        self._tombstones: dict[str, list[tuple[int, str]]] = {}
        self._oldest_tombstone: dict[str, int] = {}
        # Status reports from all agents, committed together.
        self._status_queue: list[tuple[str, dict, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.heartbeats = 0  # received by this dispatcher (manager/metrics.py)
        self._mass_silence_since: float | None = None

    @property
    def period(self) -> float:
        """The heartbeat period agents are given: the swarm's, longer for a large swarm."""
        cluster = current_cluster(self.replica.store)
        configured = cluster.spec.dispatcher.heartbeat_period if cluster else 5.0
        return effective_period(configured, self.replica.store.count("nodes"))

    def session_count(self) -> int:
        """Nodes whose agent heartbeated to this dispatcher within its grace period."""
        now = time.monotonic()
        return sum(1 for node_id, period in self._told.items()
                   if now - self._last_seen.get(node_id, 0.0) <= period * GRACE_MULTIPLIER)

    async def heartbeat(self, node_id: str, addr: str, description: dict | None) -> dict:
        self.heartbeats += 1
        self._last_seen[node_id] = time.monotonic()
        period = self.period
        self._told[node_id] = period
        store = self.replica.store
        # The stored node, not a copy: nearly every heartbeat changes nothing, and thousands of
        # nodes heartbeat every few seconds.
        stored = store.peek("nodes", node_id)
        if stored is None:
            from common.errors import NotFound
            raise NotFound(f"node {node_id} is not part of this swarm (it was removed); "
                           f"run 'shoal swarm leave --force' on it and join again")
        desc = strict.decode(NodeDescription, description, "description") if description else None
        if (stored.status.state != NODE_STATE_READY or stored.status.addr != addr
                or (desc is not None and desc != stored.description)):
            node = codec.clone(stored)
            node.status.state, node.status.message, node.status.addr = NODE_STATE_READY, "", addr
            if desc is not None:
                node.description = desc
            node.meta.updated_at = time.time()
            await self.replica.propose(Transaction().update("nodes", node, check_version=False))
        return {
            "period": period,
            "role": stored.role,
            "managers": self.directory.manager_api_addrs(),
            "leader": self.directory.leader_api_addr(),
        }

    async def run(self) -> None:
        await asyncio.gather(self._watch_heartbeats(), self._watch_tasks())

    async def _watch_tasks(self) -> None:
        queue = self.replica.watch(
            lambda e: e.table in ("tasks", "services", "networks", "nodes"))
        # Changes before the watch began have no tombstones here: older indexes get full answers.
        self._start_index = self._noted_index = self.replica.store.index
        try:
            while True:
                batch = await queue.get()
                for e in batch:
                    if e.table == "tasks":
                        self._note(e)
                    if _changes_network_state(e):
                        self._net_epoch += 1
                        for event in self._changed.values():
                            event.set()
                if batch:
                    self._noted_index = max(self._noted_index, batch[-1].index)
        finally:
            self.replica.unwatch(queue)

    def _note(self, e: Event) -> None:
        for node_id in {e.obj.node_id, e.old.node_id if e.old is not None else ""} - {""}:
            if e.action == "delete" or (e.old is not None and e.old.node_id == node_id != e.obj.node_id):
                stones = self._tombstones.setdefault(node_id, [])
                stones.append((e.index, e.obj.id))
                if len(stones) > _TOMBSTONE_LIMIT:
                    dropped = stones[: len(stones) - _TOMBSTONE_LIMIT]
                    del stones[: len(dropped)]
                    self._oldest_tombstone[node_id] = dropped[-1][0]
            self._changed.setdefault(node_id, asyncio.Event()).set()

    async def assignments(self, node_id: str, since: int, wait: float,
                          net_digest: str = "") -> dict:
        """This node's tasks that changed after index `since` (all of them when `since` is
        older than what this leader can tell apart), and the ids of those removed; the node's
        network state when its digest differs from `net_digest`.
        Waits up to `wait` seconds for a change when there is none."""
        deadline = time.monotonic() + wait
        while True:
            event = self._changed.setdefault(node_id, asyncio.Event())
            event.clear()
            answer = self._assignment_delta(node_id, since)
            net = node_network_state(self.replica.store, node_id)
            answer["net_digest"] = digest(net)
            if answer["net_digest"] != net_digest:
                answer["network"] = net
            remaining = deadline - time.monotonic()
            if (answer["full"] or answer["tasks"] or answer["removed"] or "network" in answer
                    or remaining <= 0):
                return answer
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def _assignment_delta(self, node_id: str, since: int) -> dict:
        store = self.replica.store
        index = self._noted_index
        # A node ahead of what this dispatcher has noted (its index came from an earlier leader)
        # cannot be given a delta: no tombstone here covers the gap.
        full = (since <= 0 or since < self._start_index or since > index
                or since < self._oldest_tombstone.get(node_id, 0))
        tasks = store.by_index("tasks", "node_id", node_id)
        if not full:
            # Changes newer than `index` come in the next answer, once their events are noted.
            tasks = [t for t in tasks if since < t.meta.version <= index]
        removed = [] if full else [tid for idx, tid in self._tombstones.get(node_id, ()) if idx > since]
        return {"index": index, "full": full, "removed": removed,
                "tasks": [codec.to_plain(t) for t in tasks],
                "secrets": SECRETS.for_tasks(store, tasks),
                "configs": CONFIGS.for_tasks(store, tasks),
                "registry_auths": registry_auths.for_tasks(store, tasks)}

    async def report_status(self, node_id: str, updates: list[dict]) -> None:
        """Record task states reported by a node's agent; returns once they are committed."""
        futures = []
        loop = asyncio.get_running_loop()
        checked = []
        for i, plain in enumerate(updates):
            where = f"updates[{i}]"
            report = strict.decode(StatusReport, plain, where)
            if report.state not in TASK_STATE_RANK:
                raise errors.InvalidArgument(f"{where}.state: unknown task state {report.state!r}: "
                                             f"one of {', '.join(TASK_STATES)}",
                                             field=f"{where}.state")
            if report.health not in (None, *HEALTH_STATES):
                raise errors.InvalidArgument(f"{where}.health: one of {', '.join(HEALTH_STATES)}",
                                             field=f"{where}.health")
            if report.timestamp is not None:
                strict.seconds(report.timestamp, f"{where}.timestamp")
            # Only what was reported: absent fields keep the task's current values.
            checked.append({k: v for k, v in dataclasses.asdict(report).items() if v is not None})
        for update in checked:
            fut = loop.create_future()
            self._status_queue.append((node_id, update, fut))
            futures.append(fut)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_status())
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*futures)), 15)
        except asyncio.TimeoutError:
            raise errors.Unavailable("the task states could not be committed in time; the agent "
                                     "resends them") from None

    async def _flush_status(self) -> None:
        try:
            await self._flush_batch()
        finally:
            # Whatever happened to this batch, reports queued meanwhile get their own flush.
            if self._status_queue:
                self._flusher = asyncio.create_task(self._flush_status())

    async def _flush_batch(self) -> None:
        await asyncio.sleep(0.03)  # gather reports from many agents into one transaction
        batch, self._status_queue = self._status_queue, []
        for attempt in range(6):
            txn = Transaction()
            store = self.replica.store
            for node_id, update, _ in batch:
                task = store.get("tasks", update["task_id"])
                if task is None or task.node_id != node_id:
                    continue  # reaped, or not this node's: nothing to record
                new_rank = TASK_STATE_RANK[update["state"]]
                cur_rank = TASK_STATE_RANK.get(task.status.state, 0)
                if new_rank < cur_rank or (new_rank == cur_rank and all(
                        update.get(f, getattr(task.status, f)) == getattr(task.status, f)
                        for f in _STATUS_FIELDS)):
                    continue  # states only move forward
                for f in _STATUS_FIELDS:
                    if f in update:
                        setattr(task.status, f, update[f])
                task.status.timestamp = float(update.get("timestamp") or time.time())
                task.meta.updated_at = time.time()
                txn.update("tasks", task)
            try:
                if txn.ops:
                    await self.replica.propose(txn, timeout=5)
                break
            except errors.Conflict:
                continue  # the orchestrator changed one of them: read again and re-apply
            except Exception as exc:
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                return
        for _, _, fut in batch:
            if not fut.done():
                fut.set_result(None)

    async def _watch_heartbeats(self) -> None:
        """Mark nodes Down that missed their heartbeats (leader only)."""
        while True:
            period = self.period
            await asyncio.sleep(min(period / 2, 1.0))
            now = time.monotonic()
            deadline = period * GRACE_MULTIPLIER
            nodes = self.replica.store.list("nodes")
            # A node's grace starts when this leader first sees it: one that joins long after
            # the leader started has not missed the heartbeats it never had a chance to send.
            for node in nodes:
                self._last_seen.setdefault(node.id, now)
            for gone in self._last_seen.keys() - {node.id for node in nodes}:
                del self._last_seen[gone]       # a removed node
                self._told.pop(gone, None)
            silent: dict[str, float] = {}
            up = 0
            for node in nodes:
                if node.status.state == NODE_STATE_DOWN:
                    continue
                if node.id == self.directory.node_id:
                    continue  # the leader is alive by definition
                up += 1
                seen = self._last_seen[node.id]
                # A node heartbeats at the period it was last told: after the period is made
                # shorter, it learns the new one only with its next heartbeat.
                allowed = max(deadline, self._told.get(node.id, 0.0) * GRACE_MULTIPLIER)
                if now - seen > allowed:
                    silent[node.id] = now - seen
            if silent and not self._hold_mass_silence(len(silent), up, now, deadline):
                await self._mark_down(silent)

    def _hold_mass_silence(self, silent: int, up: int, now: float, grace: float) -> bool:
        """True while most nodes are silent at once and that has lasted less than one more
        grace period (see MASS_SILENCE_MIN_NODES)."""
        if up < MASS_SILENCE_MIN_NODES or silent * 2 <= up:
            self._mass_silence_since = None
            return False
        if self._mass_silence_since is None:
            self._mass_silence_since = now
            log.warning("%d of %d nodes missed their heartbeats at once: more likely this leader "
                        "is overloaded or cut off than that they all failed; they are marked "
                        "Down if the silence lasts %.0f s more", silent, up, grace)
        return now - self._mass_silence_since <= grace

    async def _mark_down(self, silent: dict[str, float]) -> None:
        """One transaction for every node found silent in a round: when a rack (or a thousand
        simulated nodes) goes, one commit rather than one each."""
        txn, down = Transaction(), []
        for node_id, silent_for in silent.items():
            node = self.replica.store.get("nodes", node_id)
            if node is None or node.status.state == NODE_STATE_DOWN:
                continue
            node.status.state = NODE_STATE_DOWN
            node.status.message = f"heartbeat failure: no heartbeat for {silent_for:.1f}s"
            node.meta.updated_at = time.time()
            txn.update("nodes", node)
            down.append(node)
        if not down:
            return
        try:
            await self.replica.propose(txn)
        except Exception as exc:  # conflict or lost leadership: the next round decides again
            log.debug("marking %d node(s) down failed: %s", len(down), exc)
            return
        for node in down:
            log.info("node %s (%s) is down: %s", node.id, node.description.hostname,
                     node.status.message)


def _changes_network_state(e: Event) -> bool:
    if e.table in ("services", "networks"):
        return True
    if e.table == "nodes":
        return e.old is None or e.action == "delete" or (
            e.obj.status.addr, e.obj.ingress_attachment) != (e.old.status.addr, e.old.ingress_attachment)
    # tasks: only those on a network, and only what moves endpoints or backends
    if not e.obj.networks:
        return False
    if e.old is None or e.action == "delete":
        return True
    return ((e.obj.node_id, e.obj.desired_state, e.obj.status.state,
             getattr(e.obj.status, "health", ""))
            != (e.old.node_id, e.old.desired_state, e.old.status.state,
                getattr(e.old.status, "health", "")))
