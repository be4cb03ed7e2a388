"""Each manager's event history: the cluster events of every change its replica applies, and
of every leader election it sees, in a bounded ring that subscribers follow.

Every manager applies every change, so each one records the same events with the same index
and time (both come from the raft entry), and a history survives the leader's loss. Recording
starts when the manager starts, before raft replays its journal, so after a restart the history
reaches back over the replayed entries; a snapshot's restore only resynchronises (its objects
are not new) and leaves a gap.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
import weakref
from typing import Any, Optional

from manager.events.diff import events_of
from manager.events.model import ClusterEvent
from manager.state.store import Event

log = logging.getLogger("shoal.events")

# How many events `--since` can reach back over (a service's task makes about eight).
HISTORY = 5000
# A subscriber this many batches behind is dropped (its stream ends) rather than buffered.
BACKLOG = 10000
# A follower's raft state does not change when another manager becomes leader: it is polled.
LEADER_POLL = 0.25


class Subscription:
    """Batches of events (those of one store change, or one election) as they are recorded;
    None when the subscriber fell too far behind."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Optional[list[ClusterEvent]]] = asyncio.Queue()


class EventRecorder:
    def __init__(self, store: Any, limit: int = HISTORY) -> None:
        self._store = store
        self.history: collections.deque[ClusterEvent] = collections.deque(maxlen=limit)
        self._subs: list[Subscription] = []
        self._leader = ""

    # ---- recording --------------------------------------------------------------------------
    def take(self, event: Event) -> bool:
        """The WatchHub's accept hook, called on the loop for every store change in order.
        Recording inside the hub's fan-out, not from a queue of its own, keeps the history and
        the live streams in one order; False: the hub queues nothing for it."""
        if self._resync(event):
            return False
        when = event.time or _object_time(event) or time.time()
        self._publish(events_of(event, when, self._node_name))
        return False

    def _resync(self, event: Event) -> bool:
        # A snapshot's restore announces every object as created, with no transaction time
        # (every transaction has one; only the creates of entries written before they did are
        # lost with this, from a history that is only a few thousand events anyway).
        return event.time == 0.0 and event.action == "create"

    def saw_leader(self, term: int, node_id: str, hostname: str, raft_addr: str,
                   when: Optional[float] = None) -> None:
        """A leader this manager sees (itself or another), when it is another than the last.
        By the leader alone, not its term: a follower that stands for election bumps its term
        while raft still names the lost leader, and that is no election of the lost one."""
        if node_id == self._leader:
            return
        self._leader = node_id
        ev = ClusterEvent(index=getattr(self._store, "index", 0),
                          time=time.time() if when is None else when, type="node",
                          action="leader", id=node_id, name=hostname or node_id, node=node_id,
                          node_name=hostname or node_id,
                          attributes={"term": str(term), "raft_addr": raft_addr})
        self._publish([ev])

    def saw_exec(self, *, who: str, task_id: str, task_name: str, service_id: str,
                 node_id: str, argv: list[str], tty: bool, when: float) -> None:
        """An exec this manager relayed into a task (manager/controlapi/exec.py): not a store
        change, so only the manager that served it records it. The command is kept to what
        was typed: an exec's argv is the operator's own, never a secret of the store's."""
        task = self._store.get("tasks", task_id)
        service = task.service_name if task is not None else ""
        ev = ClusterEvent(index=getattr(self._store, "index", 0), time=when, type="task",
                          action="exec", id=task_id, name=task_name, service=service,
                          service_id=service_id, node=node_id,
                          attributes={"who": who, "command": " ".join(argv)[:200],
                                      "tty": "true" if tty else "false"})
        self._publish([ev])

    def _publish(self, batch: list[ClusterEvent]) -> None:
        if not batch:
            return
        self.history.extend(batch)
        for sub in list(self._subs):
            if sub.queue.qsize() >= BACKLOG:
                self._subs.remove(sub)
                sub.queue.put_nowait(None)
            else:
                sub.queue.put_nowait(batch)

    def _node_name(self, node_id: str) -> str:
        node = self._store.find("nodes", node_id) if node_id else None
        return (node.description.hostname or node_id) if node is not None else node_id

    # ---- reading ----------------------------------------------------------------------------
    def past(self, since: Optional[float], until: Optional[float]) -> list[ClusterEvent]:
        return [e for e in self.history
                if (since is None or e.time >= since) and (until is None or e.time <= until)]

    def subscribe(self) -> Subscription:
        """Take `past` in the same loop step as this, and no event is missed or seen twice."""
        sub = Subscription()
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)


def _object_time(event: Event) -> float:
    """An entry written before transactions carried their time: the object's own stamp."""
    meta = event.obj.meta if event.obj is not None else None
    if meta is None or event.action == "delete":
        return 0.0
    return meta.updated_at or meta.created_at


# ---- one recorder per manager -------------------------------------------------------------------
class _Attached:
    def __init__(self, recorder: EventRecorder, queue: asyncio.Queue,
                 task: Optional[asyncio.Task]) -> None:
        self.recorder, self.queue, self.task = recorder, queue, task


_attached: "weakref.WeakKeyDictionary[Any, _Attached]" = weakref.WeakKeyDictionary()


def attach(manager: Any) -> EventRecorder:
    """The manager's recorder, watching its store (and its raft's leaders) from the first call:
    Manager.start calls it; a test's bare manager gets one on first use."""
    got = _attached.get(manager)
    if got is not None:
        return got.recorder
    recorder = EventRecorder(manager.store)
    queue = manager.watch(recorder.take)
    task = None
    if hasattr(manager, "raft"):
        task = asyncio.get_running_loop().create_task(_follow_leaders(manager, recorder),
                                                      name="event-leaders")
    _attached[manager] = _Attached(recorder, queue, task)
    return recorder


async def detach(manager: Any) -> None:
    got = _attached.pop(manager, None)
    if got is None:
        return
    if got.task is not None:
        got.task.cancel()
        try:
            await got.task
        except asyncio.CancelledError:
            pass
    try:
        manager.unwatch(got.queue)
    except Exception:   # the hub may be closed already: nothing left to unwatch
        pass


async def _follow_leaders(manager: Any, recorder: EventRecorder) -> None:
    last: Optional[str] = None
    while True:
        raft = getattr(manager, "raft", None)
        if raft is not None:
            try:
                last = _look(manager, raft, recorder, last)
            except Exception:   # a raft in mid-close: the next look sees the new one, or none
                log.debug("leader look failed", exc_info=True)
        await asyncio.sleep(LEADER_POLL)


def _look(manager: Any, raft: Any, recorder: EventRecorder, last: Optional[str]) -> Optional[str]:
    """Records the leader raft names twice running. pysyncobj's thread sets a new leader a
    moment before its term: seen once, the term read with it may be the old one."""
    addr = raft.leader_addr
    if addr is None or addr != last:
        return addr
    node = manager.node_by_raft_addr(addr)
    if node is None:
        return None  # its node record is not applied here yet: look again
    recorder.saw_leader(raft.term, node.id, node.description.hostname, addr)
    return addr
