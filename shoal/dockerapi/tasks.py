"""GET /tasks (filters id, name, service, node, desired-state, label, _up-to-date) and
GET /tasks/{id}."""
from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from common import errors
from common.model import TASK_STATES, Task
from manager.controlapi.nodes import find_node
from manager.orchestrator.updater import outdated
from shoal.dockerapi import filters
from shoal.dockerapi.access import manager_of
from shoal.dockerapi.errors import bad_request, json_answer, not_found
from shoal.dockerapi.services import lookup as lookup_service
from shoal.dockerapi.translate.tasks import task as task_json

_ACCEPTED = ("id", "name", "label", "service", "node", "desired-state", "_up-to-date", "runtime")
# Docker's task states: shoal's, plus swarmkit's "allocated", which shoal never passes through.
_STATES = frozenset(TASK_STATES) | {"allocated"}


async def task_list(request: web.Request, params: dict[str, str]) -> web.Response:
    manager = manager_of(request)
    store = manager.store
    f = filters.parse(request.query.get("filters"), _ACCEPTED)
    desired = set()
    for s in f.get("desired-state"):
        if s and s.lower() not in _STATES:
            raise bad_request(f"Invalid desired-state filter: '{s}'")
        desired.add(s.lower())
    desired.discard("")
    # Services and nodes by id or name, as dockerd resolves them (404 when there is none).
    service_ids = {lookup_service(manager, ref).id for ref in f.get("service")}
    node_ids = set()
    for ref in f.get("node"):
        try:
            node_ids.add(find_node(manager, ref).id)
        except errors.NotFound:
            raise not_found(f"node {ref} not found") from None
    if service_ids:
        tasks = [t for sid in service_ids for t in store.by_index("tasks", "service_id", sid)]
    elif node_ids:
        tasks = [t for nid in node_ids for t in store.by_index("tasks", "node_id", nid)]
    else:
        tasks = store.list("tasks")
    stale: set[str] = set()
    services = {s.id: s for s in store.list("services")}
    if "_up-to-date" in f:
        # The updater's notion of an outdated task, asked of every task (swarmkit's filter
        # drops old tasks whatever their desired state: `service create`'s progress counts
        # only tasks of the current spec).
        for t in tasks:
            svc = services.get(t.service_id)
            if svc is not None and outdated(svc, [_as_up(t)]):
                stale.add(t.id)
    networks = {n.id: n for n in store.list("networks")}
    out = []
    for t in sorted(tasks, key=lambda t: (t.service_name, t.slot, t.node_id, t.meta.created_at)):
        if t.standalone:
            continue  # `container run`'s tasks are containers to Docker, not swarm tasks
        if not (f.prefix("id", t.id) and f.prefix("name", t.name)
                and f.labels("label", _service_labels(services, t))
                and (not node_ids or t.node_id in node_ids)
                and (not service_ids or t.service_id in service_ids)
                and (not desired or t.desired_state in desired)
                and t.id not in stale
                and f.exact("runtime", "container")):
            continue
        out.append(task_json(t, networks.get))
    return json_answer(out)


def _service_labels(services: dict, t: Task) -> dict[str, str]:
    """What Docker's `label` filter of tasks matches: the labels of the task's service (its
    ServiceAnnotations), so `docker stack ps` finds a stack's tasks."""
    svc = services.get(t.service_id)
    return svc.spec.labels if svc is not None else {}


def _as_up(t: Task) -> Task:
    """`t` as the updater would judge it if it were meant to run (the updater only looks at
    live tasks)."""
    if t.desired_up:
        return t
    return replace(t, desired_state="running")


def find_task(manager, ref: str) -> Task:
    """By id or unique id prefix (a standalone container is no task to Docker); Docker's 404."""
    task = manager.store.find("tasks", ref)
    if task is None or task.standalone:
        raise not_found(f"task {ref} not found")
    return task


async def task_inspect(request: web.Request, params: dict[str, str]) -> web.Response:
    manager = manager_of(request)
    task = find_task(manager, params["id"])
    networks = {n.id: n for n in manager.store.list("networks")}
    return json_answer(task_json(task, networks.get))
