"""Writes through the Docker Engine API socket (shoal/dockerapi): Docker's ServiceSpec, secret,
config and network bodies translated into shoal's (translate/service_spec.py, objects.py) and
run by the control API's own functions, with Docker's answers, defaults and refusals."""
from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import codec, errors
from common.model import Network
from manager.specs.services import parse_service_spec
from manager.state.store import Transaction
from shoal.dockerapi.translate import services as to_docker
from shoal.dockerapi.translate.service_spec import docker_path, service_spec
from tests.dockerapi_harness import DockerTestManager, FakeDaemon, docker_client, populate, run


def _daemon() -> FakeDaemon:
    manager = DockerTestManager()
    populate(manager)
    ingress = Network(id="ingress1", vni=4096, subnet="10.255.0.0/16", gateway="10.255.0.1")
    ingress.spec.name, ingress.spec.ingress = "ingress", True
    manager.commit(Transaction().create("networks", ingress))
    return FakeDaemon(manager)


# What `docker service create --name api --replicas 3 -p 8090:80 busybox:1 httpd -f` sends (CLI
# 20.10, API 1.41), zero values left out as Go's omitempty does.
CLI_CREATE = {
    "Name": "api", "Labels": {},
    "TaskTemplate": {
        "ContainerSpec": {"Image": "busybox:1", "Args": ["httpd", "-f"], "Init": False,
                          "StopGracePeriod": 3_000_000_000, "DNSConfig": {},
                          "Isolation": "default"},
        "Resources": {"Limits": {}, "Reservations": {}}, "RestartPolicy": {}, "Placement": {},
        "ForceUpdate": 0, "Runtime": "container"},
    "Mode": {"Replicated": {"Replicas": 3}},
    "UpdateConfig": {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000,
                     "MaxFailureRatio": 0, "Order": "stop-first"},
    "RollbackConfig": {"Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000,
                       "MaxFailureRatio": 0, "Order": "stop-first"},
    "EndpointSpec": {"Mode": "vip", "Ports": [{"Protocol": "tcp", "TargetPort": 80,
                                                "PublishedPort": 8090,
                                                "PublishMode": "ingress"}]},
}


def _with(body: dict, path: str, value: Any) -> dict:
    body = json.loads(json.dumps(body))
    *parents, last = path.split(".")
    node = body
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return body


# ---- translation ------------------------------------------------------------------------------
def test_what_the_cli_sends_becomes_shoals_spec_with_dockers_defaults():
    spec = parse_service_spec(service_spec(CLI_CREATE))
    c = spec.task_template.container
    assert (spec.name, c.image, c.args, c.stop_grace_period) == ("api", "busybox:1",
                                                                  ["httpd", "-f"], 3.0)
    assert spec.mode.mode == "replicated" and spec.mode.replicas == 3
    assert c.dns_config is None and c.stop_signal == "SIGTERM"
    assert spec.task_template.restart_policy.condition == "any"
    assert spec.task_template.restart_policy.delay == 5.0
    p = spec.endpoint_spec.ports[0]
    assert (p.target_port, p.published_port, p.publish_mode) == (80, 8090, "ingress")


