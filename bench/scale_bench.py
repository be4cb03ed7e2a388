"""Scale benchmark (issue 20): 3 real managers and thousands of simulated nodes.

The managers are real `shoald` processes in a namespace lab (real raft, real mutual TLS).
The nodes are `shoal sim nodes` processes (worker/sim): real agents that join with the token
and a CSR and keep real sessions, whose executor alone is simulated. They run side by side in
a lab host of their own (a namespace whose shoald is stopped: its address is theirs).

Steps, each reported with its wall time, every manager's CPU seconds and RSS, the raft log's
growth (entries/s: the commit index's advance) and the API latency p50/p99 of `service ls`,
`node ls` and `service update`, sampled all along through the CLI's own HTTP client:

    join        N nodes join; time until all are Ready
    create      services totalling T replicas; time until all run, created->running p50/p99
    steady      the heartbeat load alone
    update      a rolling update of the big service, parallelism 100
    failover    SIGKILL of the leader under load: time to a new leader; no node may go Down
                and no task may be rescheduled because of it
    drain       10 % of the nodes drained; time until their tasks run elsewhere
    newmanager  a 4th manager joins the big store: raft snapshot size, time to catch up

Correctness is checked at the end (what integration/test_scale_small.py asserts): every task
ran exactly once (the simulated nodes count starts), each slot has one running task, no
simulated node was ever seen Down, the failover rescheduled nothing.

Run as root: .venv/bin/python bench/scale_bench.py --preset small [--profile-leader DIR]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import Results, add_json_option  # noqa: E402
from common import errors  # noqa: E402
from common.httpclient import ApiClient, Endpoint  # noqa: E402
from integration.helpers import unique_lab_name  # noqa: E402
from manager.dispatcher.dispatcher import effective_period  # noqa: E402
from shoal.lab.netlab import Lab  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVICE_SIZE = 2000          # replicas per service besides the big one
UPDATE_PARALLELISM = 100
INGRESS_NODES = 250          # past this many nodes the bench gives ingress a /16


@dataclass(frozen=True)
class Preset:
    nodes: int
    tasks: int
    big: int                  # replicas of the service the rolling update replaces
    sim_processes: int = 2
    heartbeat: float = 5.0    # the swarm's dispatcher heartbeat period (Docker's default)
    steady: float = 20.0      # seconds of steady state measured
    start_delay: float = 0.5  # simulated preparing -> running
    timeout: float = 900.0    # per step


PRESETS = {
    "small": Preset(nodes=1000, tasks=20_000, big=2000),
    "full": Preset(nodes=5000, tasks=100_000, big=10_000, steady=60.0, timeout=3600.0),
    # What the suite's scale test can afford when the small one does not fit its budget.
    "tiny": Preset(nodes=200, tasks=2000, big=500, steady=5.0, timeout=300.0),
    "suite": Preset(nodes=100, tasks=1000, big=200, steady=5.0, timeout=240.0),
}


# ---- simulated node processes ---------------------------------------------------------------
@dataclass
class SimProcess:
    """One `shoal sim nodes` process inside a lab host, stopped by its own PID."""

    prefix: str
    count: int
    data: Path
    proc: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, lab: Lab, host: str, manager: str, token: str, count: int, prefix: str,
              data: Path, start_delay: float = 0.5, fail_rate: float = 0.0) -> "SimProcess":
        data.mkdir(parents=True, exist_ok=True)
        log = data / "sim.log"
        cmd, env = lab.command(host, [
            "shoal", "sim", "nodes", "--count", str(count), "--manager", manager,
            "--token", token, "--name-prefix", prefix, "--data", str(data),
            "--start-delay", str(start_delay), "--fail-rate", str(fail_rate)])
        with open(log, "wb") as out:
            # `ip netns exec` execs the command: this PID is the simulated nodes' process.
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        return cls(prefix, count, data, proc, log)

    def status(self) -> dict:
        try:
            return json.loads((self.data / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def joined(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"sim nodes {self.prefix} exited with {self.proc.returncode}: "
                               f"{self.log.read_text()[-2000:]}")
        return len(self.status().get("nodes", {})) == self.count

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def sim_host(lab: Lab) -> str:
    """A lab host for simulated nodes: its namespace and address, its own shoald stopped."""
    name = lab.add_host("worker", join=False)
    lab.stop(name)
    return name


def merged_runs(sims: list[SimProcess]) -> Counter[str]:
    runs: Counter[str] = Counter()
    for s in sims:
        runs.update(s.status().get("task_runs", {}))
    return runs


# ---- managers: API, /proc, raft ---------------------------------------------------------------
class Managers:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.clients: dict[str, ApiClient] = {}
        self.last_leader: Optional[str] = None

    def names(self) -> list[str]:
        return [h.name for h in self.lab.hosts() if h.role == "manager"]

    def alive(self) -> list[str]:
        return [h.name for h in self.lab.hosts() if h.role == "manager" and h.state == "running"]

    def client(self, name: str) -> ApiClient:
        c = self.clients.get(name)
        if c is None:
            c = ApiClient(Endpoint(unix_path=self.lab.host(name).socket))
            self.clients[name] = c
        return c

    async def call(self, method: str, path: str, body: Any = None, *, via: Optional[str] = None,
                   params: dict | None = None, timeout: float = 60) -> Any:
        """Through `via`, or the first live manager that answers, followers first: the
        bench's own reads must not add to the leader's load (writes are forwarded to it)."""
        last: Exception | None = None
        order = sorted(self.alive(), key=lambda n: n == self.last_leader)
        for name in ([via] if via else order):
            try:
                return await self.client(name).request(method, path, body, params=params,
                                                       timeout=timeout)
            except errors.ShoalError as exc:
                last = exc
        raise last or RuntimeError("no live manager")

    async def info(self, name: str) -> dict:
        return (await self.client(name).request("GET", "/info", timeout=5))["swarm"]

    async def leader(self) -> Optional[str]:
        for name in self.alive():
            try:
                if (await self.info(name)).get("leader"):
                    self.last_leader = name
                    return name
            except errors.ShoalError:
                continue
        return None

    def proc(self) -> dict[str, tuple[float, float]]:
        """manager -> (CPU seconds so far, RSS MB) of its shoald."""
        out = {}
        for h in self.lab.hosts():
            if h.role != "manager" or not h.pid:
                continue
            try:
                stat = Path(f"/proc/{h.pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
                rss = next(int(line.split()[1]) / 1024 for line in
                           Path(f"/proc/{h.pid}/status").read_text().splitlines()
                           if line.startswith("VmRSS:"))
            except (OSError, ValueError, StopIteration):
                continue
            out[h.name] = (cpu, rss)
        return out

    async def commit_index(self) -> int:
        best = 0
        for name in self.alive():
            try:
                best = max(best, int((await self.info(name))["raft"]["commit_index"]))
            except (errors.ShoalError, KeyError):
                continue
        return best

    async def term(self) -> int:
        best = 0
        for name in self.alive():
            try:
                best = max(best, int((await self.info(name))["raft"]["term"]))
            except (errors.ShoalError, KeyError):
                continue
        return best

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()


# ---- sampling ----------------------------------------------------------------------------------
@dataclass
class Sample:
    t: float
    op: str
    seconds: float
    ok: bool
    error: str = ""


@dataclass
class Sampler:
    """`service ls`, `node ls`, `service update` (a label on a 0-replica probe service), one
    of each per `every` seconds, throughout; and every sim node ever seen Down."""

    managers: Managers
    sim_prefixes: tuple[str, ...]
    every: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    # (time, the store index the probe's last update got): the store's transactions/s
    store_index: list[tuple[float, int]] = field(default_factory=list)
    down_seen: dict[str, float] = field(default_factory=dict)  # hostname -> first time
    watch_down: bool = True
    _job: Optional[asyncio.Task] = None

    def start(self) -> None:
        self._job = asyncio.create_task(self._run(), name="sampler")

    async def stop(self) -> None:
        if self._job is not None:
            self._job.cancel()
            await asyncio.gather(self._job, return_exceptions=True)

    async def _timed(self, op: str, method: str, path: str, body: Any = None,
                     params: dict | None = None) -> Any:
        t0 = time.monotonic()
        try:
            result = await self.managers.call(method, path, body, params=params, timeout=30)
        except errors.ShoalError as exc:
            self.samples.append(Sample(t0, op, time.monotonic() - t0, False,
                                       f"{op}: {exc.message}"[:200]))
            return None
        self.samples.append(Sample(t0, op, time.monotonic() - t0, True))
        return result

    async def _run(self) -> None:
        n = 0
        while True:
            t0 = time.monotonic()
            await self._timed("service ls", "GET", "/services")
            nodes = await self._timed("node ls", "GET", "/nodes")
            if nodes and self.watch_down:
                for node in nodes:
                    host = node["description"]["hostname"]
                    if node["status"]["state"] == "down" and host.startswith(self.sim_prefixes):
                        self.down_seen.setdefault(host, time.time())
            try:
                probe = await self.managers.call("GET", "/services/probe")
            except errors.ShoalError:
                await asyncio.sleep(self.every)
                continue
            self.store_index.append((time.monotonic(), int(probe["meta"]["version"])))
            spec = probe["spec"]
            spec["labels"] = {**spec.get("labels", {}), "sample": str(n)}
            await self._timed("service update", "POST", f"/services/{probe['id']}/update",
                              spec, params={"version": str(probe["meta"]["version"])})
            n += 1
            if n % 5 == 0:  # keep knowing the leader, whose load the reads should spare
                await self.managers.leader()
            await asyncio.sleep(max(0.0, self.every - (time.monotonic() - t0)))

    def window(self, t0: float, t1: float) -> dict[str, list[float]]:
        out: dict[str, list[float]] = defaultdict(list)
        for s in self.samples:
            if t0 <= s.t <= t1 and s.ok:
                out[s.op].append(s.seconds)
        return out

    def transactions_per_s(self, t0: float, t1: float) -> float:
        inside = [(t, i) for t, i in self.store_index if t0 <= t <= t1]
        if len(inside) < 2 or inside[-1][0] == inside[0][0]:
            return float("nan")
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def failures(self, t0: float, t1: float) -> int:
        return sum(1 for s in self.samples if t0 <= s.t <= t1 and not s.ok)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# ---- steps ---------------------------------------------------------------------------------------
@dataclass
class StepResult:
    name: str
    wall: float
    cpu: dict[str, float]
    rss: dict[str, float]
    entries_per_s: float
    txn_per_s: float
    sims_cpu: float
    latency: dict[str, tuple[float, float, int]]  # op -> (p50 s, p99 s, samples)
    failed_samples: int
    extra: dict[str, Any] = field(default_factory=dict)


class Step:
    def __init__(self, bench: "Bench", name: str) -> None:
        self.bench, self.name = bench, name
        self.extra: dict[str, Any] = {}

    async def __aenter__(self) -> "Step":
        b = self.bench
        print(f"[{time.strftime('%H:%M:%S')}] step {self.name} ...", flush=True)
        self.t0 = time.monotonic()
        self.proc0 = b.managers.proc()
        self.index0 = await b.managers.commit_index()
        self.term0 = await b.managers.term()
        self.sims0 = b.sims_cpu()
        await b.profile_start(self.name)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        b = self.bench
        await b.profile_stop()
        if exc_type is not None:
            # Recorded all the same, marked: where a step gave up is a finding too.
            self.extra["FAILED"] = f"{exc_type.__name__}"
        t1 = time.monotonic()
        wall = t1 - self.t0
        proc1 = b.managers.proc()
        index1 = await b.managers.commit_index()
        self.extra["elections"] = await b.managers.term() - self.term0
        # A manager killed (or restarted) within the step has no comparable CPU figure.
        cpu = {m: round(proc1[m][0] - self.proc0[m][0], 1) for m in proc1
               if m in self.proc0 and proc1[m][0] >= self.proc0[m][0]}
        rss = {m: round(v[1]) for m, v in proc1.items()}
        lat = {op: (pct(v, 0.5), pct(v, 0.99), len(v))
               for op, v in b.sampler.window(self.t0, t1).items()}
        sims1 = b.sims_cpu()
        result = StepResult(self.name, wall, cpu, rss, (index1 - self.index0) / wall if wall else 0,
                            b.sampler.transactions_per_s(self.t0, t1), sims1 - self.sims0,
                            lat, b.sampler.failures(self.t0, t1), self.extra)
        b.steps.append(result)
        print(f"    {self.name}: {wall:.1f} s  {self.extra}", flush=True)
        return False


async def wait_for(check, timeout: float, what: str, every: float = 1.0,
                   progress=None) -> Any:
    """Poll `check` until truthy; `progress()` (a line) is printed every 15 s meanwhile."""
    deadline = time.monotonic() + timeout
    last: Any = None
    said = time.monotonic()
    while time.monotonic() < deadline:
        try:
            last = await check()
            if last:
                return last
        except errors.ShoalError as exc:
            last = exc
        if progress is not None and time.monotonic() - said > 15:
            said = time.monotonic()
            try:
                print(f"      waiting for {what}: {await progress()}", flush=True)
            except errors.ShoalError as exc:
                print(f"      waiting for {what}: ({exc.message})", flush=True)
        await asyncio.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Bench:
    def __init__(self, lab: Lab, preset: Preset, workdir: Path, sim_host: str,
                 profile_dir: Optional[Path] = None) -> None:
        self.lab, self.preset, self.workdir = lab, preset, workdir
        self.sim_host = sim_host
        self.profile_dir = profile_dir
        self.managers = Managers(lab)
        self.sims: list[SimProcess] = []
        self.steps: list[StepResult] = []
        self.checks: dict[str, Any] = {}
        self.services: dict[str, int] = {}
        self.sampler = Sampler(self.managers, ())
        self._profiler: Optional[subprocess.Popen] = None

    # -- profiling: py-spy on the leader, one flame per step --
    async def profile_start(self, step: str) -> None:
        if self.profile_dir is None:
            return
        leader = await self.managers.leader()
        spy = Path(sys.executable).parent / "py-spy"
        if leader is None or not spy.exists():
            return
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        out = self.profile_dir / f"{step}-{leader}.txt"
        self._profiler = subprocess.Popen(
            [str(spy), "record", "--pid", str(self.lab.host(leader).pid), "--format", "raw",
             "--rate", "20", "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def profile_stop(self) -> None:
        if self._profiler is None:
            return
        self._profiler.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(asyncio.to_thread(self._profiler.wait), 30)
        except asyncio.TimeoutError:
            self._profiler.kill()
        self._profiler = None

    async def cli(self, host: str, *args: str, timeout: float = 120) -> str:
        cmd, env = self.lab.command(host, ["shoal", *args])
        proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE,
                                                    stdin=asyncio.subprocess.DEVNULL)
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"shoal {' '.join(args)} failed: {err.decode()[-500:]}")
        return out.decode()

    async def running_total(self) -> tuple[int, int]:
        services = await self.managers.call("GET", "/services")
        running = sum(s["replicas_status"]["running"] for s in services if s["spec"]["name"] in self.services)
        desired = sum(s["replicas_status"]["desired"] for s in services if s["spec"]["name"] in self.services)
        return running, desired

    def sims_cpu(self) -> float:
        """CPU seconds the simulated nodes' processes used so far (the simulator's own cost)."""
        total = 0.0
        for s in self.sims:
            try:
                stat = Path(f"/proc/{s.proc.pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        return total

    async def progress(self) -> str:
        nodes = await self.sim_nodes_view()
        states = Counter(n["status"]["state"] for n in nodes)
        running, desired = await self.running_total() if self.services else (0, 0)
        leader = await self.managers.leader()
        term = (await self.managers.info(leader))["raft"]["term"] if leader else "?"
        return (f"nodes {dict(states)}, tasks running {running}/{desired}, leader {leader} "
                f"term {term}, sim nodes seen down so far {len(self.sampler.down_seen)}")

    def heartbeat_period(self) -> float:
        """The period the leader hands out: the swarm's, longer past 100 heartbeats/s."""
        return effective_period(self.preset.heartbeat, self.preset.nodes + 3)

    async def sim_nodes_view(self) -> list[dict]:
        nodes = await self.managers.call("GET", "/nodes")
        prefixes = tuple(f"{s.prefix}-" for s in self.sims)
        return [n for n in nodes if n["description"]["hostname"].startswith(prefixes)]

    # -- the steps --
    async def run(self) -> None:
        p = self.preset
        m1 = "manager1"
        await self.cli(m1, "swarm", "update", "--dispatcher-heartbeat", f"{p.heartbeat:g}s")
        if p.nodes > INGRESS_NODES:
            # Every node takes an ingress address: the default /24 has room for 253, and as
            # with Docker, a larger swarm needs a larger ingress network.
            await self.cli(m1, "network", "rm", "ingress")
            await self.cli(m1, "network", "create", "--driver", "overlay", "--ingress",
                           "--subnet", "10.0.0.0/16", "ingress")
        await self.cli(m1, "service", "create", "--detach", "--name", "probe", "--replicas", "0",
                       "--resolve-image", "never", "busybox:1", "true")
        token = (await self.cli(m1, "swarm", "join-token", "-q", "worker")).strip()
        manager_addr = f"{self.lab.host(m1).address}:2377"
        host = self.sim_host
        self.sampler.sim_prefixes = tuple(f"sim{chr(65 + i)}-" for i in range(p.sim_processes))
        self.sampler.start()

        async with Step(self, "join") as step:
            per = [p.nodes // p.sim_processes + (1 if i < p.nodes % p.sim_processes else 0)
                   for i in range(p.sim_processes)]
            for i, count in enumerate(per):
                self.sims.append(SimProcess.start(
                    self.lab, host, manager_addr, token, count, f"sim{chr(65 + i)}",
                    self.workdir / f"sim{chr(65 + i)}", start_delay=p.start_delay))

            async def all_ready() -> bool:
                for s in self.sims:
                    s.joined()  # raises if a process died
                nodes = await self.sim_nodes_view()
                return len(nodes) == p.nodes and all(n["status"]["state"] == "ready" for n in nodes)
            await wait_for(all_ready, p.timeout, f"{p.nodes} simulated nodes Ready", every=2.0,
                           progress=self.progress)
            step.extra["nodes"] = p.nodes

        async with Step(self, "create") as step:
            sizes = {"big": p.big}
            rest, i = p.tasks - p.big, 1
            while rest > 0:
                sizes[f"svc{i:02d}"] = min(SERVICE_SIZE, rest)
                rest -= sizes[f"svc{i:02d}"]
                i += 1
            self.services = sizes
            created_at = time.time()
            for name, replicas in sizes.items():
                await self.cli(m1, "service", "create", "--detach", "--name", name,
                               "--replicas", str(replicas), "--constraint", "node.role==worker",
                               "--resolve-image", "never", "--stop-grace-period", "1s",
                               "--update-parallelism", str(UPDATE_PARALLELISM),
                               "--update-delay", "0s", "--update-monitor", "1s",
                               "busybox:1", "sleep", "1000000")

            async def all_running() -> bool:
                running, desired = await self.running_total()
                return desired == p.tasks and running == p.tasks
            await wait_for(all_running, p.timeout, f"{p.tasks} tasks running", every=2.0,
                           progress=self.progress)
            delays = []
            for name in sizes:
                for t in await self.managers.call("GET", "/tasks", params={"service": name}):
                    if t["status"]["state"] == "running":
                        delays.append(t["status"]["timestamp"] - t["meta"]["created_at"])
            step.extra.update(tasks=p.tasks, services=len(sizes),
                              created_to_running_p50=round(pct(delays, 0.5), 2),
                              created_to_running_p99=round(pct(delays, 0.99), 2),
                              first_create_to_last_running=round(time.time() - created_at, 1))

        async with Step(self, "steady") as step:
            await asyncio.sleep(p.steady)
            step.extra["heartbeat_period"] = self.heartbeat_period()

        async with Step(self, "update") as step:
            await self.cli(m1, "service", "update", "--detach", "--env-add", "BENCH=2", "big")

            async def updated() -> bool:
                svc = await self.managers.call("GET", "/services/big")
                state = svc["update_status"]["state"]
                if state in ("paused", "rollback_started", "rollback_completed"):
                    raise RuntimeError(f"the rolling update went {state}: "
                                       f"{svc['update_status']['message']}")
                return state == "completed" and svc["replicas_status"]["running"] == p.big
            await wait_for(updated, p.timeout, "the rolling update of big", every=1.0,
                           progress=self.progress)
            step.extra.update(replicas=p.big, parallelism=UPDATE_PARALLELISM)

        await self.failover()
        await self.drain()
        await self.new_manager()
        await self.sampler.stop()
        await self.final_checks()

    async def live_tasks(self) -> dict[str, dict]:
        tasks = await self.managers.call("GET", "/tasks", params={"desired_state": "running"},
                                         timeout=120)
        return {t["id"]: t for t in tasks if t["service_name"] in self.services}

    async def failover(self) -> None:
        p = self.preset
        async with Step(self, "failover") as step:
            before = await self.live_tasks()
            leader = await self.managers.leader()
            assert leader is not None, "no leader before the failover"
            old_term = int((await self.managers.info(leader))["raft"]["term"])
            killed_at, t0 = time.time(), time.monotonic()
            self.lab.kill(leader)

            async def new_leader() -> Optional[str]:
                for name in self.managers.alive():
                    try:
                        info = await self.managers.info(name)
                    except errors.ShoalError:
                        continue
                    if info.get("leader") and int(info["raft"]["term"]) > old_term:
                        return name
                return None
            elected = await wait_for(new_leader, 60, "a new leader", every=0.05)
            step.extra["time_to_new_leader_s"] = round(time.monotonic() - t0, 2)
            step.extra.update(killed=leader, new_leader=elected)
            # The new leader gives every node a full grace period: wait it out and more.
            await asyncio.sleep(3 * self.heartbeat_period() + 5)
            after = await self.live_tasks()
            nodes = await self.sim_nodes_view()
            down = [n["description"]["hostname"] for n in nodes if n["status"]["state"] != "ready"]
            new = [t for t in after.values() if t["meta"]["created_at"] >= killed_at]
            gone = [tid for tid in before if tid not in after]
            self.checks["failover_nodes_down"] = down
            self.checks["failover_tasks_created"] = len(new)
            self.checks["failover_tasks_replaced"] = len(gone)
            step.extra.update(nodes_down=len(down), tasks_rescheduled=len(new) + len(gone))
            await asyncio.to_thread(self.lab.start, leader)  # back to 3 managers

    async def drain(self) -> None:
        p = self.preset
        async with Step(self, "drain") as step:
            nodes = sorted(await self.sim_nodes_view(), key=lambda n: n["description"]["hostname"])
            chosen = nodes[: max(1, len(nodes) // 10)]
            gate = asyncio.Semaphore(20)

            async def drain(node: dict) -> None:
                async with gate:
                    await self.managers.call("POST", f"/nodes/{node['id']}/update",
                                             {"availability": "drain"})
            await asyncio.gather(*(drain(n) for n in chosen))
            drained = {n["id"] for n in chosen}

            async def moved() -> bool:
                live = await self.live_tasks()
                if any(t["node_id"] in drained for t in live.values()):
                    return False
                running, desired = await self.running_total()
                return running == desired == p.tasks
            await wait_for(moved, p.timeout, "the drained nodes' tasks running elsewhere",
                           every=3.0, progress=self.progress)
            step.extra["drained_nodes"] = len(chosen)

    async def new_manager(self) -> None:
        async with Step(self, "newmanager") as step:
            leader = await self.managers.leader()
            target = await self.managers.commit_index()
            t0 = time.monotonic()
            name = await asyncio.to_thread(self.lab.add_host, "manager", timeout=300)
            joined = time.monotonic() - t0

            async def caught_up() -> bool:
                info = await self.managers.info(name)
                return int(info["raft"]["applied_index"]) >= target
            await wait_for(caught_up, self.preset.timeout, f"{name} to catch up", every=0.2)
            raft_dir = Path(self.lab.host(leader).data_root) / "raft"
            snaps = [f for f in raft_dir.rglob("*") if f.is_file() and "snap" in f.name.lower()]
            step.extra.update(
                manager=name, join_s=round(joined, 1), caught_up_s=round(time.monotonic() - t0, 1),
                leader_snapshot_mb=round(max((f.stat().st_size for f in snaps), default=0) / 2**20, 1),
                leader_raft_dir_mb=round(sum(f.stat().st_size for f in raft_dir.rglob("*")
                                             if f.is_file()) / 2**20, 1))

    async def final_checks(self) -> None:
        runs = merged_runs(self.sims)
        live = await self.live_tasks()
        slots: Counter[tuple[str, int]] = Counter((t["service_name"], t["slot"]) for t in live.values())
        self.checks["tasks_started_more_than_once"] = sorted(t for t, n in runs.items() if n != 1)
        self.checks["live_tasks"] = len(live)
        self.checks["live_not_running"] = sum(1 for t in live.values()
                                              if t["status"]["state"] != "running")
        self.checks["live_never_started"] = sum(1 for t in live if runs.get(t, 0) != 1)
        self.checks["slots_without_one_task"] = sum(
            1 for name, size in self.services.items() for slot in range(1, size + 1)
            if slots.get((name, slot), 0) != 1)
        self.checks["sim_nodes_seen_down"] = sorted(self.sampler.down_seen)
        # what the failed API samples said (a figure, not a check)
        self.checks["api_errors"] = dict(Counter(s.error for s in self.sampler.samples
                                                 if not s.ok))
        self.checks["tasks_started_total"] = sum(runs.values())

    def ok(self) -> bool:
        c = self.checks
        return ("failed" not in c and not c.get("tasks_started_more_than_once") and c.get("live_tasks") == self.preset.tasks
                and c.get("live_not_running") == 0 and c.get("live_never_started") == 0
                and c.get("slots_without_one_task") == 0 and not c.get("sim_nodes_seen_down")
                and not c.get("failover_nodes_down") and c.get("failover_tasks_created") == 0
                and c.get("failover_tasks_replaced") == 0)

    async def close(self) -> None:
        await self.sampler.stop()
        for s in self.sims:
            s.stop()
        await self.managers.close()


# ---- the table -------------------------------------------------------------------------------------
def table(steps: list[StepResult]) -> str:
    managers = sorted({m for s in steps for m in list(s.cpu) + list(s.rss)})
    head = ["step", "wall s", *[f"{m} cpu s/rss MB" for m in managers], "sims cpu s",
            "raft ent/s", "txn/s",
            "svc ls p50/p99 ms", "node ls p50/p99 ms", "svc upd p50/p99 ms", "api fail"]
    rows = [head]
    for s in steps:
        def lat(op: str) -> str:
            p50, p99, n = s.latency.get(op, (float("nan"), float("nan"), 0))
            return f"{p50 * 1000:.0f}/{p99 * 1000:.0f} ({n})" if n else "-"
        rows.append([s.name, f"{s.wall:.1f}",
                     *[f"{s.cpu.get(m, float('nan')):.1f}/{s.rss.get(m, 0):.0f}" for m in managers],
                     f"{s.sims_cpu:.1f}", f"{s.entries_per_s:.1f}", f"{s.txn_per_s:.0f}",
                     lat("service ls"), lat("node ls"),
                     lat("service update"), str(s.failed_samples)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for s in steps:
        if s.extra:
            lines.append(f"  {s.name}: " + ", ".join(f"{k}={v}" for k, v in s.extra.items()))
    return "\n".join(lines)


def lab_for_bench(name: str) -> Lab:
    lab = Lab(name)
    lab.up(managers=3, workers=0, timeout=120)
    return lab


def run_bench(preset: Preset, *, lab_name: Optional[str] = None,
              profile_dir: Optional[Path] = None) -> tuple[list[StepResult], dict, bool]:
    """Set up a lab, run every step, tear it all down: (steps, checks, all checks passed)."""
    workdir = Path(tempfile.mkdtemp(prefix="shoal-scale-"))
    lab = lab_for_bench(lab_name or unique_lab_name("scale"))
    try:
        # Before the event loop: the lab's netlink calls (pyroute2) run one of their own.
        host = sim_host(lab)

        async def main() -> Bench:
            bench = Bench(lab, preset, workdir, host, profile_dir)
            try:
                await bench.run()
            except (TimeoutError, RuntimeError, errors.ShoalError) as exc:
                # The figures of the steps done so far are worth printing: say where it stopped.
                bench.checks["failed"] = f"{type(exc).__name__}: {exc}"
                print(f"    FAILED: {exc}", flush=True)
            finally:
                await bench.close()
            return bench
        bench = asyncio.run(main())
        return bench.steps, bench.checks, bench.ok()
    finally:
        keep_logs(lab, workdir / "logs")
        lab.down()
        print(f"simulated nodes' and managers' logs kept in {workdir}")


def keep_logs(lab: Lab, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    try:
        hosts = lab.hosts()
    except Exception:  # the lab never came up: nothing to keep
        return
    for h in hosts:
        try:
            (into / f"{h.name}.log").write_bytes(Path(h.log).read_bytes())
        except OSError:
            continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--step-timeout", type=float, metavar="SECONDS",
                        help="give up a step after this long (default: the preset's)")
    parser.add_argument("--profile-leader", type=Path, metavar="DIR",
                        help="py-spy the leader during each step (raw collapsed stacks in DIR)")
    add_json_option(parser, "scale_bench")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    if args.step_timeout is not None:
        if args.step_timeout <= 0:
            parser.error("--step-timeout must be a positive number of seconds")
        preset = replace(preset, timeout=args.step_timeout)
    t0 = time.monotonic()
    steps, checks, ok = run_bench(preset, profile_dir=args.profile_leader)
    print()
    print(f"scale bench, preset {args.preset}: {preset.nodes} simulated nodes, {preset.tasks} "
          f"tasks, 3 managers; {time.monotonic() - t0:.0f} s in all")
    print(table(steps))
    print("checks:", json.dumps({k: (v if not isinstance(v, list) or len(v) < 10 else
                                     f"{len(v)} items, e.g. {v[:5]}") for k, v in checks.items()}))
    print("correct:", ok)
    results = Results("scale_bench", args={"preset": args.preset})
    for s in steps:
        results.add(f"{s.name} wall s", [s.wall], "s", "lower")
        for op, (p50, p99, n) in s.latency.items():
            if n:
                results.add(f"{s.name} {op} p99 ms", [p99 * 1000], "ms", "lower")
        for m, cpu in s.cpu.items():
            results.add(f"{s.name} {m} cpu s", [cpu], "s", "lower")
        if s.txn_per_s == s.txn_per_s:  # not NaN
            results.add(f"{s.name} store transactions/s", [s.txn_per_s], "txn/s", "higher")
    results.write(args.json)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
