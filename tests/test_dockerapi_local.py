"""The node-local endpoints and the event stream of the Docker Engine API socket: a node's
containers (/containers/json, /containers/{id}/json) from a real executor's on-disk state, its
images (/images/json, /images/{name}/json) from a real image store, /distribution against
Debian's docker-registry, and /events from a real store and WatchHub. Junk queries are
generated (Hypothesis) and must get a 400 naming the parameter, never a 500."""
from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import codec, linux
from common.fsutil import write_json
from common.model import (Mount, NetworkAttachment, Secret, SecretSpec, Service, ServiceMode,
                          ServiceSpec, Task, TaskStatus)
from manager.state.store import Transaction
from manager.state.watch import WatchHub
from shoal.dockerapi import events as events_api
from shoal.dockerapi.translate import containers as to_docker
from tests import imagebuild as ib
from tests.dockerapi_harness import DockerTestManager, FakeDaemon, docker_client, populate


# ---- a node: a real image store, and an executor over containers' state files --------------
@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    if not ib.busybox_available():
        pytest.skip("busybox-static is not installed")
    base = tmp_path_factory.mktemp("img")
    return ib.busybox_store(base, {"busybox:tools": {"Labels": {"team": "infra"},
                                                     "Env": ["FROM_IMAGE=1", "PATH=/bin"]}},
                            config_overrides={"Cmd": ["sh"], "Env": ["PATH=/bin"]})


@dataclass
class _Runner:
    networks: Any = None


@dataclass
class _Controller:
    """Stands in for the agent's TaskController (worker/taskrunner.py), which would drive the
    task with runc: the Docker API only reads its task, state and restarting flag."""
    task: Task
    state: str = "running"
    restarting: bool = False
    message: str = ""
    runner: _Runner = field(default_factory=_Runner)


class _Views:
    def __init__(self, views: dict) -> None:
        self.views = views


class _AgentRunner:
    def __init__(self, controllers: dict) -> None:
        self.controllers = controllers


class _Agent:
    def __init__(self, controllers: dict) -> None:
        self.runner = _AgentRunner(controllers)


def _write_container(root: Path, cid: str, config: dict, image_id: str, *, running: bool,
                     exit_code: Optional[int] = None, created: float = 0.0) -> None:
    """A container's state files as the executor writes them (worker/executor/container.py)."""
    d = root / "containers" / cid
    d.mkdir(parents=True)
    write_json(d / "shoal.json", {"config": config, "image_id": image_id,
                                  "created": created or time.time() - 120,
                                  "cgroup": f"/x{cid}", "stop_signal": "SIGTERM"})
    pid = os.getpid() if running else 0
    write_json(d / "state.json", {"pid": pid, "pid_start": linux.pid_start_time(pid) or 0
                                  if running else 0, "started": True})
    if exit_code is not None:
        write_json(d / "exit.json", {"exit_code": exit_code, "oom_killed": False, "message": ""})


def _config(cid: str, name: str, service: str, image: str, **more) -> dict:
    cfg = {"id": cid, "name": name, "image": image, "command": [], "args": ["sleep", "1000"],
           "env": ["APP=1", "PATH=/usr/bin"], "workdir": "", "user": "", "hostname": cid[:12],
           "labels": {"tier": "front", "shoal.task.id": cid, "shoal.service.id": "svcweb1",
                      "shoal.service.name": service, "shoal.task.name": name,
                      "shoal.node.hostname": "m1", "shoal.image": image},
           "mounts": [], "memory_limit": 64 << 20, "nano_cpus": 500_000_000, "pids_limit": 0,
           "stop_signal": "SIGTERM", "stop_grace": 10.0, "netns_path": None,
           "host_network": False, "extra_binds": [["/run/shoal-secrets/x", "/run/secrets/db",
                                                   True]],
           "tty": False, "open_stdin": False, "init": False, "read_only": False,
           "cap_add": [], "cap_drop": [], "sysctls": {}, "ulimits": [], "groups": [],
           "hosts": [], "dns": None, "log_driver": None}
    cfg.update(more)
    return cfg


