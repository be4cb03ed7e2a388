"""The agents' endpoints: heartbeats, assignments, task status reports."""
from __future__ import annotations

from aiohttp import web

from common import errors
from common.httpserver import body_json, field, reply
from manager.controlapi.ca import tls_status
from manager.controlapi.context import caller_node_id, manager_of


# The longest an assignment stream's request is held without news: agents of a large swarm
# (long heartbeat periods) ask for up to this long, so that idle streams cost few requests.
MAX_WAIT = 120.0


async def dispatcher_heartbeat(request: web.Request) -> web.Response:
    manager = manager_of(request)
    node_id = caller_node_id(request, "heartbeats")
    data = await body_json(request)
    addr = field(data, "addr", str)
    description = field(data, "description", dict, required=False)
    raft_disk = field(data, "raft_disk", dict, required=False)
    tls = field(data, "tls", dict, required=False)
    if raft_disk is not None:
        manager.disk_guard.note(node_id, field(raft_disk, "free", int),
                                field(raft_disk, "path", str))
    answer = await manager.dispatcher.heartbeat(node_id, addr, description)
    if tls is not None:
        # The certificate report rides on the heartbeat: one request per period, not two.
        try:
            answer["tls"] = await tls_status(manager, node_id, tls)
        except errors.ShoalError:
            # The heartbeat stands: without "tls" in its answer the agent posts its report to
            # /certificates/status, and that answer says what went wrong.
            pass
    return reply(answer)


async def dispatcher_assignments(request: web.Request) -> web.Response:
    manager = manager_of(request)
    node_id = caller_node_id(request, "assignments")
    if manager.store.peek("nodes", node_id) is None:
        raise errors.NotFound(f"node {node_id} is not part of this swarm (it was removed)")
    data = await body_json(request)
    since = field(data, "since", int, required=False, default=0)
    wait = min(max(field(data, "wait", float, required=False, default=0.0), 0.0), MAX_WAIT)
    net_digest = field(data, "net_digest", str, required=False, default="")
    return reply(await manager.dispatcher.assignments(node_id, since, wait, net_digest))


async def dispatcher_status(request: web.Request) -> web.Response:
    manager = manager_of(request)
    node_id = caller_node_id(request, "status reports")
    data = await body_json(request)
    await manager.dispatcher.report_status(node_id, field(data, "updates", list))
    return reply({"ok": True})


def routes() -> list[web.RouteDef]:
    return [
        web.post("/dispatcher/heartbeat", dispatcher_heartbeat),
        web.post("/dispatcher/assignments", dispatcher_assignments),
        web.post("/dispatcher/status", dispatcher_status),
    ]
