"""Observability benchmarks on a real lab (issue 19): the event stream, the metrics' cost, the
dashboard, with N tasks (default 1,000) in the cluster.

A lab of 3 managers (real shoald, real raft) and either (the default) simulated nodes of
`shoal sim nodes` (worker/sim: real joins and mutual-TLS sessions, only the executor simulated)
or, with --nodes real, 2 real workers (runc containers of busybox `sleep`). The output says
which ran the tasks. Every shoald runs with `--metrics-addr 127.0.0.1:9323`.

1. Event latency and throughput: `shoal events --format json` (the real CLI, reading
   GET /events on its node's socket) runs on the leader and on a follower while a service of N
   replicas is created (every task moves new -> ... -> running) and while it is scaled to 0
   (every task moves running -> shutdown). Each line is stamped as the bench reads it from the
   CLI's pipe (hosts share one clock). Latency per task state event is given twice:
   - from the event's `time`, the time of the raft entry's transaction (the leader's clock
     when its dispatcher proposed the batch of reports: raft commit, apply, recorder, stream);
   - from the agent's report time (the task's status.timestamp, which events leave out: read
     from `service ps` after the phase, so only for the state each task ended the phase in,
     i.e. `running`, then `shutdown`/`complete`): adds the agent's report path and the
     dispatcher's 30 ms batching.
   Events/s is the rate task state events reached the subscriber during the phase (bound by how
   fast the cluster moves tasks); the history replay (`--since`, on the follower) is the
   stream's own rate, from its first line to its last.
2. Metrics cost: shoald's CPU seconds (utime + stime from /proc/PID/stat) on the leader, a
   follower and (real workers) worker1, with the N tasks in the store. Three rounds of: a
   window with no scrapes, a window with a scrape each 1 s, and a burst of scrapes back to
   back; then a long window with no scrapes and one with a scrape each 10 s. CPU per scrape
   comes from the 1 s windows (minus the idle window before) and from the bursts (minus the
   idle rate over the burst's few seconds: many scrapes over little background, so it stands
   out of the background's noise); the cost at 10 s scrapes is the bursts' figure / 10 s, and
   the direct 10 s comparison is printed with the noise it has to beat. The scraper is one
   long-lived Python process in each host's namespace (the address is loopback only), so no
   process start counts.
3. Dashboard: `shoal dashboard --port 8090` on the leader, Debian's chromium headless in the
   leader's namespace, driven over its DevTools pipe (integration/cdp.py). A script injected
   before the page's own (Page.addScriptToEvaluateOnNewDocument) stamps, with a
   MutationObserver, when the nodes and services tables are filled, when all tasks are listed,
   and each text the service's replicas cell shows, with the build time (its `time`) and
   arrival of the snapshot that brought it (it wraps EventSource, and counts the stream's
   snapshots, events and reconnects). First paint: the Performance API's
   first-contentful-paint and those stamps, from the navigation's start (first visit with the
   token, then reloads). Then the manager's CPU with the page open and idle (its poller), and
   the update latency: `shoal service scale` through the CLI to the page showing the new
   desired count, then running = desired; from the CLI's start and from the service's commit
   (its updated_at), split into commit -> snapshot built -> arrived -> in the DOM.
Around all of it: each phase's wall time, each manager's CPU in it, and the elections the
managers logged in it ("this manager is the leader now"), since a leader that moves changes
every figure above; each phase measures the manager that is leader as it starts.

Run as root: .venv/bin/python bench/observability_bench.py [--tasks 1000] [--quick]
[--nodes auto|real|sim] [--json PATH] (figures also as JSON, by default
bench/results/observability_bench.json, for bench/compare.py)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import Results, add_json_option  # noqa: E402
from integration.helpers import leader_of, unique_lab_name, wait_until  # noqa: E402
from shoal.lab.netlab import Lab, default_daemon_argv  # noqa: E402

METRICS_ADDR = "127.0.0.1:9323"
DASHBOARD_PORT = 8090
URL_RE = re.compile(rf"http://127\.0\.0\.1:{DASHBOARD_PORT}/\?token=[A-Za-z0-9_-]+")
SERVICE = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAIRS = 3                            # metrics: (no scrapes, 1 s scrapes) window pairs

# The scraper that lives in a host's namespace: one scrape per line on stdin, answered with
# "BYTES WALL_SECONDS" (or "-1 ERROR"), so the bench times windows without starting processes.
SCRAPER = f"""
import sys, time, urllib.request
for _ in sys.stdin:
    t0 = time.perf_counter()
    try:
        n = len(urllib.request.urlopen('http://{METRICS_ADDR}/metrics', timeout=30).read())
        sys.stdout.write(f"{{n}} {{time.perf_counter() - t0:.6f}}\\n")
    except Exception as exc:
        sys.stdout.write(f"-1 {{exc!r}}\\n")
    sys.stdout.flush()
"""


# ---- small things -------------------------------------------------------------------------
def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (as service_bench), NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), from /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK   # fields 14 and 15 of stat(5)


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """End one process we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def host_popen(lab: Lab, host: str, argv: list[str], **kwargs) -> subprocess.Popen:
    cmd, env = lab.command(host, argv)
    env = {**env, "PYTHONUNBUFFERED": "1"}   # a piped CLI must not hold its lines back
    return subprocess.Popen(cmd, env=env, **kwargs)


# ---- the cluster --------------------------------------------------------------------------
@dataclass
class Cluster:
    lab: Lab
    leader: str
    follower: str
    workers: list[str]               # real worker hosts (none when simulated)
    what_runs: str                   # said in the output
    sim: Optional[subprocess.Popen] = None

    def find_leader(self) -> None:
        """The leader now (it can move under load: each phase measures the one it starts with)."""
        for via in (self.leader, self.follower):
            with contextlib.suppress(Exception):
                if (now := leader_of(self.lab, via)) is not None:
                    if now != self.leader:
                        say(f"the leader is now {now} (was {self.leader})")
                    self.leader = now
                    self.follower = next(m for m in ("manager1", "manager2", "manager3")
                                         if m != now)
                    return

    def services(self) -> list[dict]:
        return self.lab.cli_json(self.leader, "service", "ls", timeout=60)

    def service(self) -> dict:
        return next(s for s in self.services() if s["spec"]["name"] == SERVICE)

    def tasks(self) -> list[dict]:
        return self.lab.cli_json(self.leader, "service", "ps", SERVICE, timeout=120)


