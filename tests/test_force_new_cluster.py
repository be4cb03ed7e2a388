"""`swarm init --force-new-cluster` on raft's own files: real pysyncobj replicas on loopback.

A three-member raft loses two members for good; the survivor's directory is rewritten as a
one-member cluster (manager/state/raft/recovery.py) and raft restarts on it: every object is
there, the survivor leads alone, writes commit, and a fresh member joins and catches up.
"""
import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from common import errors
from common.model import NODE_ROLE_MANAGER, NODE_ROLE_WORKER, Node, Secret, SecretSpec
from common.nodestate import NodeFiles, NodeState
from manager.state.raft import recovery
from manager.state.raft.node import RaftNode
from manager.state.store import Store, Transaction
from test_raft import free_ports, wait_for

SECRET = b"r" * 32


def test_survivor_of_three_leads_alone_with_everything_and_takes_new_members(tmp_path):
    async def scenario():
        addrs = [f"127.0.0.1:{p}" for p in free_ports(4)]
        members, fresh_addr = addrs[:3], addrs[3]
        nodes = [RaftNode(Store(), a, members, tmp_path / str(i), SECRET)
                 for i, a in enumerate(members)]
        survivor = None
        try:
            await wait_for(lambda: any(n.is_leader for n in nodes))
            leader = next(n for n in nodes if n.is_leader)
            for i in range(30):
                assert (await leader.commit(Transaction().create("nodes", Node(id=f"n{i}")))).ok
            # Some of it in a snapshot, the rest in the journal after it.
            for n in nodes:
                n.compact()
            await asyncio.sleep(0.3)
            await asyncio.gather(*[leader.commit(Transaction().create("nodes", Node(id=f"j{i}")))
                                   for i in range(20)])
            await wait_for(lambda: all(n.store.count("nodes") == 50 for n in nodes))
            expected_index = nodes[0].store.index
            # Two members go for good, the leader among them; the third loses its quorum.
            keep = next(i for i, n in enumerate(nodes) if not n.is_leader)
            for i, n in enumerate(nodes):
                n.close()
            survivor_dir = tmp_path / str(keep)

            result = recovery.force_new_cluster(survivor_dir, SECRET, members[keep], members)
            assert sorted(result.removed_members) == sorted(m for m in members if m != members[keep])
            assert result.store_index == expected_index + recovery.INDEX_GAP
            assert Path(result.kept_at).is_dir()  # the old raft data is kept, not removed
            assert survivor_dir.stat().st_mode & 0o777 == 0o700
            assert all((survivor_dir / f).stat().st_mode & 0o777 == 0o600
                       for f in ("journal", "snapshot"))

            # Restarted with the *old* peer list on purpose: the snapshot's configuration wins.
            survivor = RaftNode(Store(), members[keep], members, survivor_dir, SECRET)
            await wait_for(lambda: survivor.is_leader, 5)
            assert survivor.store.count("nodes") == 50
            assert survivor.store.index == expected_index + recovery.INDEX_GAP
            assert survivor.member_addrs() == [members[keep]]
            assert survivor.term > 1
            assert (await survivor.commit(Transaction().create("nodes", Node(id="after")))).ok

            # A fresh member joins the new cluster and gets everything.
            joiner = RaftNode(Store(), fresh_addr, [members[keep]], tmp_path / "fresh", SECRET)
            nodes.append(joiner)
            await survivor.add_member(fresh_addr)
            await wait_for(lambda: joiner.store.count("nodes") == 51, 15)
            assert sorted(survivor.member_addrs()) == sorted([members[keep], fresh_addr])
            assert (await survivor.commit(Transaction().create("nodes", Node(id="two")))).ok
            await wait_for(lambda: joiner.store.get("nodes", "two") is not None)
        finally:
            for n in nodes + ([survivor] if survivor else []):
                n.close()
    asyncio.run(scenario())


def test_restart_after_recovery_stays_a_one_member_cluster(tmp_path):
    async def scenario():
        (port, other) = free_ports(2)
        addr = f"127.0.0.1:{port}"
        node = RaftNode(Store(), addr, [], tmp_path / "raft", SECRET)
        await wait_for(lambda: node.is_leader)
        # A member that never comes: the change is in the log, and commits never again.
        with pytest.raises(errors.Unavailable):
            await node.add_member(f"127.0.0.1:{other}", timeout=1.0)
        assert len(node.member_addrs()) == 2
        node.close()
        recovery.force_new_cluster(tmp_path / "raft", SECRET, addr, [addr])
        for _ in range(2):  # and again after an ordinary restart
            again = RaftNode(Store(), addr, [], tmp_path / "raft", SECRET)
            try:
                await wait_for(lambda: again.is_leader, 5)
                assert again.member_addrs() == [addr]
                assert (await again.commit(Transaction().create("nodes", Node(id=f"x{_}")))).ok
            finally:
                again.close()
    asyncio.run(scenario())


