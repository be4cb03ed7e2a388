"""A node's metrics in Prometheus' terms: its tasks by state, its containers' CPU, memory and
restarts, and its image pulls.

Everything but the pulls is read when Prometheus scrapes (a collector over the task runner and
the executor), so no code path of the worker counts anything on the way; the pulls are events
and are counted as they end, through the image store's `pull_observers`.

CPU and memory come from each container's own cgroup (the executor's `cgroup` meta, the path
runc was given), read from whichever hierarchy carries the controller: cgroup v1 (`cpuacct`,
`memory`, as on this project's hosts) or a cgroup v2 unified tree at /sys/fs/cgroup.
Labels are ids and names only, never a container's environment or command (they may hold
secrets).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.model import TASK_STATES
from worker.executor import Executor, cgroup_mounts
from worker.images import ImageStore

# Pulls go from a local registry's fraction of a second to minutes for a large image abroad.
PULL_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
CONTAINER_LABELS = ("container_id", "name", "service")


class TaskStates(Protocol):
    """What the collector reads of the task runner: one controller per task, with its state."""
    controllers: dict


@dataclass(frozen=True)
class CgroupRoots:
    """Where the controllers that matter here are mounted; None where there is none."""
    cpuacct: Optional[str] = None     # v1: cpuacct.usage, nanoseconds
    memory: Optional[str] = None      # v1: memory.usage_in_bytes
    unified: Optional[str] = None     # v2 at /sys/fs/cgroup: cpu.stat, memory.current

    @classmethod
    def find(cls, mounts: Iterable[tuple[str, str, str]]) -> "CgroupRoots":
        cpuacct = memory = unified = None
        for mnt, fstype, opts in mounts:
            controllers = opts.split(",")
            if fstype == "cgroup":
                if "cpuacct" in controllers and cpuacct is None:
                    cpuacct = mnt
                if "memory" in controllers and memory is None:
                    memory = mnt
            elif fstype == "cgroup2" and mnt == "/sys/fs/cgroup":
                unified = mnt
        return cls(cpuacct, memory, unified)

    def cpu_seconds(self, cg: str) -> Optional[float]:
        if self.cpuacct is not None:
            text = _read(self.cpuacct + cg + "/cpuacct.usage")
            if text is not None:
                return int(text) / 1e9
        if self.unified is not None:
            text = _read(self.unified + cg + "/cpu.stat")
            for line in (text or "").splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        return None

    def memory_bytes(self, cg: str) -> Optional[int]:
        if self.memory is not None:
            text = _read(self.memory + cg + "/memory.usage_in_bytes")
            if text is not None:
                return int(text)
        if self.unified is not None:
            text = _read(self.unified + cg + "/memory.current")
            if text is not None:
                return int(text)
        return None


def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text().strip()
    except (OSError, ValueError):
        return None  # the container stopped (runc removed its cgroup) since it was listed


class NodeCollector(Collector):
    """Read at scrape time: the runner's tasks by state, and each container's cgroup figures."""

    def __init__(self, executor: Executor, runner: Callable[[], Optional[TaskStates]],
                 cgroups: Callable[[], CgroupRoots] = lambda: CgroupRoots.find(cgroup_mounts())
                 ) -> None:
        self._executor = executor
        self._runner = runner
        self._cgroups = cgroups

    def collect(self) -> Iterator[Metric]:
        yield self._tasks()
        yield from self._containers()

    def _tasks(self) -> Metric:
        counts = dict.fromkeys(TASK_STATES, 0)
        runner = self._runner()
        for ctl in list(runner.controllers.values()) if runner is not None else ():
            counts[ctl.state] = counts.get(ctl.state, 0) + 1
        family = GaugeMetricFamily("shoal_node_tasks",
                                   "Tasks assigned to this node, by the state its agent knows",
                                   labels=["state"])
        for state, n in counts.items():
            family.add_metric([state], n)
        return family

    def _containers(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily("shoal_container_cpu_seconds",
                                  "CPU time the container's cgroup used (user and system)",
                                  labels=CONTAINER_LABELS)
        memory = GaugeMetricFamily("shoal_container_memory_usage_bytes",
                                   "Memory the container's cgroup uses, page cache included",
                                   labels=CONTAINER_LABELS)
        restarts = CounterMetricFamily("shoal_container_restarts",
                                       "Times the node ran the container again after it exited "
                                       "(its restart policy)", labels=CONTAINER_LABELS)
        roots = self._cgroups()
        for info in self._executor.list():
            try:
                meta = self._executor.meta(info.id)
            except Exception:  # removed since it was listed
                continue
            labels = [info.id, info.name, info.labels.get("shoal.service.name", "")]
            restarts.add_metric(labels, int(meta.get("restart_count", 0)))
            cg = meta.get("cgroup", "")
            if info.state != "running" or not cg:
                continue
            seconds = roots.cpu_seconds(cg)
            if seconds is not None:
                cpu.add_metric(labels, seconds)
            used = roots.memory_bytes(cg)
            if used is not None:
                memory.add_metric(labels, used)
        yield cpu
        yield memory
        yield restarts


class PullMetrics:
    """Image pulls, counted as they end (an event: a scrape would miss the ones in between)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pulls = Counter("shoal_image_pulls", "Image pulls from a registry, by result",
                             ["result"], registry=registry)
        self.duration = Histogram("shoal_image_pull_duration_seconds",
                                  "Time a successful image pull took", buckets=PULL_BUCKETS,
                                  registry=registry)
        for result in ("success", "failure"):
            self.pulls.labels(result)  # both series exist from the start, at 0

    def observe(self, seconds: float, ok: bool) -> None:
        self.pulls.labels("success" if ok else "failure").inc()
        if ok:
            self.duration.observe(seconds)


def register_node_metrics(registry: CollectorRegistry, executor: Executor, images: ImageStore,
                          runner: Callable[[], Optional[TaskStates]]) -> PullMetrics:
    """The node's metrics into `registry`; `runner` gives the task runner while there is one."""
    registry.register(NodeCollector(executor, runner))
    pulls = PullMetrics(registry)
    images.pull_observers.append(pulls.observe)
    return pulls
