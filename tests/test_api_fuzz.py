"""Hostile requests against every write endpoint of the control API, on a real one-member raft
manager, and against the node's own write endpoints (Hypothesis).

Each generated request starts from a valid body and replaces values at one to three field paths
(or adds unknown fields) with hostile ones: wrong types, null, NaN and Infinity, integers past
64 bits, NUL bytes, lone surrogates, strings longer than an argument may be, path tricks, deep
nesting. The properties:
- no answer is a 5xx, and every answer is valid JSON;
- a refused request leaves the specs in the store exactly as they were;
- an accepted object is fully valid: it re-encodes, passes the API's checks again, its answers
  are strict JSON, and a task spec made from it passes the worker's own checks (the OCI spec the
  executor builds from it);
- the leader's loops never fail on what was accepted.
"""
from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import codec, errors, pki, strict
from common.model import (Cluster, ContainerSpec, Node, NodeDescription, NodeStatus, Resources,
                          ServiceSpec, Task)
from common.nodestate import NodeFiles, NodeState
from manager import controlapi
from manager.controlapi.context import IDENTITY
from manager.controlapi.middleware import forward_middleware
from manager.specs.cluster import validate_cluster_spec
from common.httpserver import CTX, error_middleware
from manager.manager import Manager
from manager.specs.services import parse_service_spec
from manager.state.store import Transaction


ADDR = "127.0.0.94"  # raft of this module's manager; tests/raft_harness.py uses .93
DEEP = "\x01deep\x01"  # stands for JSON nested 1,000 deep
NAN, INF = float("nan"), float("inf")
NOW = datetime.datetime.now(datetime.timezone.utc)

HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1, 1.5, -0.0, 65536, 2**31, 2**63, 2**64, -(2**63) - 1, 10**30,
    1e308, NAN, INF, -INF, "", " ", "x", "0", "-1", "1.5", "true", "NaN", "\x00", "a\x00b",
    "\ud800", "\u00b2", "../..", "/x/../../..", "/proc/self/x", "/sys/x", "/etc", "/", "//x",
    "a\tb\\c\u00e9", "web\n", "-x", "x" * 200_000, "*", "%3F", "a?force=true&", [], [None],
    ["x"], [1], [[[]]], {}, {"a": 5}, {"": "x"}, {"a": None}, DEEP,
]

values = st.one_of(
    st.sampled_from(HOSTILE),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(), st.text(max_size=4), st.none()), max_size=3),
    st.dictionaries(st.text(max_size=4), st.one_of(st.integers(), st.text(max_size=4), st.none()),
                    max_size=2),
)


# ---- the cluster the requests go to -----------------------------------------------------------
class _Ctx:
    def __init__(self, manager: Manager, state: NodeState) -> None:
        self.manager, self.state = manager, state

    def peer_client(self, addr: str):
        raise AssertionError("a one-member swarm forwards nothing")