def start_lab(lab: Lab, nodes: str, sim_count: int, workdir: Path) -> Cluster:
    from tests import imagebuild
    workers = 0 if nodes == "sim" else 2
    say(f"lab {lab.name}: 3 managers, {workers} real workers")
    lab.up(managers=3, workers=workers, timeout=120)
    leader = leader_of(lab, "manager1") or "manager1"
    follower = next(m for m in ("manager1", "manager2", "manager3") if m != leader)
    cluster = Cluster(lab, leader, follower, [], "")
    if nodes == "sim":
        cluster.sim, count = start_sim_nodes(lab, leader, sim_count, workdir), sim_count
        cluster.what_runs = (f"{sim_count} SIMULATED nodes (`shoal sim nodes`, worker/sim: real "
                             f"joins and mutual-TLS sessions, simulated executor, "
                             f"--start-delay 0.5 s) in one process")
    else:
        layout = imagebuild.build_busybox_oci_layout(workdir / "busybox", tag="1")
        cluster.workers = [h.name for h in lab.hosts() if h.name.startswith("worker")]
        for w in cluster.workers:
            lab.cli(w, "image", "import", str(layout), "busybox:1", timeout=120)
        count = len(cluster.workers)
        cluster.what_runs = (f"{count} REAL workers (shoald + runc, busybox `sleep` containers, "
                             f"no networks)")
    wait_until(lambda: sum(1 for n in lab.cli_json(leader, "node", "ls")
                           if n["role"] == "worker" and n["status"] == "ready") >= count,
               timeout=180, interval=1, what=f"{count} ready workers")
    return cluster


def start_sim_nodes(lab: Lab, leader: str, count: int, workdir: Path) -> subprocess.Popen:
    """`shoal sim nodes` (issue 20) in a lab host of its own whose shoald is stopped, as
    integration/test_sim_nodes.py does: its own namespace and address on the lab's bridge;
    returns once every node joined (its status.json names them)."""
    token = lab.cli(leader, "swarm", "join-token", "-q", "worker").stdout.strip()
    host = lab.add_host("worker", join=False)
    lab.stop(host)
    data = workdir / "sim"
    data.mkdir(parents=True, exist_ok=True)
    log = (data / "sim.log").open("wb")
    proc = host_popen(lab, host, ["shoal", "sim", "nodes", "--count", str(count), "--manager",
                                  f"{lab.host(leader).address}:2377", "--token", token,
                                  "--data", str(data)],
                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()

    def joined() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"`shoal sim nodes` exited with {proc.returncode}: "
                               f"{(data / 'sim.log').read_text()[-2000:]}")
        with contextlib.suppress(OSError, ValueError):
            return len(json.loads((data / "status.json").read_text())["nodes"]) == count
        return False
    try:
        wait_until(joined, timeout=300, interval=1, what=f"{count} simulated nodes joined")
    except BaseException:
        stop_process(proc)
        raise
    say(f"{count} simulated nodes joined from {host}'s namespace (its shoald stopped)")
    return proc


def stop_sim_nodes(proc: Optional[subprocess.Popen]) -> None:
    if proc is not None:
        stop_process(proc, timeout=60)   # SIGTERM: the nodes end their sessions


def wait_running(cluster: Cluster, count: int, timeout: float) -> None:
    """Until the service shows `count` running (and desired), by `service ls` every 2 s: one
    small CLI call, not the task list."""

    def done() -> bool:
        rs = cluster.service()["replicas_status"]
        # At least: a slot run twice over (see duplicate_slots) must not hang the bench.
        return rs["running"] >= count and rs["desired"] == count
    wait_until(done, timeout=timeout, interval=2, what=f"{count} running")


def duplicate_slots(tasks: list[dict]) -> dict[int, int]:
    """slot -> live tasks, for slots with more than one task meant to run: a replicated service
    must have one per slot (a new leader acting on a store behind its log makes more)."""
    live: dict[int, int] = {}
    for t in tasks:
        if t["desired_state"] == "running" and t.get("slot"):
            live[t["slot"]] = live.get(t["slot"], 0) + 1
    return {slot: n for slot, n in live.items() if n > 1}