@pytest.mark.parametrize("mode, expected", [
    (None, ("replicated", 1, 0, 0)),
    ({"Replicated": {}}, ("replicated", 1, 0, 0)),
    ({"Replicated": {"Replicas": 0}}, ("replicated", 0, 0, 0)),
    ({"ReplicatedJob": {}}, ("replicated-job", 1, 1, 1)),
    ({"ReplicatedJob": {"MaxConcurrent": 3}}, ("replicated-job", 3, 3, 3)),
    ({"ReplicatedJob": {"TotalCompletions": 5}}, ("replicated-job", 5, 1, 5)),
    ({"Global": {}}, ("global", None, None, None)),
    ({"GlobalJob": {}}, ("global-job", None, None, None)),
])
def test_modes_default_as_dockerd_does(mode, expected):
    body = {"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}}
    if mode is not None:
        body["Mode"] = mode
    m = parse_service_spec(service_spec(body)).mode
    assert m.mode == expected[0]
    if expected[1] is not None:
        assert (m.replicas, m.max_concurrent, m.total_completions) == expected[1:]


def test_a_spec_shown_by_inspect_comes_back_unchanged():
    """`docker service update` sends back what inspect showed, changed: every field inspect
    writes must read back to the same spec."""
    body = _with(CLI_CREATE, "TaskTemplate.ContainerSpec", {
        "Image": "busybox:1", "Command": ["/bin/sh"], "Args": ["-c", "sleep 1"],
        "Env": ["A=1"], "Dir": "/tmp", "User": "1000:1000", "Hostname": "h1",
        "Labels": {"k": "v"}, "Groups": ["wheel"], "Hosts": ["10.0.0.9 db"],
        "StopSignal": "SIGINT", "StopGracePeriod": 2_500_000_000, "TTY": True,
        "OpenStdin": True, "Init": True, "ReadOnly": True,
        "CapabilityAdd": ["CAP_NET_ADMIN"], "CapabilityDrop": ["CAP_CHOWN"],
        "Sysctls": {"net.ipv4.ip_forward": "1"},
        "Ulimits": [{"Name": "nofile", "Soft": 100, "Hard": 200}],
        "DNSConfig": {"Nameservers": ["10.0.0.2"], "Search": ["example.com"],
                      "Options": ["ndots:2"]},
        "Healthcheck": {"Test": ["CMD", "true"], "Interval": 2_000_000_000, "Retries": 2},
        "Mounts": [{"Type": "tmpfs", "Target": "/scratch",
                    "TmpfsOptions": {"SizeBytes": 1 << 20}},
                   {"Type": "volume", "Source": "data", "Target": "/data",
                    "VolumeOptions": {"Labels": {"a": "b"}}}],
    })
    body = _with(body, "TaskTemplate.Resources", {"Limits": {"NanoCPUs": 500_000_000,
                                                             "MemoryBytes": 1 << 26,
                                                             "Pids": 50},
                                                  "Reservations": {"NanoCPUs": 100_000_000}})
    body = _with(body, "TaskTemplate.Placement", {
        "Constraints": ["node.role==worker"], "MaxReplicas": 2,
        "Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]})
    body = _with(body, "TaskTemplate.RestartPolicy", {"Condition": "on-failure",
                                                      "Delay": 1_000_000_000,
                                                      "MaxAttempts": 3, "Window": 0})
    body = _with(body, "TaskTemplate.LogDriver", {"Name": "json-file",
                                                  "Options": {"max-size": "1m"}})
    body = _with(body, "TaskTemplate.Networks", [{"Target": "net1", "Aliases": ["api"]}])
    first = parse_service_spec(service_spec(body))
    shown = json.loads(json.dumps(to_docker.service_spec(first)))
    again = parse_service_spec(service_spec(shown))
    assert codec.to_plain(again) == codec.to_plain(first)


@pytest.mark.parametrize("path, value, field", [
    ("TaskTemplate.ContainerSpec.Privileges", {"NoNewPrivileges": True},
     "TaskTemplate.ContainerSpec.Privileges"),
    ("TaskTemplate.ContainerSpec.Isolation", "hyperv", "TaskTemplate.ContainerSpec.Isolation"),
    ("TaskTemplate.Runtime", "plugin", "TaskTemplate.Runtime"),
    ("TaskTemplate.ContainerSpec.OomScoreAdj", 5, "TaskTemplate.ContainerSpec.OomScoreAdj"),
    ("TaskTemplate.Placement.Platforms", [{"OS": "linux", "Variant": "v8"}],
     "TaskTemplate.Placement.Platforms[0].Variant"),
    ("TaskTemplate.ContainerSpec.Shiny", 1, "TaskTemplate.ContainerSpec.Shiny"),
    ("Bogus", True, "Bogus"),
    ("TaskTemplate.ContainerSpec.Args", "httpd", "TaskTemplate.ContainerSpec.Args"),
    ("TaskTemplate.ContainerSpec.StopGracePeriod", "10s",
     "TaskTemplate.ContainerSpec.StopGracePeriod"),
    ("Mode", {"Replicated": {"Replicas": 1}, "Global": {}}, "Mode"),
    ("Mode", {"Replicated": {"Replicas": -1}}, "Mode.Replicated.Replicas"),
    ("EndpointSpec.Ports", [{"TargetPort": True}], "EndpointSpec.Ports[0].TargetPort"),
])
def test_what_shoal_cannot_honour_or_does_not_know_is_refused_naming_the_field(path, value,
                                                                             field):
    with pytest.raises(errors.InvalidArgument) as exc:
        service_spec(_with(CLI_CREATE, path, value))
    assert exc.value.message.startswith(f"{field}: "), exc.value.message
    # and through the socket, nothing created
    daemon = _daemon()
    [(status, body)] = run(daemon, ("POST", "/v1.41/services/create",
                                    _with(CLI_CREATE, path, value)))
    assert status == 400 and field in body["message"]
    assert daemon.manager.store.by_name("services", "api") is None


def test_shoals_own_checks_speak_dockers_field_names():
    assert docker_path("task_template.container.image") == "TaskTemplate.ContainerSpec.Image"
    assert docker_path("endpoint_spec.ports[0].published_port") == \
        "EndpointSpec.Ports[0].PublishedPort"
    assert docker_path("mode.replicas") == "Mode.Replicated.Replicas"
    [(status, body)] = run(_daemon(), ("POST", "/services/create",
                                       _with(CLI_CREATE, "TaskTemplate.ContainerSpec.Image", "")))
    assert status == 400 and body["message"].startswith("TaskTemplate.ContainerSpec.Image: ")
    [(status, body)] = run(_daemon(), ("POST", "/services/create",
                                       _with(CLI_CREATE, "TaskTemplate.ContainerSpec.Env",
                                             ["=x"])))
    assert status == 400 and body["message"].startswith("TaskTemplate.ContainerSpec.Env[0]: ")


# ---- services ---------------------------------------------------------------------------------
def test_create_inspect_update_rollback_and_delete_a_service():
    daemon = _daemon()
    store = daemon.manager.store
    (status, created), (dup, conflict) = run(daemon, ("POST", "/v1.41/services/create", CLI_CREATE),
                                             ("POST", "/v1.41/services/create", CLI_CREATE))
    assert status == 201 and set(created) == {"ID", "Warnings"}
    assert dup == 409 and "already exists" in conflict["message"]
    svc = store.get("services", created["ID"])
    assert svc.spec.mode.replicas == 3 and svc.endpoint.ports[0].published_port == 8090
    [(status, shown)] = run(daemon, ("GET", f"/v1.41/services/{svc.id}", None))
    spec = shown["Spec"]
    spec["Mode"]["Replicated"]["Replicas"] = 5
    version = shown["Version"]["Index"]
    (ok, answer), (stale, err) = run(
        daemon, ("POST", f"/v1.41/services/api/update?version={version}", spec),
        ("POST", f"/v1.41/services/api/update?version={version}", spec))
    assert (ok, answer) == (200, {"Warnings": []})
    assert stale == 409 and "changed since version" in err["message"]
    assert store.get("services", svc.id).spec.mode.replicas == 5
    now = store.get("services", svc.id).meta.version
    (ok, _), = run(daemon, ("POST", f"/services/{svc.id}/update?version={now}&rollback=previous",
                            spec))
    assert ok == 200
    rolled = store.get("services", svc.id)
    assert rolled.spec.mode.replicas == 3 and rolled.update_status.state == "rollback_started"
    (bad, _), (gone, _), (again, missing) = run(
        daemon, ("POST", f"/services/{svc.id}/update?version=x", spec),
        ("DELETE", f"/v1.41/services/{svc.id}", None), ("DELETE", "/services/api", None))
    assert bad == 400 and gone == 200
    assert again == 404 and missing == {"message": "service api not found"}
    assert store.get("services", svc.id) is None


def test_a_service_names_secrets_and_configs_as_docker_does():
    daemon = _daemon()
    data = base64.b64encode(b"s3cret").decode()
    (s, sec), (c, cfg) = run(daemon, ("POST", "/secrets/create", {"Name": "db", "Data": data}),
                             ("POST", "/configs/create", {"Name": "site", "Data": data}))
    assert s == c == 201
    body = _with(CLI_CREATE, "TaskTemplate.ContainerSpec.Secrets", [
        {"File": {"Name": "db", "UID": "0", "GID": "0", "Mode": 0o400}, "SecretID": sec["ID"],
         "SecretName": "db"}])
    body = _with(body, "TaskTemplate.ContainerSpec.Configs", [
        {"File": {"Name": "/etc/site", "UID": "0", "GID": "0", "Mode": 0o444},
         "ConfigID": cfg["ID"], "ConfigName": "site"}])
    [(status, created)] = run(daemon, ("POST", "/services/create", body))
    assert status == 201, created
    c = daemon.manager.store.get("services", created["ID"]).spec.task_template.container
    assert (c.secrets[0].target, c.secrets[0].mode) == ("/run/secrets/db", 0o400)
    assert c.configs[0].target == "/etc/site"
    (status, err), = run(daemon, ("DELETE", "/secrets/db", None))
    assert status == 400 and "in use" in err["message"]


# ---- secrets, configs -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["secrets", "configs"])
def test_secrets_and_configs(kind):
    daemon = _daemon()
    data = base64.b64encode(b"hello").decode()
    res = run(daemon,
              ("POST", f"/v1.41/{kind}/create", {"Name": "one", "Labels": {"a": "1"},
                                                  "Data": data}),
              ("POST", f"/v1.41/{kind}/create", {"Name": "one", "Data": data}),
              ("POST", f"/v1.41/{kind}/create", {"Name": "two", "Data": data,
                                                  "Driver": {"Name": "vault"}}),
              ("GET", f"/v1.41/{kind}?filters=" + json.dumps({"label": {"a=1": True}}), None),
              ("GET", f"/v1.41/{kind}/one", None))
    (created, ans), (dup, _), (refused, why), (listed, items), (shown, item) = res
    assert created == 201 and dup == 409
    assert refused == 400 and why["message"].startswith("Driver: ")
    assert listed == 200 and [i["Spec"]["Name"] for i in items] == ["one"]
    assert item["ID"] == ans["ID"] and item["Spec"]["Labels"] == {"a": "1"}
    assert ("Data" in item["Spec"]) == (kind == "configs")
    if kind == "configs":
        assert item["Spec"]["Data"] == data
    version = item["Version"]["Index"]
    res = run(daemon,
              ("POST", f"/{kind}/one/update?version={version}",
               {"Name": "one", "Labels": {"b": "2"}, "Data": base64.b64encode(b"other").decode()}),
              ("POST", f"/{kind}/one/update?version={version}", {"Name": "one",
                                                                  "Labels": {"b": "2"}}),
              ("POST", f"/{kind}/one/update?version={version}", {"Name": "one", "Labels": {}}),
              ("DELETE", f"/{kind}/one", None), ("GET", f"/{kind}/one", None))
    (data_change, msg), (ok, _), (stale, _), (deleted, _), (gone, _) = res
    assert data_change == 400 and "only updates to labels" in msg["message"]
    assert ok == 200 and stale == 409
    assert deleted == 204 and gone == 404


# ---- networks ---------------------------------------------------------------------------------
# What `docker network create -d overlay --attachable --subnet 10.9.0.0/24 NAME` sends.
CLI_NETWORK = {"Name": "front", "CheckDuplicate": True, "Driver": "overlay", "Scope": "",
               "EnableIPv6": False,
               "IPAM": {"Driver": "default", "Options": {},
                        "Config": [{"Subnet": "10.9.0.0/24"}]},
               "Internal": False, "Attachable": True, "Ingress": False, "ConfigOnly": False,
               "ConfigFrom": None, "Options": {}, "Labels": {"x": "y"}}


def test_networks():
    daemon = _daemon()
    res = run(daemon, ("POST", "/v1.41/networks/create", CLI_NETWORK),
              ("POST", "/v1.41/networks/create", CLI_NETWORK),
              ("POST", "/v1.41/networks/create", {**CLI_NETWORK, "Name": "b", "Driver": ""}),
              ("POST", "/v1.41/networks/create", {**CLI_NETWORK, "Name": "c", "Internal": True}),
              ("GET", "/v1.41/networks?filters=" + json.dumps({"label": {"x=y": True}}), None),
              ("GET", "/v1.41/networks?filters=" + json.dumps({"name": {"fro": True}}), None),
              ("GET", "/v1.41/networks/front?scope=swarm", None),
              ("DELETE", "/v1.41/networks/backend", None),
              ("DELETE", "/v1.41/networks/front", None),
              ("GET", "/v1.41/networks/front", None))
    (created, ans), (dup, _), (bridge, why), (internal, why2), (by_label, l1), (by_name, l2), \
        (shown, net), (in_use, used), (deleted, _), (gone, _) = res
    assert created == 201 and set(ans) == {"Id", "Warning"} and dup == 409
    assert bridge == 400 and why["message"].startswith("Driver: ")
    assert internal == 400 and why2["message"].startswith("Internal: ")
    assert [n["Name"] for n in l1] == ["front"] and [n["Name"] for n in l2] == ["front"]
    assert (net["Id"], net["Driver"], net["Scope"], net["Attachable"]) == \
        (ans["Id"], "overlay", "swarm", True)
    assert net["IPAM"]["Config"][0]["Subnet"] == "10.9.0.0/24"
    assert in_use == 400 and "in use by service(s) web" in used["message"]
    assert deleted == 204 and gone == 404


# ---- no 500 -----------------------------------------------------------------------------------
_LEAF = (st.none() | st.booleans() | st.integers(-2**65, 2**65) | st.floats(allow_nan=False)
         | st.text(max_size=6) | st.sampled_from(["busybox", "overlay", "SIGTERM", "web", "/x"]))
_KEYS = st.sampled_from([
    "Name", "Labels", "TaskTemplate", "ContainerSpec", "Image", "Command", "Args", "Env", "Mounts",
    "Secrets", "Configs", "File", "Mode", "Replicated", "Replicas", "Global", "ReplicatedJob",
    "MaxConcurrent", "TotalCompletions", "EndpointSpec", "Ports", "TargetPort", "PublishedPort",
    "UpdateConfig", "Parallelism", "Monitor", "Resources", "Limits", "NanoCPUs", "Placement",
    "Preferences", "Spread", "Networks", "Target", "Healthcheck", "Test", "Ulimits", "Sysctls",
    "StopGracePeriod", "Privileges", "Runtime", "Type", "Source", "RestartPolicy", "Delay",
    "DNSConfig", "LogDriver", "Options", "x"])
_JSON = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=25)


@st.composite
def _service_bodies(draw) -> Any:
    body = json.loads(json.dumps(CLI_CREATE))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.lists(_KEYS, min_size=1, max_size=4))
        node = body
        for key in path[:-1]:
            nxt = node.get(key) if isinstance(node, dict) else None
            if not isinstance(nxt, dict):
                nxt = {}
                node[key] = nxt
            node = nxt
        node[path[-1]] = draw(_JSON)
    return body


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_service_bodies(), st.sampled_from(["create", "update"]))
def test_no_service_spec_body_gets_a_500(body, action):
    daemon = _daemon()
    path = "/services/create" if action == "create" else "/services/web/update?version=" + \
        str(daemon.manager.store.by_name("services", "web").meta.version)
    [(status, answer)] = run(daemon, ("POST", path, body))
    assert status < 500, (status, answer, body)
    if status >= 400:
        assert isinstance(answer["message"], str) and answer["message"]


