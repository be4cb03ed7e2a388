"""The answer to a retried write whose first attempt was applied (manager/controlapi/forwarding.py).

The handler does not run again (it would refuse: "already exists", "changed since it was
read"); the answer is rebuilt from what was applied, as close to the handler's own as the store
allows, and says `"replayed": true`:

- a create: 201 and the id of the object the transaction created (the one object of the path's
  table at the transaction's index);
- an update or a rollback: the object as reading it answers now (the GET of its path);
- a removal: the reference it named;
- anything else: the transaction's index.

An attempt the store refused (its checks failed) gets that refusal again.
"""
from __future__ import annotations

import json
from typing import Optional
from urllib.parse import quote

from aiohttp import web

from common.model import TABLES
from manager.controlapi.forwarding import Answer, refusal_of
from manager.state.store import TxnResult


def read_back_request(request: web.Request) -> Optional[web.Request]:
    """For an update or a rollback, the GET of its object, made before the body is read
    (aiohttp clones a request only until then); None for other writes."""
    parts = [p for p in request.path.split("/") if p]
    if request.method != "POST" or len(parts) != 3 or parts[2] not in ("update", "rollback"):
        return None
    # request.path is decoded: quote each segment back for the router.
    return request.clone(method="GET", rel_url="/" + "/".join(quote(p, safe="") for p in parts[:2]))


async def replay_answer(request: web.Request, read_back: Optional[web.Request], manager,
                        result: TxnResult) -> Answer:
    if not result.ok:
        raise refusal_of(result)
    parts = [p for p in request.path.split("/") if p]
    table = parts[0] if parts and parts[0] in TABLES else None
    base = {"replayed": True, "index": result.index}
    if request.method == "POST" and parts and parts[-1] == "create":
        made = ([o for o in manager.store.list(table) if o.meta.version == result.index]
                if table else [])
        return _json(201, {"id": made[0].id, **base} if len(made) == 1 else base)
    if request.method == "DELETE" and len(parts) == 2:
        return _json(200, {"id": parts[1], **base})
    if read_back is not None:
        read = await _read(request.app, read_back)
        if read is not None:
            return read
    return _json(200, base)


def _json(status: int, body: dict) -> Answer:
    return Answer(status, json.dumps(body).encode())


async def _read(app: web.Application, clone: web.Request) -> Optional[Answer]:
    """What GET of the object answers on this manager's API now (the object after the change)."""
    match = await app.router.resolve(clone)
    if match.http_exception is not None:
        return None
    # What aiohttp's Application does before a handler runs (the handler reads match_info).
    match.add_app(app)
    match.freeze()
    clone._match_info = match  # noqa: SLF001 - aiohttp sets it the same way
    response = await match.handler(clone)
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes) \
            or response.status >= 300:
        return None
    body = json.loads(response.body)
    if isinstance(body, dict):
        body["replayed"] = True
    return _json(200, body)