@pytest.fixture
def node(tmp_path, store_root):
    """A daemon whose executor holds a running task container of web, an exited one, and a
    standalone container; their tasks as the agent knows them."""
    from worker.executor import Executor
    from worker.images import ImageStore
    images = ImageStore(store_root)
    image = images.require("busybox:1")
    exroot = tmp_path / "executor"
    web1 = Task(id="task1aaaaaaaaaaaaaaaaaaaaa", service_id="svcweb1", service_name="web",
                slot=1, node_id="n1",
                status=TaskStatus(state="running", timestamp=time.time() - 60, health="healthy"),
                networks=[NetworkAttachment(network_id="net1", address="10.0.1.2/24",
                                            mac="02:42:0a:00:01:02")])
    web0 = Task(id="task0bbbbbbbbbbbbbbbbbbbbb", service_id="svcweb1", service_name="web",
                slot=2, node_id="n1", desired_state="shutdown",
                status=TaskStatus(state="failed", timestamp=time.time() - 30, exit_code=3))
    solo = Task(id="solocccccccccccccccccccccc", container_name="tool", node_id="n1",
                status=TaskStatus(state="running"))
    _write_container(exroot, web1.id, _config(web1.id, web1.name, "web", "busybox:1",
                                             mounts=[codec.to_plain(Mount(
                                                 type="volume", source="data",
                                                 target="/data"))]),
                     image.id, running=True, created=time.time() - 100)
    _write_container(exroot, web0.id, _config(web0.id, web0.name, "web", "busybox:1"),
                     image.id, running=False, exit_code=3, created=time.time() - 200)
    solo_cfg = _config(solo.id, "tool", "", "busybox:tools", labels={"shoal.task.name": "tool",
                                                                    "role": "debug"},
                       args=[], command=["/bin/sh", "-c", "echo hi there"])
    _write_container(exroot, solo.id, solo_cfg, images.require("busybox:tools").id,
                     running=True, created=time.time() - 50)
    executor = Executor(exroot, images)
    daemon = FakeDaemon(None)
    daemon.images, daemon.executor = images, executor
    controllers = {t.id: _Controller(t, state=t.status.state) for t in (web1, web0, solo)}
    controllers[web1.id].runner.networks = _Views({"net1": {"name": "backend"}})
    daemon.agent = _Agent(controllers)
    return daemon


async def _calls(daemon, calls: list[tuple[str, str]]) -> list[tuple[int, Any]]:
    client = await docker_client(daemon)
    out = []
    try:
        for method, path in calls:
            resp = await client.request(method, path)
            raw = await resp.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode()
            out.append((resp.status, body))
    finally:
        await client.close()
    return out


def get(daemon, *paths: str) -> list[tuple[int, Any]]:
    return asyncio.run(_calls(daemon, [("GET", p) for p in paths]))


def _q(filters: dict) -> str:
    from urllib.parse import quote
    return quote(json.dumps(filters))


# ---- containers ------------------------------------------------------------------------------
def test_docker_ps_lists_running_task_containers_as_docker_shows_swarm_tasks(node):
    [(status, listed)] = get(node, "/v1.44/containers/json")
    assert status == 200
    assert {c["Names"][0] for c in listed} == {"/web.1.task1aaaaaaaaaaaaaaaaaaaaa", "/tool"}
    web = next(c for c in listed if c["Names"][0].startswith("/web"))
    assert web["Id"] == "task1aaaaaaaaaaaaaaaaaaaaa"
    assert web["Image"] == "busybox:1" and web["ImageID"].startswith("sha256:")
    assert web["State"] == "running" and web["Status"].startswith("Up ")
    assert web["Status"].endswith("(healthy)")
    assert web["Command"] == "sleep 1000"
    assert abs(web["Created"] - (time.time() - 100)) < 5
    assert web["Labels"] == {
        "tier": "front", "com.docker.swarm.node.id": "n1",
        "com.docker.swarm.service.id": "svcweb1", "com.docker.swarm.service.name": "web",
        "com.docker.swarm.task": "", "com.docker.swarm.task.id": "task1aaaaaaaaaaaaaaaaaaaaa",
        "com.docker.swarm.task.name": "web.1.task1aaaaaaaaaaaaaaaaaaaaa"}
    assert web["NetworkSettings"]["Networks"]["backend"]["IPAddress"] == "10.0.1.2"
    assert web["NetworkSettings"]["Networks"]["backend"]["IPPrefixLen"] == 24
    assert web["NetworkSettings"]["Networks"]["backend"]["NetworkID"] == "net1"
    assert web["Mounts"] == [{"Type": "volume", "Name": "data", "Source": "data",
                              "Destination": "/data", "Driver": "local", "Mode": "z",
                              "RW": True, "Propagation": ""}]
    tool = next(c for c in listed if c["Names"] == ["/tool"])
    assert not any(k.startswith("com.docker.swarm") for k in tool["Labels"])
    assert tool["Labels"] == {"role": "debug"}
    assert tool["Command"] == "/bin/sh -c 'echo hi there'"