def test_zero_values_of_refused_fields_pass_as_the_cli_sends_them():
    # what `docker stack deploy` sends for a service without credential specs or SELinux
    body = _with(CLI_CREATE, "TaskTemplate.ContainerSpec.Privileges",
                 {"CredentialSpec": None, "SELinuxContext": None})
    body = _with(body, "TaskTemplate.ContainerSpec.OomScoreAdj", 0)
    assert parse_service_spec(service_spec(body)).task_template.container.image == "busybox:1"
    with pytest.raises(errors.InvalidArgument, match=r"^TaskTemplate\.ContainerSpec\.Privileges"):
        service_spec(_with(body, "TaskTemplate.ContainerSpec.Privileges",
                           {"SELinuxContext": {"Disable": True}}))


# ---- on a follower ----------------------------------------------------------------------------
class _LeaderClient:
    """The leader's control API as a follower reaches it: records what it is sent and answers
    as the leader's handler would (the same function, on the leader's store)."""

    def __init__(self, leader_daemon: FakeDaemon, sent: list) -> None:
        self.leader, self.sent = leader_daemon, sent
        self.connect_timeout = None

    async def request_raw(self, method, path_qs, raw=b"", timeout=None, headers=None):
        from manager.controlapi import services as shoal_services
        self.sent.append((method, path_qs, json.loads(raw) if raw else None, headers))
        try:
            svc = await shoal_services.create_service(self.leader.manager, json.loads(raw))
        except errors.ShoalError as exc:
            return exc.status, json.dumps(exc.to_dict()).encode()
        # the follower's replica catches up
        self.follower_store.apply(Transaction().create("services", svc).encode())
        return 201, json.dumps({"id": svc.id}).encode()