# ---- 1. the event stream ------------------------------------------------------------------
class Subscriber:
    """`shoal events --format json` in a host, each line stamped as it is read."""

    def __init__(self, lab: Lab, host: str, *args: str) -> None:
        self.host = host
        self.lines: list[tuple[float, dict]] = []
        self.proc = host_popen(lab, host, ["shoal", "events", "--format", "json", *args],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            at = time.time()
            self.lines.append((at, json.loads(raw)))

    def stop(self) -> None:
        ended = self.proc.poll()   # None: still following, as it should be until now
        stop_process(self.proc)
        self._reader.join(timeout=10)
        if ended not in (None, 0):
            say(f"`shoal events` on {self.host} ended by itself ({ended}): "
                f"{self.proc.stderr.read().decode(errors='replace').strip()[-500:]}")

    def task_states(self) -> list[tuple[float, dict]]:
        return [(at, ev) for at, ev in self.lines
                if ev["type"] == "task" and ev["action"] == "state"]


@dataclass
class StreamFigures:
    where: str
    events: int                      # every event received
    elections: int                   # leader events received (elections during the phase)
    states: int                      # task state events
    rate: float                      # task state events/s, first to last received
    raft: list[float]                # receipt - event time, s
    agent: list[float]               # receipt - agent's report time, s (final states only)


def stream_figures(sub: Subscriber, where: str, tasks: dict[str, dict]) -> StreamFigures:
    states = sub.task_states()
    raft = [at - ev["time"] for at, ev in states]
    agent = []
    for at, ev in states:
        t = tasks.get(ev["id"])
        if t is not None and t["status"]["state"] == ev["state"]["new"]:
            agent.append(at - t["status"]["timestamp"])
    span = states[-1][0] - states[0][0] if len(states) > 1 else 0.0
    elections = sum(1 for _, ev in sub.lines if ev["action"] == "leader")
    return StreamFigures(where, len(sub.lines), elections, len(states),
                         len(states) / span if span > 0 else float("nan"), raft, agent)


def scrape_once(lab: Lab, host: str) -> dict[str, float]:
    """One scrape of the host's metrics (a process of its own: not for the cost windows)."""
    from prometheus_client.parser import text_string_to_metric_families
    code = (f"import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
            f"'http://{METRICS_ADDR}/metrics', timeout=30).read().decode())")
    out = lab.exec(host, [sys.executable, "-c", code], check=True, timeout=60).stdout
    return {s.name: s.value for fam in text_string_to_metric_families(out) for s in fam.samples
            if not s.labels}


def commits_between(before: dict[str, float], after: dict[str, float]) -> str:
    """The leader's raft commits between two scrapes, and their mean latency (its histogram)."""
    count = after.get("shoal_raft_commit_latency_seconds_count", 0) - \
        before.get("shoal_raft_commit_latency_seconds_count", 0)
    total = after.get("shoal_raft_commit_latency_seconds_sum", 0) - \
        before.get("shoal_raft_commit_latency_seconds_sum", 0)
    if count <= 0:
        return "no raft commits counted in the leader's metrics (did leadership move?)"
    return (f"the leader's raft commits meanwhile (its metrics): {count:.0f}, mean commit "
            f"latency {total / count * 1000:.0f} ms")


def follow_phase(cluster: Cluster, change: Callable[[], None], settled: Callable[[], None],
                 expect: Callable[[Subscriber], bool]
                 ) -> tuple[list[StreamFigures], float, str]:
    """Subscribers on the leader and a follower around one change; their figures, the
    phase's wall time (the change's start to settled) and the leader's raft commits."""
    lab = cluster.lab
    subs = [Subscriber(lab, cluster.leader), Subscriber(lab, cluster.follower)]
    try:
        time.sleep(3)   # both CLIs are up and following before anything changes
        before = scrape_once(lab, cluster.leader)
        t0 = time.monotonic()
        change()
        settled()
        wall = time.monotonic() - t0
        deadline = time.monotonic() + 30   # the streams may still be catching up
        while not all(expect(s) for s in subs) and time.monotonic() < deadline:
            time.sleep(0.5)
        commits = commits_between(before, scrape_once(lab, cluster.leader))
        time.sleep(1)
    finally:
        for s in subs:
            s.stop()
    listed = cluster.tasks()
    if (dups := duplicate_slots(listed)):
        print(f"  !! {len(dups)} slots have more than one live task "
              f"({sum(dups.values()) - len(dups)} extra tasks; slots {min(dups)}-{max(dups)})")
    tasks = {t["id"]: t for t in listed}
    return [stream_figures(subs[0], f"leader {cluster.leader}", tasks),
            stream_figures(subs[1], f"follower {cluster.follower}", tasks)], wall, commits


def history_replay(cluster: Cluster, since: float) -> tuple[int, float]:
    """The follower's history since `since`, read through the CLI; (events, first-to-last s)."""
    sub = Subscriber(cluster.lab, cluster.follower, "--since", f"{since:.3f}", "--until",
                     f"{time.time():.3f}")
    try:
        sub.proc.wait(timeout=120)
    finally:
        sub.stop()
    if len(sub.lines) < 2:
        return len(sub.lines), float("nan")
    return len(sub.lines), sub.lines[-1][0] - sub.lines[0][0]


def count_state(sub: Subscriber, state: str) -> int:
    return len({ev["id"] for _, ev in sub.task_states() if ev["state"]["new"] == state})


# ---- 2. metrics cost ----------------------------------------------------------------------
class Scraper:
    def __init__(self, lab: Lab, host: str) -> None:
        self.host = host
        self.pid = lab.host(host).pid
        self.proc = host_popen(lab, host, [sys.executable, "-c", SCRAPER],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.walls: list[float] = []
        self.size = 0

    def send(self) -> None:
        self.proc.stdin.write("s\n")
        self.proc.stdin.flush()

    def answer(self) -> None:
        size, wall = self.proc.stdout.readline().split(" ", 1)
        if int(size) < 0:
            raise RuntimeError(f"{self.host}: scrape failed: {wall.strip()}")
        self.size, self.walls = int(size), self.walls + [float(wall)]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        stop_process(self.proc)


@dataclass
class Window:
    period: Optional[float]          # None: no scrapes
    seconds: float
    scrapes: int = 0
    cpu: dict[str, float] = field(default_factory=dict)   # host -> CPU s over the window


def run_window(scrapers: list[Scraper], period: Optional[float], seconds: float) -> Window:
    w = Window(period, seconds)
    before = {s.host: cpu_seconds(s.pid) for s in scrapers}
    t0 = time.monotonic()
    if period is not None:
        while (due := t0 + w.scrapes * period) < t0 + seconds - 1e-3:
            time.sleep(max(0.0, due - time.monotonic()))
            for s in scrapers:
                s.send()
            for s in scrapers:
                s.answer()
            w.scrapes += 1
    time.sleep(max(0.0, t0 + seconds - time.monotonic()))
    w.cpu = {s.host: cpu_seconds(s.pid) - before[s.host] for s in scrapers}
    return w


@dataclass
class MetricsFigures:
    host: str
    idle: float                      # CPU s per s, no scrapes
    per_scrape: list[float]          # CPU s per scrape, one per 1 s-window pair
    per_burst: list[float]           # CPU s per scrape, one per burst
    core_10s: float                  # fraction of a core at 10 s scrapes (from the bursts)
    ratio_10s: float                 # measured: CPU with 10 s scrapes / without
    frac_10s_measured: float         # measured: (with - without) / s
    noise: float                     # spread of the idle windows' CPU rates, cores
    scrape_wall: list[float]
    size: int


def run_burst(scrapers: list[Scraper], count: int) -> Window:
    """`count` scrapes back to back: many scrapes over little background, so the scrapes'
    CPU stands out of the background's noise."""
    w = Window(0.0, 0.0)
    before = {s.host: cpu_seconds(s.pid) for s in scrapers}
    t0 = time.monotonic()
    for _ in range(count):
        for s in scrapers:
            s.send()
        for s in scrapers:
            s.answer()
        w.scrapes += 1
    w.seconds = time.monotonic() - t0
    w.cpu = {s.host: cpu_seconds(s.pid) - before[s.host] for s in scrapers}
    return w


def metrics_cost(cluster: Cluster, window: float, burst: int
                 ) -> tuple[list[MetricsFigures], str]:
    hosts = [cluster.leader, cluster.follower] + cluster.workers[:1]
    scrapers = [Scraper(cluster.lab, h) for h in hosts]
    try:
        for s in scrapers:   # warm up: imports, first connection, first collection
            s.send()
        for s in scrapers:
            s.answer()
        # Alternated, so a drift in the background load falls on both sides; a burst after
        # each idle window.
        windows, bursts = [], []
        for _ in range(PAIRS):
            for period in (None, 1.0):
                say(f"metrics window: {'no scrapes' if period is None else 'a scrape each 1 s'}"
                    f" for {window:g} s")
                windows.append(run_window(scrapers, period, window))
            say(f"metrics burst: {burst} scrapes back to back")
            bursts.append(run_burst(scrapers, burst))
        for s in scrapers:
            s.walls.clear()   # the scrape wall times: those at 10 s only, on a quiet daemon
        for period in (None, 10.0):
            say(f"metrics window: {'no scrapes' if period is None else 'a scrape each 10 s'} for "
                f"{3 * window:g} s")
            windows.append(run_window(scrapers, period, 3 * window))
    finally:
        for s in scrapers:
            s.stop()
    out = [host_cost(s, windows, bursts) for s in scrapers]
    how = (f"{PAIRS} rounds of: {window:g} s without scrapes, {window:g} s with a scrape each 1 s, "
           f"{burst} scrapes back to back; then {3 * window:g} s without and {3 * window:g} s "
           f"with a scrape each 10 s ({windows[-1].scrapes} scrapes). CPU per scrape: "
           f"1 s windows: (window - the idle window before it) / scrapes; bursts: (burst - "
           f"idle rate x its duration) / scrapes. CPU ticks are {1000 / CLK_TCK:.0f} ms")
    return out, how


def host_cost(s: Scraper, windows: list[Window], bursts: list[Window]) -> MetricsFigures:
    h = s.host
    pairs = [(windows[i], windows[i + 1]) for i in range(0, 2 * PAIRS, 2)]
    off_long, on_10 = windows[-2], windows[-1]
    per = [(on.cpu[h] - off.cpu[h]) / on.scrapes for off, on in pairs]
    offs = [off for off, _ in pairs] + [off_long]
    idle = sum(w.cpu[h] for w in offs) / sum(w.seconds for w in offs)
    per_burst = [(b.cpu[h] - idle * b.seconds) / b.scrapes for b in bursts]
    # How much the background alone moves between windows: what a direct comparison at 10 s
    # scrapes has to beat.
    rates = [w.cpu[h] / w.seconds for w in offs]
    return MetricsFigures(
        h, idle, per, per_burst, statistics.median(per_burst) / 10.0,
        on_10.cpu[h] / off_long.cpu[h] if off_long.cpu[h] > 0 else float("nan"),
        (on_10.cpu[h] - off_long.cpu[h]) / on_10.seconds, max(rates) - min(rates),
        s.walls, s.size)


# ---- 3. the dashboard ---------------------------------------------------------------------
# Injected before the page's own script: stamps (epoch ms, the hosts' shared clock) when the
# tables fill and each text the service's replicas cell shows.
OBSERVER = """
(() => {
  const now = () => performance.timeOrigin + performance.now();
  const o = window.__obs = {filled: null, filledPaint: null, tasks: null, seen: {}, renders: 0,
                            opens: 0, errors: 0, snapshots: 0, events: 0, last: [0, 0]};
  // The live stream's messages, seen before the page's own handlers (ours are added first):
  // each snapshot's build time on the server (its "time", first in the JSON) and arrival.
  const Native = window.EventSource;
  window.EventSource = function (url, init) {
    const es = new Native(url, init);
    if (String(url).includes('/api/stream')) {
      es.addEventListener('open', () => { o.opens++; });
      es.addEventListener('error', () => { o.errors++; });
      es.addEventListener('event', () => { o.events++; });
      es.addEventListener('snapshot', (e) => {
        o.snapshots++;
        const m = /"time":([0-9.e+]+)/.exec(e.data.slice(0, 64));
        o.last = [m ? Number(m[1]) * 1000 : 0, now()];
      });
    }
    return es;
  };
  window.EventSource.prototype = Native.prototype;
  const check = () => {
    const nodes = document.querySelectorAll('#nodes tbody tr').length;
    const cell = document.querySelector('#services tbody tr[data-service="%(service)s"] td.replicas');
    if (o.filled === null && nodes >= %(nodes)d && cell) {
      o.filled = now();
      // the frame that shows them: after the next animation frame's paint
      requestAnimationFrame(() => setTimeout(() => { o.filledPaint = now(); }, 0));
    }
    if (o.tasks === null && document.querySelectorAll('#tasks li').length >= %(tasks)d) o.tasks = now();
    if (cell) {
      o.renders++;
      const t = cell.textContent;
      // [in the DOM, the snapshot's build on the server, its arrival]
      if (!(t in o.seen)) o.seen[t] = [now(), o.last[0], o.last[1]];
    }
  };
  new MutationObserver(check).observe(document, {childList: true, subtree: true, characterData: true});
})();
"""

PAINT = """(() => {
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  const nav = performance.getEntriesByType('navigation')[0];
  return {origin: performance.timeOrigin, fcp: fcp ? fcp.startTime : null,
          filled: window.__obs.filled, painted: window.__obs.filledPaint, tasks: window.__obs.tasks,
          dcl: nav ? nav.domContentLoadedEventEnd : null,
          snapshot_bytes: (typeof snapshot !== 'undefined' && snapshot) ? JSON.stringify(snapshot).length : 0};
})()"""


@dataclass
class PaintFigures:
    fcp: Optional[float]             # ms from the navigation's start
    filled: float                    # ms: nodes and services tables filled (DOM)
    painted: float                   # ms: the frame after that (rAF, then a task)
    tasks: float                     # ms: every task listed
    snapshot_bytes: int


@dataclass
class UpdateFigures:
    to: int
    cli_wall: float                  # s: the `service scale` process, start to exit
    desired_cli: float               # s: CLI started -> page shows the new desired count
    desired_commit: float            # s: the service's commit -> same
    running_cli: float               # s: CLI started -> page shows running = desired
    running_commit: float
    # the snapshot that first showed the new desired count:
    commit_to_built: float           # s: the commit -> the dashboard built it (its poll)
    built_to_arrived: float          # s: -> the page received it (SSE)
    arrived_to_dom: float            # s: -> rendered into the DOM
    snapshots: int                   # snapshots the page received until running = desired
    reconnects: int                  # the page's stream (re)opened meanwhile
    events: int                      # event messages received meanwhile


def start_dashboard(lab: Lab, host: str) -> tuple[subprocess.Popen, str]:
    proc = host_popen(lab, host, ["shoal", "dashboard", "--port", str(DASHBOARD_PORT)],
                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, text=True)
    printed: list[str] = []
    found = threading.Event()

    def read() -> None:   # the CLI prints its link, then stays in the foreground
        for line in proc.stdout:
            printed.append(line)
            if URL_RE.search(line):
                found.set()
    threading.Thread(target=read, daemon=True).start()
    if not found.wait(60):
        stop_process(proc)
        raise RuntimeError(f"no dashboard link printed: {''.join(printed)!r}")
    return proc, URL_RE.search("".join(printed)).group(0)


def paint(browser, timeout: float) -> PaintFigures:
    browser.wait_for("window.__obs && window.__obs.filledPaint && window.__obs.tasks "
                     "&& document.readyState === 'complete'", timeout=timeout,
                     what="the tables and the task list filled")
    time.sleep(0.5)   # the paint entry is recorded a frame later
    p = browser.evaluate(PAINT)
    return PaintFigures(p["fcp"], p["filled"] - p["origin"], p["painted"] - p["origin"],
                        p["tasks"] - p["origin"], p["snapshot_bytes"])


def dashboard_bench(cluster: Cluster, tasks: int, scales: int, reloads: int, step: int
                    ) -> tuple[PaintFigures, list[PaintFigures], list[UpdateFigures], float]:
    from integration.cdp import Browser, lab_command
    lab, host = cluster.lab, cluster.leader
    nodes = len(lab.cli_json(host, "node", "ls"))
    proc, url = start_dashboard(lab, host)
    browser = None
    try:
        browser = Browser(command=lab_command(lab, host))
        browser.send("Page.enable")
        browser.send("Page.addScriptToEvaluateOnNewDocument", {"source": OBSERVER % {
            "service": SERVICE, "nodes": nodes, "tasks": min(tasks, 1000)}})
        browser.send("Page.bringToFront")   # a background tab gets no paint timing
        browser.navigate(url)
        first = paint(browser, 120)
        again = []
        for _ in range(reloads):
            browser.send("Page.reload", {"ignoreCache": False})
            time.sleep(0.5)
            again.append(paint(browser, 120))
        pid = lab.host(host).pid
        snaps0 = browser.evaluate("window.__obs.snapshots")
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(20)   # the page open and idle: the poller's cost on this manager
        open_cost = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        say(f"page open and idle: {browser.evaluate('window.__obs.snapshots') - snaps0} "
            f"snapshots in {time.monotonic() - t0:.0f} s")
        updates = [scale_seen(cluster, browser, tasks + (step if i % 2 == 0 else 0))
                   for i in range(scales)]
        return first, again, updates, open_cost
    finally:
        if browser is not None:
            browser.stop()
        stop_process(proc)   # the daemon stops the listener once the CLI's request is gone


def scale_seen(cluster: Cluster, browser, to: int) -> UpdateFigures:
    """One `service scale` through the CLI, timed to the page's replicas cell."""
    browser.evaluate("(window.__obs.seen = {}, window.__obs.counts = [window.__obs.snapshots, "
                     "window.__obs.opens, window.__obs.events], true)")
    time.sleep(1.5)   # a render or two with the current text: it is stamped before the change
    started = time.time()
    cluster.lab.cli(cluster.leader, "service", "scale", "--detach", f"{SERVICE}={to}",
                    timeout=60)
    cli_wall = time.time() - started
    # Running shown: the first text running/desired with running >= desired (not ==: a slot
    # run twice over keeps running above desired).
    seen = browser.wait_for(f"(() => {{ const s = window.__obs.seen; return Object.keys(s).some("
                            f"k => k.endsWith('/{to}') && Number(k.split('/')[0]) >= {to}) "
                            f"? s : null; }})()", timeout=300, what=f"{to}/{to} in the page")
    counts = browser.evaluate("[window.__obs.snapshots - window.__obs.counts[0], "
                              "window.__obs.opens - window.__obs.counts[1], "
                              "window.__obs.events - window.__obs.counts[2]]")
    committed = cluster.service()["meta"]["updated_at"]
    first = min((v for k, v in seen.items() if k.endswith(f"/{to}")), key=lambda v: v[0])
    dom, built, arrived = (x / 1000 for x in first)
    running = min(v[0] for k, v in seen.items()
                  if k.endswith(f"/{to}") and int(k.split("/")[0]) >= to) / 1000
    return UpdateFigures(to, cli_wall, dom - started, dom - committed, running - started,
                         running - committed, built - committed, arrived - built, dom - arrived,
                         *counts)


# ---- the cluster's health per phase ------------------------------------------------------
ELECTED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*this manager is the leader "
                     r"now \(term (\d+)\)")


@dataclass
class Phase:
    name: str
    start: float
    end: float = 0.0
    leader: str = ""                 # the leader as the phase started
    cpu: dict[str, float] = field(default_factory=dict)   # manager -> CPU s in the phase


class Timeline:
    """Each phase's wall time and every manager's shoald CPU in it; elections are read from
    the managers' logs at the end (each elected manager logs its term)."""

    def __init__(self, lab: Lab, managers: list[str]) -> None:
        self.lab = lab
        self.pids = {m: lab.host(m).pid for m in managers}
        self.phases: list[Phase] = []
        self._cpu0: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str, cluster: Optional["Cluster"] = None):
        if cluster is not None:
            cluster.find_leader()
        p = Phase(name, time.time(), leader=cluster.leader if cluster is not None else "")
        self._cpu0 = {m: cpu_seconds(pid) for m, pid in self.pids.items()}
        try:
            yield p
        finally:
            p.end = time.time()
            p.cpu = {m: cpu_seconds(pid) - self._cpu0[m] for m, pid in self.pids.items()}
            self.phases.append(p)

    def elections(self) -> list[tuple[float, str, int]]:
        """(time, manager, term) of every election the managers logged."""
        import datetime
        out = []
        for m in self.pids:
            for line in Path(self.lab.host(m).log).read_text(errors="replace").splitlines():
                if (got := ELECTED.match(line)):
                    t = datetime.datetime.strptime(got[1], "%Y-%m-%d %H:%M:%S").timestamp()
                    out.append((t + int(got[2]) / 1000, m, int(got[3])))
        return sorted(out)

    def print(self) -> None:
        won = self.elections()
        print("\ncluster during each phase: wall time, each manager's shoald CPU (% of a core), "
              "elections (from the managers' logs: 'this manager is the leader now')")
        names = list(self.pids)
        print(f"  {'phase':28} {'leader':>9} {'wall s':>7} " + " ".join(f"{m:>9}" for m in names)
              + f" {'elections':>10}  {'won by (term)':}")
        for p in self.phases:
            inside = [(m, term) for t, m, term in won if p.start <= t <= p.end]
            span = max(p.end - p.start, 1e-9)
            print(f"  {p.name:28} {p.leader or '-':>9} {span:>7.1f} "
                  + " ".join(f"{p.cpu[m] / span * 100:>8.0f}%" for m in names)
                  + f" {len(inside):>10}  "
                  + ", ".join(f"{m}({term})" for m, term in inside[:8])
                  + (" ..." if len(inside) > 8 else ""))
        first = self.phases[0].start if self.phases else 0
        before = [(m, term) for t, m, term in won if t < first]
        print(f"  before the first phase (forming, nodes joining): {len(before)} election(s); "
              f"last term {won[-1][2] if won else 0}")


