"""The durable raft journal (manager/state/raft/journal.py, records.py, durable_acks.py).

Format tests run the journal on real files; the raft tests run three real pysyncobj replicas on
loopback in one process (tests/test_raft.py's way). The disk cannot be made to lose power here,
so what the tests watch is the order of things: `PreallocatedFile.write`/`.sync`, `os.fsync` and
`os.replace` are wrapped as observers (each calls the real function) to see that every
acknowledgement, commit and snapshot rename comes after the sync that makes it durable.
The QEMU power-loss test lives with the VM lab."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pysyncobj.syncobj
from pysyncobj import FAIL_REASON
from pysyncobj.journal import FileJournal

from common import codec
from common.model import Node
from manager.state.raft import journal as raft_journal
from manager.state.raft import records
from manager.state.raft.journal import DurableJournal, PreallocatedFile
from manager.state.raft.node import RaftNode
from manager.state.store import Store, Transaction
from tests.test_raft import free_ports, wait_for

SECRET = b"j" * 32


@contextlib.contextmanager
def journal_log():
    """The journal's log records (hypothesis examples cannot use the function-scoped caplog)."""
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    handler, logger = Keep(level=logging.DEBUG), logging.getLogger("shoal.raft.journal")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield got
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def warnings_in(got: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in got if r.levelno >= logging.WARNING]


# ---- the record format, under generated damage ----------------------------------------------

# A journal's life: appends (index +1, term never lower) and truncations of its tail, as a
# follower's log sees them.
_ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.binary(min_size=0, max_size=300), st.integers(0, 2)),
    st.tuples(st.just("cut"), st.integers(0, 40), st.just(0)),
), min_size=1, max_size=40)


def build(path: str, ops) -> tuple[DurableJournal, list]:
    journal, model = DurableJournal(path), []
    for kind, arg, bump in ops:
        if kind == "add":
            index = model[-1][1] + 1 if model else 1
            term = (model[-1][2] if model else 1) + bump
            journal.add(arg, index, term)
            model.append((arg, index, term))
        elif model:
            keep = arg % (len(model) + 1)
            journal.deleteEntriesFrom(keep)
            del model[keep:]
    journal.sync()
    return journal, model


def record_spans(journal: DurableJournal) -> list[tuple[int, int]]:
    """(start, end) of each entry's record, from the file itself."""
    spans, offset = [], records.FIRST_RECORD
    for _ in range(len(journal)):
        (length,) = struct.unpack("<I", journal._file.read(offset, 4))
        spans.append((offset, offset + 8 + length))
        offset += 8 + length
    return spans


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, damage=st.sampled_from(["cut", "flip"]), where=st.floats(0, 1),
       xor=st.integers(1, 255))