def test_a_write_on_a_follower_goes_to_the_leader_in_shoals_words():
    follower, leader_daemon = _daemon(), _daemon()
    follower.manager.is_leader = False
    follower.state.listen_addr = "10.0.0.2:2377"
    follower.manager.leader_api_addr = lambda: "10.0.0.9:2377"
    follower.manager.leader_connected = lambda: True
    sent: list = []
    client = _LeaderClient(leader_daemon, sent)
    client.follower_store = follower.manager.store
    follower.peer_client = lambda addr: client
    [(status, answer)] = run(follower, ("POST", "/v1.41/services/create", CLI_CREATE))
    assert status == 201, answer
    method, path, body, headers = sent[0]
    assert (method, path) == ("POST", "/services/create")
    # issue 18: a request id, so that a retry after a failover applies once
    assert headers.keys() == {"X-Shoal-Forwarded-Node", "Shoal-Request-Id"}, headers
    assert headers["X-Shoal-Forwarded-Node"] == "" and len(headers["Shoal-Request-Id"]) == 32
    assert body["spec"] == service_spec(CLI_CREATE)
    assert json.loads(body["docker_spec"])["Name"] == "api"
    assert leader_daemon.manager.store.get("services", answer["ID"]) is not None
    assert follower.manager.store.get("services", answer["ID"]) is not None
    # the leader's refusal comes back in Docker's words and field names
    [(status, err)] = run(follower, ("POST", "/services/create",
                                     _with(CLI_CREATE, "TaskTemplate.ContainerSpec.Image", "")))
    assert status == 400 and err["message"].startswith("TaskTemplate.ContainerSpec.Image: ")
    [(status, err)] = run(follower, ("POST", "/services/create", CLI_CREATE))
    assert status == 409


