"""The CLI quotes every path segment it builds from what the user typed, and sends queries as
parameters only (issue 13, defect 10): `shoal service rm 'web2?'` asks for service `web2?`, not
`web2`; `shoal node rm 'worker1?force=true&'` does not become a forced removal. The daemons'
client forwards a quoted path as it was sent."""
from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from common.httpclient import ApiClient, Endpoint
from common.unixhttp import UnixClient
from shoal.cli import main


class Recorder:
    """A daemon stand-in on a Unix socket: records what each request reached it as."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict, dict]] = []
        self.info: dict = {}

    async def record(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.match_info.route.resource.canonical,
                          dict(request.match_info), dict(request.query)))
        if request.path.endswith("/logs"):
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)
            await resp.write(json.dumps({"error": "gone mid-stream", "code": "not_found"}).encode() + b"\n")
            return resp
        return web.json_response({"id": request.match_info.get("ref", ""), "ref": "", "name": ""})

    async def get_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.info)

    def routes(self) -> list[web.RouteDef]:
        r = self.record
        return [web.get("/info", self.get_info),
                web.delete("/services/{ref}", r), web.get("/services/{ref}", r),
                web.get("/services/{ref}/logs", r), web.delete("/nodes/{ref}", r),
                web.get("/containers/{ref}/logs", r), web.delete("/containers/{ref}", r),
                web.delete("/images/{ref:.+}", r), web.delete("/secrets/{ref}", r)]


def _run_cli(args: list[str], recorder: Recorder | None = None):
    """`shoal ARGS` against the recorder on a temporary socket; returns (result, recorder)."""
    recorder = recorder or Recorder()

    async def main_() -> object:
        app = web.Application()
        app.add_routes(recorder.routes())
        runner = web.AppRunner(app)
        await runner.setup()
        with tempfile.TemporaryDirectory() as tmp:
            sock = str(Path(tmp) / "shoal.sock")
            await web.UnixSite(runner, sock).start()
            try:
                # The CLI blocks (http.client): off the loop that serves it.
                return await asyncio.to_thread(CliRunner().invoke, main, ["--socket", sock, *args])
            finally:
                await runner.cleanup()
    return asyncio.run(main_()), recorder


def test_service_rm_sends_the_name_as_one_segment():
    result, rec = _run_cli(["service", "rm", "web2?", "a/b", "..", "%41"])
    assert result.exit_code == 0, result.output
    assert rec.seen == [("DELETE", "/services/{ref}", {"ref": name}, {})
                        for name in ["web2?", "a/b", "..", "%41"]]


def test_node_rm_cannot_be_forced_by_the_name():
    result, rec = _run_cli(["node", "rm", "worker1?force=true&"])
    assert result.exit_code == 0, result.output
    assert rec.seen == [("DELETE", "/nodes/{ref}", {"ref": "worker1?force=true&"}, {"force": "false"})]


def test_other_commands_quote_their_references_too():
    _, rec = _run_cli(["secret", "rm", "s#1"])
    _, rec = _run_cli(["container", "rm", "-f", "c?x=1"], rec)
    assert rec.seen == [("DELETE", "/secrets/{ref}", {"ref": "s#1"}, {}),
                        ("DELETE", "/containers/{ref}", {"ref": "c?x=1"}, {"force": "true"})]


def test_logs_send_tail_as_a_parameter_and_report_an_error_record():
    result, rec = _run_cli(["service", "logs", "--tail", "5", "web?tail=1"])
    assert rec.seen == [("GET", "/services/{ref}/logs", {"ref": "web?tail=1"},
                         {"follow": "false", "tail": "5"})]
    # the stream's error record is the command's failure, not a line to print
    assert result.exit_code == 1 and "Error: gone mid-stream" in result.output


def test_info_shows_leader_loop_failures():
    rec = Recorder()
    swarm = {"state": "active", "node_id": "n1", "is_manager": True, "cluster_id": "c1",
             "node_addr": "10.0.0.1", "connected": True, "managers": 1, "nodes": 1,
             "raft": {"term": 2, "commit_index": 9}, "leader": True, "remote_managers": [],
             "leader_loops": {"running": True, "failures": []}}
    rec.info = {"hostname": "h", "version": "0", "data_root": "/var/lib/shoal", "swarm": swarm}
    result, _ = _run_cli(["info"], rec)
    assert "Leader loops: all running" in result.output
    swarm["leader_loops"]["failures"] = [{"loop": "orchestrator", "count": 3, "last_at": 0.0,
                                          "last_error": "TypeError: boom", "restarting": False}]
    result, _ = _run_cli(["info"], rec)
    assert "orchestrator: failed 3 times, last at 1970-01-01T00:00:00Z (running again): " \
           "TypeError: boom" in result.output, result.output


def test_api_path_and_the_client_guard():
    from shoal.cli.client import api_path
    assert api_path("services", "web2?", "update") == "/services/web2%3F/update"
    assert api_path("images", "127.0.0.1:5000/busybox:1") == "/images/127.0.0.1%3A5000%2Fbusybox%3A1"
    assert api_path("nodes", "..") == "/nodes/%2E%2E"
    with pytest.raises(ValueError):  # an unquoted name with a query never leaves the CLI
        UnixClient("/nonexistent").request("DELETE", "/nodes/worker1?force=true")


def test_the_daemon_client_forwards_a_quoted_path_as_it_was_sent():
    """What a follower does with a write it forwards to the leader (request.path_qs)."""
    async def main_():
        rec = Recorder()
        app = web.Application()
        app.add_routes(rec.routes())
        runner = web.AppRunner(app)
        await runner.setup()
        with tempfile.TemporaryDirectory() as tmp:
            sock = str(Path(tmp) / "shoal.sock")
            await web.UnixSite(runner, sock).start()
            client = ApiClient(Endpoint(unix_path=sock))
            try:
                for path in ["/services/%2E%2E", "/services/web2%3F", "/nodes/w%3Fforce%3Dtrue%26?force=false"]:
                    status, _ = await client.request_raw("DELETE", path)
                    assert status == 200, path
            finally:
                await client.close()
                await runner.cleanup()
        return rec.seen
    assert asyncio.run(main_()) == [("DELETE", "/services/{ref}", {"ref": ".."}, {}),
                                    ("DELETE", "/services/{ref}", {"ref": "web2?"}, {}),
                                    ("DELETE", "/nodes/{ref}", {"ref": "w?force=true&"}, {"force": "false"})]