def test_a_damaged_tail_loads_up_to_the_last_whole_entry_and_says_so(ops, damage, where, xor):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "journal")
        journal, model = build(path, ops)
        spans = record_spans(journal)
        end = spans[-1][1] if spans else records.FIRST_RECORD
        journal.setRaftCommitIndex(model[-1][1] if model else 1)
        journal.onOneSecondTimer()
        journal._destroy()

        with open(path, "rb") as f:
            original = f.read(end + 8)
        if damage == "cut":
            # anywhere from the first record to the end mark, both included
            at = records.FIRST_RECORD + int(where * (end + 8 - records.FIRST_RECORD))
            os.truncate(path, at)
            # The file is preallocated again on opening: a cut reads back as zeros.
            seen = original[:at] + b"\0" * (len(original) - at)
        else:
            at = records.FIRST_RECORD + min(int(where * (end + 8 - records.FIRST_RECORD)),
                                            end + 7 - records.FIRST_RECORD)
            with open(path, "r+b") as f:
                f.seek(at)
                f.write(bytes([original[at] ^ xor]))
            seen = original[:at] + bytes([original[at] ^ xor]) + original[at + 1:]
        # The oracle: the records that read back byte for byte as written, up to the first that
        # does not; whatever non-zero bytes stand where the next record header would be are
        # damage that must be reported. (A cut through zero bytes, or exactly between two
        # records, leaves a shorter journal that is whole: there is nothing to detect.)
        intact = 0
        while intact < len(spans) and \
                seen[slice(*spans[intact])] == original[slice(*spans[intact])]:
            intact += 1
        kept = model[:intact]
        damaged_record = spans[intact - 1][1] if intact else records.FIRST_RECORD
        expect_warning = bool(seen[damaged_record:damaged_record + 8].strip(b"\0"))

        with journal_log() as got:
            again = DurableJournal(path)
        try:
            assert [again[i] for i in range(len(again))] == kept
            warnings = warnings_in(got)
            if expect_warning:
                assert len(warnings) == 1, warnings
                assert path in warnings[0] and f"offset {damaged_record}" in warnings[0]
                assert f"kept {len(kept)} entries" in warnings[0]
            else:
                assert warnings == []
            # The commit index never points past what is left.
            assert again.getRaftCommitIndex() <= (kept[-1][1] if kept else 1)
            # The log goes on from there, and a restart finds it whole and says nothing.
            index = kept[-1][1] + 1 if kept else 1
            term = kept[-1][2] if kept else 1   # terms never go down (generated ones reach 10+)
            again.add(b"next", index, term)
            again.sync()
        finally:
            again._destroy()
        with journal_log() as got:
            third = DurableJournal(path)
        try:
            assert [third[i] for i in range(len(third))] == kept + [(b"next", index, term)]
            assert warnings_in(got) == []
        finally:
            third._destroy()


def test_a_journal_in_pysyncobjs_format_is_read_and_rewritten(tmp_path):
    path = str(tmp_path / "journal")
    old = FileJournal(path)
    entries = [(b"\x01" + bytes([i]) * i, i + 1, 1 + i // 3) for i in range(20)]
    for e in entries:
        old.add(*e)
    old.setCurrentTerm(7, None)
    old._destroy()
    assert open(path, "rb").read(9) == b"PYSYNCOBJ"
    with journal_log() as got:
        journal = DurableJournal(path)
    try:
        assert [journal[i] for i in range(len(journal))] == entries
        assert journal.getCurrentTerm() == 7
        assert any("converted 20 entries" in r.getMessage() for r in got)
        assert open(path, "rb").read(16) == records.MAGIC
    finally:
        journal._destroy()
    again = DurableJournal(path)
    try:
        assert [again[i] for i in range(len(again))] == entries
    finally:
        again._destroy()


def test_a_torn_pysyncobj_journal_keeps_its_whole_records(tmp_path):
    path = str(tmp_path / "journal")
    old = FileJournal(path)
    for i in range(5):
        old.add(b"x" * 50, i + 1, 1)
    old._destroy()
    size = records.V1_FIRST_RECORD + 5 * (8 + 16 + 50)
    os.truncate(path, size - 30)  # the last record torn; the header still points past it
    with journal_log() as got:
        journal = DurableJournal(path)
    try:
        assert len(journal) == 4
        assert any(path in w and "offset" in w for w in warnings_in(got))
    finally:
        journal._destroy()


def test_a_damaged_header_is_refused_with_the_file_and_the_fix_and_left_alone(tmp_path):
    path = str(tmp_path / "journal")
    journal, _ = build(path, [("add", b"a", 0), ("add", b"b", 0)])
    journal._destroy()
    with open(path, "r+b") as f:
        f.seek(20)
        f.write(b"\xff")
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match=rf"{path}.*header is damaged.*move the file aside"):
        DurableJournal(path)
    assert open(path, "rb").read() == before


def test_the_unsafe_switch_turns_syncing_off_and_says_so_loudly(tmp_path, monkeypatch):
    syncs = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd))[1])
    monkeypatch.setenv(raft_journal.UNSAFE_NO_SYNC_ENV, "1")
    with journal_log() as got:
        journal = DurableJournal(str(tmp_path / "unsafe"))
    try:
        journal.add(b"a", 1, 1)
        assert not journal.dirty and not journal.sync()
        assert syncs == []
        assert any("UNSAFE" in w and raft_journal.UNSAFE_NO_SYNC_ENV in w for w in warnings_in(got))
    finally:
        journal._destroy()
        raft_journal._sync_files = True

    monkeypatch.setenv(raft_journal.UNSAFE_NO_SYNC_ENV, "yes")  # not 1: stays safe, and says so
    with journal_log() as got:
        journal = DurableJournal(str(tmp_path / "safe"))
    try:
        journal.add(b"a", 1, 1)
        assert journal.dirty and journal.sync()
        assert syncs
        assert any("stays on" in w for w in warnings_in(got))
    finally:
        journal._destroy()


