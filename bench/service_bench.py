"""Service benchmarks on a real lab (issue 3): 3 managers + 3 workers, runc containers.

- `service create --replicas 10` until 10 run, and `scale 10 -> 50` until 50 run (median of N);
- task start latency: from the task's creation (orchestrator) to running as reported by its
  agent, p50 and p99 over every task started;
- memory (RSS) of one worker's shoald with 50 tasks running on it, next to Docker's ~800 MB
  (dockerd + containerd + 50 shims) measured on this machine.

Run as root: .venv/bin/python bench/service_bench.py [--trials 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import Results, add_json_option  # noqa: E402
from integration.helpers import wait_until  # noqa: E402
from shoal.lab.netlab import Lab  # noqa: E402
from tests import imagebuild  # noqa: E402


def running(lab: Lab, name: str) -> list[dict]:
    return [t for t in lab.cli_json("manager1", "service", "ps", name)
            if t["desired_state"] == "running" and t["status"]["state"] == "running"]


def timed(lab: Lab, count: int, *args: str) -> tuple[float, float]:
    """(wall time through the CLI, convergence by the cluster's own clock).

    The wall time includes starting the CLI process and polling with more CLI processes (each
    ~0.3 s of Python start-up here); the cluster's figure runs from the change being accepted
    (the service's updated_at) to the last task reported running."""
    t0 = time.monotonic()
    lab.cli("manager1", *args, timeout=300)
    live = wait_until(lambda: len(r := running(lab, "bench")) == count and r, timeout=300,
                      interval=0.05, what=f"{count} running")
    wall = time.monotonic() - t0
    svc = lab.cli_json("manager1", "service", "ls")
    changed = next(s for s in svc if s["spec"]["name"] == "bench")["meta"]["updated_at"]
    return wall, max(t["status"]["timestamp"] for t in live) - changed


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    add_json_option(parser, "service_bench")
    args = parser.parse_args()
    results = Results("service_bench", args={"trials": args.trials})
    create_times, scale_times, latencies = [], [], []
    with tempfile.TemporaryDirectory() as tmp, Lab("benchsvc") as lab:
        layout = imagebuild.build_busybox_oci_layout(Path(tmp) / "img", tag="1")
        lab.up(managers=3, workers=3)
        for h in lab.hosts():
            lab.cli(h.name, "image", "import", str(layout), "busybox:1", timeout=120)
        base = ["service", "create", "--detach", "--name", "bench", "--constraint", "node.role==worker",
                "--stop-grace-period", "1s"]
        for _ in range(args.trials):
            create_times.append(timed(lab, 10, *base, "--replicas", "10", "busybox:1", "sleep", "100000"))
            scale_times.append(timed(lab, 50, "service", "scale", "--detach", "bench=50"))
            for t in running(lab, "bench"):
                latencies.append(t["status"]["timestamp"] - t["meta"]["created_at"])
            lab.cli("manager1", "service", "rm", "bench")
            wait_until(lambda: not any(c["service"] == "bench" for w in ("worker1", "worker2", "worker3")
                                       for c in lab.cli_json(w, "container", "ls")),
                       timeout=120, what="containers gone")
        # Memory: 50 tasks on one worker.
        lab.cli("manager1", "service", "create", "--detach", "--name", "bench", "--replicas", "50",
                "--constraint", "node.hostname==worker1", "busybox:1", "sleep", "100000")
        wait_until(lambda: len(running(lab, "bench")) == 50, timeout=300, what="50 on worker1")
        time.sleep(2)
        rss = rss_mb(lab.host("worker1").pid)
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    for what, times, docker, aim in (("service create --replicas 10 -> 10 running", create_times, 1.75, 0.58),
                                     ("scale 10 -> 50 -> 50 running", scale_times, 6.1, 2.03)):
        cluster = [c for _, c in times]
        wall = [w for w, _ in times]
        results.add(f"{what}, cluster s", cluster, "s", "lower")
        results.add(f"{what}, wall s", wall, "s", "lower")
        print(f"{what}: median {statistics.median(cluster):.2f}s by the cluster's clock, "
              f"{statistics.median(wall):.2f}s wall through the CLI (Docker Swarm here: {docker}s; "
              f"aim: < {aim}s) — {', '.join(f'{c:.2f}' for c in cluster)}")
    print(f"task start latency (created -> running), {len(latencies)} tasks: p50 {p(0.5) * 1000:.0f} ms, "
          f"p99 {p(0.99) * 1000:.0f} ms")
    print(f"shoald RSS on a worker with 50 tasks: {rss:.0f} MB (no per-task helper process; "
          f"Docker here: ~800 MB; aim: < 100 MB)")
    # One sample per task for the percentiles would weigh a figure by the task count: keep p50, p99.
    results.add("task start latency p50 ms", [p(0.5) * 1000], "ms", "lower")
    results.add("task start latency p99 ms", [p(0.99) * 1000], "ms", "lower")
    results.add("shoald RSS with 50 tasks MB", [rss], "MB", "lower")
    results.write(args.json)


if __name__ == "__main__":
    main()
