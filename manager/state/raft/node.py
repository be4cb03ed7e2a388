"""An asyncio face over pysyncobj, narrow enough that the engine stays replaceable.

pysyncobj runs its raft core on a thread of its own (the one thread seam of the manager).
Everything that crosses it goes through `loop.call_soon_threadsafe`. The rest of the manager
only sees: `await commit(txn)`, `await barrier()`, leadership, membership and status.

Settings follow DESIGN.md: a password is mandatory (pysyncobj unpickles what reaches its port;
the password makes every message authenticated encryption, so nothing from a peer without the
cluster secret is ever unpickled), journal plus full dump, dynamic membership, no batching,
fast leader fallback and reconnection, short election timeouts.

Raft data at rest is encrypted: every entry (its batch of transactions as one compressed blob,
see cipher.py) and every snapshot is sealed with AES-GCM
under a data key derived from the cluster's raft secret before pysyncobj sees it, so its
journal and snapshot files hold ciphertext only (membership entries hold nothing but peer
addresses). With autolock on, the raft secret itself is on disk only sealed by the swarm's
unlock key (common/keywrap.py), so a restarted manager cannot derive the data key, or even
start raft, until `shoal swarm unlock`.

A full disk is an error, not a crash (manager/state/raft/journal.py): an append that finds no room
fails before it enters the log, and the leader's commit says so. The leader refuses users'
changes well before that point (manager/diskguard.py).

Durable: an entry is on stable storage (fdatasync) before this manager acknowledges it, as a
follower, or counts it toward the commit majority, as the leader; one sync per raft tick covers
every entry of the tick (group commit). The journal's records carry checksums, so a torn tail
after a crash is cut back to the last whole entry and logged, never replayed; the snapshot is
replaced crash-safely. The journal side is manager/state/raft/journal.py, pysyncobj's side
manager/state/raft/durable_acks.py (mixed into _SyncObj below). SHOAL_UNSAFE_RAFT_NO_SYNC=1
turns syncing off, for tests and benchmarks only.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import socket
_INET_NTOP = socket.inet_ntop
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated  # noqa: E402
from pysyncobj.syncobj import _RAFT_STATE  # noqa: E402
# pysyncobj 0.3.17 (its win_inet_pton module) replaces socket.inet_ntop with a Windows-only
# version on every platform, which breaks whatever decodes addresses later in the process
# (pyroute2's netlink parser, on a node that is manager and worker at once): undo it.
socket.inet_ntop = _INET_NTOP

from common.errors import FailedPrecondition, OutcomeUnknown, ResourceExhausted, Unavailable  # noqa: E402
from manager.state import requestids  # noqa: E402
from manager.state.raft import journal as raft_journal  # noqa: E402
from manager.state.raft import snapshot_retention  # noqa: E402
from manager.state.raft.cipher import DataCipher  # noqa: E402
from manager.state.raft.durable_acks import DurableAcks  # noqa: E402
from manager.state.raft import wire as raft_wire  # noqa: E402
from manager.state.store import Store, Transaction, TxnResult  # noqa: E402

log = logging.getLogger("shoal.raft")

# How the store is packed inside a raft snapshot (absent: sealed msgpack, before issue 20).
SNAPSHOT_CODEC = "zlib"
raft_journal.install()
raft_wire.install()


class _OncePerMinute(logging.Filter):
    """pysyncobj logs a failing tick with its traceback and retries the tick every 50 ms: on a
    full disk that is twenty tracebacks a second into a log that cannot grow either."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        key = f"{record.msg}|{record.exc_info[1]}"
        now = time.monotonic()
        if now - self._last.get(key, -60.0) < 60.0:
            return False
        self._last[key] = now
        return True


logging.getLogger("pysyncobj.syncobj").addFilter(_OncePerMinute())