def test_compaction_rewrites_the_journal_as_a_new_file(tmp_path, monkeypatch):
    path = str(tmp_path / "journal")
    journal, model = build(path, [("add", bytes([i]) * 10, 0) for i in range(10)])
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace",
                        lambda a, b: (replaced.append((a, b)), real_replace(a, b))[1])
    journal.deleteEntriesTo(6)
    assert replaced == [(path + ".new", path)]
    assert not os.path.exists(path + ".new")
    journal._destroy()
    again = DurableJournal(path)
    try:
        assert [again[i] for i in range(len(again))] == model[6:]
    finally:
        again._destroy()


# ---- durability in a real three-member raft --------------------------------------------------

class SyncWatch:
    """Observes every journal file of the process: writes since its last sync, and the last
    entry index its last completed sync covered. Calls the real methods, changes nothing."""

    def __init__(self, monkeypatch, sync_delay: float = 0.0) -> None:
        # sync_delay: seconds added after each real sync, a slow disk simulated (this machine's
        # syncs take microseconds, and a test's outcome must not hang on the disk it runs on)
        self.lock = threading.Lock()
        self.unsynced: dict[int, bool] = {}      # id(PreallocatedFile) -> written since sync
        self.synced_upto: dict[int, int] = {}    # id(PreallocatedFile) -> last index synced
        self.syncs = 0
        self.journals: list[DurableJournal] = []
        watch, write, sync = self, PreallocatedFile.write, PreallocatedFile.sync

        def observed_write(f, offset, values):
            write(f, offset, values)
            with watch.lock:
                watch.unsynced[id(f)] = True

        def observed_sync(f):
            covers = watch._last_index_of(f)
            with watch.lock:
                watch.unsynced[id(f)] = False  # before: a write racing the sync counts as unsynced
            sync(f)
            if sync_delay:
                time.sleep(sync_delay)
            with watch.lock:
                watch.syncs += 1
                if covers is not None:
                    watch.synced_upto[id(f)] = covers

        monkeypatch.setattr(PreallocatedFile, "write", observed_write)
        monkeypatch.setattr(PreallocatedFile, "sync", observed_sync)
        create = pysyncobj.syncobj.createJournal

        def observed_create(path=None):
            journal = create(path)
            with watch.lock:
                watch.journals.append(journal)
            return journal
        monkeypatch.setattr(pysyncobj.syncobj, "createJournal", observed_create)

    def _last_index_of(self, f):
        for j in list(self.journals):
            if getattr(j, "_file", None) is f and len(j):
                return j[-1][1]
        return None

    def journal_of(self, node: RaftNode) -> DurableJournal:
        return node._sync._SyncObj__raftLog


def three_nodes(tmp_path: Path) -> list[RaftNode]:
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    return [RaftNode(Store(), a, addrs, tmp_path / str(i), SECRET) for i, a in enumerate(addrs)]


def tables(store: Store) -> dict:
    state = codec.unpack(store.snapshot())
    return {"index": state["index"], "tables": state["tables"]}


def close_all(nodes) -> None:
    for n in nodes:
        n.close()