def test_docker_ps_all_and_filters(node):
    svc = _q({"label": {"com.docker.swarm.service.name=web": True}})
    results = get(node, "/containers/json?all=1",
                  f"/containers/json?all=1&filters={svc}",
                  f"/containers/json?filters={_q({'status': ['exited']})}",
                  f"/containers/json?all=1&filters={_q({'name': ['tool']})}",
                  f"/containers/json?all=1&filters={_q({'id': ['task0']})}",
                  f"/containers/json?all=true&filters={_q({'exited': ['3']})}",
                  f"/containers/json?all=true&filters={_q({'is-task': ['false']})}",
                  f"/containers/json?all=true&filters={_q({'network': ['backend']})}",
                  "/containers/json?limit=1")
    names = [sorted(c["Names"][0].split(".")[0] + "." + c["State"] for c in body)
             for _, body in results]
    assert all(s == 200 for s, _ in results)
    assert names[0] == ["/tool.running", "/web.exited", "/web.running"]
    assert names[1] == ["/web.exited", "/web.running"]
    assert names[2] == ["/web.exited"]           # a status filter lists stopped ones too
    assert names[3] == ["/tool.running"]
    assert names[4] == ["/web.exited"]
    assert names[5] == ["/web.exited"]
    assert names[6] == ["/tool.running"]
    assert names[7] == ["/web.running"]
    assert names[8] == ["/tool.running"]         # newest first
    exited = results[2][1][0]
    assert exited["Status"].startswith("Exited (3) ") and exited["Status"].endswith(" ago")


def test_container_inspect_by_id_name_and_prefix(node):
    results = get(node, "/containers/task1aaaaaaaaaaaaaaaaaaaaa/json",
                  "/containers/web.1.task1aaaaaaaaaaaaaaaaaaaaa/json",
                  "/v1.41/containers/task1a/json", "/containers/tool/json",
                  "/containers/nope/json", "/containers/task/json",
                  "/containers/task0bbbbbbbbbbbbbbbbbbbbb/json")
    (s1, a), (s2, b), (s3, c), (s4, tool), (s5, missing), (s6, ambiguous), (s7, dead) = results
    assert (s1, s2, s3, s4) == (200, 200, 200, 200)
    assert a == b == c
    assert a["Id"] == "task1aaaaaaaaaaaaaaaaaaaaa"
    assert a["Name"] == "/web.1.task1aaaaaaaaaaaaaaaaaaaaa"
    state = a["State"]
    assert state["Status"] == "running" and state["Running"] and state["Pid"] == os.getpid()
    assert state["StartedAt"] != "0001-01-01T00:00:00Z"
    assert state["Health"]["Status"] == "healthy"
    cfg = a["Config"]
    assert cfg["Image"] == "busybox:1" and cfg["Cmd"] == ["sleep", "1000"]
    assert cfg["Env"] == ["PATH=/usr/bin", "APP=1"]      # the image's, overridden by the task's
    assert cfg["Labels"]["com.docker.swarm.service.name"] == "web"
    assert not any("secret" in e.lower() for e in cfg["Env"])
    assert a["HostConfig"]["Memory"] == 64 << 20 and a["HostConfig"]["NanoCpus"] == 500_000_000
    assert a["NetworkSettings"]["Networks"]["backend"]["MacAddress"] == "02:42:0a:00:01:02"
    assert a["Mounts"][0]["Destination"] == "/data"
    # the secret's bind stays out of sight
    assert "/run/secrets/db" not in json.dumps(a)
    assert tool["Config"]["Entrypoint"] == ["/bin/sh", "-c", "echo hi there"]
    assert tool["Config"]["Cmd"] is None
    assert tool["Config"]["Env"] == ["FROM_IMAGE=1", "PATH=/usr/bin", "APP=1"]
    assert (s5, missing) == (404, {"message": "No such container: nope"})
    assert s6 == 400 and "matches 2 containers" in ambiguous["message"]
    assert s7 == 200 and dead["State"]["Status"] == "exited" and dead["State"]["ExitCode"] == 3
    assert not dead["State"]["Running"] and dead["State"]["Pid"] == 0


def test_containers_on_a_node_outside_any_swarm_and_without_an_executor():
    daemon = FakeDaemon(None, in_swarm=False)
    (s1, listed), (s2, missing) = get(daemon, "/containers/json?all=1", "/containers/x/json")
    assert (s1, listed) == (200, [])
    assert s2 == 404


