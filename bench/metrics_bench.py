"""Metrics scrape benchmark: in-process, no network, no raft.

Times one scrape of a leader's manager metrics (manager/metrics.py: store object counts, and
per service desired/running tasks, update state, failed and rejected in the last 5 minutes)
rendered with prometheus_client.generate_latest, on a bare Store holding 10,000 and 100,000
tasks over 100 services (a mix of running, failed, rejected and shut down tasks). Filling the
store is not timed. The goal: a 100,000-task store scrapes in well under a second. Both the wall
time and the CPU time of a scrape are printed: on a shared machine the wall time mostly says how
long the scrape waited for a core, the CPU time what it costs.

Run: .venv/bin/python bench/metrics_bench.py [--repeat 5] [--json PATH]
(figures also as JSON, by default bench/results/metrics_bench.json, for bench/compare.py)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from bench._results import Results, add_json_option  # noqa: E402
from common.model import (ContainerSpec, Service, ServiceMode, ServiceSpec, Task,  # noqa: E402
                          TaskSpec, TaskStatus)
from manager.metrics import ManagerCollector  # noqa: E402
from manager.state.store import Store, Transaction  # noqa: E402

SERVICES = 100
STATES = ("running", "running", "running", "running", "failed", "rejected", "shutdown")


@dataclass
class BareLeader:
    """A leader's view without raft or a running dispatcher (the scrape reads only these)."""
    store: Store
    raft: object = None
    dispatcher: object = None
    is_leader: bool = True


def fill(store: Store, tasks: int) -> None:
    now = time.time()
    services = [Service(id=f"svc{i:03d}", spec=ServiceSpec(
        name=f"web{i}", mode=ServiceMode(replicas=tasks // SERVICES),
        task_template=TaskSpec(container=ContainerSpec(image="busybox:1"))))
        for i in range(SERVICES)]
    txn = Transaction()
    for s in services:
        txn.create("services", s)
    store.apply(txn.encode())
    for start in range(0, tasks, 5000):
        txn = Transaction()
        for i in range(start, min(start + 5000, tasks)):
            svc = services[i % SERVICES]
            state = STATES[i % len(STATES)]
            txn.create("tasks", Task(
                id=f"task{i:07d}", service_id=svc.id, service_name=svc.spec.name,
                slot=i // SERVICES + 1, node_id=f"node{i % 1000:04d}",
                desired_state="running" if state == "running" else "shutdown",
                status=TaskStatus(state=state, timestamp=now - (i % 600))))
        assert store.apply(txn.encode())["ok"]


def run(tasks: int, repeat: int) -> tuple[list[float], list[float], int]:
    store = Store()
    fill(store, tasks)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ManagerCollector(lambda: BareLeader(store)))
    wall, cpu, size = [], [], 0
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        size = len(generate_latest(registry))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    add_json_option(ap, "metrics_bench")
    args = ap.parse_args()
    results = Results("metrics_bench", args={"repeat": args.repeat})
    print(f"metrics scrape benchmark: a leader's manager metrics on a bare store, {SERVICES} "
          f"services, best/median of {args.repeat}, Python {sys.version.split()[0]}")
    print(f"{'tasks':>9} {'wall best':>10} {'median':>9} {'cpu best':>10} {'median':>9} "
          f"{'exposition':>11}")
    for n in (10_000, 100_000):
        wall, cpu, size = run(n, args.repeat)
        print(f"{n:>9,} {min(wall) * 1000:>8.1f}ms {statistics.median(wall) * 1000:>7.1f}ms "
              f"{min(cpu) * 1000:>8.1f}ms {statistics.median(cpu) * 1000:>7.1f}ms {size:>9,} B")
        results.add(f"scrape {n} tasks wall s", wall, "s", "lower")
        results.add(f"scrape {n} tasks cpu s", cpu, "s", "lower")
    results.write(args.json)


if __name__ == "__main__":
    main()