class Cluster1:
    """A leader with three Ready nodes, a secret, a config, a network and a service to update,
    serving the control API on a test server; its event loop runs in a thread of its own so that
    Hypothesis' synchronous examples can send requests to it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.thread.start()
        self.sent = 0
        self.accepted = 0

    def run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def start(self) -> None:
        files = NodeFiles(self.tmp / "m1")
        files.prepare()
        files.save_raft_secret(b"f" * 32)
        state = NodeState(node_id="m1", cluster_id="c1", role="manager", advertise_addr=ADDR,
                          listen_addr=f"{ADDR}:2377")
        self.m = m = Manager(files, state)
        await m.start()
        while not m.is_leader:
            await asyncio.sleep(0.02)
        ca = pki.RootCA.generate("c1")
        cluster = Cluster(id="c1")
        cluster.spec.dispatcher.heartbeat_period = 3600.0
        cluster.root_ca.cert_pem, cluster.root_ca.key_pem = ca.cert_pem, ca.key_pem
        txn = Transaction().create("clusters", cluster)
        for i in range(1, 4):
            txn.create("nodes", Node(id=f"n{i}", status=NodeStatus(state="ready", addr=f"192.0.2.{i}"),
                                     description=NodeDescription(
                                         hostname=f"node{i}", resources=Resources(4 * 10**9, 8 << 30))))
        await m.propose(txn)

        @web.middleware
        async def as_node_n1(request, handler):
            # What auth_middleware sets from a node's certificate: node n1, a worker.
            request[IDENTITY] = pki.NodeIdentity("n1", pki.ROLE_WORKER, "c1", NOW, NOW)
            return await handler(request)

        app = web.Application(middlewares=[error_middleware, as_node_n1,
                                           forward_middleware])
        app[CTX] = _Ctx(m, state)
        app.add_routes(controlapi.routes() + controlapi.node_routes())
        self.client = TestClient(TestServer(app))
        await self.client.start_server()
        for path, body in (("/networks/create", {"name": "ingress", "ingress": True}),
                           ("/secrets/create", {"name": "db", "data": "c2VjcmV0"}),
                           ("/configs/create", {"name": "site", "data": "eA=="}),
                           ("/networks/create", {"name": "backend", "attachable": True})):
            r = await self.client.post(path, json=body)
            assert r.status == 201, await r.text()
        r = await self.client.post("/services/create", json={"spec": service_body("target")})
        assert r.status == 201, await r.text()

    async def stop(self) -> None:
        await self.client.close()
        await self.m.stop()

    def close(self) -> None:
        async def cancel_the_rest() -> None:  # what the manager left (pending watch waits)
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
        try:
            self.run(self.stop())
        finally:
            self.run(cancel_the_rest())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)

    # -- the store as the properties see it --------------------------------------------------------
    def specs(self) -> dict:
        """What users write: the specs of every object, and which standalone tasks exist (the
        leader's loops change tasks' states and services' endpoints, never these)."""
        store = self.m.store
        out = {t: {o.id: codec.to_plain(o.spec) for o in store.list(t)}
               for t in ("clusters", "nodes", "services", "networks", "secrets", "configs")}
        out["containers"] = sorted(t.id for t in store.list("tasks") if t.standalone)
        return out


def service_body(name: str) -> dict:
    """A service spec with every field given a valid value, so that every path gets fuzzed."""
    spec = codec.to_plain(ServiceSpec(name=name))
    c = spec["task_template"]["container"]
    c.update(image="127.0.0.1:5000/busybox:1", command=["/bin/sh"], args=["-c", "sleep 9"],
             env=["A=1"], dir="/srv", user="nobody:nogroup", hostname="web-1",
             labels={"team": "a"}, stop_signal="SIGINT", stop_grace_period=3.5,
             mounts=[{"type": "volume", "source": "data", "target": "/data", "read_only": False},
                     {"type": "tmpfs", "source": "", "target": "/scratch", "read_only": False},
                     {"type": "bind", "source": "/var/log", "target": "/hostlog", "read_only": True}],
             secrets=[{"secret_name": "db", "target": "db", "uid": "0", "gid": "0", "mode": 0o400,
                       "secret_id": ""}],
             configs=[{"config_name": "site", "target": "/site.conf", "uid": "0", "gid": "0",
                       "mode": 0o444, "config_id": ""}],
             healthcheck={"test": ["CMD-SHELL", "true"], "interval": 5.0, "timeout": 1.0,
                          "start_period": 0.0, "retries": 3},
             tty=True, open_stdin=True, init=False, read_only=True, cap_add=["NET_ADMIN"],
             cap_drop=["MKNOD"], sysctls={"net.core.somaxconn": "512"},
             ulimits=[{"name": "nofile", "soft": 512, "hard": 1024}], groups=["staff", "50"],
             hosts=["10.1.2.3 db.local"],
             dns_config={"nameservers": ["10.0.0.2"], "search": ["corp"], "options": ["ndots:2"]})
    c["mounts"][0]["volume_options"] = {"labels": {"a": "b"}, "driver": "local",
                                        "driver_opts": {"type": "tmpfs", "device": "tmpfs"},
                                        "no_copy": False}
    c["mounts"][1]["tmpfs_options"] = {"size_bytes": 1 << 20, "mode": 0o1777}
    tt = spec["task_template"]
    tt["log_driver"] = {"name": "json-file", "options": {"max-size": "1m", "max-file": "2"}}
    tt["resources"] = {"limits": {"nano_cpus": 10**8, "memory_bytes": 64 << 20},
                       "reservations": {"nano_cpus": 0, "memory_bytes": 0}, "pids_limit": 64}
    tt["restart_policy"] = {"condition": "on-failure", "delay": 1.0, "max_attempts": 3, "window": 10.0}
    tt["placement"] = {"constraints": ["node.role!=manager"], "preferences": ["spread=node.labels.zone"],
                       "max_replicas": 2}
    tt["networks"] = [{"target": "backend", "aliases": ["web"]}]
    spec["mode"] = {"mode": "replicated", "replicas": 2, "max_concurrent": 0, "total_completions": 0}
    spec["endpoint_spec"] = {"mode": "vip", "ports": [
        {"name": "http", "protocol": "tcp", "target_port": 80, "published_port": 0,
         "publish_mode": "ingress"}]}
    spec["labels"] = {"tier": "web"}
    if name != "target":
        spec["depends_on"] = [{"service": "target", "condition": "service_healthy"},
                              {"service": "later", "condition": "service_completed_successfully"}]
    return spec


def container_body() -> dict:
    c = codec.to_plain(ContainerSpec(image="127.0.0.1:5000/busybox:1", args=["sleep", "9"],
                                     env=["B=2"], user="1000:1000"))
    c["mounts"] = [{"type": "tmpfs", "source": "", "target": "/t", "read_only": False}]
    return {"name": "probe", "container": c, "networks": ["backend"],
            "resources": {"limits": {"nano_cpus": 0, "memory_bytes": 32 << 20},
                          "reservations": {"nano_cpus": 0, "memory_bytes": 0}, "pids_limit": 0},
            "ports": [{"protocol": "tcp", "published_port": 8081, "target_port": 80}],
            "auto_remove": False, "restart_policy": {"name": "on-failure", "maximum_retry_count": 2}}


# ---- requests ----------------------------------------------------------------------------------
def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path in a JSON value (the root included), plus a new key under every object."""
    out = [prefix]
    if isinstance(value, dict):
        out.append(prefix + ("\x02unknown",))
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _set(body: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if head == "\x02unknown":
        head = "zz_unknown"
    if isinstance(body, dict):
        body[head] = _set(body.get(head), rest, value)
    elif isinstance(body, list) and isinstance(head, int) and head < len(body):
        body[head] = _set(body[head], rest, value)
    return body


def encode(body: Any) -> bytes:
    """JSON as a hostile client sends it: NaN and Infinity as bare words, nesting 1,000 deep."""
    text = json.dumps(body, allow_nan=True)
    return text.replace(json.dumps(DEEP), "[" * 1000 + "]" * 1000).encode("utf-8", "surrogatepass")


ENDPOINTS = ("service_create", "service_update", "network_create", "secret_create",
             "config_create", "swarm_update", "node_update", "container_create",
             "heartbeat", "status")


def base_request(c: Cluster1, endpoint: str) -> tuple[str, Any]:
    m = c.m
    if endpoint == "service_create":
        return "/services/create", {"spec": service_body("fuzzed")}
    if endpoint == "service_update":
        svc = m.store.by_name("services", "target")
        spec = codec.to_plain(svc.spec)
        spec["task_template"]["container"]["args"] = ["-c", "sleep 10"]
        return f"/services/target/update?version={svc.meta.version}", {"spec": spec}
    if endpoint == "network_create":
        return "/networks/create", {"name": "fuzznet", "driver": "overlay", "labels": {"a": "b"},
                                    "ipam": [{"subnet": "10.77.0.0/24", "gateway": "10.77.0.1"}],
                                    "attachable": True, "ingress": False}
    if endpoint in ("secret_create", "config_create"):
        return f"/{endpoint.split('_')[0]}s/create", {"name": "fuzzdata", "labels": {"a": "b"},
                                                       "data": base64.b64encode(b"abc").decode()}
    if endpoint == "swarm_update":
        cluster = m.cluster()
        return f"/swarm/update?version={cluster.meta.version}", {"spec": codec.to_plain(cluster.spec)}
    if endpoint == "node_update":
        return "/nodes/n2/update", {"spec": {"labels": {"zone": "a"}, "availability": "active",
                                             "role": "worker"}}
    if endpoint == "container_create":
        return "/dispatcher/containers", container_body()
    if endpoint == "heartbeat":
        return "/dispatcher/heartbeat", {"addr": "192.0.2.1", "description": codec.to_plain(
            NodeDescription(hostname="node1", resources=Resources(4 * 10**9, 8 << 30))),
            "raft_disk": {"free": 10**9, "path": "/var/lib/shoal"}}
    if endpoint == "status":
        task = next((t for t in m.store.list("tasks") if t.node_id == "n1"), None)
        return "/dispatcher/status", {"updates": [{"task_id": task.id if task else "none",
                                                   "state": "accepted", "message": "m", "err": "",
                                                   "exit_code": None, "container_id": "",
                                                   "health": "", "timestamp": 1.0}]}
    raise AssertionError(endpoint)


# What Hypothesis draws does not depend on the cluster's state (which changes as requests are
# accepted): an endpoint, then (pick, value) pairs; a pick chooses a path of the body modulo
# how many it has.
mutations = st.tuples(st.sampled_from(ENDPOINTS),
                      st.lists(st.tuples(st.integers(0, 2**16), values), min_size=1, max_size=3))


def build_request(c: Cluster1, drawn) -> tuple[str, str, Any]:
    endpoint, changes = drawn
    path, body = base_request(c, endpoint)
    for pick, value in changes:
        paths = _paths(body)
        body = _set(body, paths[pick % len(paths)], copy.deepcopy(value))  # HOSTILE is shared
    return endpoint, path, body


# ---- the properties ----------------------------------------------------------------------------
def worker_accepts(task_spec, tmp: Path) -> None:
    """The worker's own checks on a task made from an accepted spec: the executor builds the
    OCI spec from it (user looked up in an image that has that user, mounts, signal)."""
    from worker.executor import Executor, _signal
    from worker.images import Image
    from worker.taskrunner import container_config
    from worker.volumes import VolumeStore
    task = Task(id="t" * 25, service_name="fuzzed", slot=1, spec=task_spec)
    cfg = container_config(task, "node1")
    rootfs = tmp / "bundle" / "rootfs"
    (rootfs / "etc").mkdir(parents=True, exist_ok=True)
    name, _, group = (cfg.user or "root").partition(":")
    (rootfs / "etc" / "passwd").write_text(f"root:x:0:0::/root:/bin/sh\n"
                                           f"{name if not name.isdigit() else 'u'}:x:1000:1000::/:/bin/sh\n")
    # the supplementary groups the API accepted by name exist in this image too
    names = {group if group and not group.isdigit() else "g"} | {g for g in cfg.groups if not g.isdigit()}
    (rootfs / "etc" / "group").write_text("root:x:0:\n" + "".join(
        f"{n}:x:{1000 + i}:\n" for i, n in enumerate(sorted(names))))
    _signal(cfg.stop_signal)
    assert math.isfinite(cfg.stop_grace)
    # Bind sources are the node's business (they must exist there); the rest is checked as is.
    cfg.mounts = [mt for mt in cfg.mounts if mt.type != "bind"]
    # So are limits above the node daemon's own (it refuses them by name): fuzz the rest.
    import resource
    for u in cfg.ulimits:
        cap = resource.getrlimit(getattr(resource, f"RLIMIT_{u.name.upper()}", resource.RLIMIT_NOFILE))[1]
        if cap != resource.RLIM_INFINITY:
            u.hard = min(u.hard, cap)
            u.soft = min(u.soft, u.hard)
    ex = Executor.__new__(Executor)
    ex.volumes_dir = tmp / "volumes"
    ex.volumes = VolumeStore(ex.volumes_dir, users=lambda name: [])
    image = Image(ref=cfg.image, id="sha256:" + "0" * 64, config={}, layers=[], size=0, created="")
    # Secrets and configs arrive as read-only binds onto their targets.
    source = tmp / "data-file"
    source.write_text("x")
    refs = list(task_spec.container.secrets) + list(task_spec.container.configs)
    cfg.extra_binds = [(str(source), r.target, True) for r in refs]
    try:
        spec = ex._spec(cfg, image, tmp / "bundle", "/shoal/x")
    finally:
        _unmount_under(tmp / "volumes")  # a volume with driver options is really mounted
    json.dumps(spec, allow_nan=False)


def _unmount_under(root: Path) -> None:
    from common import linux
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(f"{root}/")), key=len, reverse=True):
        linux.umount(point, 2)  # MNT_DETACH


def _strict_json(raw: bytes) -> Any:
    return json.loads(raw, parse_constant=lambda name: pytest.fail(f"{name} in an answer"))


async def _send(c: Cluster1, endpoint: str, path: str, body: Any) -> tuple[int, Any]:
    r = await c.client.post(path, data=encode(body), headers={"Content-Type": "application/json"})
    raw = await r.read()
    return r.status, _strict_json(raw)


async def _check_accepted(c: Cluster1, endpoint: str, answer: Any, tmp: Path) -> None:
    m = c.m
    if endpoint in ("service_create", "service_update"):
        svc = m.store.find("services", answer["id"] if endpoint == "service_create" else "target")
        assert codec.unpack(codec.pack(svc)) == codec.to_plain(svc)
        again = parse_service_spec(json.loads(json.dumps(codec.to_plain(svc.spec), allow_nan=False)))
        assert again == svc.spec
        worker_accepts(svc.spec.task_template, tmp)
        r = await c.client.get(f"/services/{svc.id}")
        _strict_json(await r.read())
        if endpoint == "service_create":
            await c.client.delete(f"/services/{svc.id}")
    elif endpoint == "network_create":
        net = m.store.find("networks", answer["id"])
        json.dumps(codec.to_plain(net), allow_nan=False)
        await c.client.delete(f"/networks/{net.id}")
    elif endpoint in ("secret_create", "config_create"):
        table = endpoint.split("_")[0] + "s"
        obj = m.store.find(table, answer["id"])
        assert obj.spec.data and obj.spec.name
        await c.client.delete(f"/{table}/{obj.id}")
    elif endpoint == "swarm_update":
        validate_cluster_spec(m.cluster().spec)
        json.dumps(codec.to_plain(m.cluster().spec), allow_nan=False)
    elif endpoint == "container_create":
        task = m.store.get("tasks", answer["id"])
        worker_accepts(task.spec, tmp)
        await c.client.delete(f"/dispatcher/containers/{task.id}?force=true")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster1(tmp_path_factory.mktemp("fuzz"))
    try:
        c.run(c.start())
        yield c
    finally:
        c.close()


CONTROL_EXAMPLES = 5000


def test_control_api_refuses_hostile_requests_or_stores_valid_objects(cluster, tmp_path):
    @settings(max_examples=CONTROL_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutations)
    def one(drawn):
        endpoint, path, body = build_request(cluster, drawn)
        before = cluster.specs()
        status, answer = cluster.run(_send(cluster, endpoint, path, body))
        cluster.sent += 1
        assert status < 500, (endpoint, path, body if len(encode(body)) < 2000 else "(long)", answer)
        if status >= 400:
            assert isinstance(answer, dict) and answer.get("message"), answer
            assert "Error" not in answer["message"], answer  # no Python exception names
            assert cluster.specs() == before, (endpoint, body, answer)
        else:
            cluster.accepted += 1
            cluster.run(_check_accepted(cluster, endpoint, answer, tmp_path))

    one()
    assert cluster.sent >= CONTROL_EXAMPLES
    # Every answer the cluster gives about itself is strict JSON, and its loops never failed.
    for path in ("/services", "/networks", "/swarm", "/nodes", "/tasks", "/secrets", "/configs"):
        async def get(p=path):
            r = await cluster.client.get(p)
            assert r.status == 200
            _strict_json(await r.read())
        cluster.run(get())
    failures = getattr(cluster.m, "loop_failures", None)
    if callable(failures):
        failures = failures()
    assert not failures, failures
    print(f"control API fuzz: {cluster.sent} requests, {cluster.accepted} accepted")


# ---- the defects an outside test found (issue 13), one by one ------------------------------------
def _service(**changes) -> dict:
    spec = service_body("regress")
    for path, value in changes.items():
        _set(spec, tuple(int(p) if p.isdigit() else p for p in path.split("__")), value)
    return {"spec": spec}


REFUSED = [
    # 4: NaN and Infinity, anywhere
    ("/services/create", _service(task_template__container__stop_grace_period=NAN), "body"),
    ("/services/create", _service(task_template__restart_policy__delay=INF), "body"),
    ("/services/create", _service(update_config__monitor=-INF), "body"),
    # 6: a published or target port that is no integer
    ("/services/create", _service(endpoint_spec__ports__0__published_port=1.5),
     "endpoint_spec.ports[0].published_port"),
    ("/services/create", _service(endpoint_spec__ports__0__published_port=True),
     "endpoint_spec.ports[0].published_port"),
    ("/services/create", _service(endpoint_spec__ports__0__target_port="80"),
     "endpoint_spec.ports[0].target_port"),
    # 7: what used to answer 500 with a Python exception's name
    ("/services/create", {"spec": DEEP}, "nests deeper"),
    ("/services/create", _service(task_template=None), "task_template"),
    ("/services/create", _service(task_template__restart_policy=None), "task_template.restart_policy"),
    ("/services/create", _service(mode=None), "mode"),
    ("/services/create", _service(endpoint_spec__ports=[None]), "endpoint_spec.ports[0]"),
    ("/services/create", _service(task_template__container__mounts=[None]),
     "task_template.container.mounts[0]"),
    ("/services/create", _service(task_template__restart_policy__delay="5s"),
     "task_template.restart_policy.delay"),
    ("/services/create", _service(task_template__container__mounts__0__target=5),
     "task_template.container.mounts[0].target"),
    ("/services/create", _service(task_template__container__stop_signal=5),
     "task_template.container.stop_signal"),
    ("/services/create", _service(task_template__container__secrets__0__secret_name=["db"]),
     "task_template.container.secrets[0].secret_name"),
    ("/services/create", _service(update_config__parallelism=2**64), "update_config.parallelism"),
    ("/services/create", _service(task_template__force_update=2**64), "task_template.force_update"),
    ("/nodes/n2/update", {"spec": None}, "spec"),
    ("/swarm/update", {"spec": {"dispatcher": None}}, "spec.dispatcher"),
    # 8: half-valid objects that failed later, on a worker
    ("/services/create", _service(task_template__container__hostname=5),
     "task_template.container.hostname"),
    ("/services/create", _service(task_template__container__hostname="a b"),
     "task_template.container.hostname"),
    ("/services/create", _service(task_template__container__labels={"a": 5}),
     "task_template.container.labels.a"),
    ("/services/create", _service(task_template__container__user=5), "task_template.container.user"),
    ("/services/create", _service(task_template__container__user="a:b:c"),
     "task_template.container.user"),
    ("/services/create", _service(task_template__container__dir=["x"]), "task_template.container.dir"),
    ("/services/create", _service(task_template__container__secrets__0__uid="9999999999"),
     "task_template.container.secrets[0].uid"),
    ("/services/create", _service(task_template__container__mounts__0__target="/x/../../.."),
     "task_template.container.mounts[0].target"),
    ("/services/create", _service(task_template__container__secrets__0__target="/proc/x"),
     "task_template.container.secrets[0].target"),
    ("/services/create", _service(task_template__container__configs__0__target="/sys/x"),
     "task_template.container.configs[0].target"),
    ("/services/create", _service(task_template__container__configs__0__target="/etc"),
     "task_template.container.configs[0].target"),
    ("/services/create", _service(task_template__container__mounts__2__read_only="no"),
     "task_template.container.mounts[2].read_only"),
    ("/networks/create", {"name": "n8", "attachable": "no"}, "attachable"),
    ("/networks/create", {"name": "n8", "ipam": [{"subnet": "127.0.0.0/24"}]}, "ipam[0].subnet"),
    ("/networks/create", {"name": "n8", "ipam": [{"subnet": "224.1.0.0/24"}]}, "ipam[0].subnet"),
    ("/networks/create", {"name": "n8", "ipam": [{"subnet": "192.0.2.0/24"}]}, "subnet"),
]


@pytest.mark.parametrize("path,body,field", REFUSED,
                         ids=[f"{i}-{r[2]}" for i, r in enumerate(REFUSED)])
def test_each_defect_is_refused_at_the_edge_naming_the_field(cluster, path, body, field):
    before = cluster.specs()
    if path == "/swarm/update":
        path += f"?version={cluster.m.cluster().meta.version}"
    status, answer = cluster.run(_send(cluster, "", path, body))
    assert status in (400, 409), answer
    assert field in answer["message"], answer
    assert "Error" not in answer["message"]
    assert cluster.specs() == before


SWARM_JUNK = [
    ("orchestration", "task_history_retention_limit", "x"),
    ("orchestration", "task_history_retention_limit", -1),
    ("networking", "default_addr_pools", ["junk"]),
    ("networking", "default_addr_pools", ["127.0.0.0/8"]),
    ("networking", "subnet_size", 99),
    ("ca_config", "node_cert_expiry", 1e30),
    ("ca_config", "node_cert_expiry", INF),
    ("raft", "snapshot_interval", "x"),
    ("raft", "election_tick_min", 0),
    ("dispatcher", "heartbeat_period", True),
]


def test_swarm_update_junk_is_refused_and_the_leader_keeps_scheduling(cluster):
    """Defect 5 and must-show 4: each value is refused naming its field; afterwards a new
    service still gets its tasks."""
    # The module's cluster may have taken valid updates from the fuzzing before: what counts is
    # that the refused ones changed nothing.
    before = codec.to_plain(cluster.m.cluster().spec)
    for section, name, value in SWARM_JUNK:
        cluster_obj = cluster.m.cluster()
        spec = codec.to_plain(cluster_obj.spec)
        spec[section][name] = value
        status, answer = cluster.run(_send(cluster, "", f"/swarm/update?version="
                                           f"{cluster_obj.meta.version}", {"spec": spec}))
        # NaN and Infinity are refused as JSON, before any field is read
        finite = not isinstance(value, float) or math.isfinite(value)
        expected = f"spec.{section}.{name}" if finite else "not a JSON number"
        assert status == 400 and expected in answer["message"], (name, value, answer)
    for junk in ({"name": 5}, {"labels": {"a": 5}}, {"labels": []}):
        spec = {**codec.to_plain(cluster.m.cluster().spec), **junk}
        status, answer = cluster.run(_send(cluster, "", "/swarm/update", {"spec": spec}))
        assert status == 400 and "spec." in answer["message"], answer
    assert codec.to_plain(cluster.m.cluster().spec) == before

    async def scheduled() -> None:
        body = {"spec": {"name": "after-junk", "mode": {"replicas": 2},
                         "task_template": {"container": {"image": "busybox:1"}}}}
        r = await cluster.client.post("/services/create", json=body)
        assert r.status == 201, await r.text()
        sid = (await r.json())["id"]
        for _ in range(200):
            tasks = [t for t in cluster.m.store.by_index("tasks", "service_id", sid)
                     if t.node_id and t.status.state == "assigned"]
            if len(tasks) == 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the new service's tasks were not scheduled")
        await cluster.client.delete(f"/services/{sid}")
    cluster.run(scheduled())


def test_an_image_user_that_is_no_number_is_a_clear_error(tmp_path):
    """Defect 8: an image config's User "²" (str.isdigit() says yes, int() says no)."""
    from worker.executor import resolve_user
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    for user in ("\u00b2", "0:\u00b2", "4294967296", "a:b:c"):
        with pytest.raises(errors.InvalidArgument) as exc:
            resolve_user(tmp_path, user)
        assert "user" in exc.value.message
    assert resolve_user(tmp_path, "0:0")[:2] == (0, 0)


def test_strict_decoding_names_the_path_and_refuses_what_json_should_not_carry():
    from common.model import ServiceSpec as Spec
    cases = [({"mode": {"replicas": True}}, "mode.replicas"),
             ({"labels": {"a": "\x00"}}, "labels.a"),
             ({"labels": {"a": "\ud800"}}, "labels.a"),
             ({"mode": {"replicas": 2**63}}, "mode.replicas"),
             ({"task_template": {"container": {"args": ["x" * 200_000]}}},
              "task_template.container.args[0]"),
             ({"nmae": "typo"}, "nmae")]
    for data, where in cases:
        with pytest.raises(errors.InvalidArgument) as exc:
            strict.decode(Spec, data)
        assert exc.value.field == where, (data, exc.value.message)
    with pytest.raises(errors.InvalidArgument):
        strict.loads(b'{"a": NaN}')
    with pytest.raises(errors.InvalidArgument):
        strict.loads(b"[" * 100 + b"]" * 100)


# ---- the node's own write endpoints (its local socket) --------------------------------------------
class _NodeCtx:
    """What the node API's handlers reach: a real image store and executor (empty), no swarm
    (so a container run that passes its checks ends at 'not in a swarm'), not locked."""

    def __init__(self, tmp: Path) -> None:
        from worker.executor import Executor
        from worker.images import ImageStore
        self.images = ImageStore(tmp / "images")
        self.executor = Executor(tmp / "executor", self.images)
        self.insecure_registries: list[str] = []
        self.agent = None
        self.manager = None
        self.locked = False
        self.role_lock = asyncio.Lock()


NODE_ENDPOINTS = {
    "/containers/c1/exec": {"argv": ["sh", "-c", "true"], "timeout": 5},
    "/images/import": {"path": "/nonexistent/image.tar", "ref": "busybox:1"},
    "/images/pull": {"ref": "busybox:1", "insecure": False},
    "/swarm/unlock": {"unlock_key": "SHLKEY-1-x"},
    "/containers/run": container_body(),
}
NODE_EXAMPLES = 1000


def test_node_api_refuses_hostile_requests(tmp_path):
    from shoal import autolock, standaloneapi, workerapi

    async def start() -> TestClient:
        app = web.Application(middlewares=[error_middleware])
        app[CTX] = _NodeCtx(tmp_path)
        app.add_routes(workerapi.local_routes() + standaloneapi.routes() + autolock.local_routes())
        client = TestClient(TestServer(app))
        await client.start_server()
        return client

    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(start())
    answers: dict[int, int] = {}
    try:
        @settings(max_examples=NODE_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(sorted(NODE_ENDPOINTS)),
               st.lists(st.tuples(st.integers(0, 2**16), values), min_size=1, max_size=3))
        def one(path, changes):
            body = copy.deepcopy(NODE_ENDPOINTS[path])
            for pick, value in changes:
                paths = _paths(body)
                body = _set(body, paths[pick % len(paths)], copy.deepcopy(value))

            async def send():
                r = await client.post(path, data=encode(body),
                                      headers={"Content-Type": "application/json"})
                return r.status, _strict_json(await r.read())
            status, answer = loop.run_until_complete(send())
            answers[status] = answers.get(status, 0) + 1
            # 503 is the one valid end here: the request passed its checks on a node outside
            # a swarm (container run), which says so by its code.
            assert status < 500 or answer.get("code") == "not_in_swarm", (path, body, answer)
            assert "Error" not in answer.get("message", ""), answer

        one()
    finally:
        loop.run_until_complete(client.close())
        loop.close()
    assert sum(answers.values()) >= NODE_EXAMPLES
    print(f"node API fuzz: answers by status {sorted(answers.items())}")


def test_an_exec_argument_with_a_nul_or_past_an_argument_s_size_is_refused(tmp_path):
    """Issue 13, defect 7: an exec argument with a NUL byte, or 200 kB long, answered 500."""
    from shoal import workerapi

    async def go() -> None:
        app = web.Application(middlewares=[error_middleware])
        app[CTX] = _NodeCtx(tmp_path)
        app.add_routes(workerapi.local_routes())
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            for argv, why in ((["sh", "a\x00b"], "NUL"), (["sh", "x" * 200_000], "at most")):
                r = await client.post("/containers/c1/exec", json={"argv": argv})
                body = await r.json()
                assert r.status == 400 and "argv[1]" in body["message"] and why in body["message"], body
        finally:
            await client.close()
    asyncio.run(go())
