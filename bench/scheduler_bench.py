"""Scheduler benchmark: in-process, no network, no store.

Times `Scheduler.schedule()` alone for one batch of pending tasks on 1,000 ready nodes; Task
objects (each with its own TaskSpec, as tasks decoded from the store have) are built beforehand
and not timed. Scenarios: one service; 10 services with a constraint; plus reservations and a
spread preference, which take the slower paths.

SwarmKit's figures are from its PR #193 (March 2016, "a rather old laptop"): 1.8 s for 10k tasks
and 22.6 s for 100k tasks on 1k nodes. Those include SwarmKit's store transactions and watch
events (and, per the PR, creating the objects), so the ratio compares a decision engine with a
whole pipeline on other hardware: read it as an order of magnitude, not a like-for-like result.

Run: .venv/bin/python bench/scheduler_bench.py [--repeat 3] [--json PATH]
(figures also as JSON, by default bench/results/scheduler_bench.json, for bench/compare.py)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.model import (Node, NodeDescription, NodeSpec, NodeStatus, Placement,  # noqa: E402
                          ResourceRequirements, Resources, Task, TaskSpec)
from manager.scheduler.scheduler import Scheduler  # noqa: E402
from bench._results import Results, add_json_option  # noqa: E402

SWARMKIT = {10_000: 1.8, 100_000: 22.6}     # seconds, 1k nodes, moby/swarmkit#193
NODES = 1000
ZONES = 3


def make_nodes(n: int) -> list[Node]:
    return [Node(id=f"node{i:05d}", spec=NodeSpec(labels={"zone": f"z{i % ZONES}"}),
                 status=NodeStatus(state="ready"),
                 description=NodeDescription(hostname=f"host{i}",
                                             resources=Resources(64 * 10**9, 256 << 30)))
            for i in range(n)]


def make_tasks(n: int, services: int, constraints: list[str], prefs: list[str],
               cpu: int = 0) -> list[Task]:
    out = []
    for i in range(n):
        spec = TaskSpec(resources=ResourceRequirements(reservations=Resources(cpu, 0)),
                        placement=Placement(constraints=list(constraints),
                                            preferences=list(prefs)))
        out.append(Task(id=f"task{i:07d}", service_id=f"svc{i % services}", slot=i // services + 1,
                        spec=spec))
    return out


def run(tasks: int, services: int = 1, constraints: list[str] | None = None,
        prefs: list[str] | None = None, cpu: int = 0,
        repeat: int = 3) -> tuple[float, float, str, list[float]]:
    nodes = make_nodes(NODES)
    times = []
    check = ""
    for _ in range(repeat):
        batch = make_tasks(tasks, services, constraints or [], prefs or [], cpu)
        s = Scheduler()
        for n in nodes:
            s.upsert_node(n)
        t0 = time.perf_counter()
        decisions = s.schedule(batch)
        times.append(time.perf_counter() - t0)
        check = verify(decisions, tasks)
    return min(times), statistics.median(times), check, times


def verify(decisions, expected: int) -> str:
    placed = [d.node_id for d in decisions if d.node_id]
    per_node = Counter(placed)
    return (f"placed {len(placed)}/{expected} on {len(per_node)} nodes, "
            f"{min(per_node.values())}..{max(per_node.values())} per node")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    add_json_option(ap, "scheduler_bench")
    args = ap.parse_args()
    results = Results("scheduler_bench", args={"repeat": args.repeat})
    scenarios: list[tuple[str, int, Callable[[], tuple[float, float, str, list[float]]]]] = []
    for n in (10_000, 100_000):
        scenarios += [
            (f"{n:>7,} tasks, 1 service", n, lambda n=n: run(n, repeat=args.repeat)),
            (f"{n:>7,} tasks, 10 services, constraint node.labels.zone!=z0", n,
             lambda n=n: run(n, 10, ["node.labels.zone!=z0"], repeat=args.repeat)),
            (f"{n:>7,} tasks, 1 service, cpu reservation", n,
             lambda n=n: run(n, cpu=10**8, repeat=args.repeat)),
            (f"{n:>7,} tasks, 1 service, spread=node.labels.zone", n,
             lambda n=n: run(n, prefs=["spread=node.labels.zone"], repeat=args.repeat)),
        ]
    print(f"scheduler benchmark: {NODES} nodes, schedule() only, best/median of {args.repeat}, "
          f"Python {sys.version.split()[0]}")
    print(f"{'scenario':<62} {'best':>8} {'median':>8} {'tasks/s':>10} {'SwarmKit':>9} "
          f"{'ratio':>7}")
    for name, n, fn in scenarios:
        best, median, check, times = fn()
        ref = SWARMKIT[n]
        print(f"{name:<62} {best:>7.3f}s {median:>7.3f}s {n / best:>10,.0f} {ref:>8.1f}s "
              f"{ref / best:>6.0f}x   {check}")
        results.add(" ".join(name.split()) + " s", times, "s", "lower")
    print("SwarmKit: moby/swarmkit#193 (2016 laptop; includes its store and event pipeline).")
    results.write(args.json)


if __name__ == "__main__":
    main()
