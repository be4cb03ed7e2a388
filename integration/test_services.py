"""Issue 3, "Must show": services on real runc containers in a lab of 3 managers + 3 workers.

Images are built from Debian's busybox-static (tests/imagebuild.py) and imported on every host;
one test pulls from a real registry (Debian's docker-registry) running inside a lab host.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from integration.helpers import needs_root, node_table, unique_lab_name, wait_until
from shoal.lab.netlab import Lab, default_daemon_argv
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(), reason="busybox-static is not installed")]

WORKERS = ["worker1", "worker2", "worker3"]
MANAGERS = ["manager1", "manager2", "manager3"]
IMAGE = "busybox:1"


@pytest.fixture(scope="module")
def image_dir():
    d = Path(tempfile.mkdtemp(prefix="shoal-img-"))
    try:
        yield imagebuild.build_busybox_oci_layout(d / "busybox", tag="1")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def import_image(lab, host: str, layout: Path) -> None:
    lab.cli(host, "image", "import", str(layout), IMAGE, timeout=120)


@pytest.fixture(scope="module")
def lab(image_dir):
    # The registry test runs a plain-HTTP registry on manager1; the lab's hosts trust it.
    lab = Lab(unique_lab_name("svc"), daemon_argv=lambda **kw: default_daemon_argv(**kw) + [
        "--insecure-registry", "172.31.0.11:5000"])
    try:
        lab.up(managers=3, workers=3)
        lab.cli("manager1", "swarm", "update", "--dispatcher-heartbeat", "1s")
        for h in lab.hosts():
            import_image(lab, h.name, image_dir)
        yield lab
    finally:
        lab.down()


def tasks(lab, service: str, host: str = "manager1", desired: str | None = "running") -> list[dict]:
    items = lab.cli_json(host, "service", "ps", service)
    return [t for t in items if desired is None or t["desired_state"] == desired]


def running(lab, service: str) -> list[dict]:
    return [t for t in tasks(lab, service) if t["status"]["state"] == "running"]


def containers(lab, host: str) -> list[dict]:
    return lab.cli_json(host, "container", "ls")


def per_node(items: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in items:
        out[t["node_hostname"]] = out.get(t["node_hostname"], 0) + 1
    return out


def create(lab, *args: str, host: str = "manager1") -> None:
    lab.cli(host, "service", "create", "--detach", *args, timeout=60)


def rm(lab, name: str) -> None:
    lab.cli("manager1", "service", "rm", name)
    wait_until(lambda: not any(c["service"] == name for h in lab.hosts()
                               if h.state == "running" for c in containers(lab, h.name)),
               timeout=30, what=f"{name}'s containers gone")


# 1 -------------------------------------------------------------------------------------------
def test_replicas_run_as_runc_containers_spread_over_workers(lab):
    create(lab, "--name", "web", "--replicas", "6", "--constraint", "node.role==worker",
           IMAGE, "httpd", "-f", "-p", "80")
    live = wait_until(lambda: len(r := running(lab, "web")) == 6 and r, timeout=60, what="6 running")
    assert per_node(live) == {w: 2 for w in WORKERS}
    for w in WORKERS:
        mine = [c for c in containers(lab, w) if c["service"] == "web"]
        assert len(mine) == 2 and all(c["state"] == "running" and c["pid"] for c in mine)
        # They are real runc containers: runc lists them under this node's state root.
        state_root = Path(lab.host(w).data_root) / "executor" / "runc-state"
        out = subprocess.run(["runc", "--root", str(state_root), "list", "-q"], capture_output=True,
                             text=True, check=True).stdout.split()
        assert {c["id"] for c in mine} <= set(out)
    # exec into one, like docker exec
    one = containers(lab, "worker1")[0]
    r = lab.cli("worker1", "container", "exec", one["name"], "--", "cat", "/proc/1/cmdline")
    assert "httpd" in r.stdout


# 5 -------------------------------------------------------------------------------------------
def test_sigkilled_task_is_replaced_in_its_slot(lab):
    victim = running(lab, "web")[0]
    host = victim["node_hostname"]
    c = next(c for c in containers(lab, host) if c["id"] == victim["id"])
    os.kill(c["pid"], signal.SIGKILL)
    wait_until(lambda: any(t["id"] == victim["id"] and t["status"]["state"] == "failed"
                           for t in tasks(lab, "web", desired=None)), timeout=20, what="task failed")
    # The default restart delay is 5 s.
    replacement = wait_until(lambda: [t for t in running(lab, "web") if t["slot"] == victim["slot"]],
                             timeout=30, what="a replacement in the same slot")
    assert replacement[0]["id"] != victim["id"]
    assert len(running(lab, "web")) == 6


# 8 -------------------------------------------------------------------------------------------
def test_service_logs_from_every_replica(lab):
    create(lab, "--name", "talker", "--replicas", "3", IMAGE, "sh", "-c",
           'i=0; while true; do echo "hello from $(hostname) $i"; i=$((i+1)); sleep 0.5; done')
    wait_until(lambda: len(running(lab, "talker")) == 3, timeout=60, what="talkers running")
    ids = {t["id"][:12] for t in running(lab, "talker")}

    def seen():
        out = lab.cli("manager2", "service", "logs", "talker").stdout
        return {i for i in ids if f"hello from {i}" in out}
    wait_until(lambda: seen() == ids, timeout=20, what="lines from every replica")
    out = lab.cli("manager2", "service", "logs", "-t", "--tail", "1", "talker").stdout.strip().splitlines()
    assert len(out) == 3 and all("Z hello from" in line and "@" in line for line in out)
    # -f follows: new lines keep arriving.
    cmd, env = lab.command("manager3", ["shoal", "service", "logs", "-f", "--tail", "0", "talker"])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert "hello from" in first
    finally:
        proc.kill()
        proc.wait()
    rm(lab, "talker")


# 3 -------------------------------------------------------------------------------------------
def test_constraints_place_and_explain(lab):
    lab.cli("manager1", "node", "update", "--label-add", "zone=east", "worker3")
    create(lab, "--name", "east", "--replicas", "2", "--constraint", "node.labels.zone==east",
           IMAGE, "sleep", "1000")
    live = wait_until(lambda: len(r := running(lab, "east")) == 2 and r, timeout=60, what="east running")
    assert {t["node_hostname"] for t in live} == {"worker3"}
    create(lab, "--name", "nowhere", "--replicas", "2", "--constraint", "node.labels.zone==mars",
           IMAGE, "sleep", "1000")
    pending = wait_until(lambda: (t := tasks(lab, "nowhere")) and all(
        x["status"]["state"] == "pending" and "no suitable node" in x["status"]["message"] for x in t) and t,
        timeout=20, what="pending with a reason")
    table = lab.cli("manager1", "service", "ps", "nowhere").stdout
    assert "Pending" in table and "no suitable node" in table and "constraint" in table
    assert len(pending) == 2
    rm(lab, "east")
    rm(lab, "nowhere")


# 4 -------------------------------------------------------------------------------------------
def test_memory_limit_oom_kills_and_restart_policy(lab):
    hog = 'sleep 1; head -c 100000000 /dev/zero | tail > /dev/null'
    create(lab, "--name", "hog", "--limit-memory", "16m", "--restart-delay", "1s",
           "--constraint", "node.role==worker", IMAGE, "sh", "-c", hog)
    failed = wait_until(lambda: [t for t in tasks(lab, "hog", desired=None)
                                 if t["status"]["state"] == "failed"], timeout=40, what="an OOM kill")
    assert "OOM" in failed[0]["status"]["err"] or "memory" in failed[0]["status"]["err"].lower()
    # ...and the restart policy (any) brings a new task for the slot.
    wait_until(lambda: len(tasks(lab, "hog", desired=None)) >= 2, timeout=30, what="a restart")
    rm(lab, "hog")
    create(lab, "--name", "once", "--restart-condition", "none", IMAGE, "sh", "-c", "exit 3")
    wait_until(lambda: any(t["status"]["state"] == "failed" and t["status"]["exit_code"] == 3
                           for t in tasks(lab, "once", desired=None)), timeout=30, what="exit 3")
    time.sleep(7)  # longer than the default restart delay
    assert len(tasks(lab, "once", desired=None)) == 1
    rm(lab, "once")


# 7 -------------------------------------------------------------------------------------------
def test_drain_moves_every_task_off_the_node(lab):
    lab.cli("manager1", "node", "update", "--availability", "drain", "worker1")
    try:
        wait_until(lambda: len(r := running(lab, "web")) == 6 and "worker1" not in per_node(r),
                   timeout=40, what="web off worker1")
        wait_until(lambda: not [c for c in containers(lab, "worker1") if c["service"] == "web"],
                   timeout=20, what="worker1's containers stopped")
    finally:
        lab.cli("manager1", "node", "update", "--availability", "active", "worker1")


# 6 -------------------------------------------------------------------------------------------
def test_down_node_tasks_move_and_stale_containers_stop(lab):
    before = per_node(running(lab, "web"))
    victim = max(before, key=lambda n: before[n])
    lab.stop(victim)
    t0 = time.monotonic()
    wait_until(lambda: node_table(lab, "manager1")[victim]["status"] == "down", timeout=15,
               what=f"{victim} down")
    wait_until(lambda: len(r := running(lab, "web")) == 6 and victim not in per_node(r),
               timeout=30, interval=0.3, what="tasks rescheduled")
    elapsed = time.monotonic() - t0
    assert elapsed < 15, f"tasks took {elapsed:.1f}s to run elsewhere"
    # Its containers kept running while its daemon was away; back, it stops them.
    lab.start(victim)
    wait_until(lambda: node_table(lab, "manager1")[victim]["status"] == "ready", timeout=20,
               what=f"{victim} ready")
    wait_until(lambda: not [c for c in containers(lab, victim) if c["service"] == "web"],
               timeout=30, what="stale containers stopped")
    assert len(running(lab, "web")) == 6


# 2 -------------------------------------------------------------------------------------------
def test_global_mode_one_per_node_including_late_joiners(lab, image_dir):
    create(lab, "--name", "agentd", "--mode", "global", IMAGE, "sleep", "100000")
    nodes = len(node_table(lab, "manager1"))
    live = wait_until(lambda: len(r := running(lab, "agentd")) == nodes and r, timeout=60,
                      what="one per node")
    assert sorted(per_node(live).values()) == [1] * nodes
    late = lab.add_host("worker", join=False)
    import_image(lab, late, image_dir)
    token = lab.cli("manager1", "swarm", "join-token", "-q", "worker").stdout.strip()
    lab.cli(late, "swarm", "join", "--token", token, "172.31.0.11:2377")
    wait_until(lambda: late in per_node(running(lab, "agentd")), timeout=40, what="the late joiner's task")
    rm(lab, "agentd")


# 9 -------------------------------------------------------------------------------------------
REGISTRY_CONFIG = """
version: 0.1
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 172.31.0.11:5000
"""

PUSH = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from tests.imagebuild import push_layout
    asyncio.run(push_layout("http://172.31.0.11:5000", Path(sys.argv[1]), "busybox", "2"))
""")