def test_nothing_is_acknowledged_or_committed_before_it_is_synced(tmp_path, monkeypatch):
    watch = SyncWatch(monkeypatch)
    violations: list[str] = []
    acks = {"n": 0}

    async def scenario():
        nodes = three_nodes(tmp_path)
        try:
            await wait_for(lambda: any(n.is_leader for n in nodes))
            leader = next(n for n in nodes if n.is_leader)
            for n in nodes:
                journal_file = watch.journal_of(n)._file
                transport = n._sync._SyncObj__transport
                send = transport.send

                def observed_send(node, message, n=n, journal_file=journal_file, send=send):
                    if message.get("type") == "next_node_idx" and message.get("success"):
                        acks["n"] += 1
                        synced = watch.synced_upto.get(id(journal_file), 0)
                        if watch.unsynced.get(id(journal_file)) or \
                                synced < message["next_node_idx"] - 1:
                            violations.append(f"{n.self_addr} acknowledged {message} unsynced")
                    if message.get("type") == "append_entries" and n is leader:
                        synced = watch.synced_upto.get(id(journal_file), 0)
                        if message["commit_index"] > synced:
                            violations.append(f"leader announced commit {message['commit_index']}"
                                              f" past its synced {synced}")
                    return send(node, message)
                transport.send = observed_send
            apply = leader.store.apply
            leader_file = watch.journal_of(leader)._file

            def observed_apply(txn):
                if leader._sync.raftCommitIndex > watch.synced_upto.get(id(leader_file), 0):
                    violations.append("leader applied a commit past its synced entries")
                return apply(txn)
            leader.store.apply = observed_apply
            results = await asyncio.gather(*[
                leader.commit(Transaction().create("nodes", Node(id=f"n{i}"))) for i in range(60)])
            assert all(r.ok for r in results)
            for i in range(20):
                assert (await leader.commit(Transaction().create("nodes", Node(id=f"s{i}")))).ok
            await wait_for(lambda: all(n.store.count("nodes") == 80 for n in nodes))
        finally:
            close_all(nodes)

    asyncio.run(scenario())
    assert acks["n"] >= 20  # the observer saw the followers' acknowledgements
    assert watch.syncs > 0
    assert violations == []


def test_without_syncing_the_observer_sees_unsynced_acknowledgements(tmp_path, monkeypatch):
    """The control for the test above: with SHOAL_UNSAFE_RAFT_NO_SYNC=1 the same observer sees
    followers acknowledge what is not synced, so its silence above means something."""
    monkeypatch.setenv(raft_journal.UNSAFE_NO_SYNC_ENV, "1")
    watch = SyncWatch(monkeypatch)
    unsynced_acks = []

    async def scenario():
        nodes = three_nodes(tmp_path)
        try:
            await wait_for(lambda: any(n.is_leader for n in nodes))
            leader = next(n for n in nodes if n.is_leader)
            for n in nodes:
                journal_file = watch.journal_of(n)._file
                transport = n._sync._SyncObj__transport
                send = transport.send

                def observed_send(node, message, journal_file=journal_file, send=send):
                    if message.get("type") == "next_node_idx" and message.get("success") and \
                            watch.unsynced.get(id(journal_file)):
                        unsynced_acks.append(message)
                    return send(node, message)
                transport.send = observed_send
            for i in range(10):
                assert (await leader.commit(Transaction().create("nodes", Node(id=f"n{i}")))).ok
        finally:
            close_all(nodes)
            raft_journal._sync_files = True

    asyncio.run(scenario())
    assert watch.syncs == 0
    assert len(unsynced_acks) >= 10