_FAILURES = {
    FAIL_REASON.QUEUE_FULL: "the raft queue is full; retry shortly",
    FAIL_REASON.MISSING_LEADER: "no leader: this manager cannot reach a quorum of managers",
    FAIL_REASON.DISCARDED: "the leader changed before the change was committed; retry",
    FAIL_REASON.NOT_LEADER: "this manager is not the leader",
    FAIL_REASON.LEADER_CHANGED: "the leader changed; retry",
    FAIL_REASON.REQUEST_DENIED: "the raft membership is already changing; retry in a moment",
}


class _StoreMachine(SyncObjConsumer):
    """The replicated state machine: applies transactions to the store; snapshots are msgpack.

    One raft entry carries a batch of independent transactions (group commit); each applies
    atomically on its own and has its own result. pysyncobj numbers replicated methods by their
    sorted names: a new one must take `ver=` so existing journals keep replaying correctly.
    """

    def __init__(self, store: Store, cipher: DataCipher) -> None:
        super().__init__()
        self._store = store
        self._cipher = cipher

    @replicated
    def apply_batch(self, payloads: list[bytes]) -> list[dict]:
        try:
            txns = self._cipher.open_entry(payloads)
        except Exception as exc:  # a bad entry must not kill the raft thread on every replica
            log.exception("raft entry could not be opened")
            return [TxnResult(False, code="invalid", message=f"entry not applied: {exc}").to_plain()]
        results = []
        for txn in txns:
            try:
                results.append(self._store.apply(txn))
            except Exception as exc:  # a bad entry must not kill the raft thread on every replica
                log.exception("raft entry could not be applied")
                results.append(TxnResult(False, code="invalid",
                                         message=f"entry not applied: {exc}").to_plain())
        return results

    def _serialize(self) -> dict:
        # Compressed before it is sealed: sealed bytes do not compress, and the store's msgpack
        # (the same keys for every task) shrinks several-fold at zlib's fastest level. A smaller
        # snapshot is quicker to seal, write, fsync and send to a joining manager.
        return {"store": self._cipher.seal(zlib.compress(self._store.snapshot(), 1)),
                "codec": SNAPSHOT_CODEC}

    def _deserialize(self, data: dict) -> None:
        raw = self._cipher.open(data["store"])
        codec_name = data.get("codec")
        if codec_name == SNAPSHOT_CODEC:
            raw = zlib.decompress(raw)
        elif codec_name is not None:
            raise ValueError(f"the raft snapshot is in {codec_name!r}, a format of a newer "
                             "shoal: upgrade this manager")
        # else: a snapshot of a shoal before issue 20, sealed uncompressed
        self._store.restore(raw)


# A tick that took this much longer than its poll's wait was spent working (applying entries,
# a snapshot), not waiting for the leader (see _SyncObj).
BUSY_TICK = 0.25


