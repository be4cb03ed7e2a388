"""Health checks on the real runc: the probe loop (starting -> healthy/unhealthy, failing streak,
retries, start period, timeout, CMD and CMD-SHELL), the image's HEALTHCHECK against the service's,
and the task runner failing an unhealthy task and stopping its container.

The probe and task parts need root, runc and busybox-static; the merge rules do not.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path

import pytest

from common import codec
from common.model import ContainerSpec, HealthConfig, Task, TaskSpec
import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from worker import health
from worker.executor import ContainerConfig, Executor
from manager.state.store import Transaction
from worker.images import ImageStore

_RUNC_MARKS = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runc, mounts, cgroups)"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)"),
    pytest.mark.skipif(not ib.busybox_available(), reason="needs busybox-static (/bin/busybox)"),
]


def needs_runc(fn):
    for mark in _RUNC_MARKS:
        fn = mark(fn)
    return fn
NS = 1_000_000_000


# ---- the rules: image config, merge, argv (no containers) -----------------------------------
def test_image_healthcheck_is_read_in_seconds():
    hc = health.from_image({"Healthcheck": {"Test": ["CMD-SHELL", "wget -q localhost"],
                                            "Interval": 2 * NS, "Timeout": NS // 2,
                                            "StartPeriod": 10 * NS, "Retries": 4}})
    assert hc == HealthConfig(test=["CMD-SHELL", "wget -q localhost"], interval=2.0, timeout=0.5,
                              start_period=10.0, retries=4)
    assert health.from_image({"Cmd": ["sh"]}) is None
    assert health.from_image(None) is None
    assert health.from_image({"Healthcheck": {"Test": "not a list"}}) is None


def test_service_settings_override_the_image_field_by_field():
    image = HealthConfig(test=["CMD", "/check"], interval=5, timeout=2, start_period=0, retries=0)
    # Only the interval from the service: the image's command and timeout stay, retries default.
    got = health.effective(HealthConfig(interval=1), image)
    assert got == HealthConfig(test=["CMD", "/check"], interval=1, timeout=2, start_period=0,
                               retries=health.DEFAULT_RETRIES)
    got = health.effective(HealthConfig(test=["CMD-SHELL", "true"]), None)
    assert (got.interval, got.timeout, got.retries) == (health.DEFAULT_INTERVAL,
                                                        health.DEFAULT_TIMEOUT, 3)
    assert health.effective(HealthConfig(test=["NONE"]), image) is None   # --no-healthcheck
    assert health.effective(None, HealthConfig(test=["NONE"])) is None    # image says none
    assert health.effective(None, None) is None
    assert health.effective(HealthConfig(interval=1), None) is None        # nothing to run


def test_probe_argv():
    assert health.probe_argv(["CMD-SHELL", "test -f /ready && echo ok"]) == \
        ["/bin/sh", "-c", "test -f /ready && echo ok"]
    assert health.probe_argv(["CMD", "cat", "/ready"]) == ["cat", "/ready"]


# ---- the probe loop against real containers ---------------------------------------------------
@pytest.fixture(scope="module")
def images_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("images")
    layout = ib.build_busybox_oci_layout(base / "oci", "1")
    ib.build_busybox_oci_layout(layout, "hc-ok", config_overrides={
        "Healthcheck": {"Test": ["CMD-SHELL", "test -f /etc/hostname"], "Interval": NS // 5,
                        "Retries": 2}})
    ib.build_busybox_oci_layout(layout, "hc-bad", config_overrides={
        "Healthcheck": {"Test": ["CMD-SHELL", "echo broken; exit 1"], "Interval": NS // 5,
                        "Retries": 2}})

    async def load():
        store = ImageStore(base / "store")
        for tag in ("1", "hc-ok", "hc-bad"):
            await store.import_archive(layout, f"busybox:{tag}")
    if os.geteuid() == 0 and ib.busybox_available():
        asyncio.run(load())
    return base / "store"


async def start(ex: Executor, cid: str, *command: str, image: str = "busybox:1") -> None:
    await ex.create(ContainerConfig(id=cid, name=f"svc.1.{cid}", image=image, command=list(command),
                                    stop_grace=0.5))
    await ex.start(cid)


class Recorder:
    """The on_change calls, with the time each came (monotonic, since creation)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.changes: list[tuple[str, float]] = []

    def __call__(self, status: str, _result) -> None:
        self.changes.append((status, time.monotonic() - self.t0))

    @property
    def statuses(self) -> list[str]:
        return [s for s, _ in self.changes]


