"""depends_on (Compose's, which Swarm ignores): a service that never had a task gets none until
its dependencies meet their conditions; once it has had tasks it is never gated again.

On the leader's loops without raft (tests/loops_harness.py); agents are played by writing what
they would report, as tests/test_orchestration.py does. The control API's part (refusals, the
wait shown by inspect and ls) goes through the real handlers on the same leader.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common import codec, errors
from common.httpserver import CTX, error_middleware
from common.model import (ContainerSpec, RestartPolicy, Service, ServiceDependency, ServiceMode,
                          ServiceSpec, TaskSpec)
from manager.controlapi import services as services_api
from manager.orchestrator.dependencies import dependency_wait
from manager.specs.dependencies import path_between, validate_dependencies
from manager.state.store import Transaction
from tests.raft_harness import Harness, wait


def spec(name: str, replicas: int = 1, mode: str = "replicated",
         depends: tuple[tuple[str, str], ...] = ()) -> ServiceSpec:
    return ServiceSpec(
        name=name, mode=ServiceMode(mode=mode, replicas=replicas),
        task_template=TaskSpec(container=ContainerSpec(image="busybox:1"),
                               restart_policy=RestartPolicy(delay=0.0)),
        depends_on=[ServiceDependency(service=s, condition=c) for s, c in depends])


def service(name: str, replicas: int = 1, mode: str = "replicated",
            depends: tuple[tuple[str, str], ...] = ()) -> Service:
    return Service(id=f"svc-{name}", spec=spec(name, replicas, mode, depends))


async def create(h: Harness, svc: Service) -> None:
    await h.m.propose(Transaction().create("services", svc))


def live(h: Harness, name: str) -> list:
    """The service's tasks that are meant to run and have not ended (by name: services created
    through the API have ids of their own)."""
    svc = h.m.store.by_name("services", name)
    tasks = h.m.store.by_index("tasks", "service_id", svc.id) if svc else []
    return [t for t in tasks if t.desired_state == "running" and not t.terminal]


def placed(h: Harness, name: str, count: int):
    """Waits until `count` live tasks of the service are on nodes; returns them."""
    return wait(lambda: len(ts := [t for t in live(h, name) if t.node_id]) == count and ts)


def gate(h: Harness, name: str):
    return dependency_wait(h.m.store.by_name("services", name), h.m.store)


async def stays_without_tasks(h: Harness, name: str, seconds: float = 0.3) -> None:
    """Several orchestration rounds pass (they are 20 ms apart) and still no task."""
    await asyncio.sleep(seconds)
    assert h.tasks(name, None) == [], f"{name} got tasks while gated: {gate(h, name)}"


# ---- the gate --------------------------------------------------------------------------------
def test_service_healthy_waits_for_every_task_to_be_healthy(loops):
    async def scenario(h):
        await create(h, service("db", 2))
        await create(h, service("web", 3, depends=(("db", "service_healthy"),)))
        db = await placed(h, "db", 2)
        await stays_without_tasks(h, "web")
        assert gate(h, "web") == "waiting for service db to be healthy (0/2 tasks healthy)"
        # Running, its health check still starting: not healthy yet.
        for t in db:
            await h.report(t, "running", health="starting")
        await stays_without_tasks(h, "web")
        await h.report(db[0], "running", health="healthy")
        await stays_without_tasks(h, "web")
        assert gate(h, "web") == "waiting for service db to be healthy (1/2 tasks healthy)"
        await h.report(db[1], "running", health="healthy")
        await placed(h, "web", 3)
        assert gate(h, "web") is None
    loops(scenario)


def test_service_started_and_a_task_without_health_check_counts_as_healthy(loops):
    async def scenario(h):
        await create(h, service("db", 2))
        await create(h, service("web", 1, depends=(("db", "service_started"),)))
        await create(h, service("api", 1, depends=(("db", "service_healthy"),)))
        db = await placed(h, "db", 2)
        await h.report(db[0], "running")
        await stays_without_tasks(h, "web")
        assert gate(h, "web") == "waiting for service db to start (1/2 tasks running)"
        # No health check at all (health ""): running is as healthy as it gets.
        await h.report(db[1], "running")
        await placed(h, "web", 1)
        await placed(h, "api", 1)
    loops(scenario)


def test_service_started_on_a_global_dependency(loops):
    async def scenario(h):
        await create(h, service("agent", mode="global"))
        await create(h, service("web", 2, mode="global", depends=(("agent", "service_started"),)))
        agents = await placed(h, "agent", 3)
        for t in agents[:2]:
            await h.report(t, "running")
        await stays_without_tasks(h, "web")
        assert gate(h, "web") == "waiting for service agent to start (2/3 tasks running)"
        await h.report(agents[2], "running")
        await wait(lambda: h.on("web") == {"n1": 1, "n2": 1, "n3": 1})
    loops(scenario)


def test_service_completed_successfully_waits_for_a_job_s_completions(loops):
    async def scenario(h):
        migrate = service("migrate", 2, mode="replicated-job")
        migrate.spec.mode.max_concurrent = 1
        migrate.spec.mode.total_completions = 2
        await create(h, migrate)
        await create(h, service("app", 2, depends=(("migrate", "service_completed_successfully"),)))
        first = (await placed(h, "migrate", 1))[0]
        await h.report(first, "running")
        await stays_without_tasks(h, "app")
        assert gate(h, "app") == ("waiting for service migrate to complete successfully "
                                  "(0/2 completed)")
        await h.report(first, "complete", exit_code=0)
        second = (await wait(lambda: [t for t in live(h, "migrate") if t.node_id
                                      and t.id != first.id]))[0]
        # A failure is shown (the job retries it, per its restart policy).
        await h.report(second, "failed", exit_code=3, err="task exited with code 3")
        await wait(lambda: "last failure: task exited with code 3" in (gate(h, "app") or ""))
        assert gate(h, "app").startswith("waiting for service migrate to complete successfully "
                                         "(1/2 completed")
        await stays_without_tasks(h, "app")
        retry = (await wait(lambda: [t for t in live(h, "migrate") if t.node_id
                                     and t.id not in (first.id, second.id)]))[0]
        await h.report(retry, "complete", exit_code=0)
        await placed(h, "app", 2)
    loops(scenario)


def test_a_dependency_created_after_its_dependent_is_waited_for(loops):
    async def scenario(h):
        await create(h, service("web", 2, depends=(("db", "service_started"),
                                                   ("cache", "service_started"))))
        await stays_without_tasks(h, "web")
        assert gate(h, "web") == "waiting for service db to be created"
        await create(h, service("db", 1))
        await placed(h, "db", 1)
        await h.run_all("db")
        await wait(lambda: gate(h, "web") == "waiting for service cache to be created")
        await stays_without_tasks(h, "web")
        await create(h, service("cache", 1))
        await placed(h, "cache", 1)
        await h.run_all("cache")
        await placed(h, "web", 2)
    loops(scenario)


def test_a_gated_global_service_gets_no_task_on_any_node(loops):
    async def scenario(h):
        await create(h, service("db", 1))
        await create(h, service("logs", mode="global", depends=(("db", "service_started"),)))
        db = await placed(h, "db", 1)
        await stays_without_tasks(h, "logs")
        await h.report(db[0], "running")
        await wait(lambda: h.on("logs") == {"n1": 1, "n2": 1, "n3": 1})
    loops(scenario)


def test_once_it_had_tasks_a_service_is_never_gated_again(loops):
    async def scenario(h):
        await create(h, service("db", 1))
        await create(h, service("web", 2, depends=(("db", "service_healthy"),)))
        db = (await placed(h, "db", 1))[0]
        await h.report(db, "running", health="healthy")
        web = await placed(h, "web", 2)
        for t in web:
            await h.report(t, "running")
        # db turns unhealthy and its replacement is not healthy yet...
        await h.report(db, "failed", health="unhealthy", err="task: unhealthy container")
        db2 = (await wait(lambda: [t for t in live(h, "db") if t.node_id and t.id != db.id]))[0]
        await h.report(db2, "running", health="starting")
        # ...yet web's failed task is replaced, and a scale-up gets its task too.
        await h.report(web[0], "failed", exit_code=1)
        await wait(lambda: [t for t in live(h, "web") if t.slot == web[0].slot
                            and t.id != web[0].id and t.node_id])
        svc = h.m.store.get("services", "svc-web")
        svc.spec.mode.replicas = 3
        await h.m.propose(Transaction().update("services", svc))
        await placed(h, "web", 3)
        assert gate(h, "web") is None
    loops(scenario)


# ---- the control API ---------------------------------------------------------------------------
class _Ctx:
    def __init__(self, manager) -> None:
        self.manager, self.state = manager, None

    def peer_client(self, addr: str):
        raise AssertionError("nothing is forwarded here")


class _AsControlApi:
    """The loops' leader as the control API's Manager protocol sees it (it is the leader)."""

    def __init__(self, leader) -> None:
        self._leader = leader

    def __getattr__(self, name: str):
        return getattr(self._leader, name)

    def require_leader(self) -> None:
        pass


@asynccontextmanager
async def control_api(h: Harness) -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[error_middleware])
    app[CTX] = _Ctx(_AsControlApi(h.m))
    app.add_routes(services_api.routes())
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def body(name: str, replicas: int = 1, depends: tuple[tuple[str, str], ...] = ()) -> dict:
    return {"spec": codec.to_plain(spec(name, replicas, depends=depends))}


async def update(client: TestClient, name: str, new: dict):
    current = await (await client.get(f"/services/{name}")).json()
    return await client.post(f"/services/{name}/update?version={current['meta']['version']}",
                             json=new)


def test_the_api_refuses_self_dependencies_and_cycles_naming_the_field(loops):
    async def scenario(h):
        async with control_api(h) as client:
            r = await client.post("/services/create", json=body("web", depends=(("web", "service_started"),)))
            answer = await r.json()
            assert r.status == 400 and answer["field"] == "depends_on[0].service", answer
            assert answer["message"] == "depends_on[0].service: service web cannot depend on itself"

            assert (await client.post("/services/create", json=body("db"))).status == 201
            r = await client.post("/services/create", json=body("web", depends=(("db", "service_healthy"),)))
            assert r.status == 201, await r.text()
            r = await client.post("/services/create", json=body("proxy", depends=(("web", "service_started"),)))
            assert r.status == 201, await r.text()
            # db -> proxy would close db -> proxy -> web -> db.
            r = await update(client, "db", body("db", depends=(("proxy", "service_started"),)))
            answer = await r.json()
            assert r.status == 400 and answer["field"] == "depends_on[0].service", answer
            assert answer["message"] == ("depends_on[0].service: db -> proxy -> web -> db is a dependency "
                                         "cycle: none of these services would ever get a task")
            assert h.m.store.by_name("services", "db").spec.depends_on == []
            # A cycle through a service created later is caught when it is created.
            r = await client.post("/services/create", json=body("a", depends=(("b", "service_started"),)))
            assert r.status == 201, await r.text()
            r = await client.post("/services/create", json=body("b", depends=(("a", "service_started"),)))
            answer = await r.json()
            assert r.status == 400 and answer["message"].startswith("depends_on[0].service: b -> a -> b "), answer
            assert h.m.store.by_name("services", "b") is None

            bad = body("x", depends=(("db", "service_ready"),))
            answer = await (await client.post("/services/create", json=bad)).json()
            assert answer["field"] == "depends_on[0].condition" and "service_healthy" in answer["message"]
            bad = body("x", depends=(("db/1", "service_started"),))
            assert (await (await client.post("/services/create", json=bad)).json())["field"] == \
                "depends_on[0].service"
            bad = body("x", depends=(("db", "service_started"), ("db", "service_healthy")))
            answer = await (await client.post("/services/create", json=bad)).json()
            assert answer["field"] == "depends_on[1].service" and "listed twice" in answer["message"]
            for junk in ([1], ["db"], [{"service": "db", "condition": None}], {"db": {}},
                         [{"service": "db", "extra": 1}]):
                new = body("x")
                new["spec"]["depends_on"] = junk
                r = await client.post("/services/create", json=new)
                assert r.status == 400, (junk, r.status, await r.text())
    loops(scenario)


def test_inspect_and_ls_show_why_a_service_waits(loops):
    async def scenario(h):
        async with control_api(h) as client:
            assert (await client.post("/services/create", json=body("db", 2))).status == 201
            r = await client.post("/services/create", json=body("web", depends=(("db", "service_healthy"),)))
            assert r.status == 201, await r.text()
            db = await placed(h, "db", 2)
            await h.report(db[0], "running", health="healthy")
            await h.report(db[1], "running", health="starting")
            web = await (await client.get("/services/web")).json()
            assert web["dependency_wait"] == "waiting for service db to be healthy (1/2 tasks healthy)"
            listed = {s["spec"]["name"]: s for s in await (await client.get("/services")).json()}
            assert listed["web"]["dependency_wait"] == web["dependency_wait"]
            assert "dependency_wait" not in listed["db"]
            await h.report(db[1], "running", health="healthy")
            await placed(h, "web", 1)
            assert "dependency_wait" not in await (await client.get("/services/web")).json()
    loops(scenario)


# ---- the pure parts ----------------------------------------------------------------------------
def test_validation_sees_existing_cycles_and_long_chains():
    chain = [spec(f"s{i}", depends=((f"s{i + 1}", "service_started"),)) for i in range(5000)]
    # s5000 -> s0 closes a cycle 5001 long: found without recursion.
    with pytest.raises(errors.InvalidArgument) as exc:
        validate_dependencies(spec("s5000", depends=(("s0", "service_started"),)), chain)
    assert exc.value.field == "depends_on[0].service"
    # A cycle among the others (not through this one) does not refuse this one.
    loop_ = [spec("p", depends=(("q", "service_started"),)), spec("q", depends=(("p", "service_started"),))]
    validate_dependencies(spec("new", depends=(("p", "service_started"),)), loop_)
    # An update replaces the stored version of its service: dropping a dependency breaks a cycle.
    validate_dependencies(spec("p"), loop_)
    assert path_between({"a": ["b"], "b": ["c"]}, "a", "c") == ["a", "b", "c"]
    assert path_between({"a": ["b"], "b": ["a"]}, "a", "z") is None


class _Tables:
    """The two reads the conditions make, over plain lists."""

    def __init__(self, services: list[Service], tasks: list) -> None:
        self.services, self.tasks = services, tasks

    def by_name(self, table: str, name: str):
        return next((s for s in self.services if s.spec.name == name), None)

    def by_index(self, table: str, index: str, key: str) -> list:
        return [t for t in self.tasks if t.service_id == key]


def _task(svc: Service, state: str, *, slot: int = 0, node: str = "", at: float = 0.0,
          exit_code=None, health: str = "", desired: str = "running"):
    from common.model import Task, TaskStatus
    t = Task(id=f"t{at}-{slot}{node}", service_id=svc.id, service_name=svc.spec.name, slot=slot,
             node_id=node, desired_state=desired,
             status=TaskStatus(state=state, exit_code=exit_code, health=health))
    t.meta.created_at = at
    return t


@pytest.mark.parametrize("mode,tasks,condition,expected", [
    # No replica wanted: nothing to wait for.
    ("replicated0", [], "service_started", None),
    # A replicated service completes when the latest task of every slot did (slot 2 ran again).
    ("replicated2", [("complete", 1, "", 1.0, 0), ("complete", 2, "", 1.0, 0), ("running", 2, "", 2.0, None)],
     "service_completed_successfully", "(1/2 completed)"),
    ("replicated2", [("complete", 1, "", 1.0, 0), ("complete", 2, "", 2.0, 0)],
     "service_completed_successfully", None),
    # A global job: the latest task on each node it ran on; a failure is shown.
    ("global-job", [("complete", 0, "n1", 1.0, 0), ("failed", 0, "n2", 1.0, 2)],
     "service_completed_successfully", "(1/2 completed; last failure: failed)"),
    ("global-job", [("complete", 0, "n1", 1.0, 0), ("failed", 0, "n2", 1.0, 2), ("complete", 0, "n2", 2.0, 0)],
     "service_completed_successfully", None),
    ("global-job", [], "service_completed_successfully", "(0/1 completed)"),
    # A job has started once a task ran, even if it finished already.
    ("replicated-job", [("complete", 1, "", 1.0, 0)], "service_started", None),
    ("replicated-job", [("pending", 1, "", 1.0, None)], "service_started", "(none of its tasks is running yet)"),
    ("replicated2", [("running", 1, "", 1.0, None)], "service_unknown",
     "waiting for service dep: unknown condition 'service_unknown'"),
])
def test_conditions_per_mode(mode, tasks, condition, expected):
    replicas = int(mode[-1]) if mode[-1].isdigit() else 1
    dep = service("dep", replicas, mode.rstrip("0123456789"))
    web = service("web", depends=(("dep", condition),))
    store = _Tables([dep, web], [_task(dep, s, slot=slot, node=node, at=at, exit_code=code)
                                 for s, slot, node, at, code in tasks])
    got = dependency_wait(web, store)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.endswith(expected), got
