"""Quorum recovery on a lab of real shoald processes (3 managers + 2 workers, busybox tasks):
two managers are SIGKILLed for good, `swarm init --force-new-cluster` on the third brings the
swarm back with every object; the workers' tasks run on untouched (same task, same process)
and report to the new cluster; fresh managers join again.
"""
from __future__ import annotations

import shutil

import pytest

from integration.helpers import busybox_lab, leader_of, needs_root, node_table, wait_until
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(),
                                 reason="busybox-static is not installed")]

IMAGE = "busybox:1"


@pytest.fixture(scope="module")
def lab():
    with busybox_lab("qr", managers=3, workers=2, tags=[IMAGE]) as lab:
        yield lab


def running_containers(lab, worker: str) -> dict[str, int]:
    """task id -> pid of the service containers running on `worker`."""
    return {c["id"]: c["pid"] for c in lab.cli_json(worker, "container", "ls")
            if c["state"] == "running" and c.get("service")}


def test_force_new_cluster_is_refused_on_a_worker(lab):
    r = lab.cli("worker1", "swarm", "init", "--force-new-cluster", check=False)
    assert r.returncode != 0
    assert "not a swarm manager" in r.stderr


def test_survivor_brings_the_swarm_back_with_everything(lab):
    lab.exec("manager1", ["shoal", "secret", "create", "dbpw", "-"], input="s3cret-value",
             check=True)
    lab.exec("manager1", ["shoal", "config", "create", "appconf", "-"], input="k=v", check=True)
    lab.cli("manager1", "network", "create", "--driver", "overlay", "appnet")
    lab.cli("manager1", "service", "create", "--detach", "--name", "app", "--replicas", "2",
            "--constraint", "node.role==worker", "--secret", "dbpw", "--config", "appconf",
            "--network", "appnet", IMAGE, "sleep", "3600", timeout=60)
    wait_until(lambda: len(running_containers(lab, "worker1")) + len(running_containers(lab, "worker2")) == 2,
               timeout=90, what="both app tasks running")
    before = {w: running_containers(lab, w) for w in ("worker1", "worker2")}

    # Two managers go for good, the leader among them.
    leader = wait_until(lambda: leader_of(lab, "manager1"), what="a leader")
    survivor = next(m for m in ("manager1", "manager2", "manager3") if m != leader)
    lost = [m for m in ("manager1", "manager2", "manager3") if m != survivor]
    for m in lost:
        lab.kill(m)
    # Without a quorum, writes fail with the reason.
    r = wait_until(lambda: (r := lab.cli(survivor, "node", "update", "--label-add", "x=y",
                                         "worker1", check=False, timeout=30)).returncode != 0 and r,
                   timeout=30, what="writes to be refused without quorum")
    assert "quorum" in r.stderr or "leader" in r.stderr

    r = lab.cli(survivor, "swarm", "init", "--force-new-cluster", timeout=120)
    assert "Swarm initialized" in r.stdout

    # node ls works, this manager leads alone; the lost managers are demoted workers, Down.
    table = node_table(lab, survivor)
    assert table[survivor]["manager_status"] == "leader"
    for m in lost:
        assert table[m]["role"] == "worker"
    wait_until(lambda: all(node_table(lab, survivor)[m]["status"] == "down" for m in lost),
               timeout=30, what="the lost managers to show Down")
    # every object is there
    assert [s["spec"]["name"] for s in lab.cli_json(survivor, "secret", "ls")] == ["dbpw"]
    assert [c["spec"]["name"] for c in lab.cli_json(survivor, "config", "ls")] == ["appconf"]
    assert "appnet" in {n["spec"]["name"] for n in lab.cli_json(survivor, "network", "ls")}
    assert [s["spec"]["name"] for s in lab.cli_json(survivor, "service", "ls")] == ["app"]

    # The workers report to the new cluster: Ready, their tasks running as before, and a
    # scale-up lands a new task on them.
    # (Ready from before already; checked after the lost managers went Down, it means the
    # workers' heartbeats reach the new cluster.)
    table = node_table(lab, survivor)
    assert all(table[w]["status"] == "ready" for w in ("worker1", "worker2"))
    lab.cli(survivor, "service", "scale", "app=3", timeout=60)

    def running_tasks():
        ts = [t for t in lab.cli_json(survivor, "service", "ps", "app")
              if t["desired_state"] == "running" and t["status"]["state"] == "running"]
        return ts if len(ts) == 3 else None
    tasks = wait_until(running_tasks, timeout=90, what="three app tasks running")
    for w, containers in before.items():
        now = running_containers(lab, w)
        for task_id, pid in containers.items():
            assert now.get(task_id) == pid, f"{w}: task {task_id} was restarted or stopped"
    assert set(before["worker1"]) | set(before["worker2"]) < {t["id"] for t in tasks}

    # Fresh managers join with the manager token and raft has three members again.
    for _ in range(2):
        lab.add_host("manager", timeout=120)
    def three_reachable():
        managers = [n for n in node_table(lab, survivor).values() if n["role"] == "manager"]
        return len(managers) == 3 and all(n["manager_status"] in ("leader", "reachable")
                                          for n in managers)
    wait_until(three_reachable, timeout=60, what="three reachable managers")
    # and writes commit with the new members
    lab.cli(survivor, "node", "update", "--label-add", "after=recovery", "worker1")
    # the demoted lost managers can be removed
    for m in lost:
        lab.cli(survivor, "node", "rm", m)
    assert not set(lost) & set(node_table(lab, survivor))
