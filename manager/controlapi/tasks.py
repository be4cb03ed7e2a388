"""Tasks: list (by service, node, desired state), inspect, and one task's logs."""
from __future__ import annotations

from typing import AsyncIterator, Optional

from aiohttp import web

from common import codec, errors
from common.httpserver import CTX, reply
from common.model import Task
from manager.controlapi.context import manager_of
from manager.controlapi.nodes import find_node
from manager.controlapi.services import (find_service, gather_logs, log_query,
                                         stream_log_entries)


def task_view(manager, task: Task) -> dict:
    plain = codec.to_plain(task)
    node = manager.store.find("nodes", task.node_id) if task.node_id else None
    plain["node_hostname"] = node.description.hostname if node else ""
    plain["name"] = task.name
    return plain


async def task_list(request: web.Request) -> web.Response:
    manager = manager_of(request)
    store = manager.store
    service_ref = request.query.get("service")
    node_ref = request.query.get("node")
    if service_ref:
        tasks = store.by_index("tasks", "service_id", find_service(manager, service_ref).id)
    elif node_ref:
        tasks = store.by_index("tasks", "node_id", find_node(manager, node_ref).id)
    else:
        tasks = store.list("tasks")
    if node_ref and service_ref:
        node_id = find_node(manager, node_ref).id
        tasks = [t for t in tasks if t.node_id == node_id]
    desired = request.query.get("desired_state")
    if desired:  # one state or several: running,ready
        wanted = set(desired.split(","))
        tasks = [t for t in tasks if t.desired_state in wanted]
    tasks = sorted(tasks, key=lambda t: (t.service_name, t.slot, t.node_id, -t.meta.created_at))
    return reply([task_view(manager, t) for t in tasks])


async def task_inspect(request: web.Request) -> web.Response:
    manager = manager_of(request)
    task = manager.store.find("tasks", request.match_info["ref"])
    if task is None:
        raise errors.NotFound(f"no such task: {request.match_info['ref']}")
    return reply(task_view(manager, task))


async def gather_task_logs(ctx, manager, task: Task, follow: bool, tail: Optional[int],
                           since: Optional[float] = None,
                           until: Optional[float] = None) -> AsyncIterator[dict]:
    """One task's log entries: its service's (services.gather_logs, the one way logs are
    fetched from the nodes) narrowed to the task. `tail` counts the task's own lines, so the
    nodes are asked for all of them and the cut is made here."""
    svc = manager.store.get("services", task.service_id)
    if svc is None:
        raise errors.NotFound(f"the service of task {task.id} is gone, and its logs with it")
    entries = gather_logs(ctx, manager, svc, follow, None if tail is not None and not follow
                          else tail, since, until)
    try:
        if follow:
            async for entry in entries:
                if entry.get("task_id") == task.id or "error" in entry:
                    yield entry
            return
        mine = [e async for e in entries if e.get("task_id") == task.id or "error" in e]
    finally:
        await entries.aclose()
    if tail is not None:
        lines = [e for e in mine if "error" not in e]
        mine = [e for e in mine if "error" in e] + (lines[-tail:] if tail else [])
    for entry in mine:
        yield entry


async def task_logs(request: web.Request) -> web.StreamResponse:
    """`service logs TASK`: one task's lines, as GET /services/{ref}/logs gives them."""
    manager = manager_of(request)
    task = find_task(manager, request.match_info["ref"])
    svc = manager.store.get("services", task.service_id)
    if svc is None:
        raise errors.NotFound(f"the service of task {task.id} is gone, and its logs with it")
    follow, tail, since, until = log_query(request)
    return await stream_log_entries(request, svc, gather_task_logs(
        request.app[CTX], manager, task, follow, tail, since, until))


def find_task(manager, ref: str) -> Task:
    """A task by its id or a unique prefix of it (the store's find)."""
    task = manager.store.find("tasks", ref)
    if task is None:
        raise errors.NotFound(f"no such service or task: {ref}")
    return task


def routes() -> list[web.RouteDef]:
    return [
        web.get("/tasks", task_list),
        web.get("/tasks/{ref}", task_inspect),
        web.get("/tasks/{ref}/logs", task_logs),
    ]
