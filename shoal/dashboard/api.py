"""POST /dashboard on the node's local socket: what `shoal dashboard` asks for.

The answer is a stream: first {"url": ...} with a fresh one-time token, then nothing until
the client goes. The listener lives while at least one such request is open, so it goes away
when the last `shoal dashboard` ends, however it ends (Ctrl-C, kill, a lost terminal), and
with the daemon (stop(), from Daemon.shutdown).
"""
from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Optional

from aiohttp import web

from common import errors, httpstreams as streams
from common.httpserver import CTX, body_json, field
from shoal.dashboard.server import Dashboard
from shoal.dashboard.source import LocalSource

log = logging.getLogger("shoal.dashboard")

DEFAULT_PORT = 8090
# How often an open request checks that its client is still there.
IDLE_CHECK = 1.0


class _Slot:
    """A daemon's dashboard, if any, and how many open requests hold it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.dashboard: Optional[Dashboard] = None
        self.holders = 0


# Per daemon object (the tests run several daemons in one process); gone with the daemon.
_slots: "weakref.WeakKeyDictionary[Any, _Slot]" = weakref.WeakKeyDictionary()


def _slot(daemon) -> _Slot:
    slot = _slots.get(daemon)
    if slot is None:
        slot = _slots[daemon] = _Slot()
    return slot


async def _acquire(daemon, port: int) -> Dashboard:
    slot = _slot(daemon)
    async with slot.lock:
        current = slot.dashboard
        if current is not None and current.port != port:
            raise errors.Conflict(f"a dashboard already serves on 127.0.0.1:{current.port}: "
                                  f"use --port {current.port}, or stop the `shoal dashboard` "
                                  "that started it")
        if current is None:
            current = Dashboard(LocalSource(daemon.socket_path), port)
            try:
                await current.start()
            except BaseException:
                await current.source.close()
                raise
            slot.dashboard = current
            log.info("dashboard serving on 127.0.0.1:%d", port)
        slot.holders += 1
        return current


async def _release(daemon) -> None:
    slot = _slot(daemon)
    async with slot.lock:
        slot.holders = max(0, slot.holders - 1)
        if slot.holders <= 0 and slot.dashboard is not None:
            dashboard, slot.dashboard, slot.holders = slot.dashboard, None, 0
            await dashboard.stop()
            log.info("dashboard on 127.0.0.1:%d stopped", dashboard.port)


async def stop(daemon) -> None:
    """The daemon is stopping: so does its dashboard, whoever holds it."""
    slot = _slots.get(daemon)
    if slot is None:
        return
    async with slot.lock:
        dashboard, slot.dashboard, slot.holders = slot.dashboard, None, 0
    if dashboard is not None:
        await dashboard.stop()


def serving(daemon) -> Optional[Dashboard]:
    slot = _slots.get(daemon)
    return slot.dashboard if slot is not None else None


async def dashboard_open(request: web.Request) -> web.StreamResponse:
    daemon = request.app[CTX]
    data = await body_json(request, required=False)
    port = field(data, "port", int, required=False)
    port = DEFAULT_PORT if port is None else port
    if not 0 <= port < 65536:  # 0: any free port (the answer says which)
        raise errors.InvalidArgument(f"port {port} is not a TCP port (1-65535)", field="port")
    if daemon.manager is None:
        raise errors.NotAManager("the dashboard is served by a manager: run `shoal dashboard` "
                                 "on a manager node")
    dashboard = await _acquire(daemon, port)
    resp = None
    try:
        resp = await streams.start_ndjson(request)
        await streams.write_record(resp, {"url": dashboard.url(dashboard.gate.mint_token()),
                                          "port": dashboard.port})
        while not daemon.stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            await asyncio.sleep(IDLE_CHECK)
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        await _release(daemon)
    return resp if resp is not None else web.Response(status=204)


dashboard_open.local_only = True  # type: ignore[attr-defined]  # serves on this node itself


def routes() -> list[web.RouteDef]:
    return [web.post("/dashboard", dashboard_open)]
