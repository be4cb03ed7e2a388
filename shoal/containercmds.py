"""`shoal container top | stats | kill` on the local socket: about this node's containers (a
service's task or a standalone one), answered by this node, never forwarded. A killed task's
exit goes the way of any exit: its restart policy decides."""
from __future__ import annotations

import asyncio
from typing import Optional

from aiohttp import web

from common import errors
from common import httpstreams as streams
from common.httpserver import CTX, reply
from shoal.workerapi import _find_container
from worker.executor import stats as cstats
from worker.executor import top as ctop

STATS_INTERVAL = 1.0  # docker's: a sample a second


def _executor(request: web.Request):
    return request.app[CTX].executor


def _running(c) -> None:
    if c.state != "running":
        raise errors.Conflict(f"container {c.id[:12]} is not running ({c.state})", field="id")


async def container_top(request: web.Request) -> web.Response:
    """{titles, processes}: `ps ARGS` (query ps_args, default -ef) of the container's pids."""
    c = _find_container(request, request.match_info["ref"])
    _running(c)
    args = ctop.ps_args(request.query.get("ps_args"))
    cgroup = _executor(request).meta(c.id).get("cgroup", "")
    found = await ctop.top(cgroup, args)
    return reply({"titles": found.titles, "processes": found.processes})


async def container_kill(request: web.Request) -> web.Response:
    """`signal` (query; default KILL), names and numbers as docker's."""
    c = _find_container(request, request.match_info["ref"])
    sig = await _executor(request).kill(c.id, request.query.get("signal") or "KILL")
    return reply({"id": c.id, "name": (c.labels or {}).get("shoal.task.name", c.id),
                  "signal": sig.name})


def _targets(request: web.Request) -> list:
    refs = request.query.getall("container", [])
    if refs:
        found = [_find_container(request, ref) for ref in refs]
        for c in found:
            _running(c)
        return found
    return [c for c in _executor(request).list() if c.state == "running"]


def _sample(ex, c) -> Optional[cstats.Sample]:
    try:
        info = ex.inspect(c.id)
        if info.state != "running":
            return None
        return cstats.sample(ex.meta(c.id).get("cgroup", ""), info.pid)
    except (errors.NotFound, OSError):
        return None  # gone meanwhile: left out of this round


async def container_stats(request: web.Request) -> web.StreamResponse:
    """NDJSON, one record a second: {"stats": [Stats...]} for the containers named (query
    `container`, repeatable; none: every running one); with stream=false the first only.
    CPU % needs two samples, so the first record comes after one interval."""
    raw = request.query.get("stream", "true")
    if raw not in ("true", "false", "1", "0"):
        raise errors.InvalidArgument(f"query parameter stream must be true or false, got "
                                     f"{raw!r}", field="stream")
    stream = raw in ("true", "1")
    ex = _executor(request)
    targets = _targets(request)  # checked before the stream starts (httpstreams)
    resp = await streams.start_ndjson(request)
    prev = {c.id: _sample(ex, c) for c in targets}
    try:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            if not request.query.getall("container", []):  # every running one, as they come
                targets = [c for c in ex.list() if c.state == "running"]
            rows = []
            for c in targets:
                cur = _sample(ex, c)
                if cur is None:
                    continue
                name = (c.labels or {}).get("shoal.task.name", c.id)
                rows.append(cstats.compute(c.id, name, prev.get(c.id), cur).plain())
                prev[c.id] = cur
            await streams.write_record(resp, {"stats": rows})
            if not stream:
                return resp
    except (ConnectionResetError, ConnectionError):
        return resp  # the reader went away (Ctrl-C on a streaming stats)


for _handler in (container_top, container_kill, container_stats):
    _handler.local_only = True  # about this node: never forwarded to the leader


def routes() -> list[web.RouteDef]:
    # before workerapi's /containers/{ref}, which would take "stats" for a container's name
    return [web.get("/containers/stats", container_stats),
            web.get("/containers/{ref}/top", container_top),
            web.post("/containers/{ref}/kill", container_kill)]
