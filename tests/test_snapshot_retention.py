"""`swarm update --max-snapshots N`: a real one-member raft keeps the N snapshots before the
current one, as hard links beside it, and drops older ones; each kept one is a whole snapshot
(a restart from it alone brings back the store it held)."""
from __future__ import annotations

import asyncio
import shutil

from common.model import Node
from manager.state.raft import snapshot_retention
from manager.state.raft.node import RaftNode
from manager.state.store import Store, Transaction
from test_raft import free_ports, wait_for


def test_old_snapshots_are_kept_up_to_the_setting_and_each_restores(tmp_path):
    async def scenario():
        (port,) = free_ports(1)
        addr = f"127.0.0.1:{port}"
        raft_dir = tmp_path / "raft"
        node = RaftNode(Store(), addr, [], raft_dir, b"s" * 32)
        snapshot = str(raft_dir / "snapshot")
        try:
            await wait_for(lambda: node.is_leader)
            node.set_keep_old_snapshots(2)
            mtimes = []
            for round_ in range(4):
                for i in range(3):
                    await node.commit(Transaction().create("nodes", Node(id=f"n{round_}-{i}")))
                before = (raft_dir / "snapshot").stat().st_mtime_ns \
                    if (raft_dir / "snapshot").exists() else 0
                node.compact()
                await wait_for(lambda: (raft_dir / "snapshot").exists()
                               and (raft_dir / "snapshot").stat().st_mtime_ns != before)
                mtimes.append((raft_dir / "snapshot").stat().st_mtime_ns)
            olds = snapshot_retention.kept(snapshot)
            assert len(olds) == 2, olds
            node.set_keep_old_snapshots(1)      # lowering it drops the oldest at once
            olds = snapshot_retention.kept(snapshot)
            assert len(olds) == 1
        finally:
            node.close()
        # the kept one is the snapshot before the current one: 9 nodes (rounds 0-2)
        alone = tmp_path / "alone"
        alone.mkdir(mode=0o700)
        shutil.copy(olds[0], alone / "snapshot")
        again = RaftNode(Store(), addr, [], alone, b"s" * 32)
        try:
            await wait_for(lambda: again.store.count("nodes") == 9)
        finally:
            again.close()
        snapshot_retention.set_keep(snapshot, 0)
        assert snapshot_retention.kept(snapshot) == []
    asyncio.run(scenario())