def test_human_durations_as_docker_ps_prints_them():
    assert to_docker.human_duration(0.4) == "Less than a second"
    assert to_docker.human_duration(1) == "1 second"
    assert to_docker.human_duration(59) == "59 seconds"
    assert to_docker.human_duration(90) == "About a minute"
    assert to_docker.human_duration(45 * 60) == "45 minutes"
    assert to_docker.human_duration(3600) == "About an hour"
    assert to_docker.human_duration(5 * 3600) == "5 hours"
    assert to_docker.human_duration(3 * 86400) == "3 days"


# ---- images ----------------------------------------------------------------------------------
def test_docker_images_and_image_inspect_from_the_node_store(node, store_root):
    layout = ib.layout_image(store_root.parent / "oci", "1")
    results = get(node, "/images/json", "/images/busybox:1/json",
                  f"/images/json?filters={_q({'reference': ['busybox:tools']})}",
                  f"/images/json?filters={_q({'label': ['team=infra']})}",
                  f"/images/json?filters={_q({'dangling': ['true']})}",
                  "/images/nosuch:1/json", "/images/" + layout["config_digest"][7:19] + "/json")
    (s1, listed), (s2, inspected), (s3, by_ref), (s4, by_label), (s5, dangling), \
        (s6, missing), (s7, by_id) = results
    assert (s1, s2, s3, s4, s5, s7) == (200,) * 6
    busybox = next(i for i in listed if "busybox:1" in i["RepoTags"])
    assert busybox["Id"] == layout["config_digest"]
    assert busybox["RepoDigests"] == [f"busybox@{layout['manifest_digest']}"]
    assert busybox["Size"] > 0 and busybox["Containers"] == -1
    assert isinstance(busybox["Created"], int)
    assert inspected["Id"] == layout["config_digest"]
    assert inspected["RootFS"] == {"Type": "layers",
                                   "Layers": layout["config"]["rootfs"]["diff_ids"]}
    assert inspected["Config"]["Cmd"] == ["sh"] and inspected["Os"] == "linux"
    assert inspected["Architecture"] == layout["config"]["architecture"]
    assert [i["RepoTags"] for i in by_ref] == [["busybox:tools"]]
    assert [i["RepoTags"] for i in by_label] == [["busybox:tools"]]
    assert dangling == []
    assert (s6, missing) == (404, {"message": "No such image: nosuch:1"})
    assert by_id["Id"] == layout["config_digest"]


