"""Streamed answers (logs, an attached `container run`) check their request before they start:
bad parameters get a plain 4xx answer, never a 200 whose body carries a second HTTP response
(issue 13, defect 9). A failure after the start ends the stream with an error record."""
from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common import errors
from common.model import Service, ServiceSpec
from manager.controlapi import services as api_services
from common.httpserver import CTX, error_middleware
from manager.state.store import Transaction
from shoal import standaloneapi, workerapi
from tests.store_manager import StoreManager, api_client
from worker.executor import ContainerInfo, ExitInfo, LogLine

CID = "c0ffee" * 10 + "abcd"


class FakeExecutor:
    """One container with two log lines; `vanish` makes it go once a stream has begun."""

    def __init__(self, vanish: bool = False, no_log: bool = False) -> None:
        self.vanish = vanish
        self.no_log = no_log      # as the `none` log driver: nothing kept to read
        self.asked: list[dict] = []

    def check_logs(self, cid) -> None:
        if self.no_log:
            raise errors.FailedPrecondition("configured logging driver does not support reading")

    def list(self) -> list[ContainerInfo]:
        return [ContainerInfo(id=CID, labels={"shoal.task.name": "web.1"}, state="running", pid=1)]

    async def logs(self, cid, tail=None, follow=False, timestamps=True, run=None, window=None):
        self.asked.append({"cid": cid, "tail": tail, "follow": follow})
        if self.vanish:
            raise errors.NotFound(f"no such container: {cid}")
        for i, line in enumerate(["one", "two"][-tail if tail else 0:]):
            yield LogLine(ts=1.0 + i, stream="stdout", line=line)

    async def wait(self, cid, run=None) -> ExitInfo:
        await asyncio.sleep(3600)


async def _client(app: web.Application) -> TestClient:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def _node_api(executor: FakeExecutor) -> TestClient:
    app = web.Application(middlewares=[error_middleware])
    app[CTX] = SimpleNamespace(executor=executor, agent=None)
    app.add_routes(workerapi.local_routes())
    return await _client(app)


async def _plain_refusal(resp, field: str) -> None:
    """A 400 of its own, with the JSON error body (not a 200 stream with an answer inside)."""
    text = await resp.text()
    assert resp.status == 400, (resp.status, text)
    assert resp.content_type == "application/json"
    body = json.loads(text)
    assert body["code"] == "invalid_argument" and body["field"] == field, body


def test_container_logs_check_tail_and_follow_before_streaming():
    async def main():
        ex = FakeExecutor()
        client = await _node_api(ex)
        try:
            for query, field in [("tail=-1", "tail"), ("tail=%C2%B2", "tail"), ("tail=1e3", "tail"),
                                 ("follow=maybe", "follow")]:
                async with client.get(f"/containers/{CID}/logs?{query}") as resp:
                    await _plain_refusal(resp, field)
            assert ex.asked == []  # refused before anything was read
            async with client.get("/containers/web.1/logs?tail=1&follow=false") as resp:
                assert resp.status == 200
                assert [json.loads(x)["l"] for x in (await resp.text()).splitlines()] == ["two"]
        finally:
            await client.close()
    asyncio.run(main())


def test_task_logs_check_tail_before_streaming():
    async def main():
        client = await _node_api(FakeExecutor())
        try:
            # '²' is a digit to str.isdigit but not to int(): once a 500 from inside the handler
            for query in ["tail=%C2%B2", "tail=-1", "tail=99999999999999999999"]:
                async with client.get(f"/worker/logs?task={CID}&{query}") as resp:
                    await _plain_refusal(resp, "tail")
            async with client.get(f"/worker/logs?task={CID}&follow=perhaps") as resp:
                await _plain_refusal(resp, "follow")
        finally:
            await client.close()
    asyncio.run(main())


def test_logs_of_a_container_that_keeps_none_are_refused_before_streaming():
    """The `none` log driver: Docker's answer, as a plain 412, for a container's and a task's
    logs alike (a service's logs were once silently empty)."""
    async def main():
        ex = FakeExecutor(no_log=True)
        client = await _node_api(ex)
        try:
            for path in (f"/containers/{CID}/logs", f"/worker/logs?task={CID}"):
                async with client.get(path) as resp:
                    body = await resp.json()
                assert resp.status == 412, body
                assert "does not support reading" in body["message"]
            assert ex.asked == []
        finally:
            await client.close()
    asyncio.run(main())


def test_a_failure_after_the_stream_began_is_its_last_record():
    async def main():
        client = await _node_api(FakeExecutor(vanish=True))
        try:
            async with client.get(f"/containers/{CID}/logs") as resp:
                text = await resp.text()
            assert resp.status == 200
            assert "HTTP/1.1" not in text  # no second response inside the first
            records = [json.loads(x) for x in text.splitlines()]
            assert records == [{"error": f"no such container: {CID}", "code": "not_found"}]
        finally:
            await client.close()
    asyncio.run(main())


def test_service_logs_check_tail_and_follow_before_streaming():
    async def main():
        m = StoreManager()
        m.commit(Transaction().create("services", Service(id="svc-web", spec=ServiceSpec(name="web"))))
        client = await api_client(m, api_services.routes())
        try:
            for query, field in [("tail=-1", "tail"), ("tail=x", "tail"), ("follow=maybe", "follow"),
                                 ("follow=1&tail=%C2%B2", "tail")]:
                async with client.get(f"/services/web/logs?{query}") as resp:
                    await _plain_refusal(resp, field)
            async with client.get("/services/web/logs?tail=5&follow=false") as resp:
                assert resp.status == 200 and await resp.text() == ""  # no task ran: no line
        finally:
            await client.close()
    asyncio.run(main())


class FakeAgent:
    """A node whose managers accept the container and whose runner has it running at once."""

    def __init__(self, executor: FakeExecutor) -> None:
        self.runner = SimpleNamespace(executor=executor, controllers={})
        self.removed: list[str] = []

    async def request_managers(self, method, path, body=None):
        if method == "DELETE":
            self.removed.append(path)
            return {}
        self.runner.controllers[CID] = SimpleNamespace(state="running", ended=False, message="")
        return {"id": CID, "name": body.get("name") or "c1"}


async def _standalone_api(agent: FakeAgent) -> TestClient:
    app = web.Application(middlewares=[error_middleware])
    app[CTX] = SimpleNamespace(agent=agent)
    app.add_routes(standaloneapi.routes())
    return await _client(app)


def test_attached_run_checks_attach_and_ends_a_failed_stream_with_an_error_record():
    async def main():
        agent = FakeAgent(FakeExecutor(vanish=True))
        client = await _standalone_api(agent)
        try:
            async with client.post("/containers/run", json={"container": {"image": "busybox:1"}, "attach": "yes"}) as resp:
                await _plain_refusal(resp, "attach")
            assert agent.runner.controllers == {}  # refused before the managers were asked
            async with client.post("/containers/run", json={"container": {"image": "busybox:1"}, "attach": True}) as resp:
                text = await resp.text()
            assert resp.status == 200 and "HTTP/1.1" not in text
            records = [json.loads(x) for x in text.splitlines()]
            assert records[0]["id"] == CID
            assert records[-1]["code"] == "not_found" and "no such container" in records[-1]["error"]
        finally:
            await client.close()
    asyncio.run(main())
