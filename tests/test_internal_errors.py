"""A bug answers "internal error (id ...)": the exception's name and text, which can carry paths,
values and internals, go to the daemon's log only, under that id (issue 13, defect 7)."""
from __future__ import annotations

import asyncio
import logging
import re

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common.httpserver import error_middleware


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret detail /var/lib/shoal/raft")


def test_a_bug_answers_an_id_and_logs_the_details_under_it(caplog):
    async def main() -> tuple[int, dict]:
        app = web.Application(middlewares=[error_middleware])
        app.add_routes([web.post("/services/create", _boom)])
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            async with client.post("/services/create", json={}) as resp:
                return resp.status, await resp.json()
        finally:
            await client.close()
    with caplog.at_level(logging.ERROR, logger="shoal.api"):
        status, body = asyncio.run(main())
    assert status == 500 and body["code"] == "internal"
    match = re.fullmatch(r"internal error \(id ([0-9a-f]{8})\): see the daemon's log", body["message"])
    assert match, body
    assert "RuntimeError" not in str(body) and "secret detail" not in str(body)
    incident = match.group(1)
    [record] = [r for r in caplog.records if incident in r.getMessage()]
    assert "POST /services/create" in record.getMessage()
    assert "secret detail /var/lib/shoal/raft" in caplog.text   # the traceback, in the log only


def test_each_incident_has_its_own_id():
    async def main() -> set[str]:
        app = web.Application(middlewares=[error_middleware])
        app.add_routes([web.get("/x", _boom)])
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            ids = set()
            for _ in range(5):
                async with client.get("/x") as resp:
                    ids.add((await resp.json())["message"])
            return ids
        finally:
            await client.close()
    assert len(asyncio.run(main())) == 5
