"""Quorum recovery on raft's files: read a manager's raft data into a store, and write a fresh
raft directory in which this manager is the only member (`swarm init --force-new-cluster`,
`swarm restore`).

pysyncobj replays membership entries from its snapshot and journal, so restarting with a new
peer list is not enough: the old members would come back from the log. Here the old log is
replayed *offline* (through pysyncobj's own Serializer and journal classes, whatever
manager/state/raft/journal.py installs), and a new directory is written holding one snapshot of
the store whose cluster configuration is this manager alone, at a term above every term the old
log saw, plus a journal that holds only the two entries pysyncobj expects to match its snapshot.

Every entry the local log holds is kept, also those past the commit index it recorded: that
index reaches disk only once a second (pysyncobj's meta file) and a follower learns it a
heartbeat late, so stopping at it would drop writes the old leader had already acknowledged.
(swarmkit discards them; an entry here was appended by a legitimate leader in log order, so
keeping it yields a state some leader did propose, and never loses an acknowledged write.)
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cryptography.exceptions import InvalidTag

import pysyncobj.pickle as _pickle
import pysyncobj.syncobj as _syncobj
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.node import TCPNode
from pysyncobj.serializer import Serializer

from common import codec, errors
from manager.state.raft import journal as raft_journal
from manager.state.raft.cipher import DataCipher
from manager.state.raft.node import _StoreMachine
from manager.state.store import Store

log = logging.getLogger("shoal.raft.recovery")

JOURNAL = "journal"
SNAPSHOT = "snapshot"
_REGULAR, _NO_OP, _MEMBERSHIP = 0, 1, 2
# The one replicated method: pysyncobj numbers them by sorted name, so it is method 0.
_APPLY_BATCH_ID = 0
# The store index jumps this far at a recovery. An agent asks its assignments "since" the
# highest index it saw, which the lost cluster may have taken past what survived (writes after
# the backup; entries the survivor never received). Above every index it could have seen, the
# new leader's dispatcher answers it with everything (a full resync) instead of a delta that
# would skip the changes reusing those numbers. 2^32 transactions are out of reach of any
# swarm between two recoveries, and 2^31 recoveries fit in the 64-bit index.
INDEX_GAP = 1 << 32
# pysyncobj's own attributes in a snapshot (the code version in force); restored as they were.
_DEFAULT_SELF_DATA = {"_SyncObj__enabledCodeVersion": 0}


@dataclass
class RaftState:
    """What a manager's raft directory holds, replayed."""
    store: Store
    last_index: int = 0           # the raft index of the last entry replayed
    last_term: int = 0            # the highest term the log and its meta know
    members: list[str] = field(default_factory=list)   # raft addrs of the last configuration
    entries_replayed: int = 0
    self_data: dict = field(default_factory=lambda: dict(_DEFAULT_SELF_DATA))


def has_raft_data(raft_dir: Path) -> bool:
    return (raft_dir / JOURNAL).is_file() or (raft_dir / SNAPSHOT).is_file()


def _check_layout() -> None:
    # Fail at import, loudly, if replicated methods change: entries name them by number.
    names = sorted(m for m in dir(_StoreMachine)
                   if getattr(getattr(_StoreMachine, m), "replicated", False)
                   and m != getattr(getattr(_StoreMachine, m), "origName", m))
    if len(names) != 1 or not names[0].startswith("apply_batch"):
        raise ImportError(f"manager/state/raft/recovery.py knows one replicated method "
                          f"(apply_batch), the store machine now has {names}: update it")


_check_layout()


def read_raft_dir(raft_dir: Path, secret: bytes, initial_members: list[str]) -> RaftState:
    """Replay the snapshot and every journal entry into a fresh store. `initial_members` is the
    configuration raft started from (the node's saved peers), for a log without a snapshot."""
    raft_journal.install()
    if not has_raft_data(raft_dir):
        raise errors.FailedPrecondition(
            f"this manager has no raft data in {raft_dir}: there is nothing to recover from")
    state = RaftState(store=Store(), members=sorted(set(initial_members)))
    # The store machine itself opens and applies entries: whatever their sealed format is.
    machine = _StoreMachine(state.store, DataCipher(secret))
    base_index = 0
    snapshot = raft_dir / SNAPSHOT
    try:
        if snapshot.is_file():
            data = Serializer(str(snapshot), 0, False, None, None, None).deserialize()
            self_data, consumer = data[0][0], data[0][1]
            state.self_data = dict(self_data) if isinstance(self_data, dict) else state.self_data
            machine._deserialize(consumer)
            base_index, state.last_term = data[1][1], data[1][2]
            state.last_index = base_index
            state.members = sorted(node.id for node in data[3])
        journal_path = raft_dir / JOURNAL
        if journal_path.is_file():
            journal = _syncobj.createJournal(str(journal_path))
            try:
                state.last_term = max(state.last_term, journal.getCurrentTerm() or 0)
                for i in range(len(journal)):
                    command, idx, term = journal[i]
                    if idx <= base_index:
                        continue
                    _replay(state, machine, bytes(command))
                    state.last_index, state.last_term = idx, max(state.last_term, term)
                    state.entries_replayed += 1
            finally:
                journal._destroy()
    except InvalidTag:
        raise _undecryptable() from None
    except (OSError, EOFError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise errors.FailedPrecondition(f"the raft data in {raft_dir} cannot be read: {exc}") from None
    return state


def _undecryptable() -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        "the raft data cannot be decrypted with this node's raft secret: it is damaged or from "
        "another swarm; nothing was changed")


