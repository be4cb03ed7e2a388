"""An asyncio face over pysyncobj, narrow enough that the engine stays replaceable.

pysyncobj runs its raft core on a thread of its own (the one thread seam of the manager).
Everything that crosses it goes through `loop.call_soon_threadsafe`. The rest of the manager
only sees: `await commit(txn)`, `await barrier()`, leadership, membership and status.

Settings follow DESIGN.md: a password is mandatory (pysyncobj unpickles what reaches its port;
the password makes every message authenticated encryption, so nothing from a peer without the
cluster secret is ever unpickled), journal plus full dump, dynamic membership, no batching,
fast leader fallback and reconnection, short election timeouts.

pysyncobj does not fsync its journal: a power loss on a majority of managers at once can lose
the last acknowledged writes. That is on the list of things to close.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

from common.errors import FailedPrecondition, Unavailable
from manager.store import Store, Transaction, TxnResult

log = logging.getLogger("shoal.raft")

_FAILURES = {
    FAIL_REASON.QUEUE_FULL: "the raft queue is full; retry shortly",
    FAIL_REASON.MISSING_LEADER: "no leader: this manager cannot reach a quorum of managers",
    FAIL_REASON.DISCARDED: "the leader changed before the change was committed; retry",
    FAIL_REASON.NOT_LEADER: "this manager is not the leader",
    FAIL_REASON.LEADER_CHANGED: "the leader changed; retry",
    FAIL_REASON.REQUEST_DENIED: "the raft membership is already changing; retry in a moment",
}


class _StoreMachine(SyncObjConsumer):
    """The replicated state machine: applies transactions to the store; snapshots are msgpack."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self._store = store

    @replicated
    def apply_txn(self, payload: bytes) -> dict:
        try:
            return self._store.apply(payload)
        except Exception as exc:  # a bad entry must not kill the raft thread on every replica
            log.exception("raft entry could not be applied")
            return TxnResult(False, code="invalid", message=f"entry not applied: {exc}").to_plain()

    def _serialize(self) -> dict:
        return {"store": self._store.snapshot()}

    def _deserialize(self, data: dict) -> None:
        self._store.restore(data["store"])


@dataclass
class RaftTimings:
    election_min: float = 0.3
    election_max: float = 0.8
    append_entries_period: float = 0.07
    leader_fallback: float = 2.0
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
        )
        self._machine = _StoreMachine(store)
        # The journal replays up to the commit index it recorded before contacting anyone.
        self._sync = SyncObj(self_addr, [p for p in partners if p != self_addr], conf,
                             consumers=[self._machine])

    # ---- state ----------------------------------------------------------------------------
    @property
    def leader_addr(self) -> Optional[str]:
        leader = self._sync._getLeader()
        return leader.address if leader is not None else None

    @property
    def is_leader(self) -> bool:
        return self.leader_addr == self.self_addr

    @property
    def has_quorum(self) -> bool:
        return self._sync.hasQuorum

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
        payload = txn.encode()
        result = await self._call(lambda cb: self._machine.apply_txn(payload, callback=cb),
                                  timeout, "commit")
        return TxnResult.from_plain(result)

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
            n = len(self.members())
            up = sum(1 for m in self.members() if m.connected)
            raise Unavailable(
                f"{what} timed out after {timeout:g}s: no quorum — this manager reaches {up} of "
                f"{n} managers and a majority ({n // 2 + 1}) is needed") from None

    def close(self) -> None:
        try:
            self._sync.destroy()
        except Exception:
            log.exception("stopping raft")
        # destroy() only asks the thread to stop; wait so the port is free for a restart.
        thread = getattr(self._sync, "_SyncObj__thread", None)
        if thread is not None:
            thread.join(timeout=5)
