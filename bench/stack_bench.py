"""Stack benchmarks on a real lab (issue 15): 3 managers + 3 workers, runc containers.

- deploy of a 10-service stack (30 tasks, two overlay networks) until every task runs;
- redeploy of the same file with one service's command changed until its new tasks run, next to
  a redeploy of the unchanged file (which should cost only the reading and comparing);
median of N, by the wall clock (through the CLI, `stack deploy` waiting for convergence) and by
the cluster's clock (from the first service's creation or the changed service's update to the
last of its tasks reported running).

Run as root: .venv/bin/python bench/stack_bench.py [--trials 5]
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

SERVICES = 10
REPLICAS = 3


def compose(marker: str) -> str:
    lines = ["services:"]
    for i in range(SERVICES):
        command = f'["sleep", "{100000 + (1 if i == 0 and marker else 0)}"]'
        lines += [f"  s{i}:", "    image: busybox:1", f"    command: {command}",
                  f"    networks: [{'front' if i % 2 else 'back'}]",
                  "    stop_grace_period: 1s",
                  f"    deploy: {{replicas: {REPLICAS}, placement: {{constraints: [node.role==worker]}},"
                  " update_config: {parallelism: 0}}"]
    lines += ["networks:", "  front: {}", "  back: {}"]
    return "\n".join(lines) + "\n"


def running_tasks(lab: Lab) -> list[dict]:
    return [t for t in lab.cli_json("manager1", "stack", "ps", "bench")
            if t["desired_state"] == "running" and t["status"]["state"] == "running"]


def deploy(lab: Lab, file: Path) -> float:
    t0 = time.monotonic()
    lab.cli("manager1", "stack", "deploy", "-q", "-c", str(file), "bench", timeout=300)
    return time.monotonic() - t0


def cluster_time(lab: Lab, service: str | None) -> float:
    """From the (changed) services' creation or update to the last running report."""
    services = lab.cli_json("manager1", "stack", "services", "bench")
    if service:
        services = [s for s in services if s["spec"]["name"] == service]
    start = min(s["meta"]["updated_at"] for s in services)
    names = {s["spec"]["name"] for s in services}
    live = [t for t in running_tasks(lab) if t["service_name"] in names]
    return max(t["status"]["timestamp"] for t in live) - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    add_json_option(parser, "stack_bench")
    args = parser.parse_args()
    results = Results("stack_bench", args={"trials": args.trials})
    first, changed, unchanged = [], [], []
    with tempfile.TemporaryDirectory() as tmp, Lab("benchstk") as lab:
        layout = imagebuild.build_busybox_oci_layout(Path(tmp) / "img", tag="1")
        lab.up(managers=3, workers=3)
        for h in lab.hosts():
            lab.cli(h.name, "image", "import", str(layout), "busybox:1", timeout=120)
        a, b = Path(tmp) / "a.yml", Path(tmp) / "b.yml"
        a.write_text(compose(""))
        b.write_text(compose("changed"))
        for _ in range(args.trials):
            wall = deploy(lab, a)
            assert len(running_tasks(lab)) == SERVICES * REPLICAS
            first.append((wall, cluster_time(lab, None)))
            unchanged.append((deploy(lab, a), 0.0))
            wall = deploy(lab, b)
            wait_until(lambda: len(running_tasks(lab)) == SERVICES * REPLICAS, timeout=120)
            changed.append((wall, cluster_time(lab, "bench_s0")))
            lab.cli("manager1", "stack", "rm", "bench", timeout=300)
            wait_until(lambda: not any(c["service"].startswith("bench_") for w in ("worker1", "worker2", "worker3")
                                       for c in lab.cli_json(w, "container", "ls")),
                       timeout=120, what="containers gone")

    def show(what: str, runs: list[tuple[float, float]], clock: bool = True) -> None:
        walls = [w for w, _ in runs]
        line = f"{what:<44} wall median {statistics.median(walls):.2f}s (min {min(walls):.2f}, max {max(walls):.2f})"
        results.add(f"{what}, wall s", walls, "s", "lower")
        if clock:
            line += f"; cluster median {statistics.median(c for _, c in runs):.2f}s"
            results.add(f"{what}, cluster s", [c for _, c in runs], "s", "lower")
        print(line)

    print(f"stack of {SERVICES} services x {REPLICAS} replicas on 3 workers, {args.trials} trials")
    show("deploy until all 30 tasks run", first)
    show("redeploy, one service changed (3 tasks)", changed)
    show("redeploy, nothing changed", unchanged, clock=False)
    results.write(args.json)


if __name__ == "__main__":
    main()
