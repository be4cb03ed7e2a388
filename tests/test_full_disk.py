"""A node's disk filling up, on small tmpfs mounts made for the test: real pysyncobj replicas
whose raft directories sit there, and the node's own state file. Before
manager/state/raft/journal.py, the first raft append that needed a new journal page on a full disk
killed the process with SIGBUS (these tests would take pytest down with it)."""
import asyncio
import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest

from common.errors import ResourceExhausted
from common.fsutil import write_atomic
from common.model import Node, NodeSpec
from common.nodestate import NodeFiles, NodeState
from manager.state.raft import journal as raft_journal
from manager.state.raft.node import RaftNode
from manager.state.store import Store, Transaction
from tests.test_raft import free_ports, wait_for

SECRET = b"d" * 32


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk`; remove the returned file to give them back."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 4096, 1):
            try:
                while True:
                    f.write(chunk[:size])
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    assert os.statvfs(disk).f_bavail == 0
    return filler


def big_node(node_id: str, kib: int) -> Node:
    # Random data in hex: the journal holds entries compressed (hex halves) and sealed, so
    # about half the size in is the size on disk.
    return Node(id=node_id, spec=NodeSpec(labels={"blob": os.urandom(kib * 512).hex()}))


def test_a_full_disk_refuses_the_change_keeps_running_and_loses_nothing(tmp_path):
    async def scenario(disk: Path):
        (port,) = free_ports(1)
        addr = f"127.0.0.1:{port}"
        node = RaftNode(Store(), addr, [], disk / "raft", SECRET)
        try:
            await wait_for(lambda: node.is_leader)
            for i in range(5):
                assert (await node.commit(Transaction().create("nodes", Node(id=f"n{i}")))).ok
            filler = fill(disk)
            with pytest.raises(ResourceExhausted, match=r"disk is full .*journal.*No space left "
                                                        r"on device.*the change was not made"):
                await node.commit(Transaction().create("nodes", big_node("lost", 3072)), timeout=2.0)
            assert node.store.get("nodes", "lost") is None
            # Still the leader, still serving: room again and the next change goes through.
            filler.unlink()
            assert (await node.commit(Transaction().create("nodes", big_node("after", 256)))).ok
        finally:
            node.close()
        again = RaftNode(Store(), addr, [], disk / "raft", SECRET)
        try:
            await wait_for(lambda: again.store.get("nodes", "after") is not None)
            assert sorted(n.id for n in again.store.list("nodes")) == \
                ["after", "n0", "n1", "n2", "n3", "n4"]
        finally:
            again.close()

    with small_disk(tmp_path / "disk", "3m") as disk:
        asyncio.run(scenario(disk))


def test_a_follower_with_a_full_disk_survives_and_catches_up(tmp_path):
    async def scenario(full: Path):
        addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        dirs = [tmp_path / "0", tmp_path / "1", full / "raft"]
        nodes = [RaftNode(Store(), a, addrs, d, SECRET) for a, d in zip(addrs, dirs)]
        try:
            await wait_for(lambda: any(n.is_leader for n in nodes))
            if nodes[2].is_leader:  # the full disk is to be a follower's
                await nodes[2].transfer_leadership()
                await wait_for(lambda: any(n.is_leader for n in nodes[:2]))
            leader = next(n for n in nodes if n.is_leader)
            follower = nodes[2]
            filler = fill(full)
            # The other two are a majority: changes go on while the full one cannot append.
            for i in range(6):
                assert (await leader.commit(Transaction().create("nodes", big_node(f"b{i}", 256)),
                                            timeout=5.0)).ok
            await asyncio.sleep(1.0)
            assert follower.store.get("nodes", "b5") is None
            assert raft_journal.last_failure.path.startswith(str(full))
            filler.unlink()
            await wait_for(lambda: follower.store.get("nodes", "b5") is not None, 15)
            assert sorted(n.id for n in follower.store.list("nodes")) == [f"b{i}" for i in range(6)]
        finally:
            for n in nodes:
                n.close()

    with small_disk(tmp_path / "full", "3m") as full:
        asyncio.run(scenario(full))


def test_a_journal_grows_on_allocated_blocks_only(tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        journal = raft_journal.PreallocatedFile(str(disk / "journal"), defaultContent=b"head")
        try:
            journal.write(4, b"x" * 1000)
            assert os.stat(disk / "journal").st_blocks * 512 >= os.stat(disk / "journal").st_size
            with pytest.raises(OSError) as raised:
                journal.write(2000, b"y" * (2 << 20))
            assert raised.value.errno == errno.ENOSPC
            assert "cannot grow the raft journal" in str(raised.value)
            assert journal.read(0, 8) == b"headxxxx"  # what was there is intact
        finally:
            journal._destroy()


def test_an_atomic_write_on_a_full_disk_keeps_the_old_file_and_leaves_no_scrap(tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        target = disk / "state.json"
        write_atomic(target, b"old")
        filler = fill(disk)
        os.truncate(filler, os.path.getsize(filler) - 8192)  # room for some, not for all
        with pytest.raises(OSError) as raised:
            write_atomic(target, b"n" * 65536)
        assert raised.value.errno == errno.ENOSPC
        assert target.read_bytes() == b"old"
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "state.json"]


def test_node_state_saves_wait_for_room_instead_of_failing_their_loop(tmp_path, caplog):
    with small_disk(tmp_path / "disk", "1m") as disk:
        files = NodeFiles(disk)
        state = NodeState(node_id="n1", managers=["10.0.0.1:2377"])
        files.save_state(state)
        filler = fill(disk)
        state.managers = ["10.0.0.1:2377", "10.0.0.2:2377"]
        assert files.try_save_state(state) is False
        assert files.try_save_state(state) is False
        warnings = [r.getMessage() for r in caplog.records if "cannot save" in r.getMessage()]
        assert len(warnings) == 1 and "No space left on device" in warnings[0], warnings
        assert files.load_state().managers == ["10.0.0.1:2377"]  # the old one, whole
        filler.unlink()
        assert files.try_save_state(state) is True
        assert files.load_state().managers == state.managers
