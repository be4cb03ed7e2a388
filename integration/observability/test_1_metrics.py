"""Issue 19, metrics, on the package's lab (3 managers + 3 workers, every shoald with
`--metrics-addr 127.0.0.1:9323`): each host's /metrics is scraped from inside its namespace and
parsed with prometheus_client's parser, which raises on anything that is not Prometheus text.

The service figures are the leader's: `shoal_service_desired_tasks` and
`shoal_service_running_tasks` (by `service`), and the same in `shoal_service_replicas{state=...}`,
follow a scale up and down. On a worker,
`shoal_container_memory_usage_bytes` (the container's cgroup) follows a task that allocates.
"""
from __future__ import annotations

import shutil

import pytest

from integration.helpers import leader_of, needs_root, wait_until
from integration.observability.support import (HOSTS, IMAGE, MANAGERS, WORKERS, create_service,
                                               get, lab_settled, running, scrape, scrape_text,
                                               series, services, wait_running)
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(),
                                 reason="busybox-static is not installed")]

SERVICE = "metr"          # this module's services
REJECTED = "metr-nowhere"
HOG = "metr-hog"
MiB = 1 << 20
RISE = 60_000_000
# The task waits for /tmp/go (so the test reads its memory before), then `tail` keeps all of a
# newline-less 64 MiB input in memory and blocks writing it to `sleep`, which never reads: the
# memory stays held, and nothing reaches the log. (`...| tail; sleep` would print the 64 MiB
# and free it at once.)
HOG_SCRIPT = ("while [ ! -e /tmp/go ]; do sleep 0.2; done; "
              "head -c 64m /dev/zero | tail | sleep 100000")


@pytest.fixture(scope="module")
def obs(lab):
    lab_settled(lab)
    with services(lab, SERVICE, REJECTED, HOG):
        yield lab


def leader_scrape(lab) -> dict:
    """The leader's samples: only the leader exports the service figures."""
    leader = wait_until(lambda: leader_of(lab, "manager1"), what="a leader")
    return scrape(lab, leader)


def test_every_host_serves_prometheus_text(obs):
    lab = obs
    for host in HOSTS:
        text = scrape_text(lab, host)
        found = scrape(lab, host)   # parsed: prometheus_client raises on malformed text
        assert "# TYPE shoal_node_tasks gauge" in text, host
        assert get(found, "shoal_manager_leader") in ((0.0, 1.0) if host in MANAGERS
                                                      else (0.0,)), host
    # a worker exports no manager figures
    worker = scrape(lab, "worker1")
    assert not [k for k in worker if k[0].startswith(("shoal_raft_", "shoal_service_",
                                                      "shoal_manager_"))]
    leaders = [h for h in MANAGERS if get(scrape(lab, h), "shoal_manager_leader") == 1]
    assert leaders == [leader_of(lab, "manager1")]


def test_service_figures_follow_a_scale(obs):
    lab = obs
    create_service(lab, SERVICE, "--replicas", "2", "--constraint", "node.role==worker",
                   IMAGE, "sh", "-c", "while true; do sleep 1; done")
    wait_running(lab, SERVICE, 2)
    # The agents report running; the node metrics say what each agent knows.
    wait_until(lambda: sum(get(scrape(lab, h), "shoal_node_tasks", state="running")
                           for h in WORKERS) == 2, timeout=60, what="2 running tasks on the nodes")
    containers = {h: series(scrape(lab, h), "shoal_container_memory_usage_bytes",
                            service=SERVICE) for h in WORKERS}
    assert sum(len(v) for v in containers.values()) == 2, containers
    assert all(v > 0 for vs in containers.values() for v in vs), containers
    assert all(v > 0 for h in WORKERS
               for v in series(scrape(lab, h), "shoal_container_cpu_seconds_total",
                               service=SERVICE))
    assert not any(series(scrape(lab, m), "shoal_container_memory_usage_bytes",
                          service=SERVICE) for m in MANAGERS)
    m = wait_until(lambda: (m := leader_scrape(lab))
                   and get(m, "shoal_service_running_tasks", service=SERVICE) == 2 and m,
                   timeout=30, what="the leader's service metrics: 2 running")
    assert get(m, "shoal_service_desired_tasks", service=SERVICE) == 2
    assert get(m, "shoal_service_update_state", service=SERVICE, state="none") == 1
    assert get(m, "shoal_raft_term") >= 1
    assert get(m, "shoal_raft_leader_changes_total") >= 1
    listed = len(lab.cli_json("manager1", "service", "ls"))
    assert get(m, "shoal_store_objects", table="services") == listed
    assert get(m, "shoal_scheduler_delay_seconds_count") >= 2
    assert get(m, "shoal_dispatcher_sessions") == 6   # every node, managers included
    assert get(m, "shoal_dispatcher_heartbeats_total") > 0
    # the routes used, by their pattern: the CLI's create, the agents' heartbeats on 2377
    assert get(m, "shoal_api_request_duration_seconds_count", listener="cluster",
               method="POST", route="/dispatcher/heartbeat") >= 1
    assert get(scrape(lab, "manager1"), "shoal_api_request_duration_seconds_count",
               listener="local", method="POST", route="/services/create") >= 1

    # Scaled up: desired at once (the spec), running as the tasks start.
    lab.cli("manager1", "service", "scale", "-d", f"{SERVICE}=5", timeout=60)
    up = wait_until(lambda: (m := leader_scrape(lab))
                    and get(m, "shoal_service_running_tasks", service=SERVICE) == 5 and m,
                    timeout=90, what=f"{SERVICE}: 5 running in the leader's metrics")
    assert get(up, "shoal_service_desired_tasks", service=SERVICE) == 5
    assert get(up, "shoal_service_replicas", service=SERVICE, state="desired") == 5
    assert get(up, "shoal_service_replicas", service=SERVICE, state="running") == 5
    assert len(running(lab, SERVICE)) == 5
    assert sum(len(series(scrape(lab, h), "shoal_container_memory_usage_bytes",
                          service=SERVICE)) for h in WORKERS) == 5
    # ... and down
    lab.cli("manager1", "service", "scale", "-d", f"{SERVICE}=1", timeout=60)
    down = wait_until(lambda: (m := leader_scrape(lab))
                      and get(m, "shoal_service_running_tasks", service=SERVICE) == 1 and m,
                      timeout=90, what=f"{SERVICE}: 1 running in the leader's metrics")
    assert get(down, "shoal_service_desired_tasks", service=SERVICE) == 1
    assert get(down, "shoal_service_replicas", service=SERVICE, state="running") == 1
    print(f"\nleader metrics followed {SERVICE}: 2 -> 5 -> 1 desired and running")


