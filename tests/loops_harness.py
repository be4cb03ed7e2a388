"""The leader's loops (dispatcher, allocator, orchestrator with its updaters, scheduler) on a
bare store, without raft: each loop is built from a Replica (manager/state/replica.py), and here
that replica applies a transaction to the store at once, as a one-member raft would once its log
has it. Raft itself is proven by tests/test_raft.py and the lab; these prove the decisions, in
milliseconds of machinery instead of a raft round trip per write.

`run_scenario` seeds the same cluster as tests/raft_harness.py (three Ready nodes n1..n3) and
hands the scenarios the same Harness.
"""
from __future__ import annotations

import asyncio
from typing import Optional

from common import errors
from common.aio import cancel_and_wait
from manager.allocator.allocator import Allocator
from manager.allocator.loop import AllocatorLoop
from manager.dispatcher.dispatcher import Dispatcher
from manager.orchestrator.orchestrator import Orchestrator
from manager.scheduler.loop import SchedulingLoop
from manager.state.store import Store, Transaction, TxnResult
from manager.state.watch import WatchHub
from tests.raft_harness import SCENARIO_LIMIT, Harness, _within, seed_cluster

_ERRORS = {"conflict": errors.Conflict, "not_found": errors.NotFound, "exists": errors.Conflict,
           "invalid": errors.InvalidArgument}


class StoreReplica:
    """The Replica protocol over a Store, with no log: what a fake of raft can honestly be."""

    def __init__(self) -> None:
        self.store = Store()
        self.hub = WatchHub(self.store, asyncio.get_running_loop())

    def watch(self, accept=None) -> asyncio.Queue:
        return self.hub.watch(accept)

    def unwatch(self, queue: asyncio.Queue) -> None:
        self.hub.unwatch(queue)

    async def propose(self, txn: Transaction, timeout: float = 1.5) -> TxnResult:
        result = TxnResult.from_plain(self.store.apply(txn.encode()))
        if not result.ok:
            raise _ERRORS.get(result.code, errors.ShoalError)(result.message)
        await asyncio.sleep(0)  # a commit is never synchronous: let the loops see the events
        return result


class Leader:
    """What the scenarios reach as `h.m`: the replica, and the loops a leader runs on it."""

    node_id = "m1"

    def __init__(self, replica: StoreReplica) -> None:
        self.replica = replica
        self.store = replica.store
        self.propose = replica.propose
        self.allocator = Allocator(self.store)
        self.dispatcher = Dispatcher(replica, self)
        self.tasks: list[asyncio.Task] = []

    def manager_api_addrs(self) -> list[str]:
        return []

    def leader_api_addr(self) -> Optional[str]:
        return None

    def start(self) -> None:
        r = self.replica
        self.tasks = [asyncio.create_task(c, name=n) for n, c in (
            ("dispatcher", self.dispatcher.run()),
            ("allocator", AllocatorLoop(r, self.allocator).run()),
            ("orchestrator", Orchestrator(r, self.allocator).run()),
            ("scheduler", SchedulingLoop(r).run()))]

    def failed(self) -> list[str]:
        return [f"{t.get_name()}: {t.exception()!r}" for t in self.tasks
                if t.done() and not t.cancelled() and t.exception() is not None]


def run_scenario(scenario) -> None:
    async def main():
        leader = Leader(StoreReplica())
        await leader.propose(seed_cluster())
        leader.start()
        try:
            await _within(SCENARIO_LIMIT, scenario(Harness(leader)), "the scenario")
            assert not leader.failed(), leader.failed()
        finally:
            await cancel_and_wait(leader.tasks)
            leader.replica.hub.close()
    asyncio.run(main())
