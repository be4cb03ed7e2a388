"""Small pieces every aiohttp app of shoal uses: JSON in and out, and errors as JSON."""
from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from aiohttp import web

from common import codec, errors, strict
from common import httpstreams as streams

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
    """The request's JSON object, strictly parsed (common/strict.py): no NaN or Infinity, nesting
    bounded."""
    raw = await request.read()
    if not raw:
        if required:
            raise errors.InvalidArgument("the request needs a JSON body")
        return {}
    data = strict.loads(raw)
    if not isinstance(data, dict):
        raise errors.InvalidArgument("the request body must be a JSON object")
    return data


_SCALARS = {str: strict.string, int: strict.integer, float: strict.number, bool: strict.boolean}


def field(data: dict, name: str, kind: type, *, required: bool = True, default: Any = None) -> Any:
    """One field of a request body, strictly typed (common/strict.py); absent or null takes the
    default, or is refused when the field is required. Objects and lists come back as sent
    (bounded in depth): decode them with strict.decode before use."""
    if name not in data or data[name] is None:
        if required:
            raise errors.InvalidArgument(f"missing field '{name}'", field=name)
        return default
    value = data[name]
    check = _SCALARS.get(kind)
    if check is not None:
        return check(value, name)
    if not isinstance(value, kind):
        raise errors.InvalidArgument(f"field '{name}' must be {kind.__name__}, got "
                                     f"{type(value).__name__}", field=name)
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
    if not value.lstrip("-").isdecimal() or not value.isascii() or len(value) > 19:
        raise errors.InvalidArgument(f"query parameter '{name}' must be an integer, got {value!r}",
                                     field=name)
    return int(value)


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
        return await _error_answer(request, exc.to_dict(), exc.status)
    except Exception:
        # A bug. Its details (names, paths, values) are for the operator, not for whoever sent
        # the request: the answer gives an id to find them in the daemon's log.
        incident = secrets.token_hex(4)
        log.exception("internal error (id %s) in %s %s", incident, request.method, request.path)
        return await _error_answer(request, internal_error_body(incident), 500)


def internal_error_body(incident: str) -> dict:
    return {"message": f"internal error (id {incident}): see the daemon's log", "code": "internal"}


async def _error_answer(request: web.Request, body: dict, status: int) -> web.StreamResponse:
    # A stream already under way has sent its 200: a second response would land inside its body.
    stream = streams.started_stream(request)
    if stream is not None:
        return await streams.end_with_error(stream, body)
    return web.json_response(body, status=status)
