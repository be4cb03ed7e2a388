"""Drives each assigned task to its desired state with the executor, and reports every change.

One controller per task: it prepares the image, creates and starts the container, waits for it
to exit, and stops it when the task's desired state says so. Containers found running when the
agent starts are adopted; containers whose task the managers no longer assign to this node are
stopped and removed (only once the managers told us the full picture, never while they are
unreachable).
"""
from __future__ import annotations

import asyncio
import logging
import platform
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Awaitable, Callable, Optional

from common import codec, errors
from common.aio import cancel_and_wait
from common.model import TASK_STATE_RANK, HealthConfig, Platform, SecretReference, Task
from worker import health
from worker.executor import ContainerConfig, Executor, ExitInfo
from worker.images import ImageStore
from worker.restarts import Restarts
from worker.registry_auths import RegistryAuthCache
from worker.secrets import SecretCache, SecretMounts
from worker.templates import expand_container_spec

if TYPE_CHECKING:
    from worker.network.node import NodeNetworks

log = logging.getLogger("shoal.tasks")

Report = Callable[[dict], None]
NODE_PLATFORM = Platform(os="linux", architecture=platform.machine())

# How long a task with network attachments keeps running after it was told to stop, so that no
# node still balances new connections to it when its container stops (see TaskController._drain).
BACKEND_DRAIN = 1.0


def container_config(task: Task, hostname: str,
                     extra_binds: Optional[list[tuple[str, str, bool]]] = None) -> ContainerConfig:
    c = task.spec.container
    res = task.spec.resources
    return ContainerConfig(
        id=task.id, name=task.name, image=c.image, command=list(c.command), args=list(c.args),
        env=list(c.env), workdir=c.dir, user=c.user, hostname=c.hostname or task.id[:12],
        labels={**c.labels, "shoal.task.id": task.id, "shoal.service.id": task.service_id,
                "shoal.service.name": task.service_name, "shoal.task.name": task.name,
                "shoal.node.hostname": hostname, "shoal.image": c.image},
        mounts=list(c.mounts), memory_limit=res.limits.memory_bytes, nano_cpus=res.limits.nano_cpus,
        pids_limit=res.pids_limit, stop_signal=c.stop_signal, stop_grace=c.stop_grace_period,
        netns_path=None, extra_binds=list(extra_binds or []),
        tty=c.tty, open_stdin=c.open_stdin, init=c.init, read_only=c.read_only,
        cap_add=list(c.cap_add), cap_drop=list(c.cap_drop), sysctls=dict(c.sysctls),
        ulimits=list(c.ulimits), groups=list(c.groups), hosts=list(c.hosts), dns=c.dns_config,
        log_driver=task.spec.log_driver)


def with_configs(task: Task) -> Task:
    """Configs ride with the secrets: same cache, same per-task tmpfs, same read-only binds."""
    c = task.spec.container
    refs = [SecretReference(r.config_id, f"config {r.config_name}", r.target or f"/{r.config_name}",
                            r.uid, r.gid, r.mode) for r in c.configs]
    return replace(task, spec=replace(task.spec, container=replace(c, secrets=c.secrets + refs))) if refs else task


async def _end(job: asyncio.Task) -> None:
    """Cancel `job` and wait until it has ended, even if the caller is cancelled meanwhile
    (the caller's own cancellation is not lost: it is raised by its next await)."""
    interrupted = False
    while not job.done():
        job.cancel()
        try:
            await asyncio.wait({job}, timeout=2.0)
        except asyncio.CancelledError:
            interrupted = True
    if not job.cancelled():
        job.exception()  # retrieved: the runner reports its own failures
    if interrupted:
        raise asyncio.CancelledError()


