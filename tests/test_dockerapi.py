"""The Docker Engine API socket (shoal/dockerapi) over a raft-less manager: routing, the version
prefix, _ping's headers, filters, Docker's errors, and no 500 for anything a client sends."""
from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dockerapi_harness import DockerTestManager, FakeDaemon, docker_client, populate


def _daemon(**kw) -> FakeDaemon:
    manager = DockerTestManager()
    populate(manager)
    return FakeDaemon(manager, **kw)


async def _call(daemon: FakeDaemon, method: str, path: str) -> tuple[int, dict, Any]:
    client = await docker_client(daemon)
    try:
        resp = await client.request(method, path)
        raw = await resp.read()
        body: Any = raw.decode()
        if raw and resp.content_type == "application/json":
            body = json.loads(raw)
        return resp.status, dict(resp.headers), body
    finally:
        await client.close()


def call(method: str, path: str, daemon: FakeDaemon | None = None) -> tuple[int, dict, Any]:
    return asyncio.run(_call(daemon or _daemon(), method, path))


def filt(**values) -> str:
    return quote(json.dumps({k.replace("_", "-"): {v: True} for k, v in values.items()}))


@pytest.mark.parametrize("prefix", ["", "/v1.24", "/v1.41", "/v1.44"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_ping_answers_with_the_headers_clients_negotiate_from(prefix, method):
    status, headers, body = call(method, f"{prefix}/_ping")
    assert status == 200
    assert headers["Api-Version"] == "1.44"
    assert headers["Ostype"] == "linux"
    assert headers["Swarm"] == "active/manager"
    assert headers["Docker-Experimental"] == "false"
    assert headers["Cache-Control"] == "no-cache, no-store, must-revalidate"
    assert headers["Pragma"] == "no-cache"
    assert body == ("OK" if method == "GET" else "")


def test_ping_says_what_the_node_is():
    assert call("HEAD", "/_ping", FakeDaemon(None))[1]["Swarm"] == "active/worker"
    assert call("HEAD", "/_ping", FakeDaemon(None, in_swarm=False))[1]["Swarm"] == "inactive"
    assert call("HEAD", "/_ping", _daemon(locked=True))[1]["Swarm"] == "locked"


@pytest.mark.parametrize("version,word", [("1.12", "too old"), ("1.45", "too new"),
                                          ("2.0", "too new")])
def test_a_version_out_of_range_is_refused_as_dockerd_does(version, word):
    status, _, body = call("GET", f"/v{version}/version")
    assert status == 400 and word in body["message"]


def test_version():
    status, _, body = call("GET", "/v1.41/version")
    assert status == 200
    assert (body["ApiVersion"], body["MinAPIVersion"], body["Os"]) == ("1.44", "1.24", "linux")
    assert body["Components"][0]["Name"] == "Engine"
    assert body["Components"][0]["Details"]["ApiVersion"] == "1.44"


def test_info_on_a_manager_has_the_swarm_section_without_secrets():
    status, _, body = call("GET", "/v1.44/info")
    assert status == 200
    sw = body["Swarm"]
    assert (sw["NodeID"], sw["LocalNodeState"], sw["ControlAvailable"]) == ("n1", "active", True)
    assert (sw["Nodes"], sw["Managers"]) == (3, 2)
    assert {m["Addr"] for m in sw["RemoteManagers"]} == {"10.0.0.1:2377", "10.0.0.2:2377"}
    assert sw["Cluster"]["ID"] == "c1"
    assert sw["Cluster"]["Spec"]["Dispatcher"]["HeartbeatPeriod"] == 5_000_000_000
    text = json.dumps(body)
    for secret in ("SECRET-CA-KEY", "SHLKEY-SECRET", "SHLTKN-w", "SHLTKN-m"):
        assert secret not in text


def test_info_on_a_worker_and_outside_a_swarm():
    sw = call("GET", "/info", FakeDaemon(None))[2]["Swarm"]
    assert (sw["LocalNodeState"], sw["ControlAvailable"]) == ("active", False)
    assert "Cluster" not in sw
    sw = call("GET", "/info", FakeDaemon(None, in_swarm=False))[2]["Swarm"]
    assert (sw["LocalNodeState"], sw["NodeID"]) == ("inactive", "")


@pytest.mark.parametrize("path", ["/nodes", "/services", "/tasks", "/swarm", "/nodes/n1"])
def test_a_worker_answers_cluster_reads_with_dockerds_error(path):
    status, _, body = call("GET", path, FakeDaemon(None))
    assert status == 503
    assert body["message"].startswith("This node is not a swarm manager. Worker nodes")
    status, _, body = call("GET", path, FakeDaemon(None, in_swarm=False))
    assert status == 503 and "docker swarm init" in body["message"]
    status, _, body = call("GET", path, _daemon(locked=True))
    assert status == 503 and "unlock" in body["message"]


def test_swarm_inspect_carries_join_tokens_but_no_keys():
    status, _, body = call("GET", "/v1.41/swarm")
    assert status == 200
    assert body["JoinTokens"] == {"Worker": "SHLTKN-w", "Manager": "SHLTKN-m"}
    text = json.dumps(body)
    assert "SECRET-CA-KEY" not in text and "SHLKEY-SECRET" not in text


def _ids(body) -> list[str]:
    return sorted(o["ID"] for o in body)


@pytest.mark.parametrize("query,expected", [
    ("", ["n1", "n2", "n3"]),
    (f"?filters={filt(role='manager')}", ["n1", "n2"]),
    (f"?filters={filt(role='worker')}", ["n3"]),
    (f"?filters={filt(name='m')}", ["n1", "n2"]),
    (f"?filters={filt(id='n3')}", ["n3"]),
    (f"?filters={filt(node_label='zone=b')}".replace("node-label", "node.label"), ["n3"]),
    (f"?filters={filt(membership='accepted')}", ["n1", "n2", "n3"]),
    (f"?filters={filt(label='zone')}", []),   # engine labels: shoal nodes have none
    ('?filters=' + quote('{"role": ["manager"]}'), ["n1", "n2"]),  # the older list form
])
def test_node_list_filters(query, expected):
    status, _, body = call("GET", f"/v1.41/nodes{query}")
    assert status == 200 and _ids(body) == expected


def test_node_list_shape_and_manager_status():
    body = {n["ID"]: n for n in call("GET", "/nodes")[2]}
    assert body["n1"]["ManagerStatus"] == {"Leader": True, "Reachability": "reachable",
                                           "Addr": "10.0.0.1:2377"}
    assert body["n2"]["ManagerStatus"]["Leader"] is False
    assert "ManagerStatus" not in body["n3"]
    assert body["n3"]["Spec"] == {"Labels": {"zone": "b"}, "Role": "worker",
                                  "Availability": "active"}
    assert body["n3"]["Description"]["Hostname"] == "w1"
    assert body["n3"]["Version"] == {"Index": body["n3"]["Version"]["Index"]}


@pytest.mark.parametrize("ref", ["n3", "w1"])
def test_node_inspect_by_id_or_hostname(ref):
    status, _, body = call("GET", f"/v1.44/nodes/{ref}")
    assert status == 200 and body["ID"] == "n3"


def test_missing_objects_are_404_in_dockers_words():
    for path, what in (("/nodes/nope", "node nope not found"),
                       ("/services/nope", "service nope not found"),
                       ("/tasks/nope", "task nope not found")):
        status, _, body = call("GET", path)
        assert (status, body) == (404, {"message": what})


@pytest.mark.parametrize("query,expected", [
    ("", ["svcagent", "svcweb1"]),
    (f"?filters={filt(name='we')}", ["svcweb1"]),
    (f"?filters={filt(mode='global')}", ["svcagent"]),
    (f"?filters={filt(mode='replicated')}", ["svcweb1"]),
    (f"?filters={filt(label='tier=front')}", ["svcweb1"]),
    (f"?filters={filt(label='tier=back')}", []),
    (f"?filters={filt(id='svca')}", ["svcagent"]),
])
def test_service_list_filters(query, expected):
    status, _, body = call("GET", f"/v1.41/services{query}")
    assert status == 200 and _ids(body) == expected


def test_service_status_only_when_asked_and_from_141():
    body = {s["Spec"]["Name"]: s for s in call("GET", "/v1.41/services?status=true")[2]}
    assert body["web"]["ServiceStatus"] == {"RunningTasks": 2, "DesiredTasks": 2,
                                            "CompletedTasks": 0}
    assert body["agent"]["ServiceStatus"]["DesiredTasks"] == 3
    assert all("ServiceStatus" not in s for s in call("GET", "/v1.41/services")[2])
    assert all("ServiceStatus" not in s for s in call("GET", "/v1.40/services?status=1")[2])


@pytest.mark.parametrize("ref", ["web", "svcweb1", "svcw"])
def test_service_inspect_by_name_id_or_prefix(ref):
    status, _, body = call("GET", f"/v1.41/services/{ref}?insertDefaults=true")
    assert status == 200 and body["ID"] == "svcweb1"
    assert body["Spec"]["Mode"] == {"Replicated": {"Replicas": 2}}
    assert body["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == "busybox:latest"
    assert body["Endpoint"]["Ports"][0]["PublishedPort"] == 8080


@pytest.mark.parametrize("query,expected", [
    ("", ["gn1", "gn2", "gn3", "task0", "task1", "task2"]),
    (f"?filters={filt(service='web')}", ["task0", "task1", "task2"]),
    (f"?filters={filt(service='svcweb1')}", ["task0", "task1", "task2"]),
    (f"?filters={filt(node='w1')}", ["gn3", "task0", "task2"]),
    (f"?filters={filt(desired_state='running')}", ["gn1", "gn2", "gn3", "task1", "task2"]),
    (f"?filters={filt(desired_state='shutdown')}", ["task0"]),
    (f"?filters={filt(name='web.1')}", ["task0", "task1"]),
    (f"?filters={filt(id='task')}", ["task0", "task1", "task2"]),
    (f"?filters={filt(_up_to_date='true')}".replace("-up-to-date", "_up-to-date"),
     ["gn1", "gn2", "gn3", "task1", "task2"]),
])
def test_task_list_filters(query, expected):
    status, _, body = call("GET", f"/v1.41/tasks{query}")
    assert status == 200, body
    assert _ids(body) == expected


def test_task_shape():
    status, _, body = call("GET", "/tasks/task0")
    assert status == 200
    assert (body["ServiceID"], body["Slot"], body["NodeID"]) == ("svcweb1", 1, "n3")
    assert body["DesiredState"] == "shutdown"
    assert body["Status"]["State"] == "failed" and body["Status"]["Err"] == "exit 1"
    assert body["Status"]["ContainerStatus"] == {"ExitCode": 1}
    body = call("GET", "/tasks/task1")[2]
    att = body["NetworksAttachments"][0]
    assert att["Network"]["Spec"]["Name"] == "backend" and att["Addresses"] == ["10.0.1.2/24"]
    assert "Slot" not in call("GET", "/tasks/gn1")[2]


@pytest.mark.parametrize("path,needle", [
    ("/nodes?filters=" + quote('{"bogus": {"x": true}}'), "invalid filter 'bogus'"),
    ("/nodes?filters=" + quote('{"role": {"king": true}}'), "Invalid role filter"),
    ("/tasks?filters=" + quote('{"desired-state": {"dancing": true}}'), "desired-state"),
    ("/services?filters=notjson", "invalid filter"),
    ("/services?filters=" + quote('{"name": "web"}'), "invalid filter 'name'"),
    ("/tasks?filters=" + quote('{"service": {"nope": true}}'), "service nope not found"),
])
def test_bad_filters_are_400_or_404_naming_the_problem(path, needle):
    status, _, body = call("GET", path)
    assert status in (400, 404) and needle in body["message"]


def test_unknown_endpoints_are_page_not_found_and_known_ones_501():
    assert call("GET", "/nope") [0:3:2] == (404, {"message": "page not found"})
    assert call("GET", "/v1.41/nope")[0:3:2] == (404, {"message": "page not found"})
    status, _, body = call("GET", "/v1.41/containers/c1/logs")
    assert status == 501 and "GET /containers/c1/logs" in body["message"]
    status, _, body = call("POST", "/v1.41/networks/n1/connect")
    assert status == 501 and "POST /networks/n1/connect" in body["message"]
    assert call("DELETE", "/version")[0] == 404
    # every answer carries the version headers, errors too
    assert call("GET", "/nope")[1]["Api-Version"] == "1.44"


@pytest.mark.parametrize("path", ["/nope", "/v1.41/nodes", "/nodes/nope", "/info"])
def test_json_is_labelled_exactly_application_json(path):
    # The docker client compares the whole header: with a charset it prints an error's raw JSON.
    for daemon in (_daemon(), FakeDaemon(None)):
        assert call("GET", path, daemon)[1]["Content-Type"] == "application/json"


# ---- hostile input: whatever a client sends, never a 500 --------------------------------------
_SEGMENTS = st.sampled_from(["_ping", "version", "info", "swarm", "nodes", "services", "tasks",
                             "containers", "n1", "web", "task1", "self", "logs", "update", "",
                             "..", "%00", "%2F", "v1.41", "v1.99", "v0.1", "json"])
_FILTER_KEYS = st.sampled_from(["id", "name", "label", "node.label", "role", "membership",
                                "mode", "service", "node", "desired-state", "_up-to-date",
                                "runtime", "bogus", ""])
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=10)


@st.composite
def _requests(draw) -> tuple[str, str]:
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PUT"]))
    path = "/" + "/".join(draw(st.lists(_SEGMENTS, min_size=1, max_size=4)))
    if path.startswith("//"):
        path = "/." + path  # aiohttp's test client reads //x as a host, not a path
    if draw(st.booleans()):
        path = f"/v1.{draw(st.integers(0, 60))}" + path
    params = []
    if draw(st.booleans()):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            filters: Any = {draw(_FILTER_KEYS): {draw(st.text(max_size=10)): True}}
        elif kind == 1:
            filters = {draw(_FILTER_KEYS): draw(st.lists(st.text(max_size=10), max_size=3))}
        elif kind == 2:
            filters = draw(_JSONISH)
        else:
            filters = draw(st.text(max_size=30))
        params.append(("filters", filters if isinstance(filters, str) else json.dumps(filters)))
    for name in draw(st.lists(st.sampled_from(["status", "insertDefaults", "x"]), max_size=2)):
        params.append((name, draw(st.text(max_size=6))))
    query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in params)
    return method, path + (f"?{query}" if query else "")


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_requests(), st.sampled_from(["manager", "worker", "outside", "locked"]))
def test_no_request_gets_a_500(request, node):
    method, path = request
    daemon = {"manager": lambda: _daemon(), "worker": lambda: FakeDaemon(None),
              "outside": lambda: FakeDaemon(None, in_swarm=False),
              "locked": lambda: _daemon(locked=True)}[node]()
    status, headers, body = call(method, path, daemon)
    assert status < 500 or status in (501, 503), (method, path, status, body)
    assert headers["Api-Version"] == "1.44"
    if status >= 400 and method != "HEAD":
        assert isinstance(body, dict) and isinstance(body["message"], str)