def test_group_commit_one_sync_covers_many_entries_on_a_simulated_slow_disk(tmp_path,
                                                                             monkeypatch):
    # Group commit is about what arrives while a sync runs: with syncs as fast as this
    # machine's, a quiet machine acknowledges each entry before the next arrives and the count
    # measured the machine (520 syncs in one run, 8 in another). A 5 ms sync, as a real disk's,
    # makes the entries arrive during syncs whatever the CPU.
    watch = SyncWatch(monkeypatch, sync_delay=0.005)
    entries = 400

    async def scenario():
        nodes = three_nodes(tmp_path)
        try:
            await wait_for(lambda: any(n.is_leader for n in nodes))
            leader = next(n for n in nodes if n.is_leader)
            done, lock, count, errors = threading.Event(), threading.Lock(), [0], []

            def callback(result, error):
                with lock:
                    if error != FAIL_REASON.SUCCESS:
                        errors.append(error)
                    count[0] += 1
                    if count[0] == entries:
                        done.set()
            payloads = [leader._cipher.seal(
                Transaction().create("nodes", Node(id=f"g{i}")).encode()) for i in range(entries)]
            before = (watch.syncs, len(watch.journal_of(leader)))
            submitted = threading.Event()

            def submit_all() -> None:
                # On raft's own thread, between two ticks: all of them arrive "meanwhile",
                # whatever the machine's speed (from the loop, a fast machine ticks between
                # calls and a loaded one does not, and the count measured the load instead).
                if submitted.is_set():
                    return
                submitted.set()
                # One raft entry per call: RaftNode's own batching is bypassed on purpose.
                for p in payloads:
                    leader._machine.apply_batch([p], callback=callback)
            leader._sync.addOnTickCallback(submit_all)
            assert await asyncio.to_thread(done.wait, 60), count
            syncs = watch.syncs - before[0]
            assert errors == []
            await wait_for(lambda: all(n.store.count("nodes") == entries for n in nodes))
            return syncs
        finally:
            close_all(nodes)

    syncs = asyncio.run(scenario())
    # Three journals each wrote `entries` entries: one sync per entry would be 3 * entries.
    print(f"{entries} entries on 3 members: {syncs} journal syncs")
    assert syncs * 4 < 3 * entries, syncs