def test_raft_commit_index_and_latency_grow_with_a_write(obs):
    lab = obs
    leader = wait_until(lambda: leader_of(lab, "manager1"), what="a leader")
    before = scrape(lab, leader)
    lab.cli("manager1", "node", "update", "--label-add", "metrics=1", "worker1")
    after = scrape(lab, leader)
    assert get(after, "shoal_raft_commit_index") > get(before, "shoal_raft_commit_index")
    assert (get(after, "shoal_raft_commit_latency_seconds_count")
            > get(before, "shoal_raft_commit_latency_seconds_count"))
    assert get(after, "shoal_raft_apply_lag_entries") == 0
    lab.cli("manager1", "node", "update", "--label-rm", "metrics", "worker1")


def test_a_containers_memory_follows_what_its_task_allocates(obs):
    lab = obs
    create_service(lab, HOG, "--constraint", "node.hostname==worker2", IMAGE, "sh", "-c",
                   HOG_SCRIPT)
    [task] = wait_running(lab, HOG, 1)
    assert task["node_hostname"] == "worker2"

    def memory() -> float:
        [value] = series(scrape(lab, "worker2"), "shoal_container_memory_usage_bytes",
                         service=HOG, container_id=task["id"])
        return value
    before = wait_until(memory, timeout=30, what=f"{HOG}'s memory in worker2's metrics")
    lab.cli("worker2", "container", "exec", task["id"], "--", "touch", "/tmp/go")
    # 64 MiB (67 MB) held: at least 60 MB more, whatever the allocator's and the cgroup's
    # accounting leave out
    after = wait_until(lambda: (v := memory()) >= before + RISE and v, timeout=60,
                       what=f"{HOG}'s memory up by {RISE / 1e6:.0f} MB (from {before / MiB:.1f} "
                            "MiB)")
    print(f"\n{HOG} on worker2: shoal_container_memory_usage_bytes {before / MiB:.1f} MiB "
          f"-> {after / MiB:.1f} MiB (+{(after - before) / 1e6:.1f} MB) after holding 64 MiB")


def test_a_rejected_task_counts_in_the_last_5_minutes(obs):
    lab = obs
    create_service(lab, REJECTED, "--replicas", "1", "busybox:nothere", "sleep", "1000")
    m = wait_until(lambda: (m := leader_scrape(lab))
                   and get(m, "shoal_service_tasks_rejected_5m", service=REJECTED) >= 1 and m,
                   timeout=90, what=f"a rejected task of {REJECTED} in the leader's metrics")
    assert get(m, "shoal_service_running_tasks", service=REJECTED) == 0
    assert get(m, "shoal_service_desired_tasks", service=REJECTED) == 1
    assert get(m, "shoal_service_tasks_rejected_5m", service=SERVICE) == 0
    # the node that tried counted a failed pull (no registry is named in the reference)
    assert sum(get(scrape(lab, h), "shoal_image_pulls_total", result="failure")
               for h in HOSTS) >= 1
