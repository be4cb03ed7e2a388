"""GET /services/{id}/logs and GET /tasks/{id}/logs: the log lines from every node that ran
the service's tasks (manager/controlapi/services.gather_logs, as shoal's own API; one task's
through tasks.gather_task_logs), written as dockerd writes them:
8-byte-header frames (stream, 0, 0, 0, big-endian length) unless the service has a TTY, each
line led by its timestamp (`timestamps`) and by the `com.docker.swarm.*` details (`details`)
the docker CLI reads to name each line's task and node."""
from __future__ import annotations

import logging
import math
import struct
from typing import AsyncIterator, Callable, Optional

from aiohttp import web

from common import errors
from common.model import Service
from manager.controlapi.services import gather_logs
from manager.controlapi.tasks import gather_task_logs
from shoal.dockerapi.access import daemon_of, manager_of
from shoal.dockerapi.errors import bad_request, not_found
from shoal.dockerapi.query import flag
from shoal.dockerapi.services import lookup
from shoal.dockerapi.tasks import find_task
from shoal.dockerapi.translate.values import rfc3339

log = logging.getLogger("shoal.dockerapi")

_STREAMS = {"stdout": 1, "stderr": 2}


def frame(stream: int, payload: bytes) -> bytes:
    """One frame of Docker's multiplexed stream (stdcopy)."""
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def line(entry: dict, service_id: str, timestamps: bool, details: bool) -> bytes:
    text = str(entry.get("l", ""))
    if not text.endswith("\n"):
        text += "\n"
    head = ""
    if timestamps:
        head += rfc3339(float(entry.get("t", 0))) + " "
    if details:
        head += (f"com.docker.swarm.node.id={entry.get('node_id', '')},"
                 f"com.docker.swarm.service.id={service_id},"
                 f"com.docker.swarm.task.id={entry.get('task_id', '')} ")
    return (head + text).encode("utf-8", "replace")


def _time(request: web.Request, name: str) -> Optional[float]:
    """`since`/`until`: Unix seconds as the docker CLI sends them (`1700000000.123456789`);
    empty or 0 is no bound, as dockerd reads it."""
    raw = request.query.get(name, "")
    if raw in ("", "0"):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise bad_request(f"invalid value for \"{name}\": {raw!r} is no Unix time "
                          "(seconds since the epoch, e.g. 1700000000.5)")
    return value


async def service_logs(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    manager = manager_of(request)
    svc = lookup(manager, params["id"])
    return await _stream(request, svc, lambda follow, tail, since, until: gather_logs(
        daemon_of(request), manager, svc, follow, tail, since, until))


async def task_logs(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    """`docker service logs TASKID`: the same frames and parameters, one task's lines."""
    manager = manager_of(request)
    task = find_task(manager, params["id"])
    svc = manager.store.get("services", task.service_id)
    if svc is None:
        raise not_found(f"service {task.service_id} of task {params['id']} not found")
    return await _stream(request, svc, lambda follow, tail, since, until: gather_task_logs(
        daemon_of(request), manager, task, follow, tail, since, until))


async def _stream(request: web.Request, svc: Service,
                  gather: Callable[[bool, Optional[int], Optional[float], Optional[float]],
                                   AsyncIterator[dict]]
                  ) -> web.StreamResponse:
    wanted = {name for name in _STREAMS if flag(request, name)}
    if not wanted:
        raise bad_request("Bad parameters: you must choose at least one stream")
    tail_raw = request.query.get("tail", "all") or "all"
    if tail_raw == "all" or tail_raw.startswith("-"):
        tail = None
    elif tail_raw.isascii() and tail_raw.isdigit() and len(tail_raw) <= 9:
        tail = int(tail_raw)
    else:
        raise bad_request(f"invalid value for \"tail\": {tail_raw!r}")
    since, until = _time(request, "since"), _time(request, "until")
    follow, timestamps, details = (flag(request, "follow"), flag(request, "timestamps"),
                                   flag(request, "details"))
    tty = svc.spec.task_template.container.tty
    resp = web.StreamResponse(headers={"Content-Type": "application/vnd.docker.raw-stream" if tty
                                       else "application/vnd.docker.multiplexed-stream"})
    await resp.prepare(request)
    entries = gather(follow, tail, since, until)  # the nodes apply the bounds as they read
    try:
        async for entry in entries:
            if "error" in entry:
                log.info("logs of service %s: node %s: %s", svc.spec.name, entry.get("node"),
                         entry["error"])
                continue
            stream = entry.get("s", "stdout")
            if stream not in wanted:
                continue
            payload = line(entry, svc.id, timestamps, details)
            await resp.write(payload if tty else frame(_STREAMS.get(stream, 1), payload))
    except (ConnectionResetError, ConnectionError, errors.ShoalError):
        pass
    finally:
        await entries.aclose()
    return resp