def _replay(state: RaftState, machine: _StoreMachine, command: bytes) -> None:
    kind = command[0]
    if kind == _MEMBERSHIP:
        action, node_id = _pickle.loads(command[1:])[:2]
        members = set(state.members)
        if action == "add":
            members.add(node_id)
        elif action == "rem":
            members.discard(node_id)
        state.members = sorted(members)
        return
    if kind != _REGULAR:
        return  # no-ops and code-version switches change no data
    call = _pickle.loads(command[1:])
    if not isinstance(call, tuple):
        func_id, args, kwargs = call, (), {}
    else:
        func_id, args, kwargs = call[0], call[1], (call[2] if len(call) > 2 else {})
    if func_id != _APPLY_BATCH_ID:
        raise ValueError(f"a journal entry calls replicated method {func_id}, unknown here")
    # As pysyncobj applies it (_doApply: run the method itself, do not propose it). A
    # transaction that failed its checks then fails the same way now: the same store results.
    results = machine.apply_batch(*args, **{**kwargs, "_doApply": True})
    if any(isinstance(r, dict) and not r.get("ok") and
           str(r.get("message", "")).startswith("entry not applied") for r in results or ()):
        raise _undecryptable()


def write_single_member(raft_dir: Path, secret: bytes, self_addr: str, store_snapshot: bytes,
                        last_index: int, last_term: int,
                        self_data: Optional[dict] = None, index_gap: int = INDEX_GAP) -> int:
    """Write a raft directory whose only member is `self_addr`, holding `store_snapshot` (its
    index moved up by `index_gap`) as of raft index last_index + 2, at term last_term + 1. The
    directory must not exist. Returns the new term."""
    raft_journal.install()
    raft_dir.mkdir(parents=True)
    os.chmod(raft_dir, 0o700)  # the snapshot holds the CA key and every secret (sealed)
    term = last_term + 1
    no_op = bytes([_NO_OP])
    before, last = (no_op, last_index + 1, term), (no_op, last_index + 2, term)
    if index_gap:
        plain = codec.unpack(store_snapshot)
        plain["index"] += index_gap
        store_snapshot = codec.pack(plain)
    # Sealed by the store machine itself, as raft's own snapshots are (whatever that format is).
    sealed = _StoreMachine(_Snapshot(store_snapshot), DataCipher(secret))._serialize()
    data = ([dict(self_data or _DEFAULT_SELF_DATA), sealed],
            last, before, {TCPNode(self_addr)})
    serializer = Serializer(str(raft_dir / SNAPSHOT), 0, False, None, None, None)
    serializer.serialize(data, last[1])
    if serializer.checkSerializing()[0] != SERIALIZER_STATE.SUCCESS:
        raise errors.FailedPrecondition(f"could not write the raft snapshot in {raft_dir}")
    journal = _syncobj.createJournal(str(raft_dir / JOURNAL))
    try:
        journal.clear()
        journal.add(*before)
        journal.add(*last)
        journal.setRaftCommitIndex(last[1])
        journal.setCurrentTerm(term, None)  # stores the meta (and the commit index) at once
        journal.flush()
    finally:
        journal._destroy()
    for name in os.listdir(raft_dir):
        path = raft_dir / name
        os.chmod(path, 0o600)
        _fsync(path)
    _fsync(raft_dir)
    return term


class _Snapshot:
    """A store's snapshot standing in for the store, for the machine to seal as it is."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def snapshot(self) -> bytes:
        return self._data


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Recovered:
    raft_index: int
    term: int
    store_index: int
    removed_members: list[str]
    kept_at: str                 # where the old raft directory was moved


def force_new_cluster(raft_dir: Path, secret: bytes, self_addr: str,
                      initial_members: list[str]) -> Recovered:
    """Turn this manager's raft data into a one-member cluster's. The old directory is kept
    beside it (raft.before-force-new-cluster-<time>); nothing is removed."""
    state = read_raft_dir(raft_dir, secret, initial_members)
    fresh = raft_dir.with_name(raft_dir.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    state.store.index += INDEX_GAP  # here, not by write_single_member: one conversion less
    term = write_single_member(fresh, secret, self_addr, state.store.snapshot(),
                               state.last_index, state.last_term, state.self_data, index_gap=0)
    kept = raft_dir.with_name(f"{raft_dir.name}.before-force-new-cluster-{int(time.time())}")
    os.rename(raft_dir, kept)
    try:
        os.rename(fresh, raft_dir)
    except OSError:
        os.rename(kept, raft_dir)  # as it was: never a manager without its raft directory
        raise
    _fsync(raft_dir.parent)
    removed = [m for m in state.members if m != self_addr]
    log.warning("raft forced into a new one-member cluster at index %d, term %d (%d entries "
                "replayed); removed members: %s; the old raft data is kept in %s",
                state.last_index + 2, term, state.entries_replayed, ", ".join(removed) or "none",
                kept)
    return Recovered(raft_index=state.last_index + 2, term=term,
                     store_index=state.store.index,
                     removed_members=removed, kept_at=str(kept))
