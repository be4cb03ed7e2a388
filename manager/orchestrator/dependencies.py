"""Compose's depends_on, kept by the managers (Docker Swarm ignores it). Pure: reads the store.

The gate: a service that has never had a task gets none until every dependency (a service, by
name) meets its condition. Once it has any task, even a finished one, it is never gated again,
so restarts, updates and leader changes never wait on a dependency. The gate is the store's own
answer to "has this service a task?": no state of its own to lose on a failover. (A service
whose every task was reaped, with a task history limit of 0, is gated again: harmless, since its
dependencies met their conditions before.)

The conditions, per mode of the dependency:
- service_started: replicated, every slot 1..replicas has a task running (0 replicas: met);
  global, at least one task running and none of its live tasks still on its way there; a job,
  one of its tasks has run (running, or complete).
- service_healthy: as started, with those running tasks healthy. A running task whose health is
  "" has no health check at all and counts as healthy: the agent reports "starting" from the
  first moment a task has a check, its spec's or its image's, so "" never hides a pending one.
  (Compose refuses service_healthy without a check; the manager cannot see the image's.)
- service_completed_successfully: a replicated job, its completions reached; a global job, the
  latest task on each node it ran on completed; a replicated service, the latest task of every
  slot 1..replicas completed; a global service, the latest task on each node completed. Complete
  means the container exited 0 (a non-zero exit is "failed").
A dependency that does not exist (yet) is waited for: a stack creates its services in some order.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable, Optional, Protocol

from common.model import Service, ServiceDependency, Task
from manager.orchestrator.updater import is_up


class StoreReader(Protocol):
    """What the conditions read of the store (manager.state.store.Store has it)."""

    def by_name(self, table: str, name: str) -> Any: ...

    def by_index(self, table: str, index: str, key: Any) -> list[Any]: ...


def dependency_wait(svc: Service, store: StoreReader) -> Optional[str]:
    """Why `svc` gets no task yet ("waiting for service db to be healthy (1/2 tasks healthy)"),
    or None when it may have tasks: it has had some already, or every dependency is met."""
    if not svc.spec.depends_on or store.by_index("tasks", "service_id", svc.id):
        return None
    for dep in svc.spec.depends_on:
        why = unmet(dep, store)
        if why is not None:
            return why
    return None


def unmet(dep: ServiceDependency, store: StoreReader) -> Optional[str]:
    """Why one dependency is not met yet, or None."""
    target = store.by_name("services", dep.service)
    if target is None:
        return f"waiting for service {dep.service} to be created"
    check = _CHECKS.get(dep.condition)
    if check is None:  # the specs check refuses it; an old entry must not unblock anything
        return f"waiting for service {dep.service}: unknown condition {dep.condition!r}"
    progress = check(target, store.by_index("tasks", "service_id", target.id))
    if progress is None:
        return None
    return f"waiting for service {dep.service} to {_VERBS[dep.condition]} ({progress})"


def dependents_by_name(services: Iterable[Service]) -> dict[str, set[str]]:
    """Dependency name -> ids of the services that depend on it: whose events wake whom."""
    out: dict[str, set[str]] = defaultdict(set)
    for svc in services:
        for dep in svc.spec.depends_on:
            out[dep.service].add(svc.id)
    return dict(out)


# ---- the conditions: each returns None when met, else the progress to show ----------------
def _started(svc: Service, tasks: list[Task]) -> Optional[str]:
    return _running(svc, tasks, lambda t: t.status.state == "running", "running")


def _healthy(svc: Service, tasks: list[Task]) -> Optional[str]:
    return _running(svc, tasks, is_up, "healthy")


def _running(svc: Service, tasks: list[Task], ok: Callable[[Task], bool], word: str) -> Optional[str]:
    mode = svc.spec.mode
    if mode.is_job:
        # A job's tasks end by design: one that has run (or finished) shows the job started.
        if any(ok(t) or _succeeded(t) for t in tasks):
            return None
        return f"none of its tasks is {word} yet"
    live = [t for t in tasks if t.desired_up and not t.terminal]
    if mode.is_global:
        good = sum(1 for t in live if ok(t))
        if good and good == len(live):
            return None
        return f"{good}/{max(len(live), 1)} tasks {word}"
    slots = {t.slot for t in live if ok(t) and 1 <= t.slot <= mode.replicas}
    if len(slots) >= mode.replicas:
        return None
    return f"{len(slots)}/{mode.replicas} tasks {word}"


def _completed(svc: Service, tasks: list[Task]) -> Optional[str]:
    mode = svc.spec.mode
    if mode.is_job and not mode.is_global:
        wanted = mode.total_completions or mode.replicas
        done = len({t.slot for t in tasks if _succeeded(t)})
        if done >= wanted:
            return None
        return f"{done}/{wanted} completed" + _last_failure(_latest(tasks, lambda t: t.slot))
    if mode.is_global:  # one group per node; the nodes it never ran on do not count
        groups = _latest(tasks, lambda t: t.node_id)
        wanted = len(groups)
    else:
        groups = {s: t for s, t in _latest(tasks, lambda t: t.slot).items()
                  if 1 <= s <= mode.replicas}
        wanted = mode.replicas
    done = sum(1 for t in groups.values() if _succeeded(t))
    if done >= wanted and (wanted or not mode.is_global):
        return None
    return f"{done}/{max(wanted, 1)} completed" + _last_failure(groups)


def _succeeded(task: Task) -> bool:
    # The agent reports "complete" only for exit code 0; a report without a code still means it.
    return task.status.state == "complete" and not task.status.exit_code


def _latest(tasks: list[Task], key: Callable[[Task], Any]) -> dict[Any, Task]:
    out: dict[Any, Task] = {}
    for t in sorted(tasks, key=lambda t: t.meta.created_at):
        out[key(t)] = t
    return out


def _last_failure(latest: dict[Any, Task]) -> str:
    """Why the newest of the slots' (or nodes') latest tasks failed, if one did: a dependency
    that keeps failing should say so rather than look merely slow."""
    failed = [t for t in latest.values() if t.status.state in ("failed", "rejected")]
    if not failed:
        return ""
    last = max(failed, key=lambda t: t.meta.created_at)
    why = last.status.err or last.status.message or last.status.state
    return f"; last failure: {why}"


_CHECKS: dict[str, Callable[[Service, list[Task]], Optional[str]]] = {
    "service_started": _started,
    "service_healthy": _healthy,
    "service_completed_successfully": _completed,
}
_VERBS = {
    "service_started": "start",
    "service_healthy": "be healthy",
    "service_completed_successfully": "complete successfully",
}
