"""Simulated nodes (`shoal sim nodes`, worker/sim) against a real manager: they join through
the real path (token, CSR, their own certificates), show Ready, run a service's tasks (each
slot's task started exactly once), shut tasks down on a scale down, and go Down once stopped.
"""
from __future__ import annotations

import collections
import signal

import pytest

from bench.scale_bench import SimProcess, sim_host
from integration.helpers import needs_root, unique_lab_name, wait_until
from shoal.lab.netlab import Lab

pytestmark = [needs_root, pytest.mark.lab]

COUNT = 50
REPLICAS = 200


def sim_nodes(lab: Lab) -> dict[str, dict]:
    return {n["hostname"]: n for n in lab.cli_json("manager1", "node", "ls")
            if n["hostname"].startswith("simT-")}


def live_tasks(lab: Lab) -> list[dict]:
    return [t for t in lab.cli_json("manager1", "service", "ps", "web", timeout=60)
            if t["desired_state"] == "running"]


def test_simulated_nodes_join_run_and_leave(tmp_path):
    with Lab(unique_lab_name("sim")) as lab:
        lab.up(managers=1, workers=0)
        lab.cli("manager1", "swarm", "update", "--dispatcher-heartbeat", "1s")
        token = lab.cli("manager1", "swarm", "join-token", "-q", "worker").stdout.strip()
        host = sim_host(lab)
        sim = SimProcess.start(lab, host, f"{lab.host('manager1').address}:2377", token, COUNT,
                               "simT", tmp_path / "sim", start_delay=0.2)
        try:
            wait_until(sim.joined, timeout=60, interval=0.5, what=f"{COUNT} nodes joined")
            ids = sim.status()["nodes"]
            assert sorted(ids) == [f"simT-{i:05d}" for i in range(COUNT)]
            assert len(set(ids.values())) == COUNT  # each its own node (and certificate)
            wait_until(lambda: (n := sim_nodes(lab)) and len(n) == COUNT
                       and all(x["status"] == "ready" for x in n.values()),
                       timeout=30, what="the simulated nodes Ready")
            nodes = sim_nodes(lab)
            assert {h: n["id"] for h, n in nodes.items()} == ids
            inspect = lab.cli("manager1", "node", "inspect", "simT-00000").stdout
            assert "simulated node" in inspect  # its engine version says so

            lab.cli("manager1", "service", "create", "--detach", "--name", "web",
                    "--replicas", str(REPLICAS), "--constraint", "node.role==worker",
                    "--resolve-image", "never", "busybox:1", "sleep", "100000")
            wait_until(lambda: len([t for t in live_tasks(lab)
                                    if t["status"]["state"] == "running"]) == REPLICAS,
                       timeout=60, interval=1.0, what=f"{REPLICAS} tasks running")
            live = live_tasks(lab)
            assert sorted(t["slot"] for t in live) == list(range(1, REPLICAS + 1))
            assert {t["node_id"] for t in live} <= set(ids.values())
            per_node = collections.Counter(t["node_id"] for t in live)
            assert max(per_node.values()) <= REPLICAS // COUNT + 1  # spread by the scheduler
            wait_until(lambda: len(sim.status().get("task_runs", {})) >= REPLICAS, timeout=10,
                       what="the task runs in status.json")
            runs = sim.status()["task_runs"]
            others = {t["id"]: (t["desired_state"], t["status"])
                      for t in lab.cli_json("manager1", "service", "ps", "web", timeout=60)
                      if t["desired_state"] != "running"}
            assert not others, f"tasks replaced: {list(others.values())[:3]}"
            assert {t["id"] for t in live} == set(runs)
            assert set(runs.values()) == {1}  # every slot's task started exactly once

            lab.cli("manager1", "service", "scale", "--detach", "web=50")

            def scaled_down() -> bool:
                tasks = lab.cli_json("manager1", "service", "ps", "web", timeout=60)
                up = [t for t in tasks if t["desired_state"] == "running"]
                down = [t for t in tasks if t["desired_state"] != "running"]
                return (len(up) == 50 and all(t["status"]["state"] == "running" for t in up)
                        and len(down) == REPLICAS - 50
                        and all(t["status"]["state"] == "shutdown" for t in down))
            wait_until(scaled_down, timeout=30, interval=1.0, what="150 tasks shut down")
            assert set(sim.status()["task_runs"].values()) == {1}  # none started again

            # their tasks run nothing: logs and exec say so, rather than "unreachable"
            logs = lab.cli("manager1", "service", "logs", "web", check=False, timeout=60)
            assert "a simulated node (shoal sim nodes)" in logs.stdout + logs.stderr, logs
            ex = lab.cli("manager1", "service", "exec", "web.1", "--", "true", check=False,
                         timeout=60)
            assert ex.returncode != 0 and "simulated node" in ex.stderr, ex

            assert sim.stop(timeout=30) == 0
            assert "left: 50 simulated nodes stopped" in sim.log.read_text()
            wait_until(lambda: all(n["status"] == "down" for n in sim_nodes(lab).values()),
                       timeout=20, what="the stopped simulated nodes Down")
        finally:
            if sim.proc.poll() is None:
                sim.proc.send_signal(signal.SIGKILL)
                sim.proc.wait()