def test_a_snapshot_is_synced_then_renamed_then_its_directory_synced(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def observed_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def observed_replace(src, dst):
        events.append(("replace", f"{src} -> {dst}"))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", observed_fsync)
    monkeypatch.setattr(os, "replace", observed_replace)

    async def scenario():
        (port,) = free_ports(1)
        addr = f"127.0.0.1:{port}"
        node = RaftNode(Store(), addr, [], tmp_path, SECRET)
        try:
            await wait_for(lambda: node.is_leader)
            for i in range(5):
                assert (await node.commit(Transaction().create("nodes", Node(id=f"n{i}")))).ok
            node.compact()
            await wait_for(lambda: (tmp_path / "snapshot").exists())
            for i in range(3):
                assert (await node.commit(Transaction().create("nodes", Node(id=f"m{i}")))).ok
        finally:
            node.close()
        again = RaftNode(Store(), addr, [], tmp_path, SECRET)
        try:
            await wait_for(lambda: again.store.count("nodes") == 8)
        finally:
            again.close()

    asyncio.run(scenario())
    snap, tmp = str(tmp_path / "snapshot"), str(tmp_path / "snapshot.tmp")
    at = events.index(("replace", f"{tmp} -> {snap}"))
    assert ("fsync", tmp) in events[:at], events
    assert ("fsync", str(tmp_path)) in events[at:], events
    assert not (tmp_path / "snapshot.tmp").exists()


def test_a_follower_with_a_torn_journal_truncates_it_and_catches_up(tmp_path):
    async def scenario():
        addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        dirs = [tmp_path / str(i) for i in range(3)]
        nodes = [RaftNode(Store(), a, addrs, d, SECRET) for a, d in zip(addrs, dirs)]
        try:
            await wait_for(lambda: any(n.is_leader for n in nodes))
            leader = next(n for n in nodes if n.is_leader)
            for i in range(30):
                assert (await leader.commit(Transaction().create("nodes", Node(id=f"a{i}")))).ok
            await wait_for(lambda: all(n.store.count("nodes") == 30 for n in nodes))
            k = next(i for i, n in enumerate(nodes) if n is not leader)
            nodes[k].close()
            journal = dirs[k] / "journal"
            j = DurableJournal(str(journal))
            spans = record_spans(j)
            j._destroy()
            cut = spans[-3][0] + 11  # into the third record from the end
            os.truncate(journal, cut)
            for i in range(5):  # more while it is down
                assert (await leader.commit(Transaction().create("nodes", Node(id=f"b{i}")))).ok
            with journal_log() as got:
                nodes[k] = RaftNode(Store(), addrs[k], addrs, dirs[k], SECRET)
            assert any(str(journal) in w and f"offset {spans[-3][0]}" in w
                       for w in warnings_in(got)), warnings_in(got)
            await wait_for(lambda: nodes[k].store.count("nodes") == 35, 20)
            assert tables(nodes[k].store) == tables(leader.store)
        finally:
            close_all(nodes)

    asyncio.run(scenario())


def test_a_crash_between_snapshot_and_journal_compaction_loses_nothing(tmp_path, monkeypatch):
    """pysyncobj renames its snapshot, then compacts the journal on a later tick. A crash in
    between (here: the compaction never happens) used to make the restart clear the journal,
    since its first entries are not the snapshot's, and drop every entry after the snapshot."""
    async def scenario():
        (port,) = free_ports(1)
        addr = f"127.0.0.1:{port}"
        node = RaftNode(Store(), addr, [], tmp_path, SECRET)
        try:
            with monkeypatch.context() as m:
                m.setattr(DurableJournal, "deleteEntriesTo", lambda self, entry_to: None)
                await wait_for(lambda: node.is_leader)
                for i in range(6):
                    assert (await node.commit(Transaction().create("nodes", Node(id=f"n{i}")))).ok
                node.compact()
                await wait_for(lambda: (tmp_path / "snapshot").exists())
                for i in range(4):
                    assert (await node.commit(Transaction().create("nodes", Node(id=f"m{i}")))).ok
        finally:
            node.close()
        again = RaftNode(Store(), addr, [], tmp_path, SECRET)
        try:
            await wait_for(lambda: again.is_leader)
            assert (await again.commit(Transaction().create("nodes", Node(id="after")))).ok
            assert sorted(n.id for n in again.store.list("nodes")) == \
                ["after"] + [f"m{i}" for i in range(4)] + [f"n{i}" for i in range(6)]
        finally:
            again.close()

    asyncio.run(scenario())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failing_fdatasync_stops_raft_on_that_manager_only_fake_eio(tmp_path, monkeypatch):
    """A disk error cannot be made here: os.fdatasync is faked to fail with EIO for one
    follower's journal. After a failed sync nothing on that disk can be trusted, so that member
    stops (no acknowledgement of the unsynced entries ever goes out) and the other two go on."""
    real = os.fdatasync
    failing: set[int] = set()

    def fake_fdatasync(fd):
        if fd in failing:
            raise OSError(5, "Input/output error")
        return real(fd)
    monkeypatch.setattr(os, "fdatasync", fake_fdatasync)
    sent_after: list[dict] = []
    last_before = [0]

    async def scenario():
        nodes = three_nodes(tmp_path)
        try:
            await wait_for(lambda: any(n.is_leader for n in nodes))
            leader = next(n for n in nodes if n.is_leader)
            assert (await leader.commit(Transaction().create("nodes", Node(id="before")))).ok
            broken = next(n for n in nodes if n is not leader)
            transport = broken._sync._SyncObj__transport
            send = transport.send

            def observed_send(node, message):
                if message.get("type") == "next_node_idx" and failing:
                    sent_after.append(message)
                return send(node, message)
            transport.send = observed_send
            with journal_log() as got:
                journal = broken._sync._SyncObj__raftLog
                last_before[0] = journal[-1][1]  # at most this much was synced before
                failing.add(journal._file._file.fileno())
                for i in range(5):
                    assert (await leader.commit(Transaction().create("nodes", Node(id=f"n{i}")))).ok
                await wait_for(lambda: not broken._sync._SyncObj__thread.is_alive())
            assert any(r.levelno == logging.CRITICAL and "raft stops" in r.getMessage()
                       for r in got)
            await wait_for(lambda: all(n.store.get("nodes", "n4") for n in nodes
                                       if n is not broken))
            assert broken.store.get("nodes", "n4") is None
        finally:
            failing.clear()
            close_all(nodes)

    asyncio.run(scenario())
    # (acknowledgements of entries synced before, as heartbeat answers repeat them, are fine)
    assert [m for m in sent_after
            if m.get("success") and m["next_node_idx"] - 1 > last_before[0]] == []


def test_a_manager_whose_journal_plain_pysyncobj_wrote_replays_it(tmp_path, monkeypatch):
    """Upgrade: the raft directory of a manager that ran before this journal format existed."""
    import importlib.util
    import pysyncobj.journal as installed
    # pysyncobj's journal module as it ships (install() rerouted the loaded one)
    spec = importlib.util.spec_from_file_location("pysyncobj._shipped_journal",
                                                  installed.__file__)
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)

    async def scenario():
        (port,) = free_ports(1)
        addr = f"127.0.0.1:{port}"
        with monkeypatch.context() as m:
            m.setattr(pysyncobj.syncobj, "createJournal", shipped.createJournal)
            node = RaftNode(Store(), addr, [], tmp_path, SECRET)
            try:
                await wait_for(lambda: node.is_leader)
                for i in range(8):
                    assert (await node.commit(Transaction().create("nodes", Node(id=f"n{i}")))).ok
            finally:
                node.close()
        assert (tmp_path / "journal").read_bytes()[:9] == b"PYSYNCOBJ"
        with journal_log() as got:
            again = RaftNode(Store(), addr, [], tmp_path, SECRET)
        try:
            await wait_for(lambda: again.store.count("nodes") == 8)
            await wait_for(lambda: again.is_leader)
            assert (await again.commit(Transaction().create("nodes", Node(id="after")))).ok
        finally:
            again.close()
        assert any("converted" in r.getMessage() for r in got)
        assert (tmp_path / "journal").read_bytes()[:16] == records.MAGIC

    asyncio.run(scenario())


