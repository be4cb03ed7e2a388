"""Event recording benchmark: in-process, a real Store applying encoded transactions, no raft.

Every manager turns every change its replica applies into events on its event loop
(manager/events/recorder.py), so this is loop time each manager spends per change. Timed: the
recorder's work alone (`EventRecorder.take` on the store's change events) for a batch of task
state changes as the dispatcher proposes them, for service creates, and for a service update;
building and applying the transactions is not timed.

Run: .venv/bin/python bench/events_bench.py [--repeat 5] [--tasks 1000] [--json PATH]
(figures also as JSON, by default bench/results/events_bench.json, for bench/compare.py)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import codec  # noqa: E402
from common.model import Node, NodeDescription, Service, ServiceMode, ServiceSpec, Task  # noqa: E402
from manager.events.recorder import EventRecorder  # noqa: E402
from manager.state.store import Event, Store, Transaction  # noqa: E402
from bench._results import Results, add_json_option  # noqa: E402


def _service(i: int) -> Service:
    svc = Service(id=f"svc{i:021d}", spec=ServiceSpec(name=f"s{i}", labels={"team": "bench"},
                                                      mode=ServiceMode(replicas=3)))
    c = svc.spec.task_template.container
    c.image, c.args, c.env = "busybox:1", ["sleep", "1000"], [f"V{j}=x" for j in range(10)]
    return svc


def one_round(tasks: int) -> dict[str, float]:
    store = Store()
    rec = EventRecorder(store)
    caught: list[Event] = []
    store.subscribe(caught.extend)
    store.apply(Transaction().create("nodes", Node(id="n1", description=NodeDescription(
        hostname="alpha"))).encode())
    svc = _service(0)
    txn = Transaction().create("services", svc)
    for slot in range(1, tasks + 1):
        t = Task(id=f"t{slot:024d}", service_id=svc.id, service_name="s0", slot=slot,
                 node_id="n1", spec=codec.clone(svc.spec.task_template))
        t.status.state = "starting"
        txn.create("tasks", t)
    store.apply(txn.encode())
    out: dict[str, float] = {}

    def timed(name: str, events: list[Event]) -> None:
        start = time.perf_counter()
        for ev in events:
            rec.take(ev)
        out[name] = time.perf_counter() - start

    timed(f"{tasks} task creates s", caught[1:])
    caught.clear()
    moved = Transaction()
    for t in store.list("tasks"):
        t = codec.clone(t)
        t.status.state, t.status.message = "running", "started"
        moved.update("tasks", t)
    store.apply(moved.encode())
    timed(f"{tasks} task state changes s", list(caught))
    caught.clear()
    svcs = Transaction()
    for i in range(1, 1001):
        svcs.create("services", _service(i))
    store.apply(svcs.encode())
    timed("1000 service creates s", list(caught))
    caught.clear()
    upd = Transaction()
    for s in store.list("services"):
        s = codec.clone(s)
        s.spec.task_template.container.image = "busybox:2"
        s.update_status.state = "updating"
        upd.update("services", s)
    store.apply(upd.encode())
    timed("1001 service updates s", list(caught))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=1000)
    add_json_option(ap, "events_bench")
    args = ap.parse_args()
    results = Results("events_bench", args={"repeat": args.repeat, "tasks": args.tasks})
    rounds = [one_round(args.tasks) for _ in range(args.repeat)]
    for name in rounds[0]:
        samples = [r[name] for r in rounds]
        results.add(name, samples, "s", "lower")
        print(f"{name:32} median {sorted(samples)[len(samples) // 2] * 1000:8.1f} ms")
    results.write(args.json)


if __name__ == "__main__":
    main()
