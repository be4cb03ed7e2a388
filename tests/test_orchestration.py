"""Orchestrators, updater and scheduling loop on the leader's loops without raft, in-process
(tests/loops_harness.py; raft itself is proven by tests/test_raft.py and the lab).

Nodes and agents are simulated by writing what they would write (status reports): no containers
are needed to prove the decisions. The multi-host tests run the real thing.
"""
import asyncio
import collections
import time

import pytest

from common import codec
from common.model import (ContainerSpec, Node, NodeDescription, NodeStatus, Placement,
                          RestartPolicy, Service, ServiceMode, ServiceSpec, TaskSpec)
from manager.state.store import Transaction
from tests.raft_harness import Harness, wait


def service(name, replicas=3, mode="replicated", constraints=(), restart=None) -> Service:
    return Service(id=f"svc-{name}", spec=ServiceSpec(
        name=name, mode=ServiceMode(mode=mode, replicas=replicas),
        task_template=TaskSpec(container=ContainerSpec(image="busybox:1"),
                               placement=Placement(constraints=list(constraints)),
                               restart_policy=restart or RestartPolicy(delay=0.0))))


def test_replicated_spread_scale_and_remove(loops):
    async def scenario(h):
        await h.m.propose(Transaction().create("services", service("web", 6)))
        await wait(lambda: h.on("web") == {"n1": 2, "n2": 2, "n3": 2})
        assert sorted(t.slot for t in h.tasks("web")) == [1, 2, 3, 4, 5, 6]
        await h.run_all("web")
        svc = h.m.store.get("services", "svc-web")
        svc.spec.mode.replicas = 2
        await h.m.propose(Transaction().update("services", svc))
        await wait(lambda: sorted(t.slot for t in h.tasks("web")) == [1, 2])
        # Scaled-down tasks are told to shut down; once the agent says so they are reaped.
        for t in h.tasks("web", desired="shutdown"):
            await h.report(t, "shutdown")
        await h.m.propose(Transaction().delete("services", "svc-web"))
        await wait(lambda: all(t.desired_state == "shutdown" for t in h.tasks("web", None)))
        for t in h.tasks("web", None):
            if not t.terminal:
                await h.report(t, "shutdown")
        await wait(lambda: h.tasks("web", None) == [])
    loops(scenario)


def test_failed_task_is_replaced_in_its_slot_and_history_is_bounded(loops):
    async def scenario(h):
        await h.m.propose(Transaction().create("services", service("job", 1)))
        for round_ in range(8):
            current = await wait(lambda: [t for t in h.tasks("job") if t.node_id and not t.terminal])
            await h.report(current[0], "running")
            await h.report(current[0], "failed", exit_code=1, err="boom")
            await wait(lambda: any(t.id != current[0].id for t in h.tasks("job")))
        every = h.tasks("job", None)
        assert {t.slot for t in every} == {1}
        # 5 finished tasks kept per slot, plus the live one.
        await wait(lambda: len(h.tasks("job", None)) == 6)
    loops(scenario)


def test_restart_condition_none_and_max_attempts(loops):
    async def scenario(h):
        await h.m.propose(Transaction().create("services", service(
            "once", 1, restart=RestartPolicy(condition="none", delay=0))))
        t = (await wait(lambda: [t for t in h.tasks("once") if t.node_id]))[0]
        await h.report(t, "failed", exit_code=3)
        await asyncio.sleep(0.5)
        assert len(h.tasks("once", None)) == 1
        await h.m.propose(Transaction().create("services", service(
            "twice", 1, restart=RestartPolicy(condition="on-failure", delay=0, max_attempts=2))))
        for _ in range(2):
            t = (await wait(lambda: [t for t in h.tasks("twice") if t.node_id and not t.terminal]))[0]
            await h.report(t, "failed", exit_code=1)
            await asyncio.sleep(0.3)
        await asyncio.sleep(0.5)
        assert len(h.tasks("twice", None)) == 2
        assert all(t.terminal for t in h.tasks("twice", None))
    loops(scenario)