def test_registry_pull_and_missing_image_is_rejected(lab, image_dir, tmp_path):
    registry = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not os.path.exists(registry):
        pytest.skip("Debian's docker-registry is not installed")
    config = tmp_path / "registry.yml"
    config.write_text(REGISTRY_CONFIG.format(root=tmp_path / "data"))
    cmd, env = lab.command("manager1", [registry, "serve", str(config)])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: lab.exec("manager1", [sys.executable, "-c", PUSH, str(image_dir)]).returncode == 0,
                   timeout=30, what="push to the registry")
        create(lab, "--name", "pulled", "--replicas", "2", "172.31.0.11:5000/busybox:2", "sleep", "1000")
        wait_until(lambda: len(running(lab, "pulled")) == 2, timeout=60, what="pulled image running")
        create(lab, "--name", "ghost", "172.31.0.11:5000/busybox:nope", "sleep", "1000")
        rejected = wait_until(lambda: [t for t in tasks(lab, "ghost", desired=None)
                                       if t["status"]["state"] == "rejected"], timeout=30,
                              what="a rejected task")
        assert "nope" in rejected[0]["status"]["err"] and "not found" in rejected[0]["status"]["err"]
        # Not a crash loop: retries back off.
        time.sleep(6)
        assert len(tasks(lab, "ghost", desired=None)) <= 3
        rm(lab, "ghost")
        rm(lab, "pulled")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_creating_a_service_of_an_image_that_exists_nowhere_ends_with_the_reason(lab):
    # Docker's progress display waits forever here; shoal's gives up once every slot has been
    # rejected for the same reason a few times in a row, and says why.
    started = time.monotonic()
    res = lab.cli("manager1", "service", "create", "--name", "nowhere", "--replicas", "2",
                  "busybox:nothere", "sleep", "1000", check=False, timeout=240)
    print(f"service create gave up after {time.monotonic() - started:.1f} s:\n{res.stdout}{res.stderr}")
    try:
        assert res.returncode != 0, res.stdout
        assert "service nowhere cannot start" in res.stderr, res.stderr
        assert "busybox:nothere not found on this node" in res.stderr, res.stderr
        assert "shoal service rm nowhere" in res.stderr
        # the reason was on screen while it waited, slot by slot
        assert "rejected" in res.stdout and "busybox:nothere" in res.stdout, res.stdout
    finally:
        lab.cli("manager1", "service", "rm", "nowhere", check=False)


# 10 ------------------------------------------------------------------------------------------
def test_scale_up_down_and_rm_leaves_nothing(lab):
    for count in (30, 0, 6):
        lab.cli("manager1", "service", "scale", f"web={count}", timeout=180)
        wait_until(lambda: len(running(lab, "web")) == count, timeout=90, what=f"{count} running")
        if count == 0:
            wait_until(lambda: not any(c["service"] == "web" for h in lab.hosts()
                                       for c in containers(lab, h.name)), timeout=30, what="none left")
    rm(lab, "web")
    for h in lab.hosts():
        root = Path(lab.host(h.name).data_root) / "executor"
        left = [p for p in (root / "containers").iterdir()] if (root / "containers").exists() else []
        assert left == [], f"{h.name} kept {left}"
        # Lab daemons share the machine's mount namespace, so only this host's own data root
        # counts: another lab on the machine (or one a killed run left) is not this test's.
        mounts = Path(f"/proc/{lab.host(h.name).pid}/mountinfo").read_text()
        assert f"{root}/containers/" not in mounts, f"{h.name} kept a container mount"
    assert lab.cli_json("manager1", "service", "ls") == []
