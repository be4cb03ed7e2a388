"""Swarm and node writes and task logs with the unchanged docker CLI against shoal's Docker
Engine API socket, in a lab of 3 managers + 2 workers (and a spare host that is in no swarm):
node update (labels, availability), promote, demote and rm; swarm update, join-token,
unlock-key, unlock of a restarted autolocked manager; join, leave and init on the spare host;
`docker service logs TASKID`. Every effect is checked through shoal's own CLI.

Writes run on a follower, so each one is forwarded to the leader in shoal's words.
"""
from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone

import pytest

from integration.helpers import busybox_lab, leader_of, node_table, wait_until
from integration.test_docker_cli import (  # noqa: F401 (docker_config: a fixture)
    DOCKER, docker, docker_config, pytestmark)


@pytest.fixture(scope="module")
def lab():
    with busybox_lab("dks", managers=3, workers=2) as lab:
        yield lab


@pytest.fixture
def host(lab) -> str:
    """A manager that is not the leader: its writes go to the leader."""
    leader = wait_until(lambda: leader_of(lab, "manager1"), what="a leader")
    return next(m for m in ("manager1", "manager2", "manager3") if m != leader)


def swarm(lab, host: str = "manager1") -> dict:
    return lab.cli_json(host, "swarm", "inspect")


def test_node_update_promote_demote_and_rm(lab, docker_config, host):
    listed = docker(lab, host, "node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}",
                    cfg=docker_config).stdout.split("\n")
    assert sorted(ln.split()[0] for ln in listed if ln) == \
        ["manager1", "manager2", "manager3", "worker1", "worker2"]
    [inspected] = json.loads(docker(lab, host, "node", "inspect", "worker1",
                                    cfg=docker_config).stdout)
    assert inspected["Spec"]["Role"] == "worker"

    docker(lab, host, "node", "update", "--label-add", "disk=ssd", "--label-add", "zone=b",
           "--availability", "drain", "worker1", cfg=docker_config)
    w1 = node_table(lab, "manager1")["worker1"]
    assert w1["labels"] == {"disk": "ssd", "zone": "b"} and w1["availability"] == "drain"
    docker(lab, host, "node", "update", "--label-rm", "disk", "--availability", "active",
           "worker1", cfg=docker_config)
    w1 = node_table(lab, "manager1")["worker1"]
    assert w1["labels"] == {"zone": "b"} and w1["availability"] == "active"
    # Docker's refusal, in Docker's words, and nothing changed
    res = docker(lab, host, "node", "update", "--role", "boss", "worker1", cfg=docker_config,
                 check=False)
    assert res.returncode != 0
    assert node_table(lab, "manager1")["worker1"]["role"] == "worker"

    out = docker(lab, host, "node", "promote", "worker2", cfg=docker_config).stdout
    assert "promoted to a manager" in out
    wait_until(lambda: node_table(lab, "manager1")["worker2"]["manager_status"] == "reachable",
               timeout=60, what="worker2 to join raft as a manager")
    out = docker(lab, host, "node", "demote", "worker2", cfg=docker_config).stdout
    assert "demoted in the swarm" in out
    wait_until(lambda: node_table(lab, "manager1")["worker2"]["role"] == "worker",
               timeout=30, what="worker2 to be a worker again")

    res = docker(lab, host, "node", "rm", "worker2", cfg=docker_config, check=False)
    assert res.returncode != 0 and "--force" in res.stderr, res.stderr
    assert "worker2" in node_table(lab, "manager1")
    res = docker(lab, host, "node", "rm", "manager3" if host != "manager3" else "manager2",
                 cfg=docker_config, check=False)
    assert res.returncode != 0 and "demote" in res.stderr, res.stderr
    docker(lab, host, "node", "rm", "--force", "worker2", cfg=docker_config)
    assert "worker2" not in node_table(lab, "manager1")


