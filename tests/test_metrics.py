"""Metrics (issue 19): each collector's exposition parsed with prometheus_client's own parser.

Real parts throughout: a bare Store, a one-member raft manager with its leader loops, runc
containers and their cgroups, an image store pulling from Debian's docker-registry, the aiohttp
listener. The one stand-in is FakeRunner, the task runner's table of controllers (a runner
needs an agent and managers).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from common.model import (Cluster, ContainerSpec, Node, NodeStatus, RegistryAuth, RestartPolicy,
                          Secret, SecretSpec, Service, ServiceMode, ServiceSpec, Task, TaskSpec,
                          TaskStatus, UpdateStatus)
from common.nodestate import NodeFiles, NodeState
from manager.dispatcher.dispatcher import Dispatcher
from manager.manager import Manager
from manager.metrics import CarriedCount, ManagerCollector, ManagerMetrics, RECENT_WINDOW
from manager.state.store import Store, Transaction
from shoal.metrics_server import (MetricsServer, api_latency_middleware, parse_metrics_addr)
from tests.store_manager import StoreManager
from worker.executor import ContainerConfig, Executor, cgroup_mounts
from worker.images import ImageStore
from worker.metrics import CgroupRoots, NodeCollector, PullMetrics

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runc, cgroups)")
needs_runc = pytest.mark.skipif(shutil.which("runc") is None or not ib.busybox_available(),
                                reason="needs runc and busybox-static")


def samples(text: str | bytes) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, metric: str, /, **labels) -> float:
    return found[(metric, tuple(sorted(labels.items())))]


def scrape(collector) -> dict:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return samples(generate_latest(registry))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the listener's address -----------------------------------------------------------------
def test_metrics_addr_is_loopback_unless_the_exposure_is_acknowledged():
    assert parse_metrics_addr("127.0.0.1:9323", False) == "127.0.0.1:9323"
    assert parse_metrics_addr("127.0.0.1", False) == "127.0.0.1:9323"
    assert parse_metrics_addr("[::1]:9000", False) == "[::1]:9000"
    assert parse_metrics_addr("::1", False) == "[::1]:9323"
    with pytest.raises(ValueError, match="--metrics-addr-insecure"):
        parse_metrics_addr("0.0.0.0:9323", False)
    with pytest.raises(ValueError, match="not a loopback address"):
        parse_metrics_addr("10.1.2.3:9323", False)
    assert parse_metrics_addr("0.0.0.0:9323", True) == "0.0.0.0:9323"
    for bad in ("localhost:9323", "127.0.0.1:0", "127.0.0.1:http"):
        with pytest.raises(ValueError, match="--metrics-addr"):
            parse_metrics_addr(bad, False)


def test_shoald_refuses_a_public_metrics_addr_and_says_how(capsys):
    from shoal.daemon import main
    with pytest.raises(SystemExit) as exit_:
        main(["--metrics-addr", "0.0.0.0:9323"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--metrics-addr '0.0.0.0:9323' is not a loopback address" in err
    assert "127.0.0.1:9323" in err and "--metrics-addr-insecure" in err
    with pytest.raises(SystemExit):
        main(["--metrics-addr-insecure"])
    assert "--metrics-addr-insecure needs --metrics-addr" in capsys.readouterr().err


# ---- the manager: services, store, dispatcher on a bare store ------------------------------
@dataclass
class LeaderView:
    """A manager without raft (the collector reads raft only when there is one)."""
    store: Store
    dispatcher: Dispatcher
    raft: object = None
    is_leader: bool = True


def _task(tid: str, svc: Service, state: str, desired: str = "running", at: float = 0.0) -> Task:
    return Task(id=tid, service_id=svc.id, service_name=svc.spec.name, slot=1, node_id="n1",
                desired_state=desired, status=TaskStatus(state=state, timestamp=at))


def _service(name: str, replicas: int, mode: str = "replicated", **kw) -> Service:
    return Service(id=f"svc-{name}", spec=ServiceSpec(
        name=name, mode=ServiceMode(mode=mode, replicas=replicas),
        task_template=TaskSpec(container=ContainerSpec(image="busybox:1"))), **kw)


def test_service_metrics_desired_running_update_state_and_recent_failures():
    sm = StoreManager()
    now = time.time()
    web_ = _service("web", 3, update_status=UpdateStatus(state="paused"))
    agent = _service("agent", 0, mode="global")
    txn = Transaction().create("services", web_).create("services", agent)
    for i, (state, desired, age) in enumerate([
            ("running", "running", 0), ("running", "running", 0), ("pending", "running", 0),
            ("failed", "shutdown", 30), ("failed", "shutdown", RECENT_WINDOW + 60),
            ("rejected", "shutdown", 10), ("rejected", "running", 20),
            ("shutdown", "shutdown", 5)]):
        txn.create("tasks", _task(f"w{i}", web_, state, desired, now - age))
    txn.create("tasks", _task("a1", agent, "running"))
    txn.create("tasks", _task("a2", agent, "assigned"))
    sm.commit(txn)
    found = scrape(ManagerCollector(lambda: LeaderView(sm.store, Dispatcher(sm, sm)),
                                    clock=lambda: now))
    assert value(found, "shoal_manager_leader") == 1
    assert value(found, "shoal_service_desired_tasks", service="web") == 3
    assert value(found, "shoal_service_running_tasks", service="web") == 2
    assert value(found, "shoal_service_replicas", service="web", state="desired") == 3
    assert value(found, "shoal_service_replicas", service="web", state="running") == 2
    assert value(found, "shoal_service_tasks_failed_5m", service="web") == 1
    assert value(found, "shoal_service_tasks_rejected_5m", service="web") == 2
    assert value(found, "shoal_service_update_state", service="web", state="paused") == 1
    assert value(found, "shoal_service_update_state", service="web", state="updating") == 0
    assert value(found, "shoal_service_desired_tasks", service="agent") == 2
    assert value(found, "shoal_service_running_tasks", service="agent") == 1
    assert value(found, "shoal_service_update_state", service="agent", state="none") == 1
    assert value(found, "shoal_store_objects", table="tasks") == 10
    assert value(found, "shoal_store_objects", table="services") == 2
    # a follower says nothing per service: the leader's figures are the ones to trust
    follower = scrape(ManagerCollector(lambda: LeaderView(sm.store, Dispatcher(sm, sm),
                                                          is_leader=False)))
    assert value(follower, "shoal_manager_leader") == 0
    assert not [k for k in follower if k[0].startswith("shoal_service_")]
    assert value(follower, "shoal_dispatcher_sessions") == 0
    # not a manager: nothing of a manager at all
    assert scrape(ManagerCollector(lambda: None)) == {}


def test_dispatcher_heartbeats_and_sessions_survive_a_new_dispatcher():
    sm = StoreManager()
    sm.commit(Transaction().create("clusters", Cluster(id="c1"))
              .create("nodes", Node(id="n1", status=NodeStatus(state="ready", addr="10.0.0.1"))))
    view = LeaderView(sm.store, Dispatcher(sm, SimpleNamespace(
        node_id="m", manager_api_addrs=lambda: [], leader_api_addr=lambda: None)))
    collector = ManagerCollector(lambda: view)

    async def beats(n: int) -> None:
        for _ in range(n):
            await view.dispatcher.heartbeat("n1", "10.0.0.1", None)
    asyncio.run(beats(3))
    found = scrape(collector)
    assert value(found, "shoal_dispatcher_heartbeats_total") == 3
    assert value(found, "shoal_dispatcher_sessions") == 1
    # leadership moved away and back: a fresh dispatcher, and the counter goes on from 3
    view.dispatcher = Dispatcher(sm, view.dispatcher.directory)
    asyncio.run(beats(2))
    found = scrape(collector)
    assert value(found, "shoal_dispatcher_heartbeats_total") == 5


def test_carried_count_adds_the_replaced_sources_last_counts():
    count = CarriedCount(lambda o: o.n)
    a, b = SimpleNamespace(n=2), SimpleNamespace(n=0)
    assert count.total(a) == 2
    a.n = 4                         # counted after the last scrape, before it was replaced
    assert count.total(b) == 4
    b.n = 1
    assert count.total(b) == 5
    assert count.total(None) == 5   # no source for now (a manager restarting)


def test_no_secret_or_credential_reaches_the_exposition():
    sm = StoreManager()
    svc = _service("web", 1)
    svc.spec.task_template.container.env = ["DB_PASSWORD=hunter2-env"]
    sm.commit(Transaction().create("services", svc)
              .create("tasks", _task("t1", svc, "running"))
              .create("secrets", Secret(id="s1", spec=SecretSpec(name="db", data=b"hunter2-secret")))
              .create("registry_auths", RegistryAuth(id=svc.id, registry="reg:5000",
                                                     username="u", password="hunter2-registry")))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ManagerCollector(lambda: LeaderView(sm.store, Dispatcher(sm, sm))))
    text = generate_latest(registry).decode()
    assert "hunter2" not in text and "DB_PASSWORD" not in text
    assert 'shoal_store_objects{table="registry_auths"} 1.0' in text


# ---- the manager on a real one-member raft ----------------------------------------------
RAFT_ADDR = "127.0.0.97"  # a loopback address of its own: other raft tests use .93-.95


def test_raft_commit_latency_leader_changes_scheduling_delay_and_services(tmp_path):
    from tests.raft_harness import seed_cluster

    async def main() -> None:
        files = NodeFiles(tmp_path)
        files.prepare()
        files.save_raft_secret(b"m" * 32)
        state = NodeState(node_id="m1", cluster_id="c1", role="manager",
                          advertise_addr=RAFT_ADDR, listen_addr=f"{RAFT_ADDR}:2377")
        m = Manager(files, state)
        registry = CollectorRegistry(auto_describe=False)
        metrics = ManagerMetrics(registry, lambda: m)
        await m.start()
        metrics.attach(m)
        try:
            await wait_for(lambda: m.is_leader)
            await m.propose(seed_cluster())
            # committed and applied are two steps of raft's thread: the lag settles at 0
            await wait_for(lambda: value(samples(generate_latest(registry)),
                                         "shoal_raft_apply_lag_entries") == 0)
            before = samples(generate_latest(registry))
            assert value(before, "shoal_raft_leader_changes_total") == 1
            assert value(before, "shoal_raft_term") >= 1
            assert value(before, "shoal_raft_commit_latency_seconds_count") >= 1
            svc = _service("web", 2)
            svc.spec.task_template.restart_policy = RestartPolicy(delay=0.0)
            await m.propose(Transaction().create("services", svc))
            def assigned() -> list[Task]:
                tasks = m.store.by_index("tasks", "service_id", svc.id)
                return [t for t in tasks if t.status.state == "assigned"]
            tasks = await wait_for(lambda: len(assigned()) == 2 and assigned())
            for t in tasks:
                await m.dispatcher.report_status(t.node_id, [{"task_id": t.id,
                                                              "state": "running"}])
            after = samples(generate_latest(registry))
            assert value(after, "shoal_raft_commit_index") > value(before, "shoal_raft_commit_index")
            assert (value(after, "shoal_raft_commit_latency_seconds_count")
                    > value(before, "shoal_raft_commit_latency_seconds_count"))
            assert value(after, "shoal_scheduler_delay_seconds_count") == 2
            assert 0 <= value(after, "shoal_scheduler_delay_seconds_sum") < 10
            assert value(after, "shoal_service_desired_tasks", service="web") == 2
            assert value(after, "shoal_service_running_tasks", service="web") == 2
            assert value(after, "shoal_store_objects", table="nodes") == 3
        finally:
            await m.stop()
    asyncio.run(asyncio.wait_for(main(), 90))


async def wait_for(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# ---- the node -------------------------------------------------------------------------------
@dataclass
class FakeRunner:
    """Stands in for worker.taskrunner.TaskRunner: its controllers, each with a state."""
    controllers: dict = field(default_factory=dict)


def test_cgroup_roots_find_the_controllers_and_read_this_machines_root_cgroup():
    v1 = CgroupRoots.find([("/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
                           ("/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
                           ("/sys/fs/cgroup/unified", "cgroup2", "rw")])
    assert v1 == CgroupRoots("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/memory", None)
    assert CgroupRoots.find([("/sys/fs/cgroup", "cgroup2", "rw")]).unified == "/sys/fs/cgroup"
    here = CgroupRoots.find(cgroup_mounts())
    assert here.cpu_seconds("") > 0 and here.memory_bytes("") > 0  # the root cgroup: everything
    assert here.cpu_seconds("/no-such-cgroup") is None


@pytest.fixture(scope="module")
def images_root(tmp_path_factory) -> Path:
    if not ib.busybox_available():
        pytest.skip("needs busybox-static")
    return ib.busybox_store(tmp_path_factory.mktemp("images"))


@needs_root
@needs_runc
def test_node_metrics_tasks_by_state_and_real_containers_cpu_memory_restarts(ex_root, images_root):
    async def main() -> None:
        ex = Executor(ex_root, ImageStore(images_root))
        runner = FakeRunner({f"t{i}": SimpleNamespace(state=s)
                             for i, s in enumerate(["running", "running", "preparing"])})
        collector = NodeCollector(ex, lambda: runner)
        busy = ContainerConfig(id="busy", name="web.1.busy", image="busybox:1",
                               labels={"shoal.service.name": "web"},
                               command=["sh", "-c", "i=0; while [ $i -lt 30000 ]; do "
                                        "i=$((i+1)); done; echo done; sleep 60"])
        quick = ContainerConfig(id="quick", name="web.2.quick", image="busybox:1",
                                labels={"shoal.service.name": "web"}, command=["true"])
        try:
            await ex.create(busy)
            await ex.start("busy")
            await ex.create(quick)
            await ex.start("quick")
            await ex.wait("quick")
            await ex.restart("quick")
            await ex.wait("quick")
            await wait_for(lambda: "done" in (ex.containers_dir / "busy" / "stdout.log")
                           .read_text(), timeout=30)
            found = scrape(collector)
        finally:
            for cid in ("busy", "quick"):
                try:
                    await ex.stop(cid, None, 1)
                except Exception:
                    pass
                await ex.remove(cid)
            await ex.close()
        assert value(found, "shoal_node_tasks", state="running") == 2
        assert value(found, "shoal_node_tasks", state="preparing") == 1
        assert value(found, "shoal_node_tasks", state="failed") == 0
        busy_labels = dict(container_id="busy", name="web.1.busy", service="web")
        assert value(found, "shoal_container_cpu_seconds_total", **busy_labels) > 0
        assert value(found, "shoal_container_memory_usage_bytes", **busy_labels) > 0
        assert value(found, "shoal_container_restarts_total", **busy_labels) == 0
        quick_labels = dict(container_id="quick", name="web.2.quick", service="web")
        assert value(found, "shoal_container_restarts_total", **quick_labels) == 1
        # an exited container has no cgroup figures, only its restarts
        assert ("shoal_container_memory_usage_bytes",
                tuple(sorted(quick_labels.items()))) not in found
    asyncio.run(main())


def test_image_pulls_counted_by_result_with_their_duration(tmp_path, request):
    registry_ = CollectorRegistry(auto_describe=False)
    pulls = PullMetrics(registry_)
    images = ImageStore(tmp_path / "images")
    images.pull_observers.append(pulls.observe)

    async def failing() -> None:
        with pytest.raises(Exception, match="not found on this node"):
            await images.pull("busybox:nothere")
    asyncio.run(failing())
    found = samples(generate_latest(registry_))
    assert value(found, "shoal_image_pulls_total", result="failure") == 1
    assert value(found, "shoal_image_pulls_total", result="success") == 0
    assert value(found, "shoal_image_pull_duration_seconds_count") == 0
    if not ib.LocalRegistry.available() or not ib.busybox_available():
        pytest.skip("a successful pull needs Debian's docker-registry and busybox-static")
    reg = request.getfixturevalue("registry")
    layout = ib.build_busybox_oci_layout(tmp_path / "layout", "1")

    async def succeeding() -> None:
        await ib.push_layout(reg.url, layout, "metrics/busybox", "1")
        await images.pull(f"{reg.host}/metrics/busybox:1",
                          insecure_registries=frozenset({reg.host}))
    asyncio.run(succeeding())
    found = samples(generate_latest(registry_))
    assert value(found, "shoal_image_pulls_total", result="success") == 1
    assert value(found, "shoal_image_pull_duration_seconds_count") == 1
    assert value(found, "shoal_image_pull_duration_seconds_sum") > 0


# ---- the API and the listener ---------------------------------------------------------------
def test_api_latency_is_labelled_by_route_pattern_never_by_raw_path():
    registry = CollectorRegistry(auto_describe=False)
    hist = Histogram("shoal_api_request_duration_seconds", "t", ["listener", "method", "route"],
                     registry=registry)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=request.match_info["id"])

    async def main() -> None:
        app = web.Application(middlewares=[api_latency_middleware(hist, "local")])
        app.router.add_get("/services/{id}", handler)
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            assert (await client.get("/services/private-name-1")).status == 200
            assert (await client.get("/nowhere/private-name-2")).status == 404
            assert (await client.request("PROPFIND", "/services/x")).status == 405
        finally:
            await client.close()
    asyncio.run(main())
    text = generate_latest(registry).decode()
    assert "private-name" not in text and "PROPFIND" not in text
    found = samples(text)
    assert value(found, "shoal_api_request_duration_seconds_count", listener="local",
                 method="GET", route="/services/{id}") == 1
    assert value(found, "shoal_api_request_duration_seconds_count", listener="local",
                 method="GET", route="unmatched") == 1
    assert value(found, "shoal_api_request_duration_seconds_count", listener="local",
                 method="other", route="unmatched") == 1  # 405: no route took it


def test_docker_api_latency_is_labelled_by_its_route_pattern():
    """The Docker API routes with one catch-all: its own matcher names the pattern, so its
    requests are timed by route too, and no id or name from a URL reaches a label."""
    from shoal.dockerapi.app import make_app
    registry = CollectorRegistry(auto_describe=False)
    hist = Histogram("shoal_api_request_duration_seconds", "t", ["listener", "method", "route"],
                     registry=registry)

    class Daemon:   # what make_app reads for metrics, and the swarm state _ping reports
        state = type("State", (), {"in_swarm": False})()
        locked, manager = False, None

        class metrics:
            @staticmethod
            def api_middleware(listener):
                return api_latency_middleware(hist, listener)

    async def main() -> None:
        client = TestClient(TestServer(make_app(Daemon())))
        await client.start_server()
        try:
            assert (await client.get("/v1.43/_ping")).status == 200
            await client.get("/v1.43/networks/private-name-3")  # answered, whatever it says
            assert (await client.get("/nowhere/private-name-4")).status == 404
        finally:
            await client.close()
    asyncio.run(main())
    text = generate_latest(registry).decode()
    assert "private-name" not in text
    found = samples(text)
    for route in ("/_ping", "/networks/{id}", "unmatched"):
        assert value(found, "shoal_api_request_duration_seconds_count", listener="docker",
                     method="GET", route=route) == 1, (route, text)


@dataclass
class NodeParts:
    """What MetricsServer reads of a daemon: real executor and image store, no roles."""
    executor: Executor
    images: ImageStore
    agent: object = None
    manager: object = None
    metrics: object = None


@needs_root
def test_two_daemons_in_one_process_serve_their_own_metrics(tmp_path):
    async def main() -> None:
        servers = []
        for name in ("a", "b"):
            images = ImageStore(tmp_path / name / "images")
            parts = NodeParts(Executor(tmp_path / name / "executor", images), images)
            parts.agent = SimpleNamespace(runner=FakeRunner(
                {"t": SimpleNamespace(state="running")} if name == "a" else {}))
            server = MetricsServer(parts, f"127.0.0.1:{free_port()}")
            parts.metrics = server
            await server.start()
            servers.append(server)
        try:
            texts = [await asyncio.to_thread(_get, f"http://{s.addr}/metrics") for s in servers]
            openmetrics = await asyncio.to_thread(
                _get, f"http://{servers[0].addr}/metrics",
                "application/openmetrics-text; version=1.0.0")
        finally:
            for s in servers:
                await s.stop()
        a, b = (samples(t) for t in texts)
        assert value(a, "shoal_node_tasks", state="running") == 1
        assert value(b, "shoal_node_tasks", state="running") == 0
        assert value(a, "shoal_image_pulls_total", result="failure") == 0
        assert value(a, "process_resident_memory_bytes") > 0
        assert not [k for k in a if k[0].startswith("shoal_raft_")]  # no manager here
        assert openmetrics.endswith("# EOF\n") and "shoal_node_tasks" in openmetrics
    asyncio.run(main())


def _get(url: str, accept: str = "") -> str:
    """The body; the Content-Type must be the one Prometheus asked for (Accept), else the
    classic text format."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as r:
        wanted = "application/openmetrics-text" if accept else "text/plain; version=0.0.4"
        assert r.headers["Content-Type"].startswith(wanted)
        return r.read().decode()


@needs_root
def test_a_taken_metrics_port_is_a_clear_error(tmp_path):
    from common import errors
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"

        async def main() -> None:
            images = ImageStore(tmp_path / "images")
            server = MetricsServer(NodeParts(Executor(tmp_path / "ex", images), images), addr)
            with pytest.raises(errors.FailedPrecondition,
                               match=f"cannot serve metrics on --metrics-addr {addr}.*pick another"):
                await server.start()
        asyncio.run(main())