# ---- hostile queries -------------------------------------------------------------------------
_junk = st.one_of(st.text(max_size=30), st.integers(), st.none(), st.booleans(),
                  st.lists(st.one_of(st.text(max_size=10), st.integers()), max_size=3),
                  st.dictionaries(st.text(max_size=10),
                                  st.one_of(st.booleans(), st.text(max_size=5)), max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/containers/json", "/images/json", "/events"]),
       filters=st.one_of(st.text(max_size=40), st.dictionaries(st.text(max_size=12), _junk,
                                                                 max_size=3).map(json.dumps)),
       limit=st.one_of(st.none(), st.text(max_size=8)))
def test_junk_filters_and_parameters_get_a_400_naming_them(node, path, filters, limit):
    from urllib.parse import urlencode
    query = {"filters": filters}
    if path == "/events":
        query["until"] = "1"       # only past events: the stream ends at once
    elif limit is not None:
        query["limit"] = limit
    [(status, body)] = get(node, f"{path}?{urlencode(query)}")
    assert status in (200, 400), (status, body)
    if status == 400:
        message = body["message"]
        assert "filter" in message or "limit" in message, message


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(since=st.one_of(st.text(max_size=25), st.from_regex(r"-?\d{1,12}(\.\d{0,12})?",
                                                           fullmatch=True)),
       until=st.one_of(st.text(max_size=25), st.from_regex(r"\d{1,9}(\.\d{0,12})?",
                                                           fullmatch=True)))
def test_junk_since_and_until_of_events_get_a_400_naming_them(since, until):
    from urllib.parse import urlencode
    manager = _EventsManager()
    populate(manager)
    daemon = FakeDaemon(manager)
    # until at most 999999999 (2001), and never absent: the stream never waits for the future
    until = until or "1"
    query = urlencode({"since": since, "until": until})
    [(status, body)] = asyncio.run(_events_with_hub(manager, daemon, f"/events?{query}"))
    assert status in (200, 400), (status, body)
    if status == 400:
        assert any(w in body["message"] for w in ("'since'", "'until'", "`since`")), body


# ---- events ----------------------------------------------------------------------------------
class _EventsManager(DockerTestManager):
    """The harness manager with the real WatchHub a manager has (manager/manager.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.hub: Optional[WatchHub] = None

    def watch(self, accept=None) -> asyncio.Queue:
        if self.hub is None:
            self.hub = WatchHub(self.store, asyncio.get_running_loop())
        return self.hub.watch(accept)

    def unwatch(self, queue) -> None:
        self.hub.unwatch(queue)


async def _events_with_hub(manager, daemon, path: str) -> list[tuple[int, Any]]:
    out = await _calls(daemon, [("GET", path)])
    if manager.hub is not None:
        manager.hub.close()
    return out


def _service(name: str, image: str = "busybox:1", replicas: int = 1) -> Service:
    svc = Service(id=f"svc-{name}",
                  spec=ServiceSpec(name=name, mode=ServiceMode(replicas=replicas)))
    svc.spec.task_template.container.image = image
    svc.meta.created_at = svc.meta.updated_at = time.time()
    return svc


def _lines(raw: bytes) -> list[dict]:
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def test_events_stream_service_create_update_remove_live_and_from_history():
    manager = _EventsManager()
    populate(manager)
    daemon = FakeDaemon(manager)

    async def scenario():
        client = await docker_client(daemon)
        try:
            start = time.time()
            live = await client.get("/v1.44/events", params={
                "filters": json.dumps({"scope": {"swarm": True}})})
            assert live.status == 200
            typed = await client.get("/events", params={
                "filters": json.dumps({"type": ["secret"]}), "until": str(time.time() + 2)})
            svc = _service("api")
            manager.commit(Transaction().create("services", svc))
            updated = codec.clone(manager.store.get("services", svc.id))
            updated.spec.task_template.container.image = "busybox:2"
            updated.spec.mode.replicas = 3
            updated.update_status.state = "updating"
            updated.meta.updated_at = time.time()
            manager.commit(Transaction().update("services", updated))
            secret = Secret(id="sec1", spec=SecretSpec(name="db", data=b"hunter2"))
            manager.commit(Transaction().create("secrets", secret))
            manager.commit(Transaction().delete("services", svc.id))
            got: list[dict] = []
            while len(got) < 4:
                line = await asyncio.wait_for(live.content.readline(), 5)
                got.append(json.loads(line))
            live.close()
            only_secrets = _lines(await asyncio.wait_for(typed.read(), 5))
            past = await client.get("/events", params={"since": f"{start - 1:.9f}",
                                                       "until": f"{time.time():.9f}"})
            history = _lines(await past.read())
            named = await client.get("/events", params={
                "since": "0", "until": f"{time.time():.0f}",
                "filters": json.dumps({"service": ["api"], "event": ["update"]})})
            only_named = _lines(await named.read())
            local = await client.get("/events", params={
                "since": "0", "until": f"{time.time():.0f}",
                "filters": json.dumps({"scope": ["local"]})})
            assert _lines(await local.read()) == []   # swarm events only
            return got, only_secrets, history, only_named
        finally:
            await client.close()
            manager.hub.close()

    got, only_secrets, history, only_named = asyncio.run(scenario())
    assert [(e["Type"], e["Action"]) for e in got] == [
        ("service", "create"), ("service", "update"), ("secret", "create"),
        ("service", "remove")]
    create, update, secret, remove = got
    assert create["Actor"] == {"ID": "svc-api", "Attributes": {"name": "api"}}
    assert create["scope"] == "swarm" and create["time"] == create["timeNano"] // 10**9
    assert update["Actor"]["Attributes"] == {
        "name": "api", "image.old": "busybox:1", "image.new": "busybox:2",
        "replicas.old": "1", "replicas.new": "3", "updatestate.new": "updating"}
    assert secret["Actor"]["Attributes"] == {"name": "db"}
    assert "hunter2" not in json.dumps(got)
    assert remove["Actor"]["ID"] == "svc-api"
    assert [(e["Type"], e["Action"]) for e in only_secrets] == [("secret", "create")]
    # history: the same four (populate's objects came before the recorder started)
    assert [(e["Type"], e["Action"]) for e in history] == [(e["Type"], e["Action"]) for e in got]
    assert [(e["Type"], e["Action"]) for e in only_named] == [("service", "update")]


def test_events_of_a_node_update_name_the_changed_fields():
    # shoal's events of one change (an `update` and a `state`) are one Docker event.
    from shoal.dockerapi.translate.events import changes, message
    from manager.events.diff import events_of
    from manager.state.store import Event
    manager = DockerTestManager()
    populate(manager)
    old = manager.store.get("nodes", "n3")
    new = codec.clone(old)
    new.spec.availability = "drain"
    new.status.state = "down"
    ours = events_of(Event("update", "nodes", new, old, 7, 1.5), 1.5, lambda n: n)
    assert [e.action for e in ours] == ["update", "state"]
    [group] = list(changes(ours))
    msg = message(group)
    assert msg["Type"] == "node" and msg["Action"] == "update" and msg["timeNano"] == 1.5e9
    assert msg["Actor"]["Attributes"] == {"name": "w1", "availability.old": "active",
                                          "availability.new": "drain",
                                          "state.old": "ready", "state.new": "down"}
    task = manager.store.get("tasks", "task1")
    assert [message(g) for g in changes(
        events_of(Event("create", "tasks", task, None, 8, 2.0), 2.0, lambda n: n))] == [None]


def test_events_on_a_worker_are_an_empty_stream_and_bad_bounds_are_refused():
    daemon = FakeDaemon(None)
    soon = f"{time.time() + 0.3:.9f}"
    results = get(daemon, f"/events?until={soon}&filters={_q({'scope': ['swarm']})}",
                  "/events?since=10&until=5", "/events?since=yesterday",
                  f"/events?until=1&filters={_q({'type': ['widget']})}",
                  f"/events?until=1&filters={_q({'colour': ['red']})}")
    assert results[0] == (200, None)
    assert results[1][0] == 400 and "cannot be after" in results[1][1]["message"]
    assert results[2][0] == 400 and "'since'" in results[2][1]["message"]
    assert results[3][0] == 400 and "type=widget" in results[3][1]["message"]
    assert results[4][0] == 400 and "colour" in results[4][1]["message"]


def test_events_parse_time_reads_docker_cli_timestamps():
    class R:
        def __init__(self, q):
            self.query = q
    assert events_api.parse_time(R({"since": "1700000000.500000000"}), "since") == 1700000000.5
    assert events_api.parse_time(R({"since": "1700000000"}), "since") == 1700000000
    assert events_api.parse_time(R({}), "since") is None


# ---- distribution ----------------------------------------------------------------------------
def test_distribution_inspect_answers_the_registry_digest_and_platforms(registry, tmp_path,
                                                                         node):
    if not ib.busybox_available():
        pytest.skip("busybox-static is not installed")
    layout = ib.build_busybox_oci_layout(tmp_path / "oci", "1")
    info = ib.layout_image(layout, "1")
    digest = asyncio.run(ib.push_layout(registry.url, layout, "team/busybox", "1"))
    asyncio.run(ib.push_layout(registry.url, layout, "team/multi", "x"))
    index = asyncio.run(ib.push_index(registry.url, "team/multi", "1",
                                      [("amd64", digest, ib.manifest_size(layout, "1")),
                                       ("arm64", digest, ib.manifest_size(layout, "1"))]))
    node.insecure_registries = frozenset({registry.host})
    results = get(node, f"/distribution/{registry.host}/team/busybox:1/json",
                  f"/v1.44/distribution/{registry.host}/team/busybox@{digest}/json",
                  f"/distribution/{registry.host}/team/multi:1/json",
                  f"/distribution/{registry.host}/team/busybox:nope/json",
                  "/distribution/busybox:1/json",
                  "/distribution/Not A Ref!/json",
                  "/distribution/127.0.0.1:9/team/busybox:1/json")
    (s1, one), (s2, pinned), (s3, multi), (s4, missing), (s5, local), (s6, bad), \
        (s7, unreachable) = results
    assert (s1, s2, s3) == (200, 200, 200), results
    assert one == {"Descriptor": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                  "digest": digest,
                                  "size": ib.manifest_size(layout, "1")},
                   "Platforms": [{"architecture": info["config"]["architecture"],
                                  "os": "linux"}]}
    assert pinned == one
    assert multi["Descriptor"]["digest"] == index
    assert multi["Platforms"] == [{"architecture": "amd64", "os": "linux"},
                                  {"architecture": "arm64", "os": "linux"}]
    assert s4 == 404 and "nope" in missing["message"]
    assert s5 == 404 and "no default registry" in local["message"]
    assert s6 == 400 and "'name'" in bad["message"]
    assert s7 == 503 and "unreachable" in unreachable["message"]
