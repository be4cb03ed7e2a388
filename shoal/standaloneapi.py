"""`shoal container run / stop / rm` on the local socket: standalone containers of this node.

The managers hold each one as a task of this node (manager.standalone): the daemon asks them as
this node, then waits for its own task runner to have done the work, so that the CLI answers
with the outcome (running, or why not) rather than with a request taken.
"""
from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

from aiohttp import web

from common import errors
from manager.httputil import CTX, body_json, reply

# An image pull may come first.
RUN_TIMEOUT = 300.0
# A container gets its stop grace period (default 10 s) and then SIGKILL.
STOP_TIMEOUT = 60.0


def _agent(request: web.Request):
    daemon = request.app[CTX]
    if daemon.agent is None or daemon.agent.runner is None:
        raise errors.NotInSwarm("this node is not part of a swarm: standalone containers run on "
                                "swarm nodes ('shoal swarm init' or 'shoal swarm join')")
    return daemon.agent


async def _until(what: str, timeout: float, check) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"{what} did not happen within {timeout:.0f} s; see "
                                     "'shoal container ls --all' and the daemon's log")
        await asyncio.sleep(0.05)


async def container_run(request: web.Request) -> web.Response:
    agent = _agent(request)
    created = await agent.request_managers("POST", "/dispatcher/containers",
                                           await body_json(request))
    task_id, runner = created["id"], agent.runner

    def settled() -> bool:
        ctl = runner.controllers.get(task_id)
        return ctl is not None and (ctl.state == "running" or ctl.ended)
    await _until(f"container {created['name']} starting", RUN_TIMEOUT, settled)
    ctl = runner.controllers[task_id]
    if ctl.state == "rejected":
        # Nothing was created (no image, or runc refused the bundle): nothing to keep, as with
        # `docker run` of an image it cannot find.
        await agent.request_managers("DELETE", f"/dispatcher/containers/{task_id}")
        raise errors.FailedPrecondition(f"container {created['name']} could not be created: "
                                        f"{ctl.message}", field="container")
    # A process that ended at once keeps its container (exit code, logs) until `rm`.
    return reply({**created, "state": ctl.state}, status=201)


async def container_stop(request: web.Request) -> web.Response:
    agent = _agent(request)
    answer = await agent.request_managers(
        "POST", f"/dispatcher/containers/{quote(request.match_info['ref'], safe='')}/stop")
    ctl = agent.runner.controllers.get(answer["id"])
    await _until(f"container {answer['name']} stopping", STOP_TIMEOUT,
                 lambda: ctl is None or ctl.ended)
    return reply(answer)


async def container_remove(request: web.Request) -> web.Response:
    agent = _agent(request)
    force = request.query.get("force") == "true"
    answer = await agent.request_managers(
        "DELETE", f"/dispatcher/containers/{quote(request.match_info['ref'], safe='')}"
                  f"{'?force=true' if force else ''}")
    executor = agent.runner.executor
    await _until(f"container {answer['name']} being removed", STOP_TIMEOUT,
                 lambda: all(c.id != answer["id"] for c in executor.list()))
    return reply(answer)


for _handler in (container_run, container_stop, container_remove):
    _handler.local_only = True  # about this node: never forwarded to the leader


def routes() -> list[web.RouteDef]:
    return [web.post("/containers/run", container_run),
            web.post("/containers/{ref}/stop", container_stop),
            web.delete("/containers/{ref}", container_remove)]