def test_swarm_ca_rotate_with_the_docker_cli(lab, docker_config, host):
    """`docker swarm ca --rotate`: Docker's ForceRotate, then its progress display, which reads
    the swarm's and every node's TLSInfo until the rotation is done."""
    before = swarm(lab)
    shown = docker(lab, host, "swarm", "ca", cfg=docker_config).stdout.strip()
    assert shown == before["root_ca"]["cert_pem"].strip()
    res = docker(lab, host, "swarm", "ca", "--rotate", "--cert-expiry", "48h",
                 cfg=docker_config, timeout=180)
    assert "rotated CA certificates" in res.stdout, res.stdout
    new_root = res.stdout[res.stdout.index("-----BEGIN CERTIFICATE-----"):].strip()
    after = swarm(lab)
    assert after["root_ca"]["digest"] != before["root_ca"]["digest"]
    assert after["root_ca"]["cert_pem"].strip() == new_root
    assert after["root_ca"].get("rotation") is None
    assert after["spec"]["ca_config"]["node_cert_expiry"] == 48 * 3600
    assert after["spec"]["ca_config"]["force_rotate"] == before["spec"]["ca_config"]["force_rotate"] + 1
    [inspected] = json.loads(docker(lab, host, "node", "inspect", "manager1",
                                    cfg=docker_config).stdout)
    assert inspected["Description"]["TLSInfo"]["TrustRoot"].strip() == new_root
    # -d returns at once; the rotation goes on and ends by itself
    docker(lab, host, "swarm", "ca", "--rotate", "-d", cfg=docker_config)
    wait_until(lambda: swarm(lab)["root_ca"]["digest"] != after["root_ca"]["digest"]
               and swarm(lab)["root_ca"].get("rotation") is None,
               timeout=120, what="the detached rotation to finish")


def test_swarm_update_join_tokens_and_unlock_key(lab, docker_config, host):
    docker(lab, host, "swarm", "update", "--task-history-limit", "3", cfg=docker_config)
    assert swarm(lab)["spec"]["orchestration"]["task_history_retention_limit"] == 3

    tokens = swarm(lab)["join_tokens"]
    q = docker(lab, host, "swarm", "join-token", "-q", "worker", cfg=docker_config).stdout
    assert q.strip() == tokens["worker"]
    out = docker(lab, host, "swarm", "join-token", "--rotate", "manager",
                 cfg=docker_config).stdout
    rotated = swarm(lab)["join_tokens"]
    assert rotated["manager"] != tokens["manager"] and rotated["worker"] == tokens["worker"]
    assert f"docker swarm join --token {rotated['manager']} " in out

    res = docker(lab, host, "swarm", "unlock-key", cfg=docker_config, check=False)
    assert res.returncode != 0 and "no unlock key is set" in res.stderr, res.stderr
    out = docker(lab, host, "swarm", "update", "--autolock=true", cfg=docker_config).stdout
    key = lab.cli(host, "swarm", "unlock-key", "-q").stdout.strip()
    assert key and key in out
    assert docker(lab, host, "swarm", "unlock-key", "-q",
                  cfg=docker_config).stdout.strip() == key
    new = docker(lab, host, "swarm", "unlock-key", "--rotate", "-q",
                 cfg=docker_config).stdout.strip()
    assert new != key and lab.cli("manager1", "swarm", "unlock-key", "-q").stdout.strip() == new

    # A restarted manager comes up locked; `docker swarm unlock` reads the key from stdin.
    def state() -> str:
        return lab.cli_json(host, "info")["swarm"]["state"]

    def unlock(key: str):
        return lab.exec(host, ["env", f"DOCKER_CONFIG={docker_config}", DOCKER, "swarm",
                               "unlock"], input=key + "\n", timeout=90)

    # Each manager reseals with the new key within a moment of seeing it (2 s at most).
    time.sleep(4)
    lab.stop(host)
    lab.start(host)
    assert state() == "locked"
    res = unlock(key)  # the key before the rotation opens nothing
    assert res.returncode != 0 and state() == "locked", res.stderr
    res = unlock(new)
    assert res.returncode == 0, res.stderr
    assert state() == "active"
    wait_until(lambda: node_table(lab, "manager1")[host]["manager_status"] == "reachable",
               timeout=60, what=f"{host} back in raft")
    docker(lab, host, "swarm", "update", "--autolock=false", cfg=docker_config)
    assert swarm(lab)["spec"]["encryption_config"]["auto_lock_managers"] is False