# ---- service logs -----------------------------------------------------------------------------
class _NodeLogs:
    """A node's /worker/logs stream: one line per task asked for, stdout then stderr."""

    def __init__(self, addr: str) -> None:
        self.addr = addr

    async def open_stream(self, method, path, params=None, connect_timeout=None):
        tasks = [v for k, v in params if k == "task"]
        lines = []
        for i, tid in enumerate(tasks):
            lines.append({"task_id": tid, "t": 1_700_000_100.5 + i, "s": "stdout",
                          "l": f"out of {tid}"})
            lines.append({"task_id": tid, "t": 1_700_000_101.5 + i, "s": "stderr",
                          "l": f"err of {tid}"})

        class _Stream:
            async def _content(self):
                for ln in lines:
                    yield (json.dumps(ln) + "\n").encode()

            def __init__(self):
                self.content = self._content()

            def release(self):
                pass
        return _Stream()


def _frames(raw: bytes) -> list[tuple[int, str]]:
    out = []
    while raw:
        stream, size = raw[0], int.from_bytes(raw[4:8], "big")
        out.append((stream, raw[8:8 + size].decode()))
        raw = raw[8 + size:]
    return out


def test_service_logs_are_dockers_multiplexed_frames_with_the_swarm_details():
    daemon = _daemon()
    daemon.peer_client = _NodeLogs

    async def fetch(query: str) -> tuple[int, bytes]:
        client = await docker_client(daemon)
        try:
            resp = await client.get(f"/v1.41/services/web/logs?{query}")
            return resp.status, await resp.read()
        finally:
            await client.close()

    status, raw = asyncio.run(fetch("stdout=1&stderr=1&details=1&timestamps=1"))
    assert status == 200
    frames = _frames(raw)
    assert sorted(s for s, _ in frames) == [1, 1, 2, 2]
    first = [text for s, text in frames if "out of task1" in text][0]
    ts, details, message = first.split(" ", 2)
    assert ts.startswith("2023-11-14T22:15:00.5") and ts.endswith("Z")
    assert dict(kv.split("=") for kv in details.split(",")) == {
        "com.docker.swarm.node.id": "n1", "com.docker.swarm.service.id": "svcweb1",
        "com.docker.swarm.task.id": "task1"}
    assert message == "out of task1\n"
    status, raw = asyncio.run(fetch("stderr=1"))
    assert sorted(text for _, text in _frames(raw)) == ["err of task1\n", "err of task2\n"]
    assert {s for s, _ in _frames(raw)} == {2}
    status, raw = asyncio.run(fetch(""))
    assert status == 400 and b"at least one stream" in raw