def test_no_raft_data_and_wrong_secret_are_refused_and_change_nothing(tmp_path):
    with pytest.raises(errors.FailedPrecondition, match="no raft data"):
        recovery.force_new_cluster(tmp_path / "empty", SECRET, "127.0.0.1:1", [])

    async def make():
        (port,) = free_ports(1)
        node = RaftNode(Store(), f"127.0.0.1:{port}", [], tmp_path / "raft", SECRET)
        await wait_for(lambda: node.is_leader)
        await node.commit(Transaction().create("nodes", Node(id="n")))
        node.close()
    asyncio.run(make())
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(errors.FailedPrecondition, match="cannot be decrypted"):
        recovery.force_new_cluster(tmp_path / "raft", b"w" * 32, "127.0.0.1:1", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == before


class FakeDaemon:
    """Fake: only the attributes shoal/recovery.py reads before it refuses (no daemon here)."""

    def __init__(self, root: Path, state: NodeState, locked: bool = False) -> None:
        self.files = NodeFiles(root)
        self.files.prepare()
        self.state = state
        self.locked = locked
        self.role_lock = asyncio.Lock()
        self.default_advertise_addr = ""
        self.default_listen_addr = "0.0.0.0:2377"


@pytest.mark.parametrize("state,locked,error,words", [
    (NodeState(), False, errors.NotInSwarm, "not part of a swarm"),
    (NodeState(node_id="n", cluster_id="c", role=NODE_ROLE_WORKER, advertise_addr="10.0.0.1"),
     False, errors.NotAManager, "not a swarm manager"),
    (NodeState(node_id="n", cluster_id="c", role=NODE_ROLE_MANAGER, advertise_addr="10.0.0.1"),
     False, errors.FailedPrecondition, "no raft data"),
    (NodeState(node_id="n", cluster_id="c", role=NODE_ROLE_MANAGER, advertise_addr="10.0.0.1"),
     True, errors.FailedPrecondition, "swarm unlock"),
])
def test_force_new_cluster_is_refused_with_the_reason(tmp_path, state, locked, error, words):
    from shoal import recovery as node_recovery

    async def go():
        await node_recovery.force_new_cluster(FakeDaemon(tmp_path, state, locked), None)
    with pytest.raises(error, match=words):
        asyncio.run(go())


def test_adopt_demotes_the_managers_that_are_no_longer_members(tmp_path):
    """The recovery's one transaction, on a real one-member manager."""
    from manager.manager import Manager
    from shoal import recovery as node_recovery
    from common.model import ManagerStatus

    async def scenario():
        (port,) = free_ports(1)
        files = NodeFiles(tmp_path)
        files.prepare()
        files.save_raft_secret(SECRET)
        state = NodeState(node_id="m1", cluster_id="c1", role="manager",
                          advertise_addr="127.0.0.94", listen_addr="127.0.0.94:2377")
        m = Manager(files, state)
        # A port of its own: the raft address is the manager's advertise address + 2378.
        m.state = state
        await m.start()
        try:
            await wait_for(lambda: m.is_leader)
            txn = Transaction()
            for i in (1, 2, 3):
                txn.create("nodes", Node(id=f"m{i}", role=NODE_ROLE_MANAGER,
                                         manager_status=ManagerStatus(raft_addr=f"10.0.0.{i}:2378")))
            txn.create("nodes", Node(id="w1", role=NODE_ROLE_WORKER))
            txn.create("secrets", Secret(id="s1", spec=SecretSpec(name="s", data=b"x")))
            await m.propose(txn)
            demoted = await node_recovery._adopt(SimpleNamespace(manager=m), state)
            assert sorted(demoted) == ["m2", "m3"]
            me = m.store.get("nodes", "m1")
            assert me.role == NODE_ROLE_MANAGER and me.manager_status.raft_addr == "127.0.0.94:2378"
            assert me.status.addr == "127.0.0.94"
            for i in (2, 3):
                n = m.store.get("nodes", f"m{i}")
                assert (n.role, n.spec.desired_role, n.manager_status) == \
                    (NODE_ROLE_WORKER, NODE_ROLE_WORKER, None)
            assert m.store.get("nodes", "w1").role == NODE_ROLE_WORKER
            assert m.store.get("secrets", "s1") is not None
        finally:
            await m.stop()
    asyncio.run(scenario())