def test_down_and_drained_nodes_lose_their_tasks(loops):
    async def scenario(h):
        await h.m.propose(Transaction().create("services", service("web", 3)))
        await wait(lambda: h.on("web") == {"n1": 1, "n2": 1, "n3": 1})
        await h.run_all("web")
        await h.set_node("n1", state="down")
        await wait(lambda: "n1" not in h.on("web") and sum(h.on("web").values()) == 3)
        await h.set_node("n2", availability="drain")
        # The drained node's task is told to stop; its replacement waits ("ready") until it did.
        drained = await wait(lambda: [t for t in h.tasks("web", "shutdown") if t.node_id == "n2"
                                      and not t.terminal])
        waiting = await wait(lambda: len(h.tasks("web", "ready")) == len(drained) and h.tasks("web", "ready"))
        assert {t.slot for t in waiting} == {t.slot for t in drained} and "n2" not in h.on("web")
        await asyncio.sleep(0.3)
        assert len(h.tasks("web", "ready")) == len(drained), "started before the old task stopped"
        for t in drained:
            await h.report(t, "shutdown")
        await wait(lambda: h.on("web") == {"n3": 3})
        await h.set_node("n1", state="ready")
        await h.set_node("n2", availability="active")
        # Existing tasks are not moved back (like docker), but new ones spread again.
        svc = h.m.store.get("services", "svc-web")
        svc.spec.mode.replicas = 6
        await h.m.propose(Transaction().update("services", svc))
        await wait(lambda: h.on("web") == {"n1": 1, "n2": 2, "n3": 3} or h.on("web").get("n3") == 3
                   and sum(h.on("web").values()) == 6)
    loops(scenario)


def test_global_mode_follows_nodes_and_constraints(loops):
    async def scenario(h):
        await h.set_node("n3", labels={"gpu": "yes"})
        await h.m.propose(Transaction().create("services", service("agent", mode="global")))
        await wait(lambda: h.on("agent") == {"n1": 1, "n2": 1, "n3": 1})
        await h.m.propose(Transaction().create("services", service(
            "gpu", mode="global", constraints=["node.labels.gpu==yes"])))
        await wait(lambda: h.on("gpu") == {"n3": 1})
        await h.m.propose(Transaction().create("nodes", Node(
            id="n4", status=NodeStatus(state="ready"), description=NodeDescription(hostname="node4"))))
        await wait(lambda: h.on("agent").get("n4") == 1)
        await h.set_node("n1", availability="drain")
        await wait(lambda: "n1" not in h.on("agent"))
    loops(scenario)


def test_unschedulable_tasks_stay_pending_with_the_reason(loops):
    async def scenario(h):
        await h.m.propose(Transaction().create("services", service(
            "nowhere", 2, constraints=["node.labels.zone==mars"])))
        pending = await wait(lambda: (t := h.tasks("nowhere")) and all(
            "no suitable node" in x.status.message for x in t) and t)
        assert all(t.status.state == "pending" and not t.node_id for t in pending)
        await h.set_node("n2", labels={"zone": "mars"})
        await wait(lambda: h.on("nowhere") == {"n2": 2})
    loops(scenario)


def test_jobs_run_to_completion(loops):
    async def scenario(h):
        svc = service("batch", 4, mode="replicated-job")
        svc.spec.mode.max_concurrent = 2
        svc.spec.mode.total_completions = 4
        await h.m.propose(Transaction().create("services", svc))
        done = 0
        while done < 4:
            live = await wait(lambda: [t for t in h.tasks("batch") if t.node_id and not t.terminal])
            assert len(live) <= 2
            await h.report(live[0], "complete", exit_code=0)
            done += 1
        await asyncio.sleep(0.5)
        assert sum(1 for t in h.tasks("batch", None) if t.status.state == "complete") == 4
        assert not [t for t in h.tasks("batch") if not t.terminal]
    loops(scenario)


async def fake_agents(h: Harness, stop: asyncio.Event, samples: list[int],
                      stop_time: float = 0.0, per_slot: list[int] | None = None) -> None:
    """Plays every node's agent: runs what is assigned (fails image 'bad'), stops what is told to
    (taking `stop_time`, as a container's stop grace does). Samples how many tasks of 'web' run,
    and (into per_slot) the most running in one slot."""
    told: dict[str, float] = {}
    while not stop.is_set():
        for t in list(h.m.store.list("tasks")):
            if not t.node_id or t.terminal:
                continue
            if t.desired_state == "running" and t.status.state == "assigned":
                state = "failed" if t.spec.container.image == "bad" else "running"
                await h.report(t, state, exit_code=1 if state == "failed" else None)
            elif t.desired_state == "shutdown":
                if time.monotonic() - told.setdefault(t.id, time.monotonic()) >= stop_time:
                    await h.report(t, "shutdown")
        running = [t for t in h.m.store.list("tasks")
                   if t.service_id == "svc-web" and t.status.state == "running"]
        samples.append(len(running))
        if per_slot is not None:
            per_slot.append(max(collections.Counter(t.slot for t in running).values(), default=0))
        await asyncio.sleep(0.02)