class _SyncObj(DurableAcks, SyncObj):
    """pysyncobj with one fix: a late acknowledgement must not move the leader's next index for
    a follower backwards.

    (DurableAcks, mixed in first, holds acknowledgements until the journal is synced and syncs
    once per tick; its docstring names the pysyncobj methods it overrides, each a seam.)

    pysyncobj sets nextIndex to the acknowledged index + 1 even when it already sent further on
    the same ordered connection. It then re-sends from there, and the follower (which truncates
    after prevLogIdx on every append, matching entries included) drops entries it had already
    acknowledged whenever the re-send is shorter than its log: a committed entry could briefly
    exist on fewer replicas than counted, and every re-send rewrites the journal. Failures (a
    `reset`) still move nextIndex back, so a follower that really lacks entries gets them.
    The method name is pysyncobj's private one, on purpose: this is the single seam.

    And one speed-up: a member alone (a one-manager swarm) appends a command at the end of a tick
    and then sleeps a whole poll period, as no follower's ack wakes it; every commit took ~50 ms.
    It now wakes itself when its log is ahead of its commit index.

    And pre-vote (Raft thesis 9.6), which pysyncobj lacks: a member whose election timer runs out
    first asks the others whether they would vote for it, without raising its term. A member
    that heard from its leader within the minimum election timeout, or is the leader, says no.
    Only with a majority of yeses does the real election start. Without it, a manager back from
    a restart (its timer long expired, reached by a follower before the leader) deposed a
    healthy leader with its higher term. pysyncobj looks its election gate up by its private
    name on each tick, which makes that method the seam here too.

    And a tick spent working is not the leader's silence. pysyncobj checks the election timer
    at the start of a tick and reads the sockets at its end: a follower that spent a second
    applying a large entry (a service of thousands of tasks) judged its leader before reading
    the appends waiting for it, and two followers applying the same entry granted each other's
    pre-vote. After a busy tick a follower's timer starts again, and for the minimum election
    timeout it votes no, as it would having just heard from its leader.
    """

    def __init__(self, *args, **kwargs) -> None:
        # Set before pysyncobj starts its thread, which may tick at once.
        self._leader_heard_at = 0.0     # monotonic time of the last append from a current leader
        self._pre_vote_sent_at = -1e9
        self._pre_vote_yes: set = set()
        self._pre_vote_won_at = -1e9
        self._busy_tick_ended_at = -1e9
        super().__init__(*args, **kwargs)
        self.addOnTickCallback(self._wake_if_alone)

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803 - pysyncobj's tick
        started = time.monotonic()
        super()._onTick(timeToWait)
        now = time.monotonic()
        busy = now - started - timeToWait > BUSY_TICK
        if busy and self._SyncObj__raftState == _RAFT_STATE.FOLLOWER:
            self._busy_tick_ended_at = now
            self._SyncObj__raftElectionDeadline = max(
                self._SyncObj__raftElectionDeadline, now + self._SyncObj__generateRaftTimeout())

    def _wake_if_alone(self) -> None:
        if (not self._SyncObj__otherNodes
                and self._SyncObj__raftCommitIndex < self._SyncObj__getCurrentLogIndex()):
            notifier = getattr(self, "_SyncObj__pipeNotifier", None)
            if notifier is not None:
                notifier.notify()

    # ---- pre-vote ---------------------------------------------------------------------------
    def _SyncObj__connectedToAnyone(self) -> bool:  # noqa: N802 - pysyncobj's election gate
        """Called only once this member's election timer ran out: may it start an election?"""
        if not SyncObj._SyncObj__connectedToAnyone(self):
            return False
        others = self._SyncObj__otherNodes
        if not others or self._SyncObj__transferInProgress:
            return True  # alone, or the leader handed over leadership: no one to ask
        conf = self._SyncObj__conf
        now = time.monotonic()
        if now - self._pre_vote_won_at < conf.raftMaxTimeout:
            self._pre_vote_won_at = -1e9
            return True
        if now - self._pre_vote_sent_at >= conf.raftMinTimeout:
            self._pre_vote_sent_at = now
            self._pre_vote_yes = set()
            ask = {"type": "shoal_pre_vote", "term": self._SyncObj__raftCurrentTerm + 1,
                   "last_log_index": self._SyncObj__getCurrentLogIndex(),
                   "last_log_term": self._SyncObj__getCurrentLogTerm()}
            for node in others:
                self._SyncObj__transport.send(node, ask)
        return False

    def _would_vote_for(self, ask: dict) -> bool:
        if self._SyncObj__raftState == _RAFT_STATE.LEADER:
            return False  # it steps down by itself once it loses its quorum (leaderFallbackTimeout)
        heard = max(self._leader_heard_at, self._busy_tick_ended_at)
        if time.monotonic() - heard < self._SyncObj__conf.raftMinTimeout:
            return False
        if ask.get("term", -1) < self._SyncObj__raftCurrentTerm:
            return False
        mine = (self._SyncObj__getCurrentLogTerm(), self._SyncObj__getCurrentLogIndex())
        return (ask.get("last_log_term", -1), ask.get("last_log_index", -1)) >= mine

    def _on_pre_vote_answer(self, node, answer: dict) -> None:
        if not answer.get("granted") or answer.get("term") != self._SyncObj__raftCurrentTerm + 1:
            return  # a no, or an answer to an older round
        self._pre_vote_yes.add(node)
        if len(self._pre_vote_yes) + 1 > (len(self._SyncObj__otherNodes) + 1) / 2:
            self._pre_vote_won_at = time.monotonic()

    def _SyncObj__onMessageReceived(self, node, message):  # noqa: N802 - overrides pysyncobj
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "shoal_pre_vote":
            self._SyncObj__transport.send(node, {"type": "shoal_pre_vote_answer", "term": message.get("term"),
                                                  "granted": self._would_vote_for(message)})
            return
        if kind == "shoal_pre_vote_answer":
            self._on_pre_vote_answer(node, message)
            return
        if kind == "append_entries" and message.get("term", -1) >= self._SyncObj__raftCurrentTerm:
            self._leader_heard_at = time.monotonic()
        if (kind == "next_node_idx" and message.get("success") and not message.get("reset")):
            next_index = self._SyncObj__raftNextIndex
            sent_up_to = next_index.get(node)
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            if sent_up_to is not None and next_index.get(node, sent_up_to) < sent_up_to:
                next_index[node] = sent_up_to
            return
        SyncObj._SyncObj__onMessageReceived(self, node, message)


