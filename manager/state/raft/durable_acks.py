"""pysyncobj's side of the durable journal: nothing is acknowledged before it is on disk.

pysyncobj appends to its journal and acknowledges at once, on the leader and on followers; the
journal (manager/state/raft/journal.py) now only writes, and syncs when asked. `DurableAcks`
is a mixin for pysyncobj's SyncObj that asks at the right moments, through private methods of
pysyncobj (each one a seam, named below), with one fdatasync per tick covering every entry that
arrived in it (group commit: under load a tick carries many entries, so syncs stay far fewer
than entries).

Seams:

- `_onTick` (pysyncobj's tick: raft timers, commit, applying, proposals, then polling the
  sockets, which is where peers' messages are handled): the journal is synced at the start of
  every tick and at its end, after the poll, and then the acknowledgements held during the tick
  go out. Syncing at the start also means the leader's commit-index computation, which counts
  the leader's own log as one vote, only ever sees a log that is on disk.
- an on-tick callback (run by pysyncobj just before the poll): the leader's proposals of this
  tick were appended and sent to the followers already; syncing here overlaps the leader's
  fdatasync with the followers' instead of adding it after their answers.
- `_SyncObj__sendNextNodeIdx` (a follower's append-entries answer): while the journal has
  unsynced changes, answers are held, in order, and sent after the next sync. A follower thus
  never acknowledges an entry that is not on its disk. Failure answers held behind them keep
  their order on the connection.
- `_SyncObj__applyLogEntries` (applies up to the commit index, and after it pysyncobj sends the
  new commit index to the followers): on a leader whose journal is still dirty (an election
  appended its no-op earlier in this same tick), the journal is synced first, so a commit that
  counted the leader's own entry is never applied, answered or announced before that entry is
  on disk.
- `_SyncObj__loadDumpFile` (loading the snapshot at start): pysyncobj renames its snapshot and
  compacts the journal a tick later. After a crash in between, the journal's first entries are
  not the snapshot's last two, and pysyncobj clears the journal, dropping every entry after the
  snapshot, acknowledged ones included. The journal is first cut at the snapshot's entries
  when it holds them, which is the compaction that the crash interrupted.

With SHOAL_UNSAFE_RAFT_NO_SYNC=1 the journal is never dirty, so nothing is held: pysyncobj's
original behaviour, for measuring what syncing costs.
"""
from __future__ import annotations

import logging

from pysyncobj.syncobj import _RAFT_STATE

log = logging.getLogger("shoal.raft.journal")


class DurableAcks:
    """Mix in before pysyncobj's SyncObj: `class _SyncObj(DurableAcks, SyncObj)`."""

    def __init__(self, *args, **kwargs) -> None:
        # Before pysyncobj starts its thread, which may tick at once.
        self._held_acks: list[tuple[object, dict]] = []
        super().__init__(*args, **kwargs)
        self.addOnTickCallback(self._make_durable)

    def _make_durable(self) -> None:
        """Sync what the journal holds unsynced, then send the answers that waited for it."""
        journal = self._SyncObj__raftLog
        sync = getattr(journal, "sync", None)  # pysyncobj's MemoryJournal has nothing to sync
        if sync is not None:
            sync()  # raises DurabilityLost (ending the raft thread) if the disk fails
        if self._held_acks:
            held, self._held_acks = self._held_acks, []
            for node, answer in held:
                super()._SyncObj__sendNextNodeIdx(node, **answer)

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803 - pysyncobj's tick
        self._make_durable()
        super()._onTick(timeToWait)
        self._make_durable()

    def _SyncObj__sendNextNodeIdx(self, node, reset=False, nextNodeIdx=None,  # noqa: N802, N803
                                  success=False) -> None:
        if not self._held_acks and not getattr(self._SyncObj__raftLog, "dirty", False):
            super()._SyncObj__sendNextNodeIdx(node, reset=reset, nextNodeIdx=nextNodeIdx,
                                              success=success)
            return
        if nextNodeIdx is None:  # what pysyncobj would have sent now, not after the sync
            nextNodeIdx = self._SyncObj__getCurrentLogIndex() + 1
        self._held_acks.append((node, {"reset": reset, "nextNodeIdx": nextNodeIdx,
                                       "success": success}))

    def _SyncObj__applyLogEntries(self):  # noqa: N802
        if self._SyncObj__raftState == _RAFT_STATE.LEADER:
            sync = getattr(self._SyncObj__raftLog, "sync", None)
            if sync is not None:
                sync()
        return super()._SyncObj__applyLogEntries()

    def _SyncObj__loadDumpFile(self, clearJournal):  # noqa: N802, N803
        if not clearJournal:
            self._finish_interrupted_compaction()
        return super()._SyncObj__loadDumpFile(clearJournal)

    def _finish_interrupted_compaction(self) -> None:
        journal = self._SyncObj__raftLog
        try:
            # pysyncobj's snapshot: (state, last applied entry, the entry before it, members)
            snapshot = self._SyncObj__serializer.deserialize()
            before_last, last = snapshot[2], snapshot[1]
        except Exception:
            return  # pysyncobj's own load, next, reports a snapshot it cannot read
        if len(journal) < 2 or journal[0] == before_last:
            return
        at = before_last[1] - journal[0][1]
        if 0 < at < len(journal) - 1 and journal[at] == before_last and journal[at + 1] == last:
            journal.deleteEntriesTo(at)
            log.info("raft journal: finished a compaction that a crash interrupted (dropped the "
                     "%d entries the snapshot at entry %d holds)", at, last[1])
