"""`service exec` on a manager: which task SERVICE[.SLOT|TASK] names, who asked (recorded), and
the exec stream relayed to the task's node.

The manager resolves the task from its replica (a read: any manager will do, no leader needed)
and dials the task's node on 2377 with its own node certificate: GET /worker/exec/{task id}, a
websocket (common/execstream.py). The node's auth_middleware admits manager certificates only
there, so a worker's certificate can never exec into another node's task. The manager passes
the frames on unchanged (execstream.relay): it only records the exec.

Recording: every exec is logged on the manager that resolved it (who, task, node, argv) and
recorded in that manager's cluster events (manager/events/: type task, action exec), so
`shoal events --filter event=exec` shows who ran what where.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

from aiohttp import web

from common import errors, execstream as xs
from common.model import Task
from common.nodestate import API_PORT
from manager.controlapi.context import ApiContext, Manager, identity_of
from manager.events import recorder as event_recorder

log = logging.getLogger("shoal.exec")

NODE_EXEC_PATH = "/worker/exec/{task_id}"


@dataclass
class ExecRecord:
    """One exec, as recorded: who asked, into which task (and node), which command."""
    who: str
    task_id: str
    task_name: str
    service_id: str
    node_id: str
    argv: list[str]
    tty: bool
    at: float = field(default_factory=time.time)


def record(manager: Manager, rec: ExecRecord) -> None:
    log.info("exec by %s into task %s (%s) on node %s: %s%s", rec.who, rec.task_name,
             rec.task_id, rec.node_id, rec.argv, " (tty)" if rec.tty else "")
    try:
        event_recorder.attach(manager).saw_exec(
            who=rec.who, task_id=rec.task_id, task_name=rec.task_name,
            service_id=rec.service_id, node_id=rec.node_id, argv=rec.argv, tty=rec.tty,
            when=rec.at)
    except Exception:  # noqa: BLE001 - a recorder's bug must not turn into a refused exec
        log.exception("recording the exec into task %s as an event", rec.task_id)


def caller(request: web.Request, hostname: str) -> str:
    """Who asked, for the record: the certificate's node on 2377, else root on the socket."""
    ident = identity_of(request)
    if ident is None:
        return f"root on the local socket of {hostname}"
    return f"{ident.role} node {ident.node_id}"


# ---- which task -----------------------------------------------------------------------------
def _running(t: Task) -> bool:
    return t.status.state == "running" and t.desired_up


def match_task(tasks: Iterable[Task], ref: str, service_names: dict[str, str]) -> Task:
    """The running task `ref` names among `tasks`: a task id (or unique prefix) or full name,
    SERVICE.SLOT, or SERVICE (its running task of the lowest slot, as `docker exec` users pick
    "the first one"). `service_names` maps service ids to names."""
    tasks = list(tasks)
    exact = [t for t in tasks if ref in (t.id, t.name)]
    if exact:
        return _must_run(exact[0], ref)
    by_prefix = [t for t in tasks if len(ref) >= 3 and t.id.startswith(ref)]
    if len(by_prefix) == 1:
        return _must_run(by_prefix[0], ref)
    if len(by_prefix) > 1:
        raise errors.InvalidArgument(f"{ref!r} matches {len(by_prefix)} tasks: give more of "
                                     "the task id")
    service, _, slot_text = ref.rpartition(".")
    if service and slot_text.isdigit():
        slot = int(slot_text)
        live = [t for t in tasks if _named(t, service, service_names) and t.slot == slot
                and _running(t)]
        if not live:
            raise errors.NotFound(f"no running task in slot {slot} of service {service} "
                                  "(see 'shoal service ps')")
        return live[0]
    live = sorted((t for t in tasks if _named(t, ref, service_names) and _running(t)),
                  key=lambda t: (t.slot, t.node_id, t.id))
    if not live:
        if any(_named(t, ref, service_names) for t in tasks) or ref in service_names.values():
            raise errors.FailedPrecondition(f"service {ref} has no running task (see 'shoal "
                                            "service ps')")
        raise errors.NotFound(f"no such service or task: {ref} (SERVICE, SERVICE.SLOT or a "
                              "task id)")
    return live[0]


def _named(t: Task, name: str, service_names: dict[str, str]) -> bool:
    return bool(t.service_id) and (t.service_id == name or
                                   service_names.get(t.service_id) == name)


def _must_run(t: Task, ref: str) -> Task:
    if not _running(t):
        raise errors.FailedPrecondition(f"task {ref} is not running ({t.status.state}, desired "
                                        f"{t.desired_state}): exec needs a running task")
    return t


def find_task(manager: Manager, ref: str) -> Task:
    store = manager.store
    svc = store.find("services", ref.rpartition(".")[0]) if "." in ref else None
    svc = svc or store.find("services", ref)
    tasks = (store.by_index("tasks", "service_id", svc.id) if svc is not None
             else store.list("tasks"))
    names = {svc.id: svc.spec.name} if svc is not None else {
        s.id: s.spec.name for s in store.list("services")}
    return match_task(tasks, ref, names)


# ---- to the task's node ---------------------------------------------------------------------
def node_addr(manager: Manager, task: Task) -> str:
    node = manager.store.peek("nodes", task.node_id)
    if node is not None and node.simulated:
        raise errors.FailedPrecondition(
            f"task {task.name} is on {node.description.hostname}, a simulated node (shoal sim "
            "nodes): its tasks run nothing, so there is nothing to exec into")
    if node is None or not node.status.addr:
        raise errors.Unavailable(f"task {task.name} is on node {task.node_id}, whose address "
                                 "is not known (is the node down? see 'shoal node ls')")
    return f"{node.status.addr}:{API_PORT}"


async def relay_to_node(ctx: ApiContext, addr: str, task: Task, start: xs.Start,
                        ws: web.WebSocketResponse) -> None:
    """The client's stream (start frame already read) on to the task's node, and back."""
    endpoint = ctx.peer_client(addr).endpoint
    async with xs.dial(endpoint, NODE_EXEC_PATH.format(task_id=task.id),
                       connect_timeout=5) as upstream:
        await xs.send(upstream, start)
        await xs.relay(ws, upstream)


def refuse_non_manager(request: web.Request) -> Optional[str]:
    """On a node's 2377: the manager that relays an exec (auth_middleware admits managers only
    here; checked again, as an exec is the most a certificate can do). Returns its node id."""
    ident = identity_of(request)
    if ident is None or not ident.is_manager:
        raise errors.PermissionDenied("exec into this node's tasks is for managers relaying "
                                      "a client allowed to control the swarm")
    return ident.node_id
