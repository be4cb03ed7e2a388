"""`shoal container run / stop / rm` on the local socket: standalone containers of this node.

The managers hold each one as a task of this node (manager/controlapi/containers.py): the daemon asks them as
this node, then waits for its own task runner to have done the work, so that the CLI answers
with the outcome (running, or why not) rather than with a request taken.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from urllib.parse import quote

from aiohttp import web

from common import errors
from common.aio import cancel_and_wait
from common import httpstreams as streams
from common.httpserver import CTX, body_json, reply
from manager.controlapi.containers import parse_container_run, restart_policy

log = logging.getLogger("shoal.standalone")

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


async def container_run(request: web.Request) -> web.StreamResponse:
    body = await body_json(request)
    run = parse_container_run(body)  # refused here, before anything is asked of the managers
    agent = _agent(request)
    body.pop("attach", None)  # this node's business, not the managers'
    attach, remove = run.attach, run.auto_remove
    if attach:
        restart_policy(run.restart_policy, remove)  # --rm handled here: check it here
        # Removed here once its output is all delivered: the managers removing it on exit
        # could take its last lines and its exit code away from under the stream.
        body["auto_remove"] = False
    created = await agent.request_managers("POST", "/dispatcher/containers", body)
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
    if attach:
        return await _attached(request, agent, {**created, "state": ctl.state}, remove)
    # A process that ended at once keeps its container (exit code, logs) until `rm` (or, with
    # --rm, until the managers see it stopped).
    return reply({**created, "state": ctl.state}, status=201)


async def _attached(request: web.Request, agent, created: dict, remove: bool) -> web.StreamResponse:
    """`container run` without -d, as `docker run`: NDJSON of the container ({id, name,
    state}), its output lines from the start ({t, s, l}) and, once it has exited, {"exit":
    {exit_code, oom_killed, message}}. With --rm the container is gone before that last line."""
    executor, task_id = agent.runner.executor, created["id"]
    # The first run's exit and output, even if a restart policy has run it again by now; the
    # exit is held even once the container is removed.
    exited = asyncio.ensure_future(executor.wait(task_id, run=0))
    resp = await streams.start_ndjson(request)
    finished = False

    async def send(record: dict) -> None:
        await streams.write_record(resp, record)

    async def output() -> None:
        try:
            async for line in executor.logs(task_id, follow=True, run=0):
                await send({"t": line.ts, "s": line.stream, "l": line.line})
        except errors.FailedPrecondition:
            pass  # a `none` log driver: there is no output to show, only the exit

    try:
        await send(created)
        if not await _unless_client_leaves(request, output()):
            return resp
        info = await exited
        if remove:
            await _remove(agent, task_id)
            await _until(f"container {created['name']} being removed", STOP_TIMEOUT,
                         lambda: all(c.id != task_id for c in executor.list()))
        finished = True
        await send({"exit": asdict(info)})
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away: the container runs on, detached
    finally:
        exited.cancel()
        if remove and not finished:
            # Client gone before the end: stop it and remove it (`docker run --rm`, Ctrl-C).
            await _remove(agent, task_id)
    return resp


async def _unless_client_leaves(request: web.Request, work) -> bool:
    """Run `work` to its end (True), or until the client has hung up (False): a quiet container
    gives no write to fail on."""
    job = asyncio.ensure_future(work)
    try:
        while not job.done():
            await asyncio.wait({job}, timeout=0.5)
            if request.transport is None or request.transport.is_closing():
                return False
        job.result()
        return True
    finally:
        await cancel_and_wait([job])


async def _remove(agent, task_id: str) -> None:
    try:
        # Forced: the managers may not have seen it stop yet; they delete it once it has.
        await agent.request_managers("DELETE", f"/dispatcher/containers/{task_id}?force=true")
    except errors.ShoalError as exc:
        log.warning("removing container %s after its attached run: %s", task_id[:12], exc.message)


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
