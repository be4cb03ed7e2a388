"""The manager role of a node: the replicated store over raft, and the loops that only the
leader runs (dispatcher, ...). The control API (manager/controlapi/) works on this object."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Awaitable, Optional

from common import errors
from common.aio import cancel_and_wait
from common.model import NODE_ROLE_MANAGER, Cluster, Node
from common.nodestate import API_PORT, NodeFiles, NodeState
from manager.allocator.allocator import Allocator
from manager.allocator.loop import AllocatorLoop
from manager.diskguard import RaftDiskGuard
from manager.dispatcher.dispatcher import Dispatcher
from manager.events import recorder as event_recorder
from manager.orchestrator.orchestrator import Orchestrator
from manager.scheduler.loop import SchedulingLoop
from manager.state.raft.node import RaftNode, RaftTimings
from manager.state.store import Store, Transaction, TxnResult
from manager.supervisor import LoopFactory, LoopFailure, LoopSupervisor
from manager.state.watch import WatchHub

log = logging.getLogger("shoal.manager")

_RESULT_ERRORS = {"conflict": errors.Conflict, "not_found": errors.NotFound,
                  "exists": errors.Conflict, "invalid": errors.InvalidArgument}

class Manager:
    def __init__(self, files: NodeFiles, state: NodeState, *, bind_addr: str | None = None,
                 timings: RaftTimings | None = None) -> None:
        self.files = files
        self.state = state
        self.store = Store()
        self.raft: Optional[RaftNode] = None
        self.hub: Optional[WatchHub] = None
        self.dispatcher = Dispatcher(self, self)
        self.allocator = Allocator(self.store)
        self.disk_guard = RaftDiskGuard(self)
        self._bind_addr = bind_addr
        self._timings = timings
        self._tasks: list[asyncio.Task] = []
        self._leader_tasks: list[asyncio.Task] = []
        self.loop_failures: dict[str, LoopFailure] = {}   # by loop name (manager.supervisor)
        # Raft allows one membership change at a time; joins and demotions queue here.
        self.membership_lock = asyncio.Lock()

    @property
    def node_id(self) -> str:
        return self.state.node_id

    @property
    def raft_dir(self) -> Path:
        return self.files.raft_dir

    @property
    def heartbeat_period(self) -> float:
        return self.dispatcher.period

    async def start(self) -> None:
        self.hub = WatchHub(self.store, asyncio.get_running_loop())
        # Before raft exists: the events of the journal's replay are history too.
        event_recorder.attach(self)
        partners = [a for a in self.state.raft_members if a != self.state.raft_addr]
        self.raft = RaftNode(self.store, self.state.raft_addr, partners, self.files.raft_dir,
                             self.files.load_raft_secret(), bind_addr=self._bind_addr,
                             timings=self._timings)
        self._tasks = [asyncio.create_task(self._watch_leadership(), name="leadership"),
                       asyncio.create_task(self._persist_members(), name="raft-members"),
                       asyncio.create_task(self._follow_raft_settings(), name="raft-settings")]

    async def stop(self) -> None:
        await self._stop_leader_loops()
        await cancel_and_wait(self._tasks)
        if self.raft is not None:
            await asyncio.to_thread(self.raft.close)
            self.raft = None
        await event_recorder.detach(self)
        if self.hub is not None:
            self.hub.close()

    def watch(self, accept=None) -> asyncio.Queue:
        return self.hub.watch(accept)

    def unwatch(self, queue: asyncio.Queue) -> None:
        self.hub.unwatch(queue)

    # ---- leadership -------------------------------------------------------------------------
    async def _watch_leadership(self) -> None:
        """Starts the leader loops when raft makes this manager the leader and stops them when it
        is not any more; raft's state-change callback wakes it."""
        leading = False
        while True:
            self.raft.state_changes.clear()
            now_leading = self.raft.is_leader
            if now_leading and not leading:
                if not await self._caught_up_as_leader():
                    continue  # not the leader any more: look again
                log.info("this manager is the leader now (term %s)", self.raft.term)
                self.allocator = Allocator(self.store)
                self._leader_tasks = [s.start() for s in self._leader_loops()]
            elif leading and not now_leading:
                log.info("this manager is not the leader any more")
                await self._stop_leader_loops()
            leading = now_leading
            await self.raft.state_changes.wait()

    async def _caught_up_as_leader(self) -> bool:
        """A new leader's log holds every committed entry, but it learns which ones are
        committed (and applies them) only once an entry of its own term commits. Its loops must
        not decide on a store without them: an orchestrator did, and created the slots of the
        old leader's last transaction a second time. So a no-op first; False if leadership was
        lost meanwhile."""
        while self.raft.is_leader:
            try:
                await self.raft.barrier(timeout=5.0)
                return True
            except errors.ShoalError as exc:  # no quorum yet, or a full disk: wait and retry
                log.info("new leader: waiting to apply the earlier terms' commits (%s)",
                         exc.message)
                await asyncio.sleep(0.2)
        return False

    def _leader_loops(self) -> list[LoopSupervisor]:
        def dispatcher() -> Awaitable[None]:
            # The API reaches the dispatcher through the manager: each start replaces it.
            self.dispatcher = Dispatcher(self, self)
            return self.dispatcher.run()
        # A restarted allocator loop misses the releases of the events it was down for: those
        # addresses stay taken (a leak until the next leader), never handed out twice.
        factories: dict[str, LoopFactory] = {
            "dispatcher": dispatcher,
            "allocator": lambda: AllocatorLoop(self, self.allocator).run(),
            "orchestrator": lambda: Orchestrator(self, self.allocator).run(),
            "scheduler": lambda: SchedulingLoop(self).run()}
        return [LoopSupervisor(name, make, self.loop_failures) for name, make in factories.items()]

    def leader_loops_view(self) -> dict:
        """For `shoal info`: whether this manager runs the leader loops, and every loop that
        failed on it (since the daemon started), how often, and its last error."""
        return {"running": bool(self._leader_tasks),
                "failures": [f.view() for f in self.loop_failures.values()]}

    async def _stop_leader_loops(self) -> None:
        await cancel_and_wait(self._leader_tasks)
        self._leader_tasks = []

    async def _follow_raft_settings(self) -> None:
        """Every manager snapshots its own log: each applies the swarm's raft settings as they
        change (`swarm update --snapshot-interval/--max-snapshots`)."""
        queue = self.watch(lambda e: e.table == "clusters")
        try:
            while True:
                cluster = self.cluster()
                if cluster is not None and self.raft is not None:
                    self.raft.set_snapshot_interval(cluster.spec.raft.snapshot_interval)
                    self.raft.set_keep_old_snapshots(cluster.spec.raft.keep_old_snapshots)
                await queue.get()
        finally:
            self.unwatch(queue)

    async def _persist_members(self) -> None:
        """A restarting manager needs its peers before it can read its own log: keep them on disk."""
        unsaved = False
        while True:
            await asyncio.sleep(1.0)
            if self.raft is None:
                continue
            members = sorted(self.raft.member_addrs())
            if unsaved or members != sorted(self.state.raft_members):
                self.state.raft_members = members
                unsaved = not self.files.try_save_state(self.state)

    @property
    def is_leader(self) -> bool:
        return self.raft is not None and self.raft.is_leader

    def require_leader(self) -> None:
        if not self.is_leader:
            raise errors.Unavailable(self.no_leader_reason())

    def no_leader_reason(self) -> str:
        if self.raft is None:
            return "the manager is not running"
        members = self.raft.members()
        up = sum(1 for m in members if m.connected)
        return (f"no quorum: this manager reaches {up} of {len(members)} managers and no leader "
                f"is elected; a majority ({len(members) // 2 + 1}) must be reachable")

    async def propose(self, txn: Transaction, timeout: float = 1.5) -> TxnResult:
        self.require_leader()
        result = await self.raft.commit(txn, timeout)
        if not result.ok:
            raise _RESULT_ERRORS.get(result.code, errors.ShoalError)(result.message)
        return result

    # ---- views used by the API and the dispatcher -----------------------------------------
    def cluster(self) -> Optional[Cluster]:
        clusters = self.store.list("clusters")
        return clusters[0] if clusters else None

    def manager_nodes(self) -> list[Node]:
        return sorted(self.store.by_index("nodes", "role", NODE_ROLE_MANAGER), key=lambda n: n.id)

    def manager_api_addrs(self) -> list[str]:
        return sorted(n.manager_status.api_addr for n in self.manager_nodes()
                      if n.manager_status and n.manager_status.api_addr)

    def node_by_raft_addr(self, raft_addr: str) -> Optional[Node]:
        for n in self.manager_nodes():
            if n.manager_status and n.manager_status.raft_addr == raft_addr:
                return n
        return None

    def leader_api_addr(self) -> Optional[str]:
        if self.raft is None or self.raft.leader_addr is None:
            return None
        leader = self.raft.leader_addr
        node = self.node_by_raft_addr(leader)
        if node is not None and node.manager_status.api_addr:
            return node.manager_status.api_addr
        return f"{leader.rsplit(':', 1)[0]}:{API_PORT}"

    def leader_node_id(self) -> Optional[str]:
        if self.raft is None or self.raft.leader_addr is None:
            return None
        node = self.node_by_raft_addr(self.raft.leader_addr)
        return node.id if node else None

    def leader_connected(self) -> bool:
        """Whether this follower's raft connection to the leader is up (pysyncobj drops it after
        its connection timeout without traffic, e.g. in a partition)."""
        if self.raft is None or self.raft.leader_addr is None:
            return False
        return any(m.addr == self.raft.leader_addr and m.connected for m in self.raft.members())

    def leader_unreachable_reason(self) -> str:
        members = self.raft.members() if self.raft is not None else []
        up = sum(1 for m in members if m.connected)
        return (f"the leader is unreachable from this manager, which reaches {up} of {len(members)} "
                f"managers (a quorum needs {len(members) // 2 + 1}); retry, or use another manager")

    def reachability(self) -> dict[str, str]:
        """raft addr -> leader | reachable | unreachable, as this manager sees it."""
        if self.raft is None:
            return {}
        leader = self.raft.leader_addr
        out = {}
        for m in self.raft.members():
            out[m.addr] = "leader" if m.addr == leader else ("reachable" if m.connected else "unreachable")
        return out
