"""A manager's metrics in Prometheus' terms: raft, the store, the dispatcher, the scheduler, and
(on the leader) each service.

Most are read when Prometheus scrapes (ManagerCollector), from the store, raft and the
dispatcher as they are at that moment, so that no code path counts on the way. Events that a
scrape would miss are counted as they happen: each commit's latency (raft's
`commit_observers`) and each task's scheduling delay (a store listener that observes on the
leader only, which just made the assignment; the delay is taken from the times the task itself
records, not from when this manager applied it).

Per-scrape cost stays bounded on a large store: object counts are table sizes, and the service
figures walk each service's tasks through the store's service index, reading a few fields per
task and copying nothing (100,000 tasks: see bench/metrics_bench.py).

Labels are names and states only: no secret, credential or spec content ever reaches one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.model import DESIRED_UP, TABLES, TASK_STATE_RANK, UPDATE_STATES
from manager.state.store import Event, Store

# How far back the services' failed and rejected tasks are counted.
RECENT_WINDOW = 300.0

# A commit on a healthy LAN takes milliseconds (one fsync per tick); seconds mean trouble.
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# From a task's creation to its node being chosen: batches of events, then the placement.
SCHEDULING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

_ASSIGNED = TASK_STATE_RANK["assigned"]
_ENDED_BADLY = frozenset({"failed", "rejected"})


class ManagerView(Protocol):
    """What the collector reads of a manager (manager.manager.Manager has it all)."""
    store: Store
    raft: Any          # RaftNode, or None while stopped
    dispatcher: Any    # Dispatcher: heartbeats, session_count()

    @property
    def is_leader(self) -> bool: ...


@dataclass
class CarriedCount:
    """A count kept by an object that gets replaced (a new dispatcher on each leadership, a new
    raft node on each manager start): the total over all of them, so the exported counter does
    not drop each time, and the last counts of the one replaced are not lost."""
    read: Callable[[Any], int]
    _source: Any = None
    _base: int = 0

    def total(self, source: Any) -> int:
        if source is not None and source is not self._source:
            if self._source is not None:
                self._base += self.read(self._source)
            self._source = source
        return self._base + (self.read(self._source) if self._source is not None else 0)


@dataclass(eq=False)  # a registry keys its collectors by identity
class ManagerCollector(Collector):
    manager: Callable[[], Optional[ManagerView]]
    clock: Callable[[], float] = time.time
    heartbeats: CarriedCount = field(default_factory=lambda: CarriedCount(lambda d: d.heartbeats))
    leader_changes: CarriedCount = field(
        default_factory=lambda: CarriedCount(lambda r: r.leader_changes))

    def collect(self) -> Iterator[Metric]:
        m = self.manager()
        if m is None:
            return  # not a manager (any more): no manager figures at all
        leader = m.is_leader
        yield _gauge("shoal_manager_leader", "1 on the manager that is the raft leader, else 0",
                     int(leader))
        yield from self._raft(m.raft)
        yield from self._store(m.store)
        yield from self._dispatcher(m.dispatcher, leader)
        if leader:
            yield from service_metrics(m.store, self.clock())

    def _raft(self, raft: Any) -> Iterator[Metric]:
        changes = self.leader_changes.total(raft)
        yield _counter("shoal_raft_leader_changes",
                       "Times this manager saw a new raft leader (the first one included)",
                       changes)
        if raft is None:
            return
        commit, applied = raft.commit_index, raft.applied_index
        yield _gauge("shoal_raft_term", "The raft term this manager is in", raft.term)
        yield _gauge("shoal_raft_commit_index", "The last raft entry known committed", commit)
        yield _gauge("shoal_raft_applied_index", "The last raft entry applied to this store",
                     applied)
        yield _gauge("shoal_raft_apply_lag_entries",
                     "Committed raft entries this manager has not applied yet",
                     max(0, commit - applied))

    def _store(self, store: Store) -> Iterator[Metric]:
        family = GaugeMetricFamily("shoal_store_objects", "Objects in the replicated store",
                                   labels=["table"])
        for table in TABLES:
            family.add_metric([table], store.count(table))
        yield family

    def _dispatcher(self, dispatcher: Any, leader: bool) -> Iterator[Metric]:
        yield _counter("shoal_dispatcher_heartbeats",
                       "Agent heartbeats this manager's dispatcher received while leader",
                       self.heartbeats.total(dispatcher))
        yield _gauge("shoal_dispatcher_sessions",
                     "Nodes heartbeating to this manager within their grace period "
                     "(0 on a manager that is not the leader)",
                     dispatcher.session_count() if leader and dispatcher is not None else 0)


def service_metrics(store: Store, now: float) -> Iterator[Metric]:
    """Per service: desired and running tasks, the update's state, and the tasks that failed or
    were rejected within RECENT_WINDOW (those the task history still holds)."""
    desired = GaugeMetricFamily("shoal_service_desired_tasks",
                                "Tasks the service should run: its replicas, or for global "
                                "services and jobs the tasks meant to run now",
                                labels=["service"])
    running = GaugeMetricFamily("shoal_service_running_tasks",
                                "Tasks of the service running and meant to run",
                                labels=["service"])
    update = GaugeMetricFamily("shoal_service_update_state",
                               "1 for the state the service's last update is in "
                               "(none: never updated)", labels=["service", "state"])
    failed = GaugeMetricFamily("shoal_service_tasks_failed_5m",
                               "Tasks of the service that failed in the last 5 minutes",
                               labels=["service"])
    rejected = GaugeMetricFamily("shoal_service_tasks_rejected_5m",
                                 "Tasks of the service its node rejected in the last 5 minutes",
                                 labels=["service"])
    # The two above in one family, as dashboards that chart desired against running want them.
    replicas = GaugeMetricFamily("shoal_service_replicas",
                                 "Tasks of the service by state: desired (as "
                                 "shoal_service_desired_tasks) and running (as "
                                 "shoal_service_running_tasks)", labels=["service", "state"])
    since = now - RECENT_WINDOW
    for svc in store.list("services"):
        name = svc.spec.name
        up = run = fail = reject = 0
        # The hot loop of a scrape (every task once): the common case leaves first.
        for task in store.by_index("tasks", "service_id", svc.id):
            status = task.status
            state = status.state
            if task.desired_state in DESIRED_UP:
                up += 1
                if state == "running":
                    run += 1
                    continue
            if state in _ENDED_BADLY and status.timestamp >= since:
                if state == "failed":
                    fail += 1
                else:
                    reject += 1
        mode = svc.spec.mode
        wanted = mode.replicas if mode.mode == "replicated" else up
        desired.add_metric([name], wanted)
        running.add_metric([name], run)
        replicas.add_metric([name, "desired"], wanted)
        replicas.add_metric([name, "running"], run)
        current = svc.update_status.state or "none"
        for state in ("none", *UPDATE_STATES):
            update.add_metric([name, state], int(state == current))
        failed.add_metric([name], fail)
        rejected.add_metric([name], reject)
    yield from (desired, running, replicas, update, failed, rejected)


class ManagerMetrics:
    """The manager's metrics in `registry`: the collector, and the event-time histograms that
    each started manager is attached to (`attach`)."""

    def __init__(self, registry: CollectorRegistry,
                 manager: Callable[[], Optional[ManagerView]]) -> None:
        registry.register(ManagerCollector(manager))
        self._registry: Optional[CollectorRegistry] = registry
        # Registered with the first manager attached: a worker shows no raft histograms.
        self.commit_latency = Histogram(
            "shoal_raft_commit_latency_seconds",
            "From proposing a change to its being applied on this manager (its own writes and "
            "those forwarded to it)", buckets=COMMIT_BUCKETS, registry=None)
        self.scheduling_delay = Histogram(
            "shoal_scheduler_delay_seconds",
            "From a task's creation to the scheduler assigning it a node (observed by the "
            "leader)", buckets=SCHEDULING_BUCKETS, registry=None)

    def attach(self, manager: ManagerView) -> None:
        """Call once per started manager (its raft node exists from `start` on)."""
        if self._registry is not None:
            self._registry.register(self.commit_latency)
            self._registry.register(self.scheduling_delay)
            self._registry = None
        manager.raft.commit_observers.append(self.commit_latency.observe)

        def on_events(events: list[Event]) -> None:
            # The raft thread, once per transaction; the leader only, which just scheduled them.
            if not manager.is_leader:
                return
            for e in events:
                delay = scheduling_delay(e)
                if delay is not None:
                    self.scheduling_delay.observe(delay)
        manager.store.subscribe(on_events)


def scheduling_delay(e: Event) -> Optional[float]:
    """A task's wait for a node, when `e` is the scheduler assigning it one (a task created
    already on its node, as a global service's, never waited)."""
    if e.table != "tasks" or e.action != "update" or e.old is None:
        return None
    if TASK_STATE_RANK.get(e.old.status.state, 0) >= _ASSIGNED or e.obj.status.state != "assigned":
        return None
    created = e.obj.meta.created_at or e.old.status.timestamp
    return max(0.0, e.obj.status.timestamp - created) if created else None


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
