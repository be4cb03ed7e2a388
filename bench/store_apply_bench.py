"""Store apply benchmark: the cost of applying raft entries to a large store, with Python's
default garbage collector thresholds and with shoald's (common/tuning.py GC_THRESHOLDS).

A manager applies every entry on pysyncobj's thread while holding the GIL; time spent there,
and above all one long collector pause, is time without heartbeats or votes. Each mode runs in a
fresh interpreter: a store of BASE tasks is loaded, then ENTRIES entries of 500 new tasks each
are applied and timed, with the collector's own time and its longest pause taken from
gc.callbacks. The ratio default / tuned is the point.

Run: .venv/bin/python bench/store_apply_bench.py [--base 20000] [--tasks 20000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PER_ENTRY = 500


def one_mode(mode: str, base: int, tasks: int) -> dict:
    import gc

    from bench.scheduler_bench import make_tasks
    from manager.state.store import Store, Transaction
    from common.tuning import GC_THRESHOLDS

    def entries(objs) -> list[bytes]:
        out = []
        for i in range(0, len(objs), PER_ENTRY):
            txn = Transaction()
            for t in objs[i:i + PER_ENTRY]:
                txn.create("tasks", t)
            out.append(txn.encode())
        return out

    if mode == "tuned":
        gc.set_threshold(*GC_THRESHOLDS)
    made = make_tasks(base + tasks, 10, [], [])
    store = Store()
    for payload in entries(made[:base]):
        store.apply(payload)
    timed = entries(made[base:])
    pauses: list[float] = []
    started = [0.0]

    def watch(phase: str, _info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started[0])
    gc.callbacks.append(watch)
    t0 = time.perf_counter()
    for payload in timed:
        store.apply(payload)
    wall = time.perf_counter() - t0
    gc.callbacks.remove(watch)
    return {"mode": mode, "thresholds": list(gc.get_threshold()), "wall_s": wall,
            "gc_s": sum(pauses), "gc_max_ms": max(pauses, default=0.0) * 1000,
            "collections": len(pauses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=20_000, help="tasks in the store first")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks applied and timed")
    parser.add_argument("--mode", choices=["default", "tuned"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(one_mode(args.mode, args.base, args.tasks)))
        return
    rows = []
    for mode in ("default", "tuned"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--base", str(args.base),
                              "--tasks", str(args.tasks)], check=True, capture_output=True,
                             text=True).stdout
        rows.append(json.loads(out))
    print(f"applying {args.tasks} tasks in entries of {PER_ENTRY} onto a store of {args.base}:")
    for r in rows:
        print(f"  {r['mode']:8} gc{tuple(r['thresholds'])!s:18} {r['wall_s']:6.2f} s, of which "
              f"the collector {r['gc_s']:5.2f} s ({r['collections']} collections, longest "
              f"{r['gc_max_ms']:.0f} ms)")
    print(f"  default / tuned: {rows[0]['wall_s'] / rows[1]['wall_s']:.2f}x the time, "
          f"{rows[0]['gc_max_ms'] / max(rows[1]['gc_max_ms'], 0.001):.0f}x the longest pause")


if __name__ == "__main__":
    main()
