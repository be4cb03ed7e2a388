"""Interactive exec on a node: the websocket endpoints (frames: common/execstream.py).

On the local socket (root only, as every command that controls the node or the cluster):
- GET /containers/{ref}/exec: a container of this node (`shoal container exec -i/-t`).
- GET /services/{ref}/exec: the task SERVICE[.SLOT|TASK] names (`shoal service exec`). A manager
  resolves it from its replica and records the exec (manager/controlapi/exec.py); the task runs
  here, or the stream goes on to its node's 2377 with this manager's certificate. A worker knows
  only its own tasks: it serves those, and refuses the others, naming a manager as the way.
  Why a worker does not forward to a manager: it could only do so with its node certificate,
  and a worker's certificate must never open a shell in another node's task (a compromised
  worker would then own the cluster's containers).

On 2377 (mutual TLS, manager certificates only, auth_middleware):
- GET /worker/exec/{task_id}: a manager relaying a client's exec into a task on this node.

Flow: CLI → local socket of any node → [manager: record; task elsewhere → that node's 2377] →
worker/executor/execio.py → `runc exec`; the exit frame carries the command's status back.
"""
from __future__ import annotations

import logging

from aiohttp import web

from common import errors, execstream as xs
from common.httpserver import CTX
from manager.controlapi import exec as mexec
from manager.controlapi.middleware import local_only
from shoal.workerapi import _controllers, _find_container
from worker.executor.execio import serve

log = logging.getLogger("shoal.exec")


def _daemon(request: web.Request):
    return request.app[CTX]


async def _open(request: web.Request) -> web.WebSocketResponse:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise errors.InvalidArgument("exec is a websocket: connect with an Upgrade: websocket "
                                     "request (the shoal CLI does)")
    ws = web.WebSocketResponse(max_msg_size=xs.MAX_FRAME, heartbeat=None)
    await ws.prepare(request)
    return ws


async def _run_here(request: web.Request, ws: web.WebSocketResponse, cid: str,
                    start: xs.Start) -> None:
    process = _daemon(request).executor.exec_process(cid, start.argv, tty=start.tty,
                                                     stdin=start.stdin)
    await serve(ws, process, start)


@local_only
async def container_exec(request: web.Request) -> web.WebSocketResponse:
    ws = await _open(request)
    try:
        start = await xs.first_frame(ws)
        c = _find_container(request, request.match_info["ref"])
        log.info("exec by root on the local socket into container %s: %s%s", c.id,
                 start.argv, " (tty)" if start.tty else "")
        await _run_here(request, ws, c.id, start)
    except (errors.ShoalError, OSError) as exc:
        await xs.refuse(ws, exc)
    return ws


@local_only
async def service_exec(request: web.Request) -> web.WebSocketResponse:
    ws = await _open(request)
    d = _daemon(request)
    try:
        start = await xs.first_frame(ws)
        ref = request.match_info["ref"]
        if d.manager is None:
            await _worker_service_exec(request, ws, ref, start)
            return ws
        task = mexec.find_task(d.manager, ref)
        mexec.record(d.manager, mexec.ExecRecord(
            who=mexec.caller(request, d.hostname), task_id=task.id, task_name=task.name,
            service_id=task.service_id, node_id=task.node_id, argv=start.argv, tty=start.tty))
        if task.node_id == d.state.node_id:
            await _run_here(request, ws, task.id, start)
        else:
            await mexec.relay_to_node(d, mexec.node_addr(d.manager, task), task, start, ws)
    except (errors.ShoalError, OSError) as exc:
        await xs.refuse(ws, exc)
    return ws


async def _worker_service_exec(request: web.Request, ws: web.WebSocketResponse, ref: str,
                               start: xs.Start) -> None:
    d = _daemon(request)
    if not d.state.in_swarm:
        raise errors.NotInSwarm("this node is not part of a swarm: 'service exec' needs one "
                                "(for a container of this node: 'shoal container exec')")
    tasks = [c.task for c in _controllers(d).values()]
    names = {t.service_id: t.service_name for t in tasks if t.service_id}
    try:
        task = mexec.match_task(tasks, ref, names)
    except errors.NotFound:
        raise errors.NotAManager(
            f"no running task {ref} on this worker node, and only managers know the others: "
            "run the command on a manager (or from a client with 'shoal -H', see the README's "
            "exec section)") from None
    log.info("exec by root on the local socket of worker %s into task %s: %s%s", d.hostname,
             task.name, start.argv, " (tty)" if start.tty else "")
    await _run_here(request, ws, task.id, start)


async def node_exec(request: web.Request) -> web.WebSocketResponse:
    """2377: a manager relaying a client's exec into a task of this node."""
    manager_id = mexec.refuse_non_manager(request)  # before the upgrade: a plain 403
    ws = await _open(request)
    try:
        start = await xs.first_frame(ws)
        task_id = request.match_info["task_id"]
        d = _daemon(request)
        if task_id not in {c.id for c in d.executor.list()}:
            raise errors.NotFound(f"task {task_id} has no container on node {d.hostname}")
        log.info("exec relayed by manager %s into task %s: %s%s", manager_id, task_id,
                 start.argv, " (tty)" if start.tty else "")
        await _run_here(request, ws, task_id, start)
    except (errors.ShoalError, OSError) as exc:
        await xs.refuse(ws, exc)
    return ws


node_exec.local_only = True  # type: ignore[attr-defined]  # acts on this node: never forwarded


def local_routes() -> list[web.RouteDef]:
    return [web.get("/containers/{ref}/exec", container_exec),
            web.get("/services/{ref}/exec", service_exec)]


def cluster_routes() -> list[web.RouteDef]:
    return [web.get(mexec.NODE_EXEC_PATH, node_exec)]