# ---- the report ---------------------------------------------------------------------------
def ms(v: float) -> str:
    return "n/a" if v != v else f"{v * 1000:.0f}"


def print_streams(title: str, figs: list[StreamFigures], wall: float, commits: str) -> None:
    print(f"\n{title} (phase wall time {wall:.1f} s)")
    print(f"  {'subscriber':22} {'events':>7} {'task st.':>8} {'st. ev/s':>8} | "
          f"{'raft entry -> recv ms':>24} | {'agent report -> recv ms':>26}")
    print(f"  {'':22} {'':>7} {'':>8} {'':>8} | {'p50':>7} {'p99':>7} {'max':>8} | "
          f"{'n':>5} {'p50':>6} {'p99':>6} {'max':>6}")
    for f in figs:
        print(f"  {f.where:22} {f.events:>7} {f.states:>8} {f.rate:>8.0f} | "
              f"{ms(pct(f.raft, .5)):>7} {ms(pct(f.raft, .99)):>7} {ms(max(f.raft, default=float('nan'))):>8} | "
              f"{len(f.agent):>5} {ms(pct(f.agent, .5)):>6} {ms(pct(f.agent, .99)):>6} "
              f"{ms(max(f.agent, default=float('nan'))):>6}")
    print(f"  {commits}")
    elected = max(f.elections for f in figs)
    if elected:
        print(f"  !! {elected} leader election(s) seen in the stream during this phase")


