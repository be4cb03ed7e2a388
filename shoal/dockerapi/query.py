"""Query parameters and request bodies read as dockerd reads them."""
from __future__ import annotations

from aiohttp import web

from common import strict
from shoal.dockerapi.errors import bad_request
from shoal.dockerapi.translate.reader import bad


def flag(request: web.Request, name: str) -> bool:
    """dockerd's BoolValue: anything but "", 0, no, false and none is true."""
    value = request.query.get(name, "").strip().lower()
    return value not in ("", "0", "no", "false", "none")


async def json_body(request: web.Request, what: str = "") -> dict:
    """The body as a JSON object, strictly decoded; `what` names it in the errors (a
    ServiceSpec)."""
    raw = await request.read()
    suffix = f" ({what})" if what else ""
    if not raw:
        raise bad_request(f"the request needs a JSON body{suffix}")
    data = strict.loads(raw)
    if not isinstance(data, dict):
        raise bad("body", f"must be a JSON object{suffix}")
    return data