def test_service_logs_of_one_task(lab, docker_config, host):
    docker(lab, host, "service", "create", "-d", "--name", "talker", "--replicas", "2",
           "--env", "SLOT={{.Task.Slot}}", "busybox:1", "sh", "-c",
           "echo hello-from-$SLOT; sleep 3; echo later-from-$SLOT; exec sleep 1000",
           cfg=docker_config)
    def running() -> dict:
        tasks = {t["slot"]: t for t in lab.cli_json("manager1", "service", "ps", "talker")
                 if t["status"]["state"] == "running" and t["desired_state"] == "running"}
        return tasks if set(tasks) == {1, 2} else {}
    one = wait_until(running, timeout=60, what="both of talker's tasks running")[1]

    def logs() -> str:
        res = docker(lab, host, "service", "logs", one["id"], cfg=docker_config)
        return res.stdout + res.stderr
    out = wait_until(lambda: "hello-from-1" in logs() and logs(), timeout=30,
                     what="the task's log line")
    assert "hello-from-2" not in out
    # the CLI names the task by the com.docker.swarm.* details of each line
    assert "talker.1" in out
    # --since is the nodes' to apply, before --tail: only the later line, then only the last
    out = wait_until(lambda: "later-from-1" in logs() and logs(), timeout=30,
                     what="the task's later line")
    stamped = docker(lab, host, "service", "logs", "--timestamps", one["id"],
                     cfg=docker_config).stdout
    first = next(ln for ln in stamped.splitlines() if "hello-from-1" in ln)
    hello_at = datetime.fromisoformat(re.search(r"(\d{4}-\d\d-\d\dT[\d:]+)", first)[1]
                                      ).replace(tzinfo=timezone.utc).timestamp()
    since = f"{hello_at + 1.5:.3f}"   # between the two lines, 3 s apart
    res = docker(lab, host, "service", "logs", "--since", since, one["id"], cfg=docker_config)
    assert "later-from-1" in res.stdout and "hello-from-1" not in res.stdout, res.stdout
    res = docker(lab, host, "service", "logs", "--tail", "1", "--since", "0", one["id"],
                 cfg=docker_config)
    assert "later-from-1" in res.stdout and "hello-from-1" not in res.stdout, res.stdout
    docker(lab, host, "service", "rm", "talker", cfg=docker_config)


def test_join_leave_and_init_on_a_spare_host(lab, docker_config):
    spare = lab.add_host("worker", join=False)
    address = lab.host(spare).address
    manager1 = lab.host("manager1").address
    token = swarm(lab)["join_tokens"]["worker"]
    res = docker(lab, spare, "swarm", "join", "--token", token, f"{manager1}:2377",
                 cfg=docker_config, timeout=90)
    assert "This node joined a swarm as a worker." in res.stdout
    wait_until(lambda: node_table(lab, "manager1")[spare]["status"] == "ready", timeout=30,
               what=f"{spare} ready in the swarm")
    res = docker(lab, spare, "swarm", "join", "--token", token, f"{manager1}:2377",
                 cfg=docker_config, check=False)
    assert res.returncode != 0 and "already part of a swarm" in res.stderr

    assert "Node left the swarm." in docker(lab, spare, "swarm", "leave",
                                            cfg=docker_config).stdout
    assert lab.cli_json(spare, "info")["swarm"]["state"] == "inactive"
    wait_until(lambda: node_table(lab, "manager1")[spare]["status"] == "down", timeout=30,
               what=f"{spare} down after leaving")
    docker(lab, "manager1", "node", "rm", spare, cfg=docker_config)
    assert spare not in node_table(lab, "manager1")

    out = docker(lab, spare, "swarm", "init", "--advertise-addr", address,
                 "--task-history-limit", "2", cfg=docker_config, timeout=60).stdout
    own = lab.cli_json(spare, "swarm", "inspect")
    assert own["id"] != swarm(lab)["id"]
    assert own["spec"]["orchestration"]["task_history_retention_limit"] == 2
    assert f"docker swarm join --token {own['join_tokens']['worker']} {address}:2377" in out
    assert [n["role"] for n in lab.cli_json(spare, "node", "ls")] == ["manager"]
    res = docker(lab, spare, "swarm", "leave", cfg=docker_config, check=False)
    assert res.returncode != 0 and lab.cli_json(spare, "info")["swarm"]["state"] == "active"
    docker(lab, spare, "swarm", "leave", "--force", cfg=docker_config)
    assert lab.cli_json(spare, "info")["swarm"]["state"] == "inactive"


def test_demoting_the_leader_hands_leadership_over_first(lab, docker_config, host):
    """Last in this module: the lab keeps two managers afterwards."""
    leader = wait_until(lambda: leader_of(lab, host), what="a leader")
    out = docker(lab, host, "node", "demote", leader, cfg=docker_config, timeout=60).stdout
    assert "demoted in the swarm" in out
    def demoted() -> dict:
        table = node_table(lab, host)
        return table if table[leader]["role"] == "worker" else {}
    nodes = wait_until(demoted, timeout=30, what=f"{leader} to be a worker")
    assert sorted(n for n, row in nodes.items() if row["role"] == "manager") == \
        sorted(m for m in ("manager1", "manager2", "manager3") if m != leader)
    assert wait_until(lambda: leader_of(lab, host), what="a new leader") != leader
