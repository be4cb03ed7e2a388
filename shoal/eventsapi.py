"""GET /events on the node's socket (and, through /shoal/, its remote API): this manager's
cluster events as NDJSON, one event a line (manager/events/model.py's to_plain).

`since` and `until` are an RFC 3339 time, Unix seconds or a duration ago (the CLI sends Unix
seconds: its durations count from its own clock); `filters` is a JSON list of KEY=VALUE, as
`--filter` gives them. The history is sent when `since` (or `until`) asks for it, then live
events until `until` passes; without `until` the stream follows until the client goes.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator, Optional

from aiohttp import web

from common import errors, httpstreams as streams
from common.timespec import parse_time
from manager.controlapi.context import manager_of
from manager.events import filters as event_filters
from manager.events import recorder as event_recorder
from manager.events.recorder import Subscription

# How often an idle stream checks that its client is still there.
IDLE_CHECK = 1.0


def _time(request: web.Request, name: str, now: float) -> Optional[float]:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_time(raw, f"--{name}", now)
    except ValueError as exc:
        raise errors.InvalidArgument(str(exc), field=name) from None


def _filters(request: web.Request) -> event_filters.EventFilter:
    raw = request.query.get("filters", "")
    if not raw:
        return event_filters.EventFilter()
    try:
        values = json.loads(raw)
    except ValueError:
        values = None
    if not isinstance(values, list):
        raise errors.InvalidArgument("query parameter 'filters' must be a JSON list of "
                                     "KEY=VALUE strings, as --filter gives them", field="filter")
    return event_filters.parse(values)


async def events(request: web.Request) -> web.StreamResponse:
    manager = manager_of(request)
    now = time.time()
    since, until = _time(request, "since", now), _time(request, "until", now)
    if since is not None and until is not None and until < since:
        raise errors.InvalidArgument(f"--until ({request.query['until']}) is before --since "
                                     f"({request.query['since']}): give an --until after "
                                     "--since", field="until")
    wanted = _filters(request)
    recorder = event_recorder.attach(manager)
    # The history and the subscription in one loop step: nothing between them is missed.
    past = recorder.past(since, until) if since is not None or until is not None else []
    live = until is None or until > now
    sub = recorder.subscribe() if live else None
    try:
        resp = await streams.start_ndjson(request)
    except BaseException:
        if sub is not None:
            recorder.unsubscribe(sub)
        raise
    try:
        for ev in past:
            if wanted.match(ev):
                await streams.write_record(resp, ev.to_plain())
        if sub is not None:
            await _follow(request, resp, sub, wanted, until)
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    finally:
        if sub is not None:
            recorder.unsubscribe(sub)
    return resp


async def live_batches(request: web.Request, queue: asyncio.Queue,
                       until: Optional[float]) -> AsyncIterator[Optional[list]]:
    """The recorder's batches for one stream (shoal's and Docker's /events), until `until` or
    the client's leaving; None when the subscription overflowed and was ended."""
    while True:
        timeout = IDLE_CHECK
        if until is not None:
            left = until - time.time()
            if left <= 0:
                return
            timeout = min(timeout, left)
        try:
            batch = await asyncio.wait_for(queue.get(), timeout)
        except asyncio.TimeoutError:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            continue
        yield batch


async def _follow(request: web.Request, resp: web.StreamResponse, sub: Subscription,
                  wanted: event_filters.EventFilter, until: Optional[float]) -> None:
    async for batch in live_batches(request, sub.queue, until):
        if batch is None:
            raise errors.Unavailable("this event stream fell too far behind and was ended: "
                                     "run it again (with --since to catch up)")
        for ev in batch:
            if wanted.match(ev) and (until is None or ev.time <= until):
                await streams.write_record(resp, ev.to_plain())


def routes() -> list[web.RouteDef]:
    return [web.get("/events", events)]
