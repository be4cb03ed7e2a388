"""The simulated executor: the only part of a simulated node that is not real.

A task's "container" is a record in memory. `create` takes half the start delay (the task is
preparing), `start` the other half (starting), then it runs until it is stopped, or, drawn
with probability `fail_rate` at start, exits with `exit_code` after `fail_after` seconds.
Nothing here touches runc, the disk or the network: no bundle, no rootfs, no log files, no
namespace. Exec and logs have nothing to run against and say so.

The image store and secret mounts a TaskRunner needs are stood in for here too, for the same
reason: a simulated node pulls nothing and mounts nothing.
"""
from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from common import errors
from common.model import Task
from worker.executor import ContainerConfig, ContainerInfo, ExitInfo
from worker.secrets import SecretCache

SIMULATED = ("this is a simulated node (shoal sim nodes): its tasks have no container, so "
             "there are no logs to read and nothing to exec into")
# Fake pids: never a real process's, so nothing can mistake one for a process to signal.
_PIDS = itertools.count(10_000_000)


@dataclass
class SimBehaviour:
    """How simulated tasks behave; one per process, shared by its nodes."""

    start_delay: float = 0.5          # seconds from preparing to running, half in each step
    fail_rate: float = 0.0            # chance that a started task fails
    exit_code: int = 1                # the exit code of a failing task
    fail_after: Optional[float] = None  # seconds a failing task runs; None: the start delay
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if not self.start_delay >= 0:
            raise ValueError(f"start_delay must be >= 0 seconds, got {self.start_delay!r}")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, got {self.fail_rate!r}")
        if not 0 < self.exit_code < 256:
            raise ValueError(f"exit_code must be 1..255 (a failure), got {self.exit_code!r}")


@dataclass
class _SimContainer:
    config: ContainerConfig
    state: str = "created"            # created | running | stopped
    pid: int = 0
    runs: int = 0
    exit_info: Optional[ExitInfo] = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    failer: Optional[asyncio.Task] = None


class SimulatedExecutor:
    """What TaskController and TaskRunner call on an Executor, in memory."""

    def __init__(self, behaviour: SimBehaviour, runs: Counter[str]) -> None:
        self.behaviour = behaviour
        self.runs = runs  # task id -> starts, shared by the process's nodes
        self._containers: dict[str, _SimContainer] = {}

    def _get(self, cid: str) -> _SimContainer:
        c = self._containers.get(cid)
        if c is None:
            raise errors.NotFound(f"no such container: {cid}")
        return c

    # -- what the task runner reads --
    def list(self) -> list[ContainerInfo]:
        return [self._info(c) for c in self._containers.values()]

    def inspect(self, cid: str) -> ContainerInfo:
        return self._info(self._get(cid))

    def meta(self, cid: str) -> dict:
        return {"restart_count": max(0, self._get(cid).runs - 1)}

    @staticmethod
    def _info(c: _SimContainer) -> ContainerInfo:
        return ContainerInfo(id=c.config.id, labels=dict(c.config.labels), state=c.state,
                             pid=c.pid, name=c.config.name, image=c.config.image,
                             exit=c.exit_info)

    async def adopt(self) -> list[ContainerInfo]:
        return []  # a simulated node starts empty: its containers died with its process

    # -- lifecycle --
    async def create(self, config: ContainerConfig) -> None:
        if config.id in self._containers:
            raise errors.Conflict(f"container {config.id} already exists")
        await asyncio.sleep(self.behaviour.start_delay / 2)
        self._containers[config.id] = _SimContainer(config)

    async def start(self, cid: str) -> int:
        c = self._get(cid)
        if c.state == "running":
            raise errors.FailedPrecondition(f"container {cid} is already running")
        await asyncio.sleep(self.behaviour.start_delay / 2)
        return self._run(c)

    async def restart(self, cid: str) -> int:
        c = self._get(cid)
        if c.state == "running":
            raise errors.FailedPrecondition(f"container {cid} is still running")
        return self._run(c)

    def _run(self, c: _SimContainer) -> int:
        b = self.behaviour
        c.state, c.pid, c.exit_info = "running", next(_PIDS), None
        c.exited = asyncio.Event()
        c.runs += 1
        self.runs[c.config.id] += 1
        if b.fail_rate and b.rng.random() < b.fail_rate:
            delay = b.start_delay if b.fail_after is None else b.fail_after
            c.failer = asyncio.create_task(self._fail(c, delay), name=f"sim-fail-{c.config.id[:12]}")
        return c.pid

    async def _fail(self, c: _SimContainer, delay: float) -> None:
        await asyncio.sleep(delay)
        self._exit(c, ExitInfo(exit_code=self.behaviour.exit_code, oom_killed=False,
                               message=f"simulated failure: exited with code "
                                       f"{self.behaviour.exit_code}"))

    def _exit(self, c: _SimContainer, info: ExitInfo) -> None:
        if c.state != "running":
            return
        c.state, c.exit_info = "stopped", info
        c.exited.set()

    async def wait(self, cid: str, run: Optional[int] = None) -> ExitInfo:
        c = self._get(cid)
        if c.state == "created":
            raise errors.FailedPrecondition(f"container {cid} was never started")
        await c.exited.wait()
        assert c.exit_info is not None
        return c.exit_info

    async def stop(self, cid: str, signal: Optional[str] = None,
                   grace: Optional[float] = None) -> None:
        c = self._get(cid)
        if c.failer is not None:
            c.failer.cancel()
        # A simulated process obeys its stop signal at once: code 143, SIGTERM's.
        self._exit(c, ExitInfo(exit_code=143, oom_killed=False, message="stopped"))

    async def kill(self, cid: str, signal: str = "KILL") -> None:
        await self.stop(cid)

    async def remove(self, cid: str) -> None:
        c = self._containers.pop(cid, None)
        if c is not None and c.failer is not None:
            c.failer.cancel()

    async def close(self) -> None:
        for c in self._containers.values():
            if c.failer is not None:
                c.failer.cancel()

    # -- what has no simulated meaning --
    async def exec(self, cid: str, argv: list[str], timeout: float = 30.0) -> tuple[int, str]:
        # Only health checks call this on a node: a simulated container is always healthy.
        self._get(cid)
        return 0, "simulated health check: healthy"

    async def logs(self, cid: str, *args, **kwargs):
        raise errors.FailedPrecondition(SIMULATED)

    def exec_process(self, cid: str, argv: list[str], **kwargs):
        raise errors.FailedPrecondition(SIMULATED)


class SimulatedImages:
    """Every image is there at once: a simulated node pulls nothing."""

    def get(self, ref: str) -> None:
        return None  # no image config: no health check from the image

    async def pull(self, ref: str, **kwargs) -> None:
        return None


class SimulatedSecretMounts:
    """The secrets a task names must have been delivered, as on a real node; nothing is
    mounted (no tmpfs, nothing on disk)."""

    def prepare(self, task: Task, cache: SecretCache) -> list[tuple[str, str, bool]]:
        for ref in task.spec.container.secrets:
            if cache.get(ref.secret_id) is None:
                raise errors.FailedPrecondition(
                    f"secret {ref.secret_name or ref.secret_id!r} was not delivered to this node "
                    "(removed, or not yet known)")
        return []

    def cleanup(self, task_id: str) -> None:
        return None

    def cleanup_except(self, keep: set[str]) -> None:
        return None

    def cleanup_all(self) -> None:
        return None
