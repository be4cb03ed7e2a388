"""GET /events: the swarm events of this manager's replica (service, node, secret, config and
network creates, updates and removals), as newline-delimited JSON, until the client goes or
`until` passes.

Every manager applies every change, so each one's replica sees them all. A `Recorder` per
manager keeps the last events (as many as dockerd keeps) for `since`/`until`, and hands new ones
to the open streams. It records from its first use on: `start_recording(manager)` right after a
manager starts makes the history reach back to then. A worker (or a node outside a swarm) has no
swarm events: it answers an empty stream, as dockerd's own events of a worker hold none.
"""
from __future__ import annotations

import asyncio
import collections
import json
import re
import time
import weakref
from typing import Any, Iterable, Optional

from aiohttp import web

from manager.state.store import Event
from shoal.dockerapi import filters
from shoal.dockerapi.access import daemon_of
from shoal.dockerapi.errors import bad_request
from shoal.dockerapi.translate.events import message

# dockerd's eventsLimit: how many past events `since` can reach.
HISTORY = 256
# A stream whose reader falls this far behind is closed rather than buffered without end.
BACKLOG = 4096
# How often an idle stream checks whether its client is still there.
IDLE_CHECK = 1.0

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


class Recorder:
    """The last HISTORY swarm events of one manager's replica, and the open streams' queues."""

    def __init__(self) -> None:
        self.history: collections.deque[dict] = collections.deque(maxlen=HISTORY)
        self._listeners: list[asyncio.Queue] = []

    def take(self, event: Event) -> bool:
        """Called by the manager's WatchHub for every change, on the loop. Recording here, in
        the hub's own fan-out, rather than from a queue of its own, keeps history and live
        streams in one order with nothing pending between them; it returns False so the hub
        queues nothing for it."""
        msg = message(event)
        if msg is None:
            return False
        self.history.append(msg)
        for queue in list(self._listeners):
            if queue.qsize() >= BACKLOG:
                self._listeners.remove(queue)
                queue.put_nowait(None)  # the stream ends: its reader cannot keep up
            else:
                queue.put_nowait(msg)
        return False

    def listen(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._listeners.append(queue)
        return queue

    def unlisten(self, queue: asyncio.Queue) -> None:
        if queue in self._listeners:
            self._listeners.remove(queue)


_recorders: "weakref.WeakKeyDictionary[Any, Recorder]" = weakref.WeakKeyDictionary()


def start_recording(manager: Any) -> Recorder:
    """The manager's recorder, subscribed to its store's changes on first call."""
    recorder = _recorders.get(manager)
    if recorder is None:
        recorder = Recorder()
        manager.watch(recorder.take)
        _recorders[manager] = recorder
    return recorder


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
    queue: Optional[asyncio.Queue] = None
    if recorder is not None:
        # As dockerd: the history only when a bound asks for it.
        if since is not None or until is not None:
            past = [m for m in recorder.history if _within(m, since, until)]
        if until is None or until > time.time():
            queue = recorder.listen()
    # Before API 1.52 dockerd labels this stream application/json; clients read it as lines.
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    try:
        for msg in past:
            if include(f, msg):
                await _send(resp, msg)
        if until is None or until > time.time():
            await _follow(request, resp, queue, f, until)
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    finally:
        if queue is not None and recorder is not None:
            recorder.unlisten(queue)
    return resp


def _recorder_of(request: web.Request) -> Optional[Recorder]:
    daemon = daemon_of(request)
    manager = daemon.manager
    if daemon.locked or manager is None or not daemon.state.in_swarm:
        return None
    return start_recording(manager)


async def _follow(request: web.Request, resp: web.StreamResponse,
                  queue: Optional[asyncio.Queue], f: filters.Filters,
                  until: Optional[float]) -> None:
    """Live events until `until`, the client's leaving, or (on an overflowing backlog) None."""
    waiter = queue if queue is not None else asyncio.Queue()
    while True:
        timeout = IDLE_CHECK
        if until is not None:
            left = until - time.time()
            if left <= 0:
                return
            timeout = min(timeout, left)
        try:
            msg = await asyncio.wait_for(waiter.get(), timeout)
        except asyncio.TimeoutError:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            continue
        if msg is None:
            return
        if include(f, msg) and (until is None or msg["timeNano"] / 1e9 <= until):
            await _send(resp, msg)


async def _send(resp: web.StreamResponse, msg: dict) -> None:
    await resp.write(json.dumps(msg).encode() + b"\n")