def record_streams(results: Results, phase: str, figs: list[StreamFigures]) -> None:
    for f in figs:
        who = f.where.split()[0]
        for name, values in (("raft->recv", f.raft), ("agent->recv", f.agent)):
            if values:
                results.add(f"{phase} {who} {name} p50 ms", [pct(values, .5) * 1000], "ms", "lower")
                results.add(f"{phase} {who} {name} p99 ms", [pct(values, .99) * 1000], "ms", "lower")
        if f.rate == f.rate:
            results.add(f"{phase} {who} task state events/s", [f.rate], "events/s", "higher")


def print_metrics(figs: list[MetricsFigures], how: str) -> None:
    print(f"\nmetrics cost: shoald CPU (utime+stime, /proc/PID/stat). {how}")
    print(f"  {'':10} {'idle':>6} {'CPU per scrape, ms':>32} {'at 10 s scrapes':>17} | "
          f"{'10 s scrapes, measured':>26} | {'scrape @10s':>12}")
    print(f"  {'host':10} {'%core':>6} {'1 s windows':>16} {'bursts':>15} {'%core':>7} "
          f"{'ratio':>9} | {'ratio':>6} {'+%core':>7} {'noise':>11} | {'wall ms':>7} "
          f"{'bytes':>7}")
    for f in figs:
        ratio = (f.idle + f.core_10s) / f.idle if f.idle > 0 else float("nan")
        print(f"  {f.host:10} {f.idle * 100:>6.2f} "
              f"{' / '.join(f'{v * 1000:.0f}' for v in f.per_scrape):>16} "
              f"{' / '.join(f'{v * 1000:.1f}' for v in f.per_burst):>15} "
              f"{f.core_10s * 100:>7.3f} {ratio:>9.4f} | {f.ratio_10s:>6.3f} "
              f"{f.frac_10s_measured * 100:>7.2f} {'+-' + format(f.noise * 100, '.2f'):>11} | "
              f"{statistics.median(f.scrape_wall) * 1000:>7.1f} {f.size:>7}")
    print("  (at 10 s scrapes: the bursts' median CPU per scrape / 10 s, and (idle + that) / idle; "
          "'measured' sets one window of 10 s scrapes against one without, and means something "
          "only beyond the noise, the spread of the idle windows' CPU rates)")