async def update_image(h: Harness, image: str, **update_config) -> None:
    svc = h.m.store.get("services", "svc-web")
    # A rollback is watched as briefly as the update (its own default monitor is 5 s).
    svc.spec.rollback_config.monitor = update_config.get("monitor", svc.spec.update_config.monitor)
    svc.previous_spec = codec.clone(svc.spec)
    svc.spec.task_template.container.image = image
    for k, v in update_config.items():
        setattr(svc.spec.update_config, k, v)
    from common.model import UpdateStatus
    svc.update_status = UpdateStatus(state="updating", started_at=time.time())
    await h.m.propose(Transaction().update("services", svc))


def status(h: Harness) -> str:
    return h.m.store.get("services", "svc-web").update_status.state


def images(h: Harness) -> set[str]:
    return {t.spec.container.image for t in h.tasks("web")}


@pytest.mark.parametrize("order,floor", [("stop-first", 4), ("start-first", 6)])
def test_rolling_update_batches_keep_capacity(loops, order, floor):
    async def scenario(h):
        stop, samples = asyncio.Event(), []
        agents = asyncio.create_task(fake_agents(h, stop, samples))
        try:
            await h.m.propose(Transaction().create("services", service("web", 6)))
            await wait(lambda: len([t for t in h.tasks("web") if t.status.state == "running"]) == 6)
            samples.clear()
            await update_image(h, "busybox:2", parallelism=2, order=order, monitor=0.2)
            await wait(lambda: status(h) == "completed", timeout=20)
            assert images(h) == {"busybox:2"} and len(h.tasks("web")) == 6
            assert min(samples) >= floor, f"{order}: dropped to {min(samples)} running"
        finally:
            stop.set()
            await agents
    loops(scenario)


@pytest.mark.parametrize("order", ["stop-first", "start-first"])
def test_stop_first_starts_each_replacement_after_its_old_task_stopped(loops, order):
    """Stop-first means what it says: the new task of a slot starts only once the old one is
    stopped (it waits with desired state "ready"); start-first overlaps them on purpose."""
    async def scenario(h):
        stop, samples, per_slot = asyncio.Event(), [], []
        agents = asyncio.create_task(fake_agents(h, stop, samples, stop_time=0.3, per_slot=per_slot))
        try:
            await h.m.propose(Transaction().create("services", service("web", 4)))
            await wait(lambda: len([t for t in h.tasks("web") if t.status.state == "running"]) == 4)
            per_slot.clear()
            await update_image(h, "busybox:2", parallelism=2, order=order, monitor=0.1)
            if order == "stop-first":
                await wait(lambda: h.tasks("web", "ready"))  # the replacements wait, visibly
            await wait(lambda: status(h) == "completed", timeout=20)
            assert images(h) == {"busybox:2"}
            if order == "stop-first":
                assert max(per_slot) == 1, "a slot ran its old and new task at once"
            else:
                assert max(per_slot) == 2, "start-first should overlap old and new"
        finally:
            stop.set()
            await agents
    loops(scenario)


def test_failed_update_rolls_back_or_pauses(loops):
    async def scenario(h):
        stop, samples = asyncio.Event(), []
        agents = asyncio.create_task(fake_agents(h, stop, samples))
        try:
            await h.m.propose(Transaction().create("services", service("web", 4)))
            await wait(lambda: len([t for t in h.tasks("web") if t.status.state == "running"]) == 4)
            await update_image(h, "bad", parallelism=1, failure_action="rollback", monitor=0.3)
            await wait(lambda: status(h) == "rollback_completed", timeout=20)
            svc = h.m.store.get("services", "svc-web")
            assert svc.spec.task_template.container.image == "busybox:1"
            assert "failed" in svc.update_status.message
            await wait(lambda: images(h) == {"busybox:1"} and len(h.tasks("web")) == 4)
            await update_image(h, "bad", parallelism=1, failure_action="pause", monitor=0.3)
            await wait(lambda: status(h) == "paused", timeout=20)
            assert "update paused" in h.m.store.get("services", "svc-web").update_status.message
            await asyncio.sleep(0.5)
            # Paused: no further batches (the failed slot itself keeps its restart policy).
            assert len({t.slot for t in h.tasks("web") if t.spec.container.image == "bad"}) <= 1
            assert len([t for t in h.tasks("web") if t.spec.container.image == "busybox:1"]) >= 3
        finally:
            stop.set()
            await agents
    loops(scenario)