# Group commit bounds: proposals in flight at once, and transactions in one raft entry.
_MAX_IN_FLIGHT = 4
_MAX_BATCH = 256


@dataclass
class RaftTimings:
    # A busy manager's raft thread shares the GIL with its event loop: under the load of a
    # thousand nodes joining, 0.25-0.5 s was shorter than its pauses and leadership changed
    # every second or so (issue 20). etcd's default is 1 s; Swarm's is 10 s.
    election_min: float = 0.6
    election_max: float = 1.2
    append_entries_period: float = 0.05
    leader_fallback: float = 2.5
    connection_retry: float = 0.5
    connection_timeout: float = 1.5


@dataclass
class MemberStatus:
    addr: str
    connected: bool


class RaftNode:
    def __init__(self, store: Store, self_addr: str, partners: list[str], data_dir: Path,
                 password: bytes, *, bind_addr: str | None = None,
                 timings: RaftTimings | None = None,
                 snapshot_entries: int = 10000) -> None:
        if not password:
            raise ValueError("raft needs the cluster's raft secret: refusing to run unauthenticated")
        self.store = store
        self.self_addr = self_addr
        self._loop = asyncio.get_running_loop()
        t = timings or RaftTimings()
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)  # the log holds the CA key and every secret
        self.data_dir = data_dir
        conf = SyncObjConf(
            password=password.hex(),
            journalFile=str(data_dir / "journal"),
            fullDumpFile=str(data_dir / "snapshot"),
            dynamicMembershipChange=True,
            appendEntriesUseBatch=False,
            appendEntriesBatchSizeBytes=raft_wire.BATCH_BYTES,
            appendEntriesPeriod=t.append_entries_period,
            raftMinTimeout=t.election_min,
            raftMaxTimeout=t.election_max,
            leaderFallbackTimeout=t.leader_fallback,
            connectionRetryTime=t.connection_retry,
            connectionTimeout=t.connection_timeout,
            logCompactionMinEntries=snapshot_entries,
            logCompactionMinTime=60,
            # Forking a threaded asyncio process to write a snapshot is asking for deadlocks.
            useFork=False,
            bindAddress=f"{bind_addr}:{self_addr.rsplit(':', 1)[1]}" if bind_addr else None,
            commandsWaitLeader=True,
            # Leadership reaches the manager as an event (see state_changes), not by polling.
            onStateChanged=self._on_state_changed,
        )
        # Set (on the event loop) whenever raft's state changes: follower, candidate, leader.
        self.state_changes = asyncio.Event()
        self._cipher = DataCipher(password)
        self._machine = _StoreMachine(store, self._cipher)
        self._queued: list[tuple[bytes, asyncio.Future]] = []
        self._in_flight = 0
        # The journal replays up to the commit index it recorded before contacting anyone.
        self._sync = _SyncObj(self_addr, [p for p in partners if p != self_addr], conf,
                             consumers=[self._machine])
        # For metrics (manager/metrics.py): each commit's latency in seconds goes to these
        # callables on the loop, and leader_changes counts the leaders this member has seen.
        self.commit_observers: list = []
        self.leader_changes = 0
        self._leader_seen: Optional[str] = None
        self._sync.addOnTickCallback(self._count_leader_change)

    # ---- state ----------------------------------------------------------------------------
    @property
    def leader_addr(self) -> Optional[str]:
        leader = self._sync._getLeader()
        return leader.address if leader is not None else None

    @property
    def is_leader(self) -> bool:
        # raft's own state, set before its state-change callback runs: a waiter woken by
        # state_changes reads the state it was woken for.
        return self._sync._isLeader()

    def _count_leader_change(self) -> None:
        # pysyncobj's thread, every tick: a follower's own state does not change with the leader.
        leader = self.leader_addr
        if leader is not None and leader != self._leader_seen:
            self._leader_seen, self.leader_changes = leader, self.leader_changes + 1

    def _on_state_changed(self, old: int, new: int) -> None:
        # pysyncobj's thread: hand over to the loop (the one thread seam of the manager).
        self._loop.call_soon_threadsafe(self.state_changes.set)

    @property
    def has_quorum(self) -> bool:
        return self._sync.hasQuorum

    @property
    def leader_heard_at(self) -> Optional[float]:
        """Wall-clock time of the last append this follower received from a leader (None:
        never since start). For the stale-read warning of a manager without a leader."""
        heard = self._sync._leader_heard_at
        return time.time() - (time.monotonic() - heard) if heard else None

    @property
    def term(self) -> int:
        return self._sync.raftCurrentTerm

    @property
    def applied_index(self) -> int:
        return self._sync.raftLastApplied

    @property
    def commit_index(self) -> int:
        return self._sync.raftCommitIndex

    @property
    def caught_up(self) -> bool:
        """Synced with a leader once since start: before that the local replica may be stale."""
        return self._sync.isReady()

    def members(self) -> list[MemberStatus]:
        others = list(self._sync.otherNodes)
        result = [MemberStatus(self.self_addr, True)]
        result += [MemberStatus(n.address, self._sync.isNodeConnected(n)) for n in others]
        return result

    def member_addrs(self) -> list[str]:
        return [m.addr for m in self.members()]

    # ---- writes ---------------------------------------------------------------------------
    async def commit(self, txn: Transaction, timeout: float = 5.0) -> TxnResult:
        """Propose `txn` and wait until it is applied here. Raises Unavailable without quorum."""
        fut: asyncio.Future = self._loop.create_future()
        proposed_at = time.monotonic()
        requestids.assign(txn)  # a user's request: its id, so a retry elsewhere applies once
        self._queued.append((txn.encode(), fut))
        if len(self._queued) == 1:
            self._loop.call_soon(self._propose_queued)
        try:
            result = TxnResult.from_plain(await asyncio.wait_for(asyncio.shield(fut), timeout))
        except asyncio.TimeoutError:
            error = self._timeout_error(timeout, "commit", proposed_at)
            if isinstance(error, ResourceExhausted):
                raise error from None
            # The entry may sit in this manager's log (or pysyncobj's queue) and still commit.
            raise OutcomeUnknown(f"{error.message}; the change may or may not have been "
                                 f"applied") from None
        for observe in self.commit_observers:
            observe(time.monotonic() - proposed_at)
        requestids.check_own(self.store, txn, result)
        return result

    def _propose_queued(self) -> None:
        """Group commit: whatever queued while earlier proposals were in flight goes as one entry."""
        if not self._queued or self._in_flight >= _MAX_IN_FLIGHT:
            return
        batch, self._queued = self._queued[:_MAX_BATCH], self._queued[_MAX_BATCH:]
        self._in_flight += 1

        def done(results, error) -> None:
            self._loop.call_soon_threadsafe(settle, results, error)

        def settle(results, error) -> None:
            self._in_flight -= 1
            for i, (_, fut) in enumerate(batch):
                if fut.done():
                    continue
                if error == FAIL_REASON.SUCCESS:
                    # An entry that could not be opened has one result for all its transactions.
                    fut.set_result(results[i] if i < len(results) else results[-1])
                elif error == FAIL_REASON.LEADER_CHANGED:
                    # Sent on to a leader that may have appended it before it changed.
                    fut.set_exception(OutcomeUnknown(
                        f"commit failed: {_FAILURES[error]}; the change may or may not have "
                        f"been applied"))
                else:
                    fut.set_exception(Unavailable(f"commit failed: {_FAILURES.get(error, error)}"))
            self._propose_queued()

        # Sealed as one blob: see cipher.py for what sealing each transaction cost.
        self._machine.apply_batch(self._cipher.seal_batch([payload for payload, _ in batch]),
                                  callback=done)
        if self._queued:
            self._loop.call_soon(self._propose_queued)

    async def barrier(self, timeout: float = 3.0) -> None:
        """A replicated no-op: once it is applied here, every earlier commit is too."""
        await self.commit(Transaction(), timeout)

    async def add_member(self, addr: str, timeout: float = 10.0) -> None:
        await self._call(lambda cb: self._sync.addNodeToCluster(addr, callback=cb), timeout,
                         f"adding raft member {addr}")

    async def remove_member(self, addr: str, timeout: float = 10.0) -> None:
        await self._call(lambda cb: self._sync.removeNodeFromCluster(addr, callback=cb), timeout,
                         f"removing raft member {addr}")

    async def transfer_leadership(self, timeout: float = 3.0) -> None:
        await self._call(lambda cb: self._sync.transferLeadership(callback=cb), timeout,
                         "leadership transfer")

    async def _call(self, start, timeout: float, what: str):
        fut: asyncio.Future = self._loop.create_future()

        def done(result, error) -> None:
            def settle() -> None:
                if fut.done():
                    return
                if error == FAIL_REASON.SUCCESS:
                    fut.set_result(result)
                else:
                    reason = _FAILURES.get(error, f"raft error {error}")
                    exc_cls = FailedPrecondition if error == FAIL_REASON.REQUEST_DENIED else Unavailable
                    fut.set_exception(exc_cls(f"{what} failed: {reason}"))
            self._loop.call_soon_threadsafe(settle)

        start(done)
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise self._timeout_error(timeout, what) from None

    def _timeout_error(self, timeout: float, what: str,
                       started: float | None = None) -> Unavailable | ResourceExhausted:
        # An append that found the disk full dropped the proposal before it entered the log.
        failure = raft_journal.failure_since(started) if started is not None else None
        if failure is not None:
            return ResourceExhausted(
                f"{what} failed: this manager's disk is full ({failure}); the change was not "
                f"made. Free space on that filesystem and retry")
        members = self.members()
        up = sum(1 for m in members if m.connected)
        return Unavailable(
            f"{what} timed out after {timeout:g}s: no quorum — this manager reaches {up} of "
            f"{len(members)} managers and a majority ({len(members) // 2 + 1}) is needed")

    def set_snapshot_interval(self, entries: int) -> None:
        """The swarm's `--snapshot-interval`: log entries between two snapshots. pysyncobj reads
        its config on every tick of its thread; one int assignment is atomic under the GIL."""
        self._sync._SyncObj__conf.logCompactionMinEntries = max(2, int(entries))

    def set_keep_old_snapshots(self, count: int) -> None:
        """The swarm's `--max-snapshots`: earlier snapshots kept beside the current one."""
        snapshot_retention.set_keep(str(self.data_dir / "snapshot"), count)

    def compact(self) -> None:
        """Write a snapshot and truncate the journal now (normally it happens by itself)."""
        self._sync.forceLogCompaction()

    def close(self) -> None:
        try:
            self._sync.destroy()
        except Exception:
            log.exception("stopping raft")
        # destroy() only asks the thread to stop; wait so the port is free for a restart.
        thread = getattr(self._sync, "_SyncObj__thread", None)
        if thread is not None:
            thread.join(timeout=5)