def print_dashboard(first: PaintFigures, again: list[PaintFigures],
                    updates: list[UpdateFigures], open_cost: float, host: str, tasks: int) -> None:
    def row(label: str, p: PaintFigures) -> None:
        fcp = "n/a" if p.fcp is None else f"{p.fcp:.0f}"
        print(f"  {label:26} {fcp:>8} {p.filled:>14.0f} {p.painted:>14.0f} {p.tasks:>14.0f} "
              f"{p.snapshot_bytes:>12}")
    print(f"\ndashboard on {host} with {tasks} tasks (chromium headless, ms from navigation start)")
    print(f"  {'':26} {'FCP':>8} {'tables filled':>14} {'...painted':>14} {'tasks listed':>14} "
          f"{'snapshot B':>12}")
    row("first visit (token)", first)
    for i, p in enumerate(again):
        row(f"reload {i + 1}", p)
    print(f"  shoald CPU on {host} with the page open and idle: {open_cost * 100:.1f}% of a core")
    print("  update latency, `service scale` -> page (s):        desired shown      "
          "running = desired | first snapshot showing it:          | meanwhile")
    print("                                   to  CLI took  from CLI  from commit  from CLI  "
          "from commit | commit>built built>recv recv>DOM | snaps reopen events")
    for u in updates:
        print(f"  {'':32} {u.to:>5} {u.cli_wall:>9.2f} {u.desired_cli:>9.2f} "
              f"{u.desired_commit:>12.2f} {u.running_cli:>9.2f} {u.running_commit:>12.2f} | "
              f"{u.commit_to_built:>12.2f} {u.built_to_arrived:>10.2f} {u.arrived_to_dom:>8.2f} | "
              f"{u.snapshots:>5} {u.reconnects:>6} {u.events:>6}")
    med = lambda f: statistics.median(f(u) for u in updates)  # noqa: E731
    print(f"  {'median':>37} {med(lambda u: u.cli_wall):>9.2f} {med(lambda u: u.desired_cli):>9.2f} "
          f"{med(lambda u: u.desired_commit):>12.2f} {med(lambda u: u.running_cli):>9.2f} "
          f"{med(lambda u: u.running_commit):>12.2f} | {med(lambda u: u.commit_to_built):>12.2f} "
          f"{med(lambda u: u.built_to_arrived):>10.2f} {med(lambda u: u.arrived_to_dom):>8.2f} |")
    print("  ('from commit': from the service's updated_at, stamped by the control API as it "
          "proposes the change; 'CLI took': the `shoal service scale` process, start to exit; "
          "built: the snapshot's time on the server; recv: its arrival in the page)")


