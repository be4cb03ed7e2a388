"""The dashboard's HTTP listener: the page and its files, the live stream (server-sent
events), a service's logs followed, and the actions, all behind auth.Gate, on 127.0.0.1 only.

One poller reads the cluster (each second, sooner when an event says something changed) and
hands every connected page the same snapshot; one follower relays the manager's cluster
events. A page that cannot keep up is dropped (its EventSource reconnects and gets a fresh
snapshot), so one slow browser never holds the others or the daemon's memory.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Protocol

from aiohttp import web

from common import errors
from shoal.dashboard import auth, snapshot

log = logging.getLogger("shoal.dashboard")

STATIC = Path(__file__).with_name("static")
HOST = "127.0.0.1"      # never another address: the token link is the only way in
READ_INTERVAL = 1.0     # a snapshot at least this often
MIN_READ_GAP = 0.25     # and at most this often, however many events arrive
KEEPALIVE = 15.0        # an idle stream writes a comment this often, to notice a gone page
EVENTS_KEPT = 100       # the feed a new page starts with
CLIENT_QUEUE = 64       # messages a page may lag behind before it is dropped
MAX_STREAMS = 32
LOG_TAIL = 100
EVENT_RETRY = 2.0


class Source(Protocol):
    async def read(self) -> dict[str, Any]: ...
    async def scale(self, service: str, replicas: int) -> dict: ...
    async def rollback(self, service: str) -> dict: ...
    async def set_availability(self, node: str, availability: str) -> dict: ...
    async def events(self) -> AsyncIterator[dict]: ...
    async def logs(self, service: str, tail: int) -> AsyncIterator[dict]: ...
    async def close(self) -> None: ...


def _sse(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _error(exc: errors.ShoalError) -> web.Response:
    return web.json_response({"message": exc.message}, status=exc.status)


class Dashboard:
    def __init__(self, source: Source, port: int, *, read_interval: float = READ_INTERVAL) -> None:
        self.source = source
        self.port = port
        self.read_interval = read_interval
        self.gate = auth.Gate()
        self.latest: Optional[dict] = None
        self.events: deque[dict] = deque(maxlen=EVENTS_KEPT)
        self.events_live = False     # whether the manager's event stream is followed
        self._history = snapshot.History()
        self._last_read: dict[str, Any] = {}
        self._clients: set[asyncio.Queue] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._runner: Optional[web.AppRunner] = None

    # ---- lifecycle ----------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[auth.middleware(self.gate)])
        app.add_routes([
            web.get("/", self._index),
            web.get("/api/snapshot", self._snapshot),
            web.get("/api/stream", self._stream),
            web.get("/api/logs/{service}", self._logs),
            web.post("/api/services/{service}/scale", self._scale),
            web.post("/api/services/{service}/rollback", self._rollback),
            web.post("/api/nodes/{node}/availability", self._availability),
        ])
        app.router.add_static("/static/", STATIC, follow_symlinks=False)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            site = web.TCPSite(self._runner, HOST, self.port, reuse_address=True)
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise errors.FailedPrecondition(f"cannot serve the dashboard on {HOST}:{self.port}: "
                                            f"{exc.strerror}; pick another --port") from None
        if self.port == 0:  # tests: the port the kernel chose
            self.port = self._runner.addresses[0][1]
        self.start_background()

    def start_background(self) -> None:
        """Hook for tests that serve app() themselves: the poller and the event follower."""
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._poll(), name="dashboard-poll"),
                           asyncio.create_task(self._follow_events(), name="dashboard-events")]

    async def stop(self) -> None:
        self.gate.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for queue in list(self._clients):
            self._drop(queue)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.source.close()

    def url(self, token: str) -> str:
        return f"http://{HOST}:{self.port}/?token={token}"

    # ---- background ---------------------------------------------------------------------
    async def refresh(self) -> dict:
        """Read the cluster once and make the snapshot every page gets."""
        now = time.time()
        error = None
        try:
            self._last_read = await self.source.read()
            swarm = (self._last_read.get("info") or {}).get("swarm") or {}
            self._history.add(now, snapshot.running_tasks(self._last_read),
                              (swarm.get("raft") or {}).get("commit_index", 0))
        except errors.ShoalError as exc:
            # Shown on the page over the last good view (no quorum, a restarting manager).
            error = exc.message
        self.latest = snapshot.build(self._last_read, self._history.points(), now, error)
        self.latest["events_live"] = self.events_live
        self._publish("snapshot", self.latest)
        return self.latest

    async def _poll(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.refresh()
            except Exception:  # a bug here must not end the page's updates for good
                log.exception("dashboard: reading the cluster failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.read_interval)
            self._wake.clear()
            await asyncio.sleep(max(0.0, MIN_READ_GAP - (time.monotonic() - started)))

    async def _follow_events(self) -> None:
        while True:
            try:
                records = await self.source.events()
                self.events_live = True
                async for ev in records:
                    self.events.append(ev)
                    self._publish("event", ev)
                    self._wake.set()   # something changed: a fresh snapshot now
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a restarting manager, a stream cut: follow again
                log.info("dashboard: the event stream ended (%s); following again",
                         getattr(exc, "message", exc))
            self.events_live = False
            await asyncio.sleep(EVENT_RETRY)

    def _publish(self, kind: str, data: Any) -> None:
        message = _sse(kind, data)
        for queue in list(self._clients):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                self._drop(queue)

    def _drop(self, queue: asyncio.Queue) -> None:
        self._clients.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)   # ends that page's stream

    # ---- handlers -----------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _snapshot(self, request: web.Request) -> web.Response:
        return web.json_response(self.latest or await self.refresh())

    async def _start_sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**auth.SECURITY_HEADERS,
                                           "Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        return resp

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if len(self._clients) >= MAX_STREAMS:
            return web.json_response({"message": "too many dashboard pages open"}, status=503)
        queue: asyncio.Queue = asyncio.Queue(maxsize=CLIENT_QUEUE)
        self._clients.add(queue)
        resp = await self._start_sse(request)
        try:
            await resp.write(_sse("events", list(self.events)))
            await resp.write(_sse("snapshot", self.latest or await self.refresh()))
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except asyncio.TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if message is None:
                    break
                await resp.write(message)
        except (ConnectionResetError, ConnectionError):
            pass  # the page went away
        finally:
            self._clients.discard(queue)
        return resp

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        try:
            records = await self.source.logs(request.match_info["service"], LOG_TAIL)
        except errors.ShoalError as exc:
            return _error(exc)
        resp = await self._start_sse(request)
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)

        async def pump() -> None:
            try:
                async for entry in records:
                    await queue.put(entry)
            except Exception as exc:
                await queue.put({"error": getattr(exc, "message", str(exc)) or "stream ended"})
            await queue.put(None)
        pumping = asyncio.create_task(pump())
        try:
            while True:
                try:
                    entry = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except asyncio.TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if entry is None:
                    await resp.write(_sse("end", {}))
                    break
                await resp.write(_sse("log", entry))
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumping
            with contextlib.suppress(Exception):
                await records.aclose()   # type: ignore[attr-defined]
        return resp

    async def _act(self, action) -> web.Response:
        try:
            await action
        except errors.ShoalError as exc:
            return _error(exc)
        self._wake.set()
        return web.json_response({"ok": True})

    async def _body(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise errors.InvalidArgument("the body must be a JSON object")
        return body

    async def _scale(self, request: web.Request) -> web.Response:
        try:
            replicas = (await self._body(request)).get("replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise errors.InvalidArgument("replicas must be a whole number, 0 or more")
        except errors.ShoalError as exc:
            return _error(exc)
        return await self._act(self.source.scale(request.match_info["service"], replicas))

    async def _rollback(self, request: web.Request) -> web.Response:
        return await self._act(self.source.rollback(request.match_info["service"]))

    async def _availability(self, request: web.Request) -> web.Response:
        try:
            value = (await self._body(request)).get("availability")
            if value not in ("active", "drain", "pause"):
                raise errors.InvalidArgument("availability must be active, pause or drain")
        except errors.ShoalError as exc:
            return _error(exc)
        return await self._act(self.source.set_availability(request.match_info["node"], value))