# ---- the snapshot's format (issue 20: a large store's snapshot stalled the raft thread) --------

def test_the_store_is_compressed_before_it_is_sealed_and_older_snapshots_still_load():
    from common.model import Task
    from manager.state.raft.cipher import DataCipher
    from manager.state.raft.node import SNAPSHOT_CODEC, _StoreMachine
    store = Store()
    for i in range(0, 2000, 100):
        txn = Transaction()
        for j in range(i, i + 100):
            txn.create("tasks", Task(id=f"task{j:05d}", service_id="web", slot=j + 1,
                                     node_id=f"node{j % 50}"))
        store.apply(txn.encode())
    cipher = DataCipher(SECRET)
    sealed = _StoreMachine(store, cipher)._serialize()
    assert sealed["codec"] == SNAPSHOT_CODEC
    # the tasks' msgpack repeats itself: compressed first, the sealed bytes are a fraction of it
    assert len(sealed["store"]) * 4 < len(store.snapshot())
    for data in (sealed, {"store": cipher.seal(store.snapshot())}):   # now, and before issue 20
        loaded = Store()
        _StoreMachine(loaded, cipher)._deserialize(data)
        assert tables(loaded) == tables(store)
    with pytest.raises(ValueError, match="newer shoal"):
        _StoreMachine(Store(), cipher)._deserialize({**sealed, "codec": "zstd"})


def test_pysyncobj_writes_the_snapshot_file_without_compressing_it_again(tmp_path):
    from pysyncobj.serializer import SERIALIZER_STATE, Serializer
    raft_journal.install()
    path = str(tmp_path / "snapshot")
    payload = bytes(1 << 20)            # compressible: level 9 would make it a kilobyte
    serializer = Serializer(path, 0, False, None, None, None)
    serializer.serialize(({"store": payload}, (b"", 1, 1), (b"", 0, 1), set()), 1)
    assert serializer.checkSerializing()[0] == SERIALIZER_STATE.SUCCESS
    assert os.path.getsize(path) > len(payload)
    assert serializer.deserialize()[0]["store"] == payload     # and it is still gzip to read
