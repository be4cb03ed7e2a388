"""A new leader applies every earlier commit before its loops decide anything.

A new raft leader learns which entries of the earlier terms are committed only once an entry of
its own term commits. Loops started before that see a store without the old leader's last
transactions: an orchestrator created the slots of such a transaction a second time
(bench/observability_bench.py saw 1,200 tasks for 1,000 replicas after a failover). The
manager therefore commits a no-op (RaftNode.barrier) first. Real one-member raft; the test
records the order of the barrier's end and the loops' start.
"""
from __future__ import annotations

import asyncio

from common.nodestate import NodeFiles, NodeState
from manager.manager import Manager
from manager.state.raft.node import RaftNode
from tests.raft_harness import ADDR, wait


def test_leader_loops_start_only_after_a_barrier_of_the_new_term(tmp_path, monkeypatch):
    order: list[str] = []
    real_barrier = RaftNode.barrier
    real_loops = Manager._leader_loops

    async def barrier(self, timeout: float = 3.0) -> None:
        await real_barrier(self, timeout)
        order.append(f"barrier applied at index {self.store.index}")

    def leader_loops(self):
        order.append("loops started")
        return real_loops(self)

    monkeypatch.setattr(RaftNode, "barrier", barrier)
    monkeypatch.setattr(Manager, "_leader_loops", leader_loops)

    async def main() -> None:
        files = NodeFiles(tmp_path)
        files.prepare()
        files.save_raft_secret(b"s" * 32)
        state = NodeState(node_id="m1", cluster_id="c1", role="manager", advertise_addr=ADDR,
                          listen_addr=f"{ADDR}:2377")
        m = Manager(files, state)
        await m.start()
        try:
            await wait(lambda: "loops started" in order)
        finally:
            await m.stop()
    asyncio.run(main())
    assert order[0].startswith("barrier applied") and order[1] == "loops started", order