class TaskController:
    def __init__(self, runner: "TaskRunner", task: Task, adopted: bool) -> None:
        self.runner = runner
        self.task = task
        self.adopted = adopted
        self.state = task.status.state
        self.message = task.status.err or task.status.message
        self.unhealthy = False  # failed by its health check: that report stands, not the exit
        self.restarting = False  # exited, and waits to run again (`container run --restart`)
        self._changed = asyncio.Event()
        self._promoted = asyncio.Event()  # desired "ready" became "running"
        self._job = asyncio.create_task(self._drive(), name=f"task-{task.id[:12]}")

    def update(self, task: Task) -> None:
        self.task = task
        self._changed.set()
        if task.desired_state != "ready":
            self._promoted.set()

    def report(self, state: str, message: str = "", **extra) -> None:
        if TASK_STATE_RANK[state] < TASK_STATE_RANK.get(self.state, 0):
            return
        self.state, self.message = state, message
        self.runner.report({"task_id": self.task.id, "state": state, "message": message,
                            "timestamp": time.time(), **extra})

    @property
    def ended(self) -> bool:
        return self.state in ("complete", "failed", "rejected", "shutdown", "orphaned")

    async def _drive(self) -> None:
        ex = self.runner.executor
        runner: Optional[asyncio.Task] = None
        try:
            while True:
                task = self.task
                if task.desired_up and not self.ended and runner is None:
                    runner = asyncio.create_task(self._run(task))
                elif not task.desired_up and not self.ended:
                    if self.state == "running" and task.networks:
                        await self._drain()
                    ours = runner is not None
                    if runner is not None:
                        # First the runner, to its end: a container it is still creating or
                        # starting would otherwise appear after the stop below, and stay.
                        await _end(runner)
                        runner = None
                    if ours or self.adopted:
                        # Ours or adopted (it ran before the agent restarted): stop it either way.
                        try:
                            await ex.stop(task.id, task.spec.container.stop_signal,
                                          task.spec.container.stop_grace_period)
                        except errors.NotFound:
                            pass
                    await self.runner.release(task.id)
                    self.report("shutdown", "shut down as requested")
                self._changed.clear()
                await self._changed.wait()
        except asyncio.CancelledError:
            if runner is not None:
                # close() removes the container once this returns: a create still running
                # (runc create is always finished, see finish_then_cancel) must be over by then.
                await _end(runner)
            raise

    async def _drain(self) -> None:
        """Keep serving a moment after being told to stop. Every node drops this task from its
        load balancers and DNS answers when its desired state changes; that news travels with
        the assignments, so without this pause a connection balanced to it just before could
        meet a container already stopping (Swarm waits likewise before stopping a backend)."""
        await asyncio.sleep(self.runner.backend_drain)

    async def _run(self, task: Task) -> None:
        ex = self.runner.executor
        try:
            if not self.adopted:
                self.report("accepted")
                self.report("preparing", "preparing the image and the container")
                try:
                    await self.runner.ensure_image(task.spec.container.image, task.service_id)
                except errors.ShoalError as exc:
                    self.report("rejected", exc.message, err=exc.message)
                    return
                if self.task.desired_state == "ready":
                    # A replacement: prepared, started once the task it replaces has stopped.
                    self.report("ready", "prepared; waits for the task it replaces to stop")
                    self._promoted.clear()  # no await since the check: a promotion cannot be lost
                    await self._promoted.wait()
                    task = self.task
                    if not task.desired_up:
                        return  # _drive reports the shutdown
                try:
                    # Swarm's templates ({{.Node.ID}}, ...) take this node's values; a bad one
                    # rejects the task before anything is set up for it.
                    task = expand_container_spec(task, task.node_id, self.runner.hostname,
                                                 NODE_PLATFORM)
                    binds = self.runner.secret_mounts.prepare(with_configs(task), self.runner.secrets)
                    netns, net_binds = await self.runner.attach_networks(task)
                    cfg = container_config(task, self.runner.hostname, binds + net_binds)
                    cfg.netns_path = netns
                    await ex.create(cfg)
                    self.report("starting")
                    pid = await ex.start(task.id)
                except errors.ShoalError as exc:
                    await self.runner.release(task.id)
                    self.report("rejected", exc.message, err=exc.message)
                    return
                running = f"started (pid {pid})"
            else:
                await self.runner.attach_networks(task, adopted=True)
                running = "adopted after an agent restart"
            restarts = Restarts(task.restart, ex.meta(task.id).get("restart_count", 0))
            while True:
                info, ran_for = await self._run_once(task, running)
                delay = None if self.unhealthy or self.task.desired_state != "running" else \
                    restarts.after_exit(info.exit_code, ran_for)
                if delay is None:
                    break
                # Its addresses and network namespace stay: the same container runs again.
                self.restarting = True
                self.report("running", f"{info.message}; restarting in {delay:.1f} s "
                            f"(restart {restarts.count}, --restart {restarts.describe()})",
                            container_id=task.id, exit_code=info.exit_code)
                try:
                    await asyncio.sleep(delay)
                    pid = await ex.restart(task.id)
                finally:
                    self.restarting = False
                running = f"restarted (pid {pid}; restart {restarts.count})"
            await self.runner.release(task.id)  # the container ended: its secrets go
            if self.unhealthy:
                return
            if self.task.desired_state != "running":
                self.report("shutdown", "shut down as requested", exit_code=info.exit_code)
            elif info.exit_code == 0 and not info.oom_killed:
                self.report("complete", "finished", exit_code=0)
            else:
                message = info.message or f"task exited with code {info.exit_code}"
                self.report("failed", message, err=message, exit_code=info.exit_code)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # report instead of dying silently: the slot gets replaced
            log.exception("task %s", task.id)
            await self.runner.release(task.id)
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self.report("failed", message, err=message)

    async def _run_once(self, task: Task, running: str) -> tuple[ExitInfo, float]:
        """Report the container running, watch its health, wait for its exit: (exit, seconds
        it ran)."""
        started = time.monotonic()
        check = self.runner.health_config(task)
        self.report("running", running, container_id=task.id,
                    health=health.STARTING if check else "")
        watcher = asyncio.create_task(self._watch_health(task, check, running)) if check else None
        try:
            info = await self.runner.executor.wait(task.id)
        finally:
            if watcher is not None:
                watcher.cancel()
        return info, time.monotonic() - started

    async def _watch_health(self, task: Task, check: HealthConfig, running: str) -> None:
        def changed(status: str, _result) -> None:
            if status != health.UNHEALTHY:
                self.report("running", running, container_id=task.id, health=status)

        monitor = health.HealthMonitor(self.runner.executor, task.id, check, changed)
        try:
            if await monitor.run() != health.UNHEALTHY or self.task.desired_state != "running":
                return
            # As Swarm: the task fails (so the restart policy replaces it) and its container
            # is stopped; failing first lets the replacement start during the stop grace.
            self.unhealthy = True
            self.report("failed", monitor.describe_failure(), err="task: unhealthy container",
                        health=health.UNHEALTHY)
            c = task.spec.container
            await self.runner.executor.stop(task.id, c.stop_signal, c.stop_grace_period)
        except asyncio.CancelledError:
            raise
        except Exception:  # the check must never take the task down with a traceback
            log.exception("health check of task %s", task.id)

    async def close(self, remove: bool) -> None:
        await cancel_and_wait([self._job])
        if remove:
            c = self.task.spec.container
            try:
                await self.runner.executor.stop(self.task.id, c.stop_signal, c.stop_grace_period)
            except errors.ShoalError:
                pass
            await self.runner.executor.remove(self.task.id)
            await self.runner.release(self.task.id)