def check(test: list[str], interval=0.2, timeout=5.0, retries=3, start_period=0.0) -> HealthConfig:
    return HealthConfig(test=test, interval=interval, timeout=timeout, retries=retries,
                        start_period=start_period)


@needs_runc
def test_becomes_healthy_once_the_check_passes(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        # Ready after ~1 s; the failures before that stay under the 10 retries.
        await start(ex, "ready", "sh", "-c", "sleep 1; touch /tmp/ready; exec sleep 60")
        rec = Recorder()
        mon = health.HealthMonitor(ex, "ready", check(["CMD-SHELL", "test -f /tmp/ready"],
                                                      retries=10), rec)
        job = asyncio.create_task(mon.run())
        while mon.status != health.HEALTHY:
            assert not job.done(), f"the monitor ended: {mon.status}"
            await asyncio.sleep(0.05)
        assert rec.statuses == ["healthy"]
        assert rec.changes[0][1] >= 0.9, "healthy before the check could pass"
        assert mon.failing_streak == 0
        assert any(r.exit_code != 0 for r in mon.log) and mon.log[-1].exit_code == 0
        job.cancel()
        await ex.remove("ready")
    asyncio.run(scenario())


@needs_runc
def test_retries_failures_in_a_row_make_it_unhealthy(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await start(ex, "sick", "sleep", "60")
        rec = Recorder()
        mon = health.HealthMonitor(ex, "sick", check(["CMD-SHELL", "echo no db here >&2; exit 1"],
                                                     retries=3), rec)
        assert await asyncio.wait_for(mon.run(), 20) == health.UNHEALTHY
        assert rec.statuses == ["unhealthy"]
        assert mon.failing_streak == 3 and len(mon.log) == 3
        assert all(r.exit_code == 1 and "no db here" in r.output for r in mon.log)
        # three probes at 0.2 s intervals: not before 0.6 s
        assert rec.changes[0][1] >= 0.6
        why = mon.describe_failure()
        assert "3 failed health checks in a row" in why and "exit code 1" in why and "no db here" in why
        assert ex.inspect("sick").state == "running"  # the monitor judges; it does not kill
        await ex.remove("sick")
    asyncio.run(scenario())


@needs_runc
def test_a_pass_resets_the_streak_and_a_healthy_container_can_turn_unhealthy(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        # Fails twice (retries 3: still starting), passes, then fails for good after ~2 s.
        await start(ex, "flaky", "sh", "-c",
                    "sleep 0.5; touch /tmp/ok; sleep 1.5; rm /tmp/ok; exec sleep 60")
        rec = Recorder()
        mon = health.HealthMonitor(ex, "flaky", check(["CMD", "test", "-f", "/tmp/ok"], retries=3,
                                                      start_period=30), rec)
        assert await asyncio.wait_for(mon.run(), 20) == health.UNHEALTHY
        # The start period (30 s) no longer shields it once it was healthy.
        assert rec.statuses == ["healthy", "unhealthy"]
        assert rec.changes[1][1] < 10
        await ex.remove("flaky")
    asyncio.run(scenario())


@needs_runc
def test_failures_in_the_start_period_do_not_count(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await start(ex, "slow", "sleep", "60")
        rec = Recorder()
        mon = health.HealthMonitor(ex, "slow", check(["CMD-SHELL", "exit 1"], retries=1,
                                                     start_period=1.5), rec)
        assert await asyncio.wait_for(mon.run(), 20) == health.UNHEALTHY
        # retries=1 would make the first failing probe (0.2 s) fatal without the start period
        assert rec.changes[0][1] >= 1.5
        assert len(mon.log) == health.LOG_LENGTH and mon.failing_streak == 1  # many probes ran
        await ex.remove("slow")
    asyncio.run(scenario())


@needs_runc
def test_a_probe_past_its_timeout_is_killed_and_fails(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await start(ex, "hung", "sleep", "60")
        rec = Recorder()
        mon = health.HealthMonitor(ex, "hung", check(["CMD-SHELL", "sleep 30"], timeout=0.3,
                                                     retries=2), rec)
        t0 = time.monotonic()
        assert await asyncio.wait_for(mon.run(), 20) == health.UNHEALTHY
        assert time.monotonic() - t0 < 10, "the probes were not cut at their timeout"
        assert all(r.exit_code == -1 and "exceeded timeout (0.3s)" in r.output for r in mon.log)
        assert "timed out" in mon.describe_failure()
        # the hung probes were killed: only the container's own init is left in it
        code, out = await ex.exec("hung", ["sh", "-c", "ps -o comm | grep -c sleep"], timeout=5)
        assert out.strip() == "1", out
        await ex.remove("hung")
    asyncio.run(scenario())


@needs_runc
def test_the_monitor_ends_quietly_when_the_container_stops(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await start(ex, "brief", "sleep", "0.5")
        rec = Recorder()
        mon = health.HealthMonitor(ex, "brief", check(["CMD-SHELL", "true"], retries=1), rec)
        status = await asyncio.wait_for(mon.run(), 20)
        assert status != health.UNHEALTHY and ex.inspect("brief").state == "stopped"
        await ex.remove("brief")
    asyncio.run(scenario())


# ---- the task runner: health in the reports, unhealthy tasks fail ----------------------------
def make_task(tid: str, image: str, command: list[str], hc: HealthConfig | None = None) -> Task:
    spec = TaskSpec(container=ContainerSpec(image=image, command=command, healthcheck=hc,
                                            stop_grace_period=0.5))
    return Task(id=tid, service_id="svc", service_name="web", slot=1, node_id="n1", spec=spec,
                desired_state="running")


async def run_tasks(images_root: Path, root: Path, tasks: list[Task], until, timeout: float = 30.0):
    """Runs the tasks with a real TaskRunner until until(reports) holds; returns the reports
    (every one sent, in order) and leaves no container behind."""
    from worker.taskrunner import TaskRunner
    reports: list[dict] = []

    async def send(batch: list[dict]) -> None:
        reports.extend(batch)

    images = ImageStore(images_root)
    ex = Executor(root, images)
    runner = TaskRunner(ex, images, "node1", send)
    await runner.start()
    try:
        await runner.apply({"tasks": [codec.to_plain(t) for t in tasks], "full": True})
        deadline = time.monotonic() + timeout
        while not until(reports):
            assert time.monotonic() < deadline, f"timed out; reports: {reports}"
            await asyncio.sleep(0.05)
        return reports, ex
    finally:
        await runner.apply({"tasks": [], "full": True})  # nothing claims them: removed
        await runner.stop()
        await ex.close()


def of(reports: list[dict], tid: str) -> list[tuple[str, str]]:
    return [(r["state"], r.get("health", "")) for r in reports if r["task_id"] == tid]


@needs_runc
def test_image_healthcheck_reported_with_running(images_root, tmp_path):
    tasks = [make_task("imgok", "busybox:hc-ok", ["sleep", "60"]),
             # the image's check would fail: --no-healthcheck turns it off
             make_task("nocheck", "busybox:hc-bad", ["sleep", "60"], HealthConfig(test=["NONE"])),
             make_task("plain", "busybox:1", ["sleep", "60"])]

    def done(reports):
        return ("running", "healthy") in of(reports, "imgok") and of(reports, "nocheck") \
            and of(reports, "plain")
    reports, _ = asyncio.run(run_tasks(images_root, tmp_path / "ex", tasks, done))
    ok = of(reports, "imgok")
    assert ok[ok.index(("running", "healthy")) - 1] == ("running", "starting")
    assert of(reports, "nocheck")[-1] == ("running", "") and of(reports, "plain")[-1] == ("running", "")
    healthy = next(r for r in reports if r["task_id"] == "imgok" and r.get("health") == "healthy")
    assert healthy["container_id"] == "imgok"  # a health change keeps the running fields


@needs_runc
def test_unhealthy_task_is_failed_and_its_container_stopped(images_root, tmp_path):
    tasks = [make_task("imgbad", "busybox:hc-bad", ["sleep", "60"]),
             # the service's check wins over the image's passing one
             make_task("svcbad", "busybox:hc-ok", ["sleep", "60"],
                       HealthConfig(test=["CMD-SHELL", "exit 3"], interval=0.2, retries=2))]

    def done(reports):
        return all(("failed", "unhealthy") in of(reports, t.id) for t in tasks)
    t0 = time.monotonic()
    reports, ex = asyncio.run(run_tasks(images_root, tmp_path / "ex", tasks, done))
    assert time.monotonic() - t0 < 20
    for t in tasks:
        states = of(reports, t.id)
        assert ("running", "starting") in states and "healthy" not in {h for _, h in states}
        failed = [r for r in reports if r["task_id"] == t.id and r["state"] == "failed"]
        assert len(failed) == 1, "the exit of the stopped container must not report again"
        assert failed[0]["err"] == "task: unhealthy container"
        assert "2 failed health checks in a row" in failed[0]["message"]
    assert "broken" in next(r["message"] for r in reports if r["task_id"] == "imgbad" and r["state"] == "failed")
    assert "exit code 3" in next(r["message"] for r in reports if r["task_id"] == "svcbad" and r["state"] == "failed")


@contextlib.asynccontextmanager
async def one_runner(images_root: Path, root: Path):
    """A real TaskRunner on its own executor: (runner, executor, the reports it sent)."""
    from worker.taskrunner import TaskRunner
    reports: list[dict] = []

    async def send(batch):
        reports.extend(batch)
    images = ImageStore(images_root)
    ex = Executor(root / "ex", images)
    runner = TaskRunner(ex, images, "node1", send)
    await runner.start()
    try:
        yield runner, ex, reports
    finally:
        await runner.apply({"tasks": [], "full": True})
        await runner.stop()
        await ex.close()


async def until_reported(reports: list[dict], state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["state"] == state for r in reports):
        assert time.monotonic() < deadline, reports
        await asyncio.sleep(0.05)


@needs_runc
def test_unhealthy_container_is_stopped_by_the_runner(images_root, tmp_path):
    """The failed report comes first; the container is stopped right after it (within the
    stop grace), not left running until the managers' shutdown arrives."""
    async def scenario():
        async with one_runner(images_root, tmp_path) as (runner, ex, reports):
            task = make_task("stopme", "busybox:hc-bad", ["sleep", "60"])
            await runner.apply({"tasks": [codec.to_plain(task)], "full": True})
            await until_reported(reports, "failed")
            # desired state stays "running" (no manager here): the runner stops it by itself
            deadline = time.monotonic() + 10
            while ex.inspect("stopme").state != "stopped":
                assert time.monotonic() < deadline, "the unhealthy container was left running"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # its exit must not turn into another report
            assert [r["state"] for r in reports].count("failed") == 1
    asyncio.run(scenario())


@needs_runc
def test_ready_task_is_prepared_but_started_only_once_promoted(images_root, tmp_path):
    """Desired state "ready" (a stop-first replacement): the agent gets the image ready and says
    so, but creates no container until the desired state turns running."""
    async def scenario():
        async with one_runner(images_root, tmp_path) as (runner, ex, reports):
            task = make_task("waiter", "busybox:1", ["sleep", "60"])
            task.desired_state = "ready"
            await runner.apply({"tasks": [codec.to_plain(task)], "full": True})
            await until_reported(reports, "ready")
            await asyncio.sleep(0.5)
            assert [c.id for c in ex.list()] == [] and reports[-1]["state"] == "ready"
            task.desired_state = "running"
            await runner.apply({"tasks": [codec.to_plain(task)], "full": True})
            await until_reported(reports, "running")
            assert ex.inspect("waiter").state == "running"
    asyncio.run(scenario())


# ---- the updater on a real (one-member) raft manager: batches wait for health ---------------
from tests.raft_harness import wait  # noqa: E402
from tests.test_orchestration import service, update_image  # noqa: E402


async def agents_with_health(h, stop: asyncio.Event, healthy_after: float, samples: list) -> None:
    """Plays every node's agent for a service whose check passes `healthy_after` seconds after
    the container runs (image "sick": it turns unhealthy instead, and the task fails)."""
    ran: dict[str, float] = {}
    while not stop.is_set():
        now = time.monotonic()
        for t in list(h.m.store.list("tasks")):
            if not t.node_id or t.terminal:
                continue
            if not t.desired_up:
                await h.report(t, "shutdown")
            elif t.desired_state == "ready":
                continue  # a replacement waiting for the task it replaces to stop
            elif t.status.state == "assigned":
                await h.report(t, "running", health="starting", container_id=t.id)
                ran[t.id] = now
            elif t.status.health == "starting" and now - ran.get(t.id, now) >= healthy_after:
                if t.spec.container.image == "sick":
                    await h.report(t, "failed", health="unhealthy", err="task: unhealthy container",
                                   message="unhealthy container: 3 failed health checks in a row")
                else:
                    await h.report(t, "running", health="healthy")
        tasks = [t for t in h.m.store.list("tasks") if t.service_id == "svc-web"]
        samples.append((sum(1 for t in tasks if t.status.state == "running"),
                        sum(1 for t in tasks if t.status.health == "healthy"
                            and t.status.state == "running")))
        await asyncio.sleep(0.02)


def test_each_batch_is_healthy_before_the_next_starts(run):
    async def scenario(h):
        stop, samples = asyncio.Event(), []
        agents = asyncio.create_task(agents_with_health(h, stop, 0.4, samples))
        try:
            await h.m.propose(Transaction().create("services", service("web", 6)))
            await wait(lambda: sum(1 for t in h.tasks("web") if t.status.health == "healthy") == 6)
            samples.clear()
            await update_image(h, "busybox:2", parallelism=2, order="stop-first", monitor=0.1)
            await wait(lambda: h.m.store.get("services", "svc-web").update_status.state == "completed",
                       timeout=30)
            new = [t for t in h.tasks("web") if t.spec.container.image == "busybox:2"]
            assert len(new) == 6 and all(t.status.health == "healthy" for t in new)
            batches: dict[float, list] = {}
            for t in new:
                batches.setdefault(t.meta.created_at, []).append(t)
            order = [batches[k] for k in sorted(batches)]
            assert [len(b) for b in order] == [2, 2, 2]
            for earlier, later in zip(order, order[1:]):
                # status.timestamp: when the agent said healthy (its last report)
                healthy_at = max(t.status.timestamp for t in earlier)
                assert later[0].meta.created_at >= healthy_at, "a batch started before the last was healthy"
                assert later[0].meta.created_at - min(t.meta.created_at for t in earlier) >= 0.4
            assert min(healthy for _, healthy in samples) >= 4
        finally:
            stop.set()
            await agents
    run(scenario)


def test_an_unhealthy_new_task_rolls_the_update_back_or_pauses_it(run):
    async def scenario(h):
        stop, samples = asyncio.Event(), []
        agents = asyncio.create_task(agents_with_health(h, stop, 0.2, samples))
        try:
            await h.m.propose(Transaction().create("services", service("web", 4)))
            await wait(lambda: sum(1 for t in h.tasks("web") if t.status.health == "healthy") == 4)
            await update_image(h, "sick", parallelism=1, failure_action="rollback", monitor=5)
            svc = await wait(lambda: (s := h.m.store.get("services", "svc-web")).update_status.state
                             == "rollback_completed" and s, timeout=30)
            assert svc.spec.task_template.container.image == "busybox:1"
            msg = svc.update_status.message
            assert "update rolled back due to failure or early termination of task" in msg
            assert ": unhealthy container (1 of 1 updated tasks failed" in msg
            await wait(lambda: {t.spec.container.image for t in h.tasks("web")} == {"busybox:1"})
            await update_image(h, "sick", parallelism=1, failure_action="pause", monitor=5)
            svc = await wait(lambda: (s := h.m.store.get("services", "svc-web")).update_status.state
                             == "paused" and s, timeout=30)
            assert "update paused due to failure or early termination of task" in svc.update_status.message
            assert "unhealthy container" in svc.update_status.message
        finally:
            stop.set()
            await agents
    run(scenario)
