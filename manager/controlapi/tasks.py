"""Tasks: list (by service, node, desired state) and inspect."""
from __future__ import annotations

from aiohttp import web

from common import codec, errors
from common.httpserver import reply
from common.model import Task
from manager.controlapi.context import manager_of
from manager.controlapi.nodes import find_node
from manager.controlapi.services import find_service


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


def routes() -> list[web.RouteDef]:
    return [
        web.get("/tasks", task_list),
        web.get("/tasks/{ref}", task_inspect),
    ]
