"""Writes run on the leader, as on shoal's own socket (controlapi's forward_middleware): the
leader runs the control API's function itself; a follower sends the same request, in shoal's
words, to the leader's control API, whose handler calls that same function.

So a Docker write is translated into a shoal request once (method, path, body) and there is
one place that decides, checks and stores it.

A forwarded write returns once this manager's replica shows it too (`settled`, for a few
seconds at most): Docker's clients read right after they write (`docker stack deploy` lists
the configs it has just created), and they read from this manager.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import quote, urlencode

from aiohttp import web

from common import errors
from manager.controlapi.context import Manager
from manager.controlapi import forwarding
from manager.controlapi.middleware import FORWARDED_NODE_HEADER, check_disk_for
from shoal.dockerapi.access import daemon_of, manager_of
from shoal.dockerapi.errors import DockerError, status_of

Local = Callable[[Manager], Awaitable[Any]]
Spell = Callable[[str], str]
Settled = Callable[[Manager, Any], bool]
# How long a follower waits for its replica to show a write the leader made.
SETTLE_TIMEOUT = 5.0


def created(table: str) -> Settled:
    """The object the answer names ({"id": ...}) is in the replica."""
    return lambda manager, answer: manager.store.get(table, answer.get("id", "")) is not None


def changed(table: str, obj_id: str) -> Settled:
    """The replica holds the object at the version the answer (shoal's view) shows, or later."""
    def check(manager, answer) -> bool:
        obj = manager.store.get(table, obj_id)
        version = (answer.get("meta") or {}).get("version", 0) if isinstance(answer, dict) else 0
        return obj is None or obj.meta.version >= version
    return check


def removed(table: str, obj_id: str) -> Settled:
    return lambda manager, answer: manager.store.get(table, obj_id) is None


def shoal_path(*parts: str, **query: Any) -> str:
    """A control API path from segments (each quoted whole) and query parameters."""
    path = "/" + "/".join(quote(p, safe="") for p in parts)
    query = {k: v for k, v in query.items() if v is not None}
    return f"{path}?{urlencode(query)}" if query else path


async def write(request: web.Request, method: str, path_qs: str, body: Optional[dict],
                local: Local, spell: Optional[Spell] = None,
                settled: Optional[Settled] = None) -> Any:
    """`local(manager)` on the leader (its answer as shoal's API would send it), or the
    leader's answer to `method path_qs body`. Errors become Docker's, their field paths spelled
    by `spell`. Across a failover the answer is definite as on shoal's own API
    (manager/controlapi/forwarding.py): retried with the same request id while a leader may
    still appear, else "the outcome is unknown" (504), never a refusal for a write that may
    have been applied."""
    manager = manager_of(request)
    ctx = daemon_of(request)
    raw = json.dumps(body).encode() if body is not None else b""
    request_id = forwarding.new_request_id()

    async def send(leader: str, maybe_applied: bool) -> tuple[str, Any]:
        headers = {FORWARDED_NODE_HEADER: "", forwarding.REQUEST_ID_HEADER: request_id}
        if maybe_applied:
            headers[forwarding.RETRY_HEADER] = "1"
        return "sent", await forwarding.send_to_leader(ctx, manager, leader, method, path_qs,
                                                       raw, headers)

    async def here(maybe_applied: bool) -> tuple[str, Any]:
        if maybe_applied:
            # An earlier attempt may stand: this leader's control API answers the retry from
            # what was applied (or runs it), as it does for a follower's.
            return await send(ctx.state.api_addr, True)
        check_disk_for(manager, method, path_qs.partition("?")[0])
        answer = await forwarding.serve_on_leader(manager, request_id, False,
                                                  lambda: local(manager), _replayed)
        return "here", answer

    try:
        kind, result = await forwarding.deliver(
            manager, ctx, local=here, remote=send, deadline=time.monotonic() +
            forwarding.DELIVER_DEADLINE, answer_of=lambda r: r[1] if r[0] == "sent" else None)
    except errors.OutcomeUnknown as exc:
        raise DockerError(exc.status, exc.message) from None
    except errors.ShoalError as exc:
        raise _docker_error(exc.status, exc.message, exc.field, spell,
                            not_a_manager=isinstance(exc, errors.NotAManager)) from None
    if kind == "here":
        return result
    status, data = result.status, result.body
    try:
        answer = json.loads(data) if data else {}
    except ValueError:
        answer = {"message": data.decode("utf-8", "replace")}
    if status >= 400:
        answer = answer if isinstance(answer, dict) else {}
        if status == errors.OutcomeUnknown.status:
            raise DockerError(status, str(answer.get("message", "")))
        raise _docker_error(status, str(answer.get("message", "")), answer.get("field"), spell)
    if settled is not None:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while not settled(manager, answer) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    return answer


async def _replayed(result) -> Any:
    # A first attempt has a fresh request id: no other attempt can have used it.
    raise errors.OutcomeUnknown(f"the request's change was applied by another attempt (index "
                                f"{result.index}); check it before sending it again")


def _docker_error(status: int, message: str, field: Optional[str], spell: Optional[Spell],
                  not_a_manager: bool = False) -> DockerError:
    if field and spell is not None and isinstance(field, str):
        docker_field = spell(field)
        if message.startswith(f"{field}: "):
            message = f"{docker_field}: {message[len(field) + 2:]}"
        elif docker_field != field:
            message = f"{docker_field}: {message}"
    return DockerError(503 if not_a_manager else status_of(status), message)
