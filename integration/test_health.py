"""Issue 5: health checks and health-gated rolling updates on real containers, in a lab of
3 managers + 3 workers.

Must show 5: a rolling update of 6 replicas, parallelism 2: stop-first never has fewer than 4
tasks running, start-first never fewer than 6, and each batch is healthy before the next
starts. Must show 6: an update to an image whose health check fails rolls back by itself with
`--update-failure-action rollback`, pauses with `pause`, and the status says why.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from integration.helpers import needs_root, unique_lab_name, wait_until
from shoal.lab.netlab import Lab
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(), reason="busybox-static is not installed")]

NS = 1_000_000_000
# Ready about 1 s after start; checked every 250 ms, so a new task is healthy ~1-1.5 s after it
# runs: long enough that starting the next batch on "running" alone would be caught.
SLOW_READY = ["sh", "-c", "sleep 1; touch /tmp/ready; exec sleep 100000"]
READY_CHECK = ["--health-cmd", "test -f /tmp/ready", "--health-interval", "250ms",
               "--health-retries", "20"]


@pytest.fixture(scope="module")
def lab():
    tmp = Path(tempfile.mkdtemp(prefix="shoal-health-"))
    lab = Lab(unique_lab_name("hc"))
    try:
        images = {
            "app:1": imagebuild.build_busybox_oci_layout(tmp / "v1", tag="1"),
            "app:2": imagebuild.build_busybox_oci_layout(tmp / "v2", tag="1", extra_files={"/VERSION": b"2\n"}),
            # HEALTHCHECK in the image: one that passes, one that always fails
            "app:checked": imagebuild.build_busybox_oci_layout(tmp / "ok", tag="1", config_overrides={
                "Healthcheck": {"Test": ["CMD-SHELL", "test -d /proc/1"], "Interval": NS // 4,
                                "Retries": 3}}),
            "app:sick": imagebuild.build_busybox_oci_layout(tmp / "sick", tag="1", extra_files={"/VERSION": b"sick\n"},
                                                            config_overrides={
                "Healthcheck": {"Test": ["CMD-SHELL", "echo database unreachable; exit 1"],
                                "Interval": NS // 4, "Retries": 2}}),
        }
        lab.up(managers=3, workers=3)
        lab.cli("manager1", "swarm", "update", "--dispatcher-heartbeat", "1s")
        for h in lab.hosts():
            for ref, layout in images.items():
                lab.cli(h.name, "image", "import", str(layout), ref, timeout=120)
        yield lab
    finally:
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)


def ps(lab, name: str) -> list[dict]:
    return lab.cli_json("manager1", "service", "ps", name)


def live(lab, name: str) -> list[dict]:
    return [t for t in ps(lab, name) if t["desired_state"] == "running"]


def healthy(lab, name: str) -> int:
    return sum(1 for t in live(lab, name)
               if t["status"]["state"] == "running" and t["status"]["health"] == "healthy")


def inspect(lab, name: str) -> dict:
    return json.loads(lab.cli("manager1", "service", "inspect", name).stdout)[0]


def test_image_healthcheck_shows_in_ps_and_inspect(lab):
    lab.cli("manager1", "service", "create", "--name", "checked", "--replicas", "2",
            "--stop-grace-period", "1s", "app:checked", "sleep", "100000", timeout=120)
    wait_until(lambda: healthy(lab, "checked") == 2, timeout=60, what="2 healthy tasks")
    table = lab.cli("manager1", "service", "ps", "checked").stdout
    assert table.count("Running (healthy)") == 2, table
    pretty = lab.cli("manager1", "service", "inspect", "--pretty", "checked").stdout
    assert "Healthcheck:    the image's, if any" in pretty
    assert "2 running (2 healthy) of 2 desired" in pretty
    # --no-healthcheck on an image whose check fails: no check runs, the tasks just run
    lab.cli("manager1", "service", "create", "--name", "unchecked", "--no-healthcheck",
            "--stop-grace-period", "1s", "app:sick", "sleep", "100000", timeout=120)
    time.sleep(2)  # the image's check (4 probes a second, 2 retries) would have failed it by now
    tasks = ps(lab, "unchecked")
    assert len(tasks) == 1 and tasks[0]["status"]["state"] == "running", tasks
    assert tasks[0]["status"]["health"] == ""
    assert inspect(lab, "unchecked")["spec"]["task_template"]["container"]["healthcheck"]["test"] == ["NONE"]
    lab.cli("manager1", "service", "rm", "checked", "unchecked")


def test_unhealthy_task_is_failed_and_replaced(lab):
    lab.cli("manager1", "service", "create", "--detach", "--name", "flaky", "--health-cmd", "exit 3",
            "--health-interval", "300ms", "--health-retries", "2", "--restart-delay", "0s",
            "--stop-grace-period", "1s", "app:1", "sleep", "100000")

    def failed_ones():
        return [t for t in ps(lab, "flaky") if t["status"]["state"] == "failed"]
    failed = wait_until(lambda: len(failed_ones()) >= 2 and failed_ones(), timeout=60,
                        what="unhealthy tasks failed and replaced")
    for t in failed:
        assert t["status"]["err"] == "task: unhealthy container", t["status"]
        assert t["status"]["health"] == "unhealthy"
        assert "2 failed health checks in a row (last: exit code 3" in t["status"]["message"]
    table = lab.cli("manager1", "service", "ps", "--no-trunc", "flaky").stdout
    assert '"task: unhealthy container"' in table
    # the restart policy keeps replacing them in the same slot
    assert {t["slot"] for t in ps(lab, "flaky")} == {1}
    lab.cli("manager1", "service", "rm", "flaky")


class Sampler:
    """Over and over while an update goes on: how many tasks run, and how many are healthy."""

    def __init__(self, lab, name: str) -> None:
        self.lab, self.name = lab, name
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                tasks = live(self.lab, self.name)
            except Exception:
                continue
            running = [t for t in tasks if t["status"]["state"] == "running"]
            self.samples.append((len(running), sum(1 for t in running
                                                   if t["status"]["health"] == "healthy")))

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("order,floor", [("stop-first", 4), ("start-first", 6)])
def test_rolling_update_waits_for_each_batch_to_be_healthy(lab, order, floor):
    """Must show 5."""
    name = f"gate{order[:5]}"
    lab.cli("manager1", "service", "create", "--name", name, "--replicas", "6", *READY_CHECK,
            "--stop-grace-period", "1s", "app:1", *SLOW_READY, timeout=180)
    wait_until(lambda: healthy(lab, name) == 6, timeout=60, what="6 healthy tasks")
    with Sampler(lab, name) as sampler:
        out = lab.cli("manager1", "service", "update", "--image", "app:2", "--update-parallelism", "2",
                      "--update-order", order, "--update-monitor", "500ms", name, timeout=300).stdout
    assert "completed" in out
    tasks = live(lab, name)
    assert {t["spec"]["container"]["image"] for t in tasks} == {"app:2"}
    assert len(tasks) == 6 and all(t["status"]["health"] == "healthy" for t in tasks)
    # Each sample is a CLI process: how many fit in the update is the machine's speed (4 under
    # load), so any is taken; the batch times below are the exact proof of the gating.
    assert sampler.samples, "no sample taken during the update"
    low_running = min(r for r, _ in sampler.samples)
    low_healthy = min(h for _, h in sampler.samples)
    assert low_running >= floor, f"{order}: dropped to {low_running} running tasks"
    assert low_healthy >= floor, f"{order}: dropped to {low_healthy} healthy tasks"
    # Batches: the tasks created together. A healthy task's last report is its turning healthy,
    # so status.timestamp says when; the next batch must be created after that.
    batches: dict[float, list[dict]] = {}
    for t in tasks:
        batches.setdefault(t["meta"]["created_at"], []).append(t)
    ordered = [batches[k] for k in sorted(batches)]
    assert [len(b) for b in ordered] == [2, 2, 2]
    for earlier, later in zip(ordered, ordered[1:]):
        healthy_at = max(t["status"]["timestamp"] for t in earlier)
        created = later[0]["meta"]["created_at"]
        assert created >= healthy_at, \
            f"{order}: a batch was created {healthy_at - created:.2f}s before the one before it was healthy"
        # ... and that takes the container's ~1 s to get ready: running alone was not enough
        assert created - earlier[0]["meta"]["created_at"] >= 1.0
    lab.cli("manager1", "service", "rm", name)


def test_update_to_an_unhealthy_image_rolls_back_by_itself(lab):
    """Must show 6, rollback."""
    lab.cli("manager1", "service", "create", "--name", "web", "--replicas", "4",
            "--stop-grace-period", "1s", "app:1", "sleep", "100000", timeout=180)
    r = lab.cli("manager1", "service", "update", "--image", "app:sick", "--update-parallelism", "1",
                "--update-failure-action", "rollback", "--update-monitor", "5s", "web", timeout=300,
                check=False)
    status = inspect(lab, "web")["update_status"]
    assert status["state"] == "rollback_completed", status
    assert "update rolled back due to failure or early termination of task" in status["message"]
    assert "unhealthy container" in status["message"]
    assert r.returncode == 0, r.stderr
    assert "rollback_completed" in r.stdout
    wait_until(lambda: {t["spec"]["container"]["image"] for t in live(lab, "web")} == {"app:1"}
               and sum(1 for t in live(lab, "web") if t["status"]["state"] == "running") == 4,
               timeout=60, what="4 tasks of app:1 running again")
    assert inspect(lab, "web")["spec"]["task_template"]["container"]["image"] == "app:1"


def test_update_to_an_unhealthy_image_pauses_and_says_why(lab):
    """Must show 6, pause."""
    r = lab.cli("manager1", "service", "update", "--image", "app:sick", "--update-parallelism", "1",
                "--update-failure-action", "pause", "--update-monitor", "5s", "web", timeout=300,
                check=False)
    assert r.returncode == 1
    assert "update paused due to failure or early termination of task" in r.stderr
    assert "unhealthy container" in r.stderr
    status = inspect(lab, "web")["update_status"]
    assert status["state"] == "paused" and "unhealthy container" in status["message"], status
    pretty = lab.cli("manager1", "service", "inspect", "--pretty", "web").stdout
    assert "Update Status:  paused: update paused due to failure or early termination of task" in pretty
    time.sleep(2)
    # paused: no further batch (the first slot keeps its restart policy; the others stay on app:1)
    images = [t["spec"]["container"]["image"] for t in live(lab, "web")]
    assert images.count("app:1") >= 3, images
    lab.cli("manager1", "service", "rm", "web")


def test_create_takes_update_and_rollback_policies(lab):
    lab.cli("manager1", "service", "create", "--detach", "--name", "policies", "--update-parallelism", "3",
            "--update-delay", "2s", "--update-order", "start-first", "--update-failure-action", "rollback",
            "--update-monitor", "7s", "--update-max-failure-ratio", "0.25", "--rollback-parallelism", "0",
            "--rollback-order", "start-first", "--rollback-failure-action", "continue",
            "--rollback-monitor", "1s", "--health-cmd", "true", "--health-interval", "2s",
            "--health-timeout", "1s", "--health-start-period", "3s", "--health-retries", "5",
            "app:1", "sleep", "100000")
    spec = inspect(lab, "policies")["spec"]
    assert spec["update_config"] == {"parallelism": 3, "delay": 2.0, "failure_action": "rollback",
                                     "monitor": 7.0, "max_failure_ratio": 0.25, "order": "start-first"}
    assert spec["rollback_config"]["parallelism"] == 0 and spec["rollback_config"]["order"] == "start-first"
    assert spec["rollback_config"]["failure_action"] == "continue"
    assert spec["task_template"]["container"]["healthcheck"] == {
        "test": ["CMD-SHELL", "true"], "interval": 2.0, "timeout": 1.0, "start_period": 3.0, "retries": 5}
    bad = lab.cli("manager1", "service", "create", "--name", "nope", "--rollback-failure-action", "rollback",
                  "app:1", check=False)
    assert bad.returncode == 2 and "--rollback-failure-action" in bad.stderr
    clash = lab.cli("manager1", "service", "update", "--no-healthcheck", "--health-interval", "1s",
                    "policies", check=False)
    assert clash.returncode == 2 and "--no-healthcheck" in clash.stderr and "--health-interval" in clash.stderr
    lab.cli("manager1", "service", "rm", "policies")