# ---- the run ------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description="Observability benchmarks on a real lab (issue 19): "
                                 "the event stream, the metrics' cost, the dashboard.")
    ap.add_argument("--tasks", type=int, default=1000, help="replicas of the service (1000)")
    ap.add_argument("--quick", action="store_true",
                    help="development: 50 tasks, short metrics windows, 2 scales")
    ap.add_argument("--nodes", choices=("auto", "real", "sim"), default="auto",
                    help="what runs the tasks (auto: simulated nodes, `shoal sim nodes`)")
    ap.add_argument("--sim-nodes", type=int, default=100, help="simulated nodes (100)")
    ap.add_argument("--window", type=float, default=None,
                    help="seconds of each short metrics window (default 30, quick 10)")
    ap.add_argument("--scales", type=int, default=None, help="scales timed in the page")
    add_json_option(ap, "observability_bench")
    args = ap.parse_args()
    if args.quick and args.tasks == 1000:
        args.tasks = 50
    window = args.window or (10.0 if args.quick else 30.0)
    scales = args.scales or (2 if args.quick else 6)
    nodes = args.nodes if args.nodes != "auto" else "sim"
    if shutil.which("chromium") is None:
        sys.exit("needs Debian's chromium (scripts/setup.sh)")
    results = Results("observability_bench", args={"tasks": args.tasks, "nodes": nodes,
                                                    "window": window, "scales": scales})
    workdir = Path(tempfile.mkdtemp(prefix="shoal-obsbench-"))
    cluster: Optional[Cluster] = None
    lab = None
    try:
        lab = Lab(unique_lab_name("obsv"), daemon_argv=lambda **kw: default_daemon_argv(**kw)
                  + ["--metrics-addr", METRICS_ADDR])
        cluster = start_lab(lab, nodes, args.sim_nodes, workdir)
        run(cluster, args.tasks, window, 30 if args.quick else 100, scales, results)
    finally:
        if cluster is not None:
            stop_sim_nodes(cluster.sim)
        if lab is not None:
            say("lab down")
            lab.down()
        shutil.rmtree(workdir, ignore_errors=True)
    results.write(args.json)


