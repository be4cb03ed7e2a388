"""Streamed answers (NDJSON: logs, an attached `container run`).

Once a stream is prepared, its 200 and headers are on the wire: an error can no longer be an
answer of its own (written then, it would be a second HTTP response inside the first one's
body). So a streaming handler checks every parameter and finds every object before it starts
the stream; what still fails later is reported as the stream's last record (error_middleware
does that through `STREAM`)."""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from common import errors

# The stream a handler has started, for error_middleware to end it properly.
STREAM: web.RequestKey[web.StreamResponse] = web.RequestKey("shoal.stream", web.StreamResponse)

# More lines than any log keeps; the bound only keeps absurd numbers out of the arithmetic.
_TAIL_DIGITS = 12


def query_tail(request: web.Request) -> int | None:
    """`tail`: 'all' (None) or a whole number of lines."""
    tail = request.query.get("tail", "all")
    if tail == "all":
        return None
    # isascii: str.isdigit also takes '²' and other digits int() refuses
    if not (tail.isascii() and tail.isdigit() and len(tail) <= _TAIL_DIGITS):
        raise errors.InvalidArgument(f"query parameter 'tail' must be a number of lines or 'all', "
                                     f"got {tail!r}", field="tail")
    return int(tail)


async def start_ndjson(request: web.Request) -> web.StreamResponse:
    """Begin an NDJSON answer. Call it only once the request has been fully checked."""
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    request[STREAM] = resp
    return resp


async def write_record(resp: web.StreamResponse, record: Any) -> None:
    await resp.write(json.dumps(record).encode() + b"\n")


def started_stream(request: web.Request) -> web.StreamResponse | None:
    resp = request.get(STREAM)
    return resp if resp is not None and resp.prepared else None


async def end_with_error(resp: web.StreamResponse, body: dict) -> web.StreamResponse:
    """The error as the stream's last record ({"error": message, "code": ...}): clients of a
    stream take such a record as the request's failure."""
    record = {"error": body.get("message", ""), **{k: v for k, v in body.items() if k != "message"}}
    try:
        await write_record(resp, record)
    except (ConnectionResetError, ConnectionError):
        pass  # the reader is gone: nobody to tell
    return resp
