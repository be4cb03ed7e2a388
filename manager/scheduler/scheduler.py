"""The scheduler: decides which node each pending task runs on.

A pure, in-memory decision engine. The manager's scheduling loop feeds it nodes
(`upsert_node`/`remove_node`) and the tasks already bound to nodes (`task_placed`/
`task_removed`), then hands it pending tasks in batches (`schedule`) and commits the decisions.

Filters, in the order a rejection is reported: node ready; availability active (pause and drain
take no new tasks); constraints; unreserved CPU and memory; host-mode ports; max replicas of the
service per node. Choice: spread, i.e. fewest tasks of the service on the node, then fewest tasks
overall, then node id; with `spread=node.labels.X` preferences the service's tasks are first
balanced over the label's values (level by level), then spread inside the chosen group.

Speed comes from grouping: the tasks of one batch that share a service and everything the filters
read (constraints, preferences, reservations, host ports, max replicas) are one group, so the
filters run once per (group, node) and the group's N tasks are placed from a heap keyed by
(service tasks, total tasks, node id): O(nodes + N log nodes) per group, never a rescan of nodes
or tasks per decision.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from heapq import heapify, heappop, heapreplace
from typing import Callable, Sequence

from common.errors import InvalidArgument
from common.model import AVAILABILITY_ACTIVE, AVAILABILITY_PAUSE, NODE_STATE_READY, Node, Task
from manager.scheduler.constraints import (Constraint, Preference, parse_constraints, parse_preferences,
                                          platform_key, platform_matches)

# The status message of a placed task (Docker's wording); a shared constant, so a batch of 100k
# decisions allocates no strings for it.
ASSIGNED = "scheduler assigned task to node"

Port = tuple[str, int]          # (protocol, published port) in host publish mode
# What task_placed/schedule counted for a task: (node id, service id, nano cpus, memory, ports).
_Record = tuple[str, str, int, int, tuple[Port, ...]]


@dataclass(slots=True)
class Decision:
    task_id: str
    node_id: str | None         # None: no node fits now; the task stays pending
    message: str                # ASSIGNED, or why no node fits (counts per reason)


class _NodeState:
    """A node and what is already counted on it."""

    __slots__ = ("id", "node", "cpu_cap", "mem_cap", "cpu", "mem", "total", "by_service", "ports")

    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.node: Node | None = None   # None: removed (or not seen yet) but still holds tasks
        self.cpu_cap = self.mem_cap = 0
        self.cpu = self.mem = 0         # reserved by counted tasks
        self.total = 0
        self.by_service: dict[str, int] = {}
        self.ports: dict[Port, int] = {}

    def add(self, service_id: str, cpu: int, mem: int, ports: tuple[Port, ...], n: int = 1) -> None:
        self.total += n
        by = self.by_service
        left = by.get(service_id, 0) + n
        if left:
            by[service_id] = left
        else:
            by.pop(service_id, None)
        self.cpu += cpu * n
        self.mem += mem * n
        for p in ports:
            used = self.ports.get(p, 0) + n
            if used:
                self.ports[p] = used
            else:
                self.ports.pop(p, None)


@dataclass(slots=True, eq=False)
class _Group:
    """Tasks of one batch that every filter treats alike."""

    service_id: str
    constraints: tuple[Constraint, ...]
    preferences: tuple[Preference, ...]
    cpu: int
    mem: int
    ports: tuple[Port, ...]
    max_replicas: int
    platforms: tuple[tuple[str, str], ...] = ()     # (os, arch); empty: any node
    error: str = ""             # the placement does not parse: every task gets this message
    members: list[int] = field(default_factory=list)    # indexes into the batch


class _Branch:
    """One level of the preference tree: a heap of label-value branches, or (leaf) of nodes.
    Entries are (service tasks, total tasks, tie-break, child)."""

    __slots__ = ("heap", "leaf")

    def __init__(self, heap: list, leaf: bool) -> None:
        heapify(heap)
        self.heap = heap
        self.leaf = leaf


@lru_cache(maxsize=1024)
def _parse_placement(constraints: tuple[str, ...], preferences: tuple[str, ...]
                     ) -> tuple[tuple[Constraint, ...], tuple[Preference, ...], str]:
    try:
        return parse_constraints(constraints), parse_preferences(preferences), ""
    except InvalidArgument as exc:
        return (), (), exc.message


def _norm_ports(ports: Sequence[tuple[str, int]]) -> tuple[Port, ...]:
    return tuple(sorted({(str(proto).lower(), int(port)) for proto, port in ports}))


class Scheduler:
    def __init__(self) -> None:
        self._nodes: dict[str, _NodeState] = {}
        self._placed: dict[str, _Record] = {}

    # ---- what the manager feeds in -------------------------------------------------------
    def upsert_node(self, node: Node) -> None:
        """Add or refresh a node. The scheduler keeps the object: pass a new one on change."""
        st = self._nodes.get(node.id)
        if st is None:
            st = self._nodes[node.id] = _NodeState(node.id)
        st.node = node
        st.cpu_cap = node.description.resources.nano_cpus
        st.mem_cap = node.description.resources.memory_bytes

    def remove_node(self, node_id: str) -> None:
        st = self._nodes.get(node_id)
        if st is None:
            return
        st.node = None
        # Its tasks stay counted until task_removed, so a node that comes back is not empty.
        if not st.total:
            del self._nodes[node_id]

    def task_placed(self, task: Task, host_ports: Sequence[tuple[str, int]] = ()) -> None:
        """Count a task bound to task.node_id (desired state running). Idempotent per task id;
        a task that moved or changed is recounted."""
        if not task.node_id:
            raise ValueError(f"task {task.id} is not bound to a node")
        res = task.spec.resources.reservations
        rec = (task.node_id, task.service_id, res.nano_cpus, res.memory_bytes,
               _norm_ports(host_ports))
        old = self._placed.get(task.id)
        if old == rec:
            return
        if old is not None:
            self._uncount(old)
        self._placed[task.id] = rec
        st = self._nodes.get(rec[0])
        if st is None:
            st = self._nodes[rec[0]] = _NodeState(rec[0])   # the node may arrive later
        st.add(*rec[1:])

    def task_removed(self, task: Task) -> None:
        """Undo what was counted for this task id (by task_placed or schedule); idempotent."""
        rec = self._placed.pop(task.id, None)
        if rec is not None:
            self._uncount(rec)

    def _uncount(self, rec: _Record) -> None:
        st = self._nodes.get(rec[0])
        if st is None:
            return
        st.add(*rec[1:], n=-1)
        if st.node is None and not st.total:
            del self._nodes[rec[0]]

    # ---- decisions -----------------------------------------------------------------------
    def schedule(self, tasks: Sequence[Task], *,
                 host_ports: Callable[[Task], Sequence[tuple[str, int]]] = lambda t: (),
                 max_replicas: Callable[[Task], int] = lambda t: t.spec.placement.max_replicas,
                 ) -> list[Decision]:
        """One decision per task, in the order given. Placements are counted at once (as if
        task_placed had been called), so later decisions of the batch and later batches see
        them; if the manager fails to commit a decision it calls task_removed(task).
        A task with node_id already set (global services) is only checked against that node.
        Groups are served in order of first appearance: when capacity runs short, earlier
        tasks win."""
        out: list[Decision | None] = [None] * len(tasks)
        groups: dict[tuple, _Group] = {}
        pinned: list[tuple[int, _Group]] = []
        # Within one call the specs stay alive, so id() is a safe cache key; it saves building
        # the same key from the same spec object for every task.
        spec_keys: dict[int, tuple] = {}
        placed = self._placed
        for i, t in enumerate(tasks):
            if t.id in placed:
                self.task_removed(t)    # handed back for a new decision: forget the old one
            spec = t.spec
            sk = spec_keys.get(id(spec))
            if sk is None:
                pl, res = spec.placement, spec.resources.reservations
                sk = spec_keys[id(spec)] = (tuple(pl.constraints), tuple(pl.preferences),
                                            res.nano_cpus, res.memory_bytes,
                                            tuple(platform_key(p.os, p.architecture)
                                                  for p in pl.platforms)
                                            if pl.platforms else ())
            ports = host_ports(t)
            key = (t.service_id, sk, _norm_ports(ports) if ports else (), max_replicas(t) or 0)
            g = groups.get(key)
            if g is None:
                g = groups[key] = self._group(key)
            if t.node_id:
                pinned.append((i, g))
            else:
                g.members.append(i)
        # Pinned tasks first: they have no other node to go to.
        for i, g in pinned:
            out[i] = self._place_pinned(tasks[i], g)
        for g in groups.values():
            if g.members:
                self._place_group(g, tasks, out)
        return out  # type: ignore[return-value]  # every slot is filled above

    @staticmethod
    def _group(key: tuple) -> _Group:
        service_id, (constraints, preferences, cpu, mem, platforms), ports, max_rep = key
        cons, prefs, error = _parse_placement(constraints, preferences)
        return _Group(service_id, cons, prefs, cpu, mem, ports, max_rep, platforms, error)

    def _place_pinned(self, task: Task, g: _Group) -> Decision:
        if g.error:
            return Decision(task.id, None, g.error)
        st = self._nodes.get(task.node_id)
        if st is None or st.node is None:
            return Decision(task.id, None,
                            f"no suitable node (node {task.node_id} is not known to the scheduler)")
        reason = self._static_reason(st, g) or self._dynamic_reason(st, g)
        if reason is not None:
            return Decision(task.id, None,
                            f"no suitable node ({_phrase(reason, 1, 0, f'node {st.id}')})")
        self._count(task.id, st, g)
        return Decision(task.id, st.id, ASSIGNED)

    def _count(self, task_id: str, st: _NodeState, g: _Group) -> None:
        st.add(g.service_id, g.cpu, g.mem, g.ports)
        self._placed[task_id] = (st.id, g.service_id, g.cpu, g.mem, g.ports)

    def _place_group(self, g: _Group, tasks: Sequence[Task], out: list) -> None:
        members = g.members
        if g.error:
            for i in members:
                out[i] = Decision(tasks[i].id, None, g.error)
            return
        sid, static = g.service_id, self._static_reason
        candidates = [st for st in self._nodes.values()
                      if st.node is not None and static(st, g) is None]
        if g.preferences:
            root = self._branch(candidates, g.preferences, g)
            for n, i in enumerate(members):
                st = self._pick(root, g)
                if st is None:
                    return self._refuse(g, members[n:], tasks, out)
                tid = tasks[i].id
                self._placed[tid] = (st.id, sid, g.cpu, g.mem, g.ports)
                out[i] = Decision(tid, st.id, ASSIGNED)
            return
        # The common case, kept flat because it runs once per task.
        fits = self._dynamic_reason
        heap = [(st.by_service.get(sid, 0), st.total, st.id, st)
                for st in candidates if fits(st, g) is None]
        heapify(heap)
        # Without reservations, ports or a replica cap a node never fills up.
        limited = bool(g.cpu or g.mem or g.ports or g.max_replicas)
        rec_tail = (sid, g.cpu, g.mem, g.ports)
        placed = self._placed
        for n, i in enumerate(members):
            if not heap:
                return self._refuse(g, members[n:], tasks, out)
            svc, total, nid, st = heap[0]
            st.add(*rec_tail)
            if limited and fits(st, g) is not None:
                heappop(heap)
            else:
                heapreplace(heap, (svc + 1, total + 1, nid, st))
            tid = tasks[i].id
            placed[tid] = (nid, *rec_tail)
            out[i] = Decision(tid, nid, ASSIGNED)

    def _branch(self, nodes: list[_NodeState], prefs: tuple[Preference, ...], g: _Group) -> _Branch:
        sid = g.service_id
        if not prefs:
            return _Branch([(st.by_service.get(sid, 0), st.total, st.id, st)
                            for st in nodes if self._dynamic_reason(st, g) is None], leaf=True)
        label = prefs[0].label
        by_value: dict[str | None, list[_NodeState]] = {}
        for st in nodes:
            by_value.setdefault(st.node.spec.labels.get(label), []).append(st)  # type: ignore[union-attr]
        entries = []
        for value, members in by_value.items():
            child = self._branch(members, prefs[1:], g)
            if child.heap:
                # The balance counts every node the service may run on, full ones included, so
                # a zone of full nodes is not mistaken for an empty zone. Nodes without the
                # label are a group of their own, ordered last on ties.
                entries.append((sum(st.by_service.get(sid, 0) for st in members),
                                sum(st.total for st in members), (value is None, value or ""),
                                child))
        return _Branch(entries, leaf=False)

    def _pick(self, branch: _Branch, g: _Group) -> _NodeState | None:
        """Take the least loaded branch down to a node, count the task there, update the keys
        on the way back up; branches that ran out of nodes leave their heaps."""
        heap = branch.heap
        while heap:
            svc, total, key, child = heap[0]
            if branch.leaf:
                child.add(g.service_id, g.cpu, g.mem, g.ports)
                if self._dynamic_reason(child, g) is None:
                    heapreplace(heap, (svc + 1, total + 1, key, child))
                else:
                    heappop(heap)
                return child
            st = self._pick(child, g)
            if st is None:
                heappop(heap)
                continue
            heapreplace(heap, (svc + 1, total + 1, key, child))
            return st
        return None

    # ---- filters and explanations --------------------------------------------------------
    # A reason is a tuple whose first item orders the message like the filter pipeline.
    @staticmethod
    def _static_reason(st: _NodeState, g: _Group) -> tuple | None:
        node = st.node
        state = node.status.state  # type: ignore[union-attr]
        if state != NODE_STATE_READY:
            return (0, "state", state)
        availability = node.spec.availability  # type: ignore[union-attr]
        if availability != AVAILABILITY_ACTIVE:
            return (1, "availability", availability)
        for c in g.constraints:
            if not c.matches(node):  # type: ignore[arg-type]
                return (2, "constraint", c.text)
        if not platform_matches(node, g.platforms):  # type: ignore[arg-type]
            return (2, "platform", ", ".join(f"{o or '*'}/{a or '*'}" for o, a in g.platforms))
        return None

    @staticmethod
    def _dynamic_reason(st: _NodeState, g: _Group) -> tuple | None:
        # Only a non-zero reservation is checked (as Docker does): an overcommitted node still
        # takes tasks that reserve nothing.
        no_cpu = g.cpu and st.cpu_cap - st.cpu < g.cpu
        no_mem = g.mem and st.mem_cap - st.mem < g.mem
        if no_cpu or no_mem:
            return (3, "resources", "CPU and memory" if no_cpu and no_mem else
                    "CPU" if no_cpu else "memory")
        if g.ports and st.ports:
            for p in g.ports:
                if p in st.ports:
                    return (4, "port", f"{p[1]}/{p[0]}")
        if g.max_replicas and st.by_service.get(g.service_id, 0) >= g.max_replicas:
            return (5, "max_replicas", g.max_replicas)
        return None

    def _refuse(self, g: _Group, members: list[int], tasks: Sequence[Task], out: list) -> None:
        message = self._explain(g)
        for i in members:
            out[i] = Decision(tasks[i].id, None, message)

    def _explain(self, g: _Group) -> str:
        """Why no node takes the group now, in aggregate: the first failing filter per node."""
        reasons: Counter[tuple] = Counter()
        known = 0
        for st in self._nodes.values():
            if st.node is None:
                continue
            known += 1
            reason = self._static_reason(st, g) or self._dynamic_reason(st, g)
            if reason is not None:
                reasons[reason] += 1
        if not known:
            return "no suitable node (no nodes in the cluster)"
        if not reasons:     # cannot happen: a group only runs dry when every node refuses
            return "no suitable node"
        parts = [_phrase(r, n, known) for r, n in sorted(reasons.items(), key=lambda kv: kv[0])]
        return f"no suitable node ({'; '.join(parts)})"


_STATE_WORDS = {"down": "down", "disconnected": "disconnected"}


def _phrase(reason: tuple, n: int, known: int, subject: str = "") -> str:
    """Say one reason for n nodes (of `known`), or for one named node (`subject`)."""
    nodes = subject or ("1 node" if n == 1 else f"{n} nodes")
    one = subject or n == 1
    kind, arg = reason[1], reason[2]
    if kind == "state":
        return f"{nodes} {_STATE_WORDS.get(arg, 'not ready')}"
    if kind == "availability":
        return f"{nodes} {'paused' if arg == AVAILABILITY_PAUSE else 'drained'}"
    if kind == "constraint":
        if n == known:
            return f"constraint {arg} matches no node"
        return f"constraint {arg} not satisfied on {nodes}"
    if kind == "platform":
        return f"{nodes} not of the image's platforms ({arg})"
    if kind == "resources":
        return f"{nodes} {'lacks' if one else 'lack'} {arg}"
    if kind == "port":
        return f"host port {arg} already in use on {nodes}"
    return f"max replicas per node ({arg}) reached on {nodes}"
