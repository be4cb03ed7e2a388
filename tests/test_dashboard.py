"""The dashboard's gate, stream, actions and snapshot (shoal/dashboard/), against a fake
cluster source; the real page in a real browser on a real lab is
integration/observability/test_4_dashboard.py.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import aiohttp
from aiohttp import web

from common import codec, errors
from common.httpserver import CTX, error_middleware
from common.model import (ManagerStatus, Node, NodeDescription, NodeSpec, NodeStatus,
                          PortConfig, Resources, Service, ServiceMode, ServiceSpec, Task,
                          TaskStatus, UpdateStatus)
from shoal.dashboard import api as dashboard_api
from shoal.dashboard import auth, snapshot
from shoal.dashboard import login as login_page
from shoal.dashboard.server import Dashboard


def plain_read() -> dict[str, Any]:
    """One read as the control API's views give it: model objects made plain, plus the fields
    the views add (replicas_status, node_hostname, name, manager_status.leader)."""
    n1 = Node(id="n1", spec=NodeSpec(availability="active"), role="manager",
              description=NodeDescription(hostname="manager1",
                                          resources=Resources(nano_cpus=2_000_000_000,
                                                              memory_bytes=1 << 30)),
              status=NodeStatus(state="ready", addr="172.31.0.11"),
              manager_status=ManagerStatus(raft_addr="172.31.0.11:2378"))
    n2 = Node(id="n2", spec=NodeSpec(availability="drain"),
              description=NodeDescription(hostname="worker1"), status=NodeStatus(state="ready"))
    nodes = [codec.to_plain(n1), codec.to_plain(n2)]
    nodes[0]["manager_status"].update(reachability="leader", leader=True)
    spec = ServiceSpec(name="web", mode=ServiceMode(mode="replicated", replicas=2))
    spec.task_template.container.image = "busybox:1@sha256:" + "ab" * 32
    spec.endpoint_spec.ports = [PortConfig(target_port=80, published_port=8080)]
    svc = Service(id="s1", spec=spec, previous_spec=ServiceSpec(name="web"),
                  update_status=UpdateStatus(state="updating", message="1 of 2"))
    services = [codec.to_plain(svc)]
    services[0]["replicas_status"] = {"running": 1, "desired": 2, "completed": 0}
    tasks = []
    for tid, slot, state, desired in (("t1", 1, "running", "running"),
                                      ("t2", 2, "preparing", "running"),
                                      ("t0", 1, "shutdown", "shutdown")):
        t = Task(id=tid, service_id="s1", service_name="web", slot=slot, node_id="n1",
                 desired_state=desired, status=TaskStatus(state=state))
        plain = codec.to_plain(t)
        plain.update(node_hostname="manager1", name=t.name)
        tasks.append(plain)
    info = {"hostname": "manager1", "swarm": {"node_id": "n1", "leader": True,
                                              "raft": {"term": 3, "commit_index": 40}}}
    return {"nodes": nodes, "services": services, "tasks": tasks, "info": info}


class FakeSource:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.event_queue: asyncio.Queue = asyncio.Queue()
        self.commit_index = 40

    async def read(self) -> dict[str, Any]:
        read = plain_read()
        self.commit_index += 5
        read["info"]["swarm"]["raft"]["commit_index"] = self.commit_index
        return read

    async def scale(self, service: str, replicas: int) -> dict:
        self.calls.append(("scale", service, replicas))
        if service == "job":
            raise errors.InvalidArgument("job: only replicated services scale")
        return {}

    async def rollback(self, service: str) -> dict:
        self.calls.append(("rollback", service))
        return {}

    async def set_availability(self, node: str, availability: str) -> dict:
        self.calls.append(("availability", node, availability))
        return {}

    async def events(self) -> AsyncIterator[dict]:
        async def gen():
            while True:
                yield await self.event_queue.get()
        return gen()

    async def logs(self, service: str, tail: int) -> AsyncIterator[dict]:
        if service != "s1":
            raise errors.NotFound(f"no such service: {service}")

        async def gen():
            yield {"t": 1.0, "s": "stdout", "l": "hello\n", "task": "web.1", "node": "manager1"}
        return gen()

    async def close(self) -> None:
        self.calls.append(("close",))


def run(body) -> Any:
    async def main():
        source = FakeSource()
        dash = Dashboard(source, 0, read_interval=0.2)
        await dash.start()
        try:
            async with aiohttp.ClientSession(
                    base_url=f"http://127.0.0.1:{dash.port}",
                    cookie_jar=aiohttp.DummyCookieJar()) as http:
                return await body(dash, source, http)
        finally:
            await dash.stop()
    return asyncio.run(asyncio.wait_for(main(), 30))


async def login(dash: Dashboard, http: aiohttp.ClientSession) -> dict:
    resp = await http.get(f"/?token={dash.gate.mint_token()}", allow_redirects=False)
    assert resp.status == 303
    return {auth.COOKIE: resp.cookies[auth.COOKIE].value}


ACTIONS = [("/api/services/s1/scale", {"replicas": 3}), ("/api/services/s1/rollback", {}),
           ("/api/nodes/n2/availability", {"availability": "active"})]
READS = ["/", "/static/app.js", "/static/style.css", "/static/index.html", "/api/snapshot",
         "/api/stream", "/api/logs/s1", "/nope"]


def test_the_token_works_once_and_becomes_an_httponly_strict_session_cookie():
    async def body(dash, source, http):
        token = dash.gate.mint_token()
        first = await http.get(f"/?token={token}", allow_redirects=False)
        assert first.status == 303 and first.headers["Location"] == "/"
        raw = first.headers["Set-Cookie"]
        assert "HttpOnly" in raw and "SameSite=Strict" in raw and "Path=/" in raw
        session = first.cookies[auth.COOKIE].value
        assert session and token not in raw
        again = await http.get(f"/?token={token}", allow_redirects=False)
        assert again.status == 401 and "already used" in await again.text()
        assert (await http.get("/?token=forged", allow_redirects=False)).status == 401
        page = await http.get("/", cookies={auth.COOKIE: session})
        assert page.status == 200 and "<table id=\"nodes\">" in await page.text()
        assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    run(body)


def test_a_token_expires_unused():
    gate = auth.Gate(token_ttl=-1)
    assert gate.redeem(gate.mint_token()) is None


def test_nothing_answers_without_a_session():
    async def body(dash, source, http):
        for cookies in ({}, {auth.COOKIE: "guessed"}):
            for path in READS:
                resp = await http.get(path, cookies=cookies)
                assert resp.status == 401, path
            for path, payload in ACTIONS:
                resp = await http.post(path, json=payload, cookies=cookies,
                                       headers={auth.CSRF_HEADER: "1"})
                assert resp.status == 401, path
        assert source.calls == []
    run(body)


# What the fake cluster's snapshot holds: none of it may be in an answer without a session.
CLUSTER_WORDS = ("manager1", "worker1", "web", "172.31.0.11", "busybox", "n1", "s1")


def no_cluster_data(text: str) -> bool:
    return not any(word in text for word in CLUSTER_WORDS)


def test_a_browser_without_a_session_gets_the_login_page_and_nothing_else():
    async def body(dash, source, http):
        await dash.refresh()   # the snapshot exists: the page must still not show it
        navigations = [("/", {}), ("/", {"Accept": "text/html"}),
                       ("/static/index.html", {"Accept": "text/html,*/*;q=0.8"}),
                       ("/nope", {"Sec-Fetch-Dest": "document"})]
        for cookies in ({}, {auth.COOKIE: "guessed"}):
            for path, headers in navigations:
                resp = await http.get(path, cookies=cookies, headers=headers)
                text = await resp.text()
                assert resp.status == 401, path
                assert resp.content_type == "text/html", path
                assert '<form id="login" method="get" action="/">' in text
                assert 'name="token"' in text and no_cluster_data(text), path
                csp = resp.headers["Content-Security-Policy"]
                assert "form-action 'self'" in csp and "default-src 'none'" in csp
                assert "script-src" not in csp and "unsafe-inline" not in csp
                assert resp.headers["X-Frame-Options"] == "DENY"
                assert auth.COOKIE not in resp.cookies
            # the stream, the API and the page's files: a line of text, no page, no data
            for path in ("/api/snapshot", "/api/stream", "/api/logs/s1", "/static/app.js"):
                resp = await http.get(path, cookies=cookies,
                                      headers={"Accept": "text/html" if path == "/api/snapshot"
                                               else "*/*"})
                text = await resp.text()
                assert resp.status == 401 and resp.content_type == "text/plain", path
                assert "<form" not in text and no_cluster_data(text), path
        assert source.calls == []
    run(body)


def test_the_login_pages_one_inline_style_is_the_one_its_csp_allows():
    import base64
    import hashlib
    import re
    resp = login_page.page()
    [style] = re.findall(r"<style>(.*?)</style>", resp.text, re.S)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in resp.headers["Content-Security-Policy"]
    assert "<script" not in resp.text and resp.status == 401


def test_the_login_form_takes_the_token_or_the_whole_link_once():
    async def body(dash, source, http):
        token = dash.gate.mint_token()
        # what the form sends when the printed link is pasted whole
        resp = await http.get("/", params={"token": f" {dash.url(token)} "},
                              allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/"
        session = resp.cookies[auth.COOKIE].value
        page = await http.get("/", cookies={auth.COOKIE: session})
        assert page.status == 200 and '<table id="nodes">' in await page.text()
        # used up: the form again, saying why, still without data
        again = await http.get("/", params={"token": token}, allow_redirects=False)
        text = await again.text()
        assert again.status == 401 and 'id="why"' in text and "already used" in text
        assert '<form id="login"' in text and no_cluster_data(text)
        assert auth.COOKIE not in again.cookies
    run(body)


def test_actions_need_the_csrf_header():
    async def body(dash, source, http):
        cookies = await login(dash, http)
        for path, payload in ACTIONS:
            resp = await http.post(path, json=payload, cookies=cookies)
            assert resp.status == 403, path
            resp = await http.post(path, json=payload, cookies=cookies,
                                   headers={auth.CSRF_HEADER: "0"})
            assert resp.status == 403, path
        assert source.calls == []
        for path, payload in ACTIONS:
            resp = await http.post(path, json=payload, cookies=cookies,
                                   headers={auth.CSRF_HEADER: "1"})
            assert resp.status == 200 and await resp.json() == {"ok": True}, path
        assert source.calls == [("scale", "s1", 3), ("rollback", "s1"),
                                ("availability", "n2", "active")]
    run(body)


def test_actions_check_their_input_and_pass_refusals_on():
    async def body(dash, source, http):
        cookies = await login(dash, http)
        hdrs = {auth.CSRF_HEADER: "1"}
        for payload in ({"replicas": -1}, {"replicas": "3"}, {"replicas": True}, {}):
            resp = await http.post("/api/services/s1/scale", json=payload, cookies=cookies,
                                   headers=hdrs)
            assert resp.status == 400, payload
        resp = await http.post("/api/nodes/n1/availability", json={"availability": "gone"},
                               cookies=cookies, headers=hdrs)
        assert resp.status == 400
        resp = await http.post("/api/services/job/scale", json={"replicas": 2},
                               cookies=cookies, headers=hdrs)
        assert resp.status == 400 and "only replicated" in (await resp.json())["message"]
        assert source.calls == [("scale", "job", 2)]
    run(body)


async def sse_messages(resp: aiohttp.ClientResponse, count: int) -> list[tuple[str, Any]]:
    out, kind = [], None
    while len(out) < count:
        line = (await resp.content.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            out.append((kind, json.loads(line[6:])))
    return out


def test_the_stream_sends_snapshots_and_events_live():
    async def body(dash, source, http):
        cookies = await login(dash, http)
        resp = await http.get("/api/stream", cookies=cookies)
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        (k1, backlog), (k2, snap) = await sse_messages(resp, 2)
        assert (k1, k2) == ("events", "snapshot") and backlog == []
        assert [n["hostname"] for n in snap["nodes"]] == ["manager1", "worker1"]
        await source.event_queue.put({"type": "service", "action": "update", "id": "s1",
                                      "name": "web", "time": 1.0, "index": 50})
        for kind, data in await sse_messages(resp, 5):
            if kind == "event":
                assert data["name"] == "web"
                break
        else:
            raise AssertionError("no event relayed")
        # A page that connects later starts with the events so far.
        later = await http.get("/api/stream", cookies=cookies)
        (kind, backlog), _ = await sse_messages(later, 2)
        assert kind == "events" and [e["name"] for e in backlog] == ["web"]
        later.close()
        resp.close()
    run(body)


def test_logs_are_followed_as_server_sent_events():
    async def body(dash, source, http):
        cookies = await login(dash, http)
        assert (await http.get("/api/logs/missing", cookies=cookies)).status == 404
        resp = await http.get("/api/logs/s1", cookies=cookies)
        (kind, entry), (end, _) = await sse_messages(resp, 2)
        assert kind == "log" and entry["l"] == "hello\n" and end == "end"
    run(body)


def test_snapshot_shape():
    history = snapshot.History()
    history.add(100.0, 1, 40)
    history.add(102.0, 1, 50)
    snap = snapshot.build(plain_read(), history.points(), 102.0)
    assert set(snap) == {"time", "error", "manager", "nodes", "services", "tasks", "history"}
    assert snap["manager"] == {"hostname": "manager1", "node_id": "n1", "is_leader": True,
                               "term": 3, "commit_index": 40}
    m1, w1 = snap["nodes"]
    assert m1 == {"id": "n1", "hostname": "manager1", "role": "manager", "status": "ready",
                  "availability": "active", "addr": "172.31.0.11", "leader": True,
                  "reachability": "leader", "cpus": 2.0, "memory_bytes": 1 << 30,
                  "engine_version": "", "tasks_running": 1}
    assert (w1["role"], w1["availability"], w1["leader"], w1["tasks_running"]) == \
        ("worker", "drain", False, 0)
    assert snap["services"] == [{
        "id": "s1", "name": "web", "mode": "replicated", "replicas_desired": 2,
        "replicas_running": 1, "image": "busybox:1", "digest": "sha256:" + "ab" * 32,
        "ports": ["8080:80/tcp"], "update": {"state": "updating", "message": "1 of 2"},
        "can_rollback": True}]
    # Tasks meant to run (and so by node); the shut down one is history, not shown.
    assert [(t["name"], t["node"], t["state"]) for t in snap["tasks"]] == \
        [("web.1.t1", "manager1", "running"), ("web.2.t2", "manager1", "preparing")]
    assert snap["history"] == [{"t": 100.0, "running": 1, "commit_rate": 0.0},
                               {"t": 102.0, "running": 1, "commit_rate": 5.0}]
    json.dumps(snap)


def test_a_failed_read_keeps_the_last_view_and_says_why():
    class Failing(FakeSource):
        fail = False

        async def read(self):
            if self.fail:
                raise errors.Unavailable("no quorum")
            return await super().read()

    async def main():
        source = Failing()
        dash = Dashboard(source, 0)
        first = await dash.refresh()
        source.fail = True
        second = await dash.refresh()
        assert first["error"] is None and second["error"] == "no quorum"
        assert second["nodes"] == first["nodes"]
    asyncio.run(main())


# ---- POST /dashboard on the local socket: the listener lives while a request holds it ----
class FakeDaemon:
    def __init__(self, manager: object | None) -> None:
        self.manager = manager
        self.socket_path = "/nonexistent/shoal.sock"
        self.stopping = asyncio.Event()


def test_post_dashboard_serves_while_the_request_is_open():
    async def main():
        daemon = FakeDaemon(manager=object())
        app = web.Application(middlewares=[error_middleware])
        app[CTX] = daemon
        app.add_routes(dashboard_api.routes())
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        local = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
                held = await http.post(local + "/dashboard", json={"port": 0})
                record = json.loads(await held.content.readline())
                url = record["url"]
                assert url.startswith("http://127.0.0.1:") and "?token=" in url
                dash = dashboard_api.serving(daemon)
                assert dash is not None and record["port"] == dash.port
                login = await http.get(url, allow_redirects=False)
                assert login.status == 303
                # A second request on another port is refused while this one serves.
                other = await http.post(local + "/dashboard", json={"port": dash.port + 1})
                assert other.status == 409
                held.close()   # the CLI went away: so does the listener
                for _ in range(150):   # noticed within a second; a busy machine is slower
                    if dashboard_api.serving(daemon) is None:
                        break
                    await asyncio.sleep(0.1)
                assert dashboard_api.serving(daemon) is None
                # A fresh connection: a pooled one from the login would fail differently.
                async with aiohttp.ClientSession() as fresh:
                    try:
                        await fresh.get(url, allow_redirects=False)
                    except aiohttp.ClientConnectorError:
                        pass
                    else:
                        raise AssertionError("the dashboard still answers after its CLI went")
        finally:
            await dashboard_api.stop(daemon)
            await runner.cleanup()
    asyncio.run(asyncio.wait_for(main(), 30))


def test_post_dashboard_needs_a_manager():
    async def main():
        app = web.Application(middlewares=[error_middleware])
        app[CTX] = FakeDaemon(manager=None)
        app.add_routes(dashboard_api.routes())
        from aiohttp.test_utils import TestClient, TestServer
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/dashboard", json={"port": 8090})
            assert resp.status == 503 and "manager" in (await resp.json())["message"]
    asyncio.run(main())