class TaskRunner:
    def __init__(self, executor: Executor, images: ImageStore, hostname: str,
                 send_reports: Callable[[list[dict]], Awaitable[None]],
                 insecure_registries: frozenset[str] = frozenset(),
                 secret_mounts: Optional[SecretMounts] = None) -> None:
        self.executor = executor
        self.images = images
        self.hostname = hostname
        self.insecure_registries = insecure_registries
        self._send = send_reports
        self.controllers: dict[str, TaskController] = {}
        self._adoptable: set[str] = set()
        self._outbox: dict[str, dict] = {}
        self._outbox_ready = asyncio.Event()
        self._image_locks: dict[str, asyncio.Lock] = {}
        self._reporter: Optional[asyncio.Task] = None
        # Secrets from the assignments: memory only, never written to disk or logged.
        self.secrets = SecretCache()
        self.registry_auths = RegistryAuthCache()
        # Given by the simulated nodes (worker/sim), whose executor has no disk to mount on.
        self.secret_mounts = secret_mounts or SecretMounts(executor.root.parent)
        self.networks: Optional["NodeNetworks"] = None
        self.backend_drain = BACKEND_DRAIN

    async def start(self) -> None:
        await self.executor.adopt()
        # Stopped ones too: a container that exited while the agent was away still has its
        # exit to report (or, with a restart policy, a restart due), not a new run to create.
        self._adoptable = {c.id for c in self.executor.list() if c.state in ("running", "stopped")}
        self._reporter = asyncio.create_task(self._report_loop(), name="status-reports")

    async def stop(self) -> None:
        """The agent stops; containers keep running (they are adopted on the next start)."""
        for ctl in list(self.controllers.values()):
            await ctl.close(remove=False)
        self.controllers.clear()
        if self._reporter is not None:
            self._reporter.cancel()
        if self.networks is not None:
            await self.networks.close()

    async def apply(self, answer: dict) -> None:
        tasks = [codec.from_plain(Task, t) for t in answer.get("tasks", [])]
        self.secrets.update(answer.get("secrets", []), full=bool(answer.get("full")))
        self.secrets.update(answer.get("configs", []), full=False)  # configs share the cache
        self.registry_auths.update(answer.get("registry_auths", []), full=bool(answer.get("full")))
        if answer.get("full"):
            keep = {t.id for t in tasks}
            self.secret_mounts.cleanup_except(keep)
            if self.networks is not None:
                await self.networks.detach_except(keep | set(self.controllers))
            for tid in [tid for tid in self.controllers if tid not in keep]:
                await self._drop(tid)
            # Containers no task claims: left over from before this node was down or restarted.
            for c in self.executor.list():
                if c.id not in keep and c.id not in self.controllers:
                    log.info("removing container %s: no task on this node claims it", c.id)
                    await self._remove_container(c.id)
            self._adoptable &= keep
        for tid in answer.get("removed", []):
            await self._drop(tid)
        for task in tasks:
            ctl = self.controllers.get(task.id)
            if ctl is None:
                adopted = task.id in self._adoptable
                if task.terminal and not adopted:
                    # A finished task: only its container (if any) is left to clean when reaped.
                    ctl = TaskController(self, task, adopted=False)
                    ctl.state = task.status.state
                else:
                    ctl = TaskController(self, task, adopted)
                self.controllers[task.id] = ctl
            else:
                ctl.update(task)
        # Forget the secrets no live task here uses any more.
        self.secrets.retain({r.secret_id for ctl in self.controllers.values()
                             if not ctl.ended and ctl.task.desired_up
                             for r in with_configs(ctl.task).spec.container.secrets})
        self.registry_auths.retain({ctl.task.service_id for ctl in self.controllers.values()
                                    if not ctl.ended and ctl.task.desired_up})

    async def _drop(self, task_id: str) -> None:
        ctl = self.controllers.pop(task_id, None)
        if ctl is not None:
            await ctl.close(remove=True)
        else:
            await self._remove_container(task_id)

    async def _remove_container(self, container_id: str) -> None:
        try:
            await self.executor.stop(container_id, None, 5)
        except errors.ShoalError:
            pass
        await self.executor.remove(container_id)
        await self.release(container_id)

    async def release(self, task_id: str) -> None:
        """The task's container is gone or going: its secrets and network namespace go too."""
        self.secret_mounts.cleanup(task_id)
        if self.networks is not None:
            # Shielded: the task's own runner is often cancelled while it is releasing, and a
            # half-done detach would leave its published port behind.
            await asyncio.shield(self.networks.detach(task_id))

    async def attach_networks(self, task: Task, adopted: bool = False) -> tuple[Optional[str], list]:
        if self.networks is None:
            return None, []
        return await self.networks.attach(task, adopted)

    async def apply_network_state(self, state: dict) -> None:
        if self.networks is not None:
            await self.networks.apply(state)

    def health_config(self, task: Task) -> Optional[HealthConfig]:
        """The check this task's container runs: the service's over the image's, or None."""
        image = self.images.get(task.spec.container.image)
        return health.effective(task.spec.container.healthcheck,
                                health.from_image(image.config if image else None))

    async def ensure_image(self, ref: str, service_id: str = "") -> None:
        lock = self._image_locks.setdefault(ref, asyncio.Lock())
        async with lock:
            if self.images.get(ref) is not None:
                return
            await self.images.pull(ref, insecure_registries=self.insecure_registries,
                                   credentials=self.registry_auths.for_pull(service_id, ref))

    # ---- reports ----------------------------------------------------------------------------
    def report(self, update: dict) -> None:
        # The newest state per task is what counts; fields it does not repeat (the container
        # id of an earlier "running") are kept, or a health change would drop them.
        self._outbox[update["task_id"]] = {**self._outbox.get(update["task_id"], {}), **update}
        self._outbox_ready.set()

    async def _report_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            await asyncio.sleep(0.05)  # batch the states of many tasks into one report
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, {}
            try:
                await self._send(list(batch.values()))
            except errors.ShoalError as exc:
                log.info("status report failed (%s); will resend", exc.message)
                for tid, update in batch.items():
                    self._outbox[tid] = {**update, **self._outbox.get(tid, {})}
                self._outbox_ready.set()
                await asyncio.sleep(1.0)