def run(cluster: Cluster, tasks: int, window: float, burst: int, scales: int,
        results: Results) -> None:
    n = tasks
    print(f"\nobservability bench: {n} tasks run by {cluster.what_runs}; 3 managers (leader "
          f"{cluster.leader}, follower {cluster.follower}); machine load {os.getloadavg()[0]:.1f}")
    timeline = Timeline(cluster.lab, ["manager1", "manager2", "manager3"])
    try:
        with timeline.phase("idle, nodes up, no tasks"):
            time.sleep(window)
        with timeline.phase(f"events: create {n}", cluster):
            events_create(cluster, n, results)
        with timeline.phase("metrics windows", cluster):
            metrics_phase(cluster, window, burst, results)
        with timeline.phase("dashboard", cluster):
            say("dashboard")
            first, again, updates, open_cost = dashboard_bench(cluster, n, scales, 3,
                                                               max(1, n // 100))
            print_dashboard(first, again, updates, open_cost, cluster.leader, n)
            record_dashboard(results, first, again, updates, open_cost)
        with timeline.phase("events: scale to 0", cluster):
            events_stop(cluster, results)
    finally:
        with contextlib.suppress(Exception):
            timeline.print()
        with contextlib.suppress(Exception):
            leader = leader_of(cluster.lab, cluster.follower)
            print(f"  leader at the end: {leader}" + (
                "" if leader == cluster.leader else
                f" (!! not {cluster.leader}, the manager measured as the leader)")
                + f"; machine load average (1 min) {os.getloadavg()[0]:.1f}")


def events_create(cluster: Cluster, n: int, results: Results) -> None:
    say(f"events: creating {SERVICE} with {n} replicas")
    created_at = time.time()
    create = ["service", "create", "--detach", "--name", SERVICE, "--replicas", str(n),
              "--constraint", "node.role==worker", "--stop-grace-period", "1s",
              "--resolve-image", "never", "busybox:1", "sleep", "1000000"]
    figs, wall, commits = follow_phase(
        cluster, lambda: cluster.lab.cli(cluster.leader, *create, timeout=120),
        lambda: wait_running(cluster, n, max(300.0, n * 0.8)),
        lambda s: count_state(s, "running") >= n)
    print_streams(f"event stream: create {n} replicas -> all running, task state events", figs,
                  wall, commits)
    record_streams(results, "create", figs)
    replayed, span = history_replay(cluster, created_at)
    print(f"  history replay on the follower (`--since` the create, `--until` now): "
          f"{replayed} events in {span:.2f} s first to last line = "
          f"{replayed / span if span > 0 else float('nan'):.0f} events/s (history keeps 5,000)")
    if span > 0:
        results.add("history replay events/s", [replayed / span], "events/s", "higher")


def metrics_phase(cluster: Cluster, window: float, burst: int, results: Results) -> None:
    mfigs, how = metrics_cost(cluster, window, burst)
    print_metrics(mfigs, how)
    if not cluster.workers:
        print("  (no worker row: the tasks run on simulated nodes, which have no shoald and no "
              "containers to collect stats of)")
    for f in mfigs:
        role = "leader" if f.host == cluster.leader else \
            "follower" if f.host == cluster.follower else "worker"
        results.add(f"metrics {role} CPU per scrape ms (bursts)", [v * 1000 for v in f.per_burst],
                    "ms", "lower")
        results.add(f"metrics {role} CPU per scrape ms (1 s windows)",
                    [v * 1000 for v in f.per_scrape], "ms", "lower")
        results.add(f"metrics {role} %core at 10 s scrapes", [f.core_10s * 100], "%", "lower")
        results.add(f"metrics {role} scrape wall ms", [v * 1000 for v in f.scrape_wall], "ms",
                    "lower")


def record_dashboard(results: Results, first: PaintFigures, again: list[PaintFigures],
                     updates: list[UpdateFigures], open_cost: float) -> None:
    results.add("dashboard tables filled ms (reloads)", [p.filled for p in again], "ms", "lower")
    results.add("dashboard first visit tables filled ms", [first.filled], "ms", "lower")
    fcps = [p.fcp for p in again if p.fcp is not None]
    if fcps:
        results.add("dashboard FCP ms (reloads)", fcps, "ms", "lower")
    for name, get in (("desired shown from CLI", lambda u: u.desired_cli),
                      ("desired shown from commit", lambda u: u.desired_commit),
                      ("running shown from CLI", lambda u: u.running_cli),
                      ("running shown from commit", lambda u: u.running_commit)):
        results.add(f"dashboard update: {name} s", [get(u) for u in updates], "s", "lower")
    results.add("dashboard open: manager %core", [open_cost * 100], "%", "lower")


def events_stop(cluster: Cluster, results: Results) -> None:
    now = cluster.service()["replicas_status"]["desired"]
    say(f"events: scaling {SERVICE} {now} -> 0")
    figs, wall, commits = follow_phase(
        cluster, lambda: cluster.lab.cli(cluster.leader, "service", "scale", "--detach",
                                         f"{SERVICE}=0", timeout=120),
        lambda: wait_stopped(cluster, max(300.0, now * 0.8)),
        lambda s: sum(count_state(s, st) for st in ("shutdown", "complete", "failed")) >= now)
    print_streams(f"event stream: scale {now} -> 0, every task stops, task state events", figs,
                  wall, commits)
    record_streams(results, "scale to 0", figs)


def wait_stopped(cluster: Cluster, timeout: float) -> None:
    wait_until(lambda: cluster.service()["replicas_status"]["running"] == 0, timeout=timeout,
               interval=2, what="0 running")


if __name__ == "__main__":
    main()
