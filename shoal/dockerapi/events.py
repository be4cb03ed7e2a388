"""GET /events: the swarm events of this manager's replica (service, node, secret, config and
network creates, updates and removals), as newline-delimited JSON, until the client goes or
`until` passes.

They come from the manager's one event history (manager/events/recorder.py, which `shoal
events` reads too), translated to Docker's messages as they are sent. A worker (or a node
outside a swarm) has no swarm events: it answers an empty stream, as dockerd's own events of a
worker hold none.
"""
from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Iterable, Optional

from aiohttp import web

from manager.events import recorder as event_recorder
from manager.events.recorder import EventRecorder, Subscription
from shoal.dockerapi import filters
from shoal.dockerapi.access import daemon_of
from shoal.dockerapi.errors import bad_request
from shoal.dockerapi.translate.events import changes, message
from shoal.eventsapi import live_batches

# How often an idle stream checks whether its client is still there.

# dockerd's accepted filters for /events, and the values of those it checks.
_ACCEPTED = ("container", "daemon", "event", "image", "label", "network", "node", "plugin",
             "scope", "secret", "service", "type", "volume", "config")
_EVENT_TYPES = ("builder", "config", "container", "daemon", "image", "network", "node",
                "plugin", "secret", "service", "volume")
_SCOPES = ("local", "swarm")
# The filters that name an actor of their type (dockerd's fuzzyMatchName).
_BY_ACTOR = ("container", "daemon", "plugin", "volume", "network", "node", "service", "secret",
             "config")
_TIMESTAMP = re.compile(r"(-?\d{1,19})(?:\.(\d{0,20}))?")


# ---- the request -----------------------------------------------------------------------------
def parse_time(request: web.Request, name: str) -> Optional[float]:
    """dockerd's ParseUnixTimestamp: SECONDS[.FRACTION]; "" is no bound."""
    raw = request.query.get(name, "")
    if raw == "":
        return None
    m = _TIMESTAMP.fullmatch(raw)
    if m is None:
        raise bad_request(f"invalid value for '{name}': {raw!r} is no Unix time (give "
                          "SECONDS[.NANOSECONDS], as the docker CLI sends it)")
    secs, frac = int(m.group(1)), (m.group(2) or "")[:9]
    return secs + (int(frac.ljust(9, "0")) / 1e9 if frac else 0.0)


def parse_filters(raw: Optional[str]) -> filters.Filters:
    f = filters.parse(raw, _ACCEPTED)
    for key, allowed in (("type", _EVENT_TYPES), ("scope", _SCOPES)):
        for value in f.get(key):
            if value not in allowed:
                raise bad_request(f"invalid filter '{key}={value}': use one of "
                                  f"{', '.join(allowed)}")
    return f


def _fuzzy(f: filters.Filters, key: str, *sources: str) -> bool:
    """dockerd's FuzzyMatch: no filter, or a value equal to or a prefix of a source."""
    wanted = f.get(key)
    return not wanted or any(s.startswith(w) for w in wanted for s in sources if s)


def include(f: filters.Filters, msg: dict) -> bool:
    """dockerd's events Filter.Include, for the events this API emits."""
    actor = msg["Actor"]
    attrs = actor["Attributes"]
    if not (f.exact("event", msg["Action"]) and f.exact("type", msg["Type"])
            and f.exact("scope", msg["scope"]) and f.labels("label", attrs)):
        return False
    if any(not _fuzzy(f, key, actor["ID"], attrs.get("name", "")) for key in _BY_ACTOR):
        return False
    image = f.get("image")
    return not image or actor["ID"] in image or attrs.get("image", "") in image


def _within(msg: dict, since: Optional[float], until: Optional[float]) -> bool:
    when = msg["timeNano"] / 1e9
    return (since is None or when >= since) and (until is None or when <= until)


async def events(request: web.Request, params: dict[str, str]) -> web.StreamResponse:
    since, until = parse_time(request, "since"), parse_time(request, "until")
    if since is not None and until is not None and until < since:
        raise bad_request(f"`since` time ({request.query['since']}) cannot be after `until` "
                          f"time ({request.query['until']})")
    f = parse_filters(request.query.get("filters"))
    recorder = _recorder_of(request)
    past: Iterable[dict] = ()
    sub: Optional[Subscription] = None
    if recorder is not None:
        # As dockerd: the history only when a bound asks for it. Taken in the same loop step
        # as the subscription, so nothing falls between them.
        if since is not None or until is not None:
            past = _messages(recorder.past(since, until))
        if until is None or until > time.time():
            sub = recorder.subscribe()
    # Before API 1.52 dockerd labels this stream application/json; clients read it as lines.
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    try:
        for msg in past:
            if include(f, msg):
                await _send(resp, msg)
        if until is None or until > time.time():
            await _follow(request, resp, sub, f, until)
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    finally:
        if sub is not None and recorder is not None:
            recorder.unsubscribe(sub)
    return resp


def _messages(events) -> list[dict]:
    return [m for m in (message(g) for g in changes(events)) if m is not None]


def _recorder_of(request: web.Request) -> Optional[EventRecorder]:
    daemon = daemon_of(request)
    manager = daemon.manager
    if daemon.locked or manager is None or not daemon.state.in_swarm:
        return None
    return event_recorder.attach(manager)


async def _follow(request: web.Request, resp: web.StreamResponse,
                  sub: Optional[Subscription], f: filters.Filters,
                  until: Optional[float]) -> None:
    """Live events until `until`, the client's leaving, or (on an overflowing backlog) None."""
    waiter = sub.queue if sub is not None else asyncio.Queue()
    async for batch in live_batches(request, waiter, until):
        if batch is None:
            return
        for msg in _messages(batch):
            if include(f, msg) and (until is None or msg["timeNano"] / 1e9 <= until):
                await _send(resp, msg)


async def _send(resp: web.StreamResponse, msg: dict) -> None:
    await resp.write(json.dumps(msg).encode() + b"\n")
