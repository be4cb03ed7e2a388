"""Small pieces every aiohttp app of shoal uses: JSON in and out, and errors as JSON."""
from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from common import codec, errors

log = logging.getLogger("shoal.api")

# The daemon (or a test's stand-in) every handler reaches through its app; aiohttp warns about
# plain string keys in an application's state.
CTX: web.AppKey[Any] = web.AppKey("ctx")


def to_json_plain(value: Any) -> Any:
    """The codec's plain form, with bytes (certificates) as text so it serialises as JSON."""
    plain = codec.to_plain(value)
    return _bytes_to_str(plain)


def _bytes_to_str(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, dict):
        return {k: _bytes_to_str(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_bytes_to_str(x) for x in v]
    return v


def reply(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(to_json_plain(value)),
                        content_type="application/json")


async def body_json(request: web.Request, *, required: bool = True) -> dict:
    raw = await request.read()
    if not raw:
        if required:
            raise errors.InvalidArgument("the request needs a JSON body")
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise errors.InvalidArgument(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise errors.InvalidArgument("the request body must be a JSON object")
    return data


def field(data: dict, name: str, kind: type | tuple, *, required: bool = True, default: Any = None) -> Any:
    if name not in data or data[name] is None:
        if required:
            raise errors.InvalidArgument(f"missing field '{name}'", field=name)
        return default
    value = data[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        want = " or ".join(k.__name__ for k in kinds)
        raise errors.InvalidArgument(f"field '{name}' must be {want}, got {type(value).__name__}",
                                     field=name)
    return value


def query_flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise errors.InvalidArgument(f"query parameter '{name}' must be true or false, got {value!r}",
                                 field=name)


def query_int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.InvalidArgument(f"query parameter '{name}' must be an integer, got {value!r}",
                                     field=name) from None


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 404 and not exc.text.startswith("{"):
            body = {"message": f"no such endpoint: {request.method} {request.path}", "code": "not_found"}
            return web.json_response(body, status=404)
        if exc.status == 405:
            return web.json_response({"message": f"method {request.method} not allowed on {request.path}",
                                      "code": "invalid_argument"}, status=405)
        raise
    except errors.ShoalError as exc:
        if exc.status >= 500:
            log.info("%s %s: %s", request.method, request.path, exc.message)
        return web.json_response(exc.to_dict(), status=exc.status)
    except Exception as exc:  # a bug: say so without leaking internals
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"message": f"internal error: {type(exc).__name__}: {exc}",
                                  "code": "internal"}, status=500)
