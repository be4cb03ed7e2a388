"""Issue 19, metrics: `shoald --metrics-addr 127.0.0.1:9323` on real shoald processes in a lab
of 1 manager + 1 worker (each host its own network namespace, so the same loopback port
serves on each), scraped from inside each host and parsed with prometheus_client's parser.
"""
from __future__ import annotations

import shutil
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from integration.helpers import busybox_lab, needs_root, wait_until
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(),
                                 reason="busybox-static is not installed")]

ADDR = "127.0.0.1:9323"
HOSTS = ("manager1", "worker1")
SCRAPE = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
          f"'http://{ADDR}/metrics', timeout=10).read().decode())")


@pytest.fixture(scope="module")
def lab():
    with busybox_lab("metr", managers=1, workers=1, daemon_args=["--metrics-addr", ADDR]) as lab:
        yield lab


def scrape(lab, host: str) -> dict[tuple[str, tuple], float]:
    res = lab.exec(host, [sys.executable, "-c", SCRAPE], check=True, timeout=30)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(res.stdout) for s in family.samples}


def get(found: dict, metric: str, /, **labels) -> float:
    return found.get((metric, tuple(sorted(labels.items()))), 0.0)


def series(found: dict, metric: str, **labels) -> list[float]:
    """The values of every series of `metric` whose labels include `labels`."""
    want = set(labels.items())
    return [v for (name, lbls), v in found.items() if name == metric and want <= set(lbls)]


def test_a_service_shows_in_node_manager_and_service_metrics(lab):
    lab.cli("manager1", "service", "create", "--detach", "--name", "web", "--replicas", "2",
            "busybox:1", "sh", "-c", "while true; do sleep 1; done", timeout=60)
    # The agents report running; the node metrics say what each agent knows.
    wait_until(lambda: sum(get(scrape(lab, h), "shoal_node_tasks", state="running")
                           for h in HOSTS) == 2, timeout=90, what="2 running tasks on the nodes")
    containers = {h: series(scrape(lab, h), "shoal_container_memory_usage_bytes", service="web")
                  for h in HOSTS}
    assert sum(len(v) for v in containers.values()) == 2, containers
    assert all(v > 0 for vs in containers.values() for v in vs), containers
    assert all(v > 0 for h in HOSTS
               for v in series(scrape(lab, h), "shoal_container_cpu_seconds_total",
                               service="web"))
    leader = wait_until(lambda: (m := scrape(lab, "manager1"))
                        and get(m, "shoal_service_running_tasks", service="web") == 2 and m,
                        timeout=30, what="the leader's service metrics: 2 running")
    assert get(leader, "shoal_manager_leader") == 1
    assert get(leader, "shoal_service_desired_tasks", service="web") == 2
    assert get(leader, "shoal_service_update_state", service="web", state="none") == 1
    assert get(leader, "shoal_raft_term") >= 1
    assert get(leader, "shoal_raft_leader_changes_total") >= 1
    assert get(leader, "shoal_store_objects", table="services") == 1
    assert get(leader, "shoal_scheduler_delay_seconds_count") >= 2
    assert get(leader, "shoal_dispatcher_sessions") == 2
    assert get(leader, "shoal_dispatcher_heartbeats_total") > 0
    # the routes used, by their pattern: the CLI's create, the worker's heartbeats on 2377
    assert get(leader, "shoal_api_request_duration_seconds_count", listener="local",
               method="POST", route="/services/create") >= 1
    assert get(leader, "shoal_api_request_duration_seconds_count", listener="cluster",
               method="POST", route="/dispatcher/heartbeat") >= 1
    # a worker exports no manager figures
    worker = scrape(lab, "worker1")
    assert not [k for k in worker if k[0].startswith(("shoal_raft_", "shoal_service_"))]


def test_raft_commit_index_and_latency_grow_with_a_write(lab):
    before = scrape(lab, "manager1")
    lab.cli("manager1", "node", "update", "--label-add", "metrics=1", "worker1")
    after = scrape(lab, "manager1")
    assert get(after, "shoal_raft_commit_index") > get(before, "shoal_raft_commit_index")
    assert (get(after, "shoal_raft_commit_latency_seconds_count")
            > get(before, "shoal_raft_commit_latency_seconds_count"))
    assert get(after, "shoal_raft_apply_lag_entries") == 0


def test_a_rejected_task_counts_in_the_last_5_minutes(lab):
    lab.cli("manager1", "service", "create", "--detach", "--name", "nowhere", "--replicas", "1",
            "--resolve-image", "never", "busybox:nothere", "sleep", "1000", timeout=60)
    try:
        leader = wait_until(
            lambda: (m := scrape(lab, "manager1"))
            and get(m, "shoal_service_tasks_rejected_5m", service="nowhere") >= 1 and m,
            timeout=90, what="a rejected task of 'nowhere' in the leader's metrics")
        assert get(leader, "shoal_service_running_tasks", service="nowhere") == 0
        assert get(leader, "shoal_service_desired_tasks", service="nowhere") == 1
        assert get(leader, "shoal_service_tasks_rejected_5m", service="web") == 0
        # the node that tried counted a failed pull (no registry is named in the reference)
        assert sum(get(scrape(lab, h), "shoal_image_pulls_total", result="failure")
                   for h in HOSTS) >= 1
    finally:
        lab.cli("manager1", "service", "rm", "nowhere", check=False)
