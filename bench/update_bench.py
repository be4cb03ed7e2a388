"""Rolling-update benchmark on a real lab (issue 5): 3 managers + 3 workers, runc containers.

10 replicas on the 3 workers (`node.role==worker`, as bench/service_bench.py), parallelism 2,
delay 0, stop grace 1 s, stop-first, Docker's default monitor (5 s, which here does not hold
the next batch back, as in Swarm): the time from `service update --image` to all 10 new tasks
running, median of 5. Each trial switches between two images (app:1 <-> app:2) and waits for the
update to complete before the next one.

Stop-first as in Swarm: a slot's new task starts only once its old one stopped. So the stop
time of the container counts, and it is measured with two: `sleep` as PID 1 (ignores SIGTERM,
killed at the end of the 1 s grace, every batch), and a shell that exits on SIGTERM.

Two clocks: the cluster's (from the update being accepted, the service's updated_at, to the
last new task reported running) and the wall clock through the CLI (which adds the start-up of
each CLI process, ~0.3 s here, and polling).

Docker Swarm on this machine: 14.8 s. Run as root: .venv/bin/python bench/update_bench.py
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

DOCKER = 14.8
REPLICAS = 10


# name -> the container's command
CONTAINERS = {
    "sleep as PID 1 (ignores SIGTERM: 1 s grace per batch)": ["sleep", "100000"],
    "exits on SIGTERM": ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"],
}


def tasks(lab: Lab, name: str) -> list[dict]:
    return [t for t in lab.cli_json("manager1", "service", "ps", name) if t["desired_state"] == "running"]


def new_running(lab: Lab, name: str, image: str) -> list[dict]:
    return [t for t in tasks(lab, name) if t["spec"]["container"]["image"] == image
            and t["status"]["state"] == "running"]


def service(lab: Lab, name: str) -> dict:
    return next(s for s in lab.cli_json("manager1", "service", "ls") if s["spec"]["name"] == name)


def trial(lab: Lab, name: str, image: str) -> tuple[float, float]:
    """(cluster clock, wall clock) for one rolling update to `image`."""
    t0 = time.monotonic()
    lab.cli("manager1", "service", "update", "--detach", "--image", image, name, timeout=120)
    done = wait_until(lambda: len(r := new_running(lab, name, image)) == REPLICAS and r, timeout=300,
                      interval=0.05, what=f"{REPLICAS} new tasks running")
    wall = time.monotonic() - t0
    accepted = service(lab, name)["meta"]["updated_at"]
    cluster = max(t["status"]["timestamp"] for t in done) - accepted
    wait_until(lambda: service(lab, name)["update_status"]["state"] == "completed", timeout=120,
               what="the update completed")
    return cluster, wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    add_json_option(parser, "update_bench")
    args = parser.parse_args()
    figures = Results("update_bench", args={"trials": args.trials})
    summary: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, Lab("benchupd") as lab:
        v1 = imagebuild.build_busybox_oci_layout(Path(tmp) / "v1", tag="1")
        v2 = imagebuild.build_busybox_oci_layout(Path(tmp) / "v2", tag="1", extra_files={"/VERSION": b"2\n"})
        lab.up(managers=3, workers=3)
        for h in lab.hosts():
            lab.cli(h.name, "image", "import", str(v1), "app:1", timeout=120)
            lab.cli(h.name, "image", "import", str(v2), "app:2", timeout=120)
        for n, (label, command) in enumerate(CONTAINERS.items()):
            name = f"bench{n}"
            lab.cli("manager1", "service", "create", "--name", name, "--replicas", str(REPLICAS),
                    "--constraint", "node.role==worker", "--stop-grace-period", "1s",
                    "--update-parallelism", "2", "--update-delay", "0s", "--update-order", "stop-first",
                    "app:1", *command, timeout=300)
            results: list[tuple[float, float]] = []
            for i in range(args.trials):
                image = "app:2" if i % 2 == 0 else "app:1"
                cluster, wall = trial(lab, name, image)
                results.append((cluster, wall))
                print(f"{label}, trial {i + 1}: {cluster:.2f}s by the cluster's clock, {wall:.2f}s wall "
                      f"(-> {image})", flush=True)
            lab.cli("manager1", "service", "rm", name)
            figures.add(f"{label}, cluster s", [c for c, _ in results], "s", "lower")
            figures.add(f"{label}, wall s", [w for _, w in results], "s", "lower")
            cluster = statistics.median(c for c, _ in results)
            wall = statistics.median(w for _, w in results)
            summary.append(f"{label}: {cluster:.2f}s by the cluster's clock ({cluster / DOCKER:.2f} of "
                           f"Docker Swarm's {DOCKER}s), {wall:.2f}s wall through the CLI "
                           f"({wall / DOCKER:.2f} of it)")
    print(f"rolling update of {REPLICAS} replicas (parallelism 2, delay 0, stop grace 1s, stop-first) "
          f"until all {REPLICAS} new tasks run, median of {args.trials} (aim: < {DOCKER / 3:.1f}s):")
    for line in summary:
        print("  " + line)
    figures.write(args.json)


if __name__ == "__main__":
    main()
