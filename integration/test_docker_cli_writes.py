"""Writes with the unchanged docker CLI against shoal's Docker Engine API socket, in a lab of 3
managers + 2 workers with real containers: a service created with the CLI's progress display,
scaled, updated (rolling), rolled back and removed; secrets, configs and overlay networks; a
stack deployed from a Compose file, listed and removed. Every effect is checked through shoal's
own CLI, and the published port through the routing mesh.

The docker commands run on a follower, so each write is forwarded to the leader as shoal's own
socket forwards it.
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from integration.helpers import busybox_lab, leader_of, wait_until
from integration.test_docker_cli import (  # noqa: F401 (docker_config: a fixture)
    docker, docker_config, pytestmark, table)

@pytest.fixture(scope="module")
def lab():
    with busybox_lab("dkw", managers=3, workers=2, tags=["busybox:1", "busybox:2"]) as lab:
        yield lab


@pytest.fixture
def host(lab) -> str:
    """A manager that is not the leader: its writes go to the leader."""
    leader = wait_until(lambda: leader_of(lab, "manager1"), what="a leader")
    return next(m for m in ("manager1", "manager2", "manager3") if m != leader)


def services(lab) -> dict[str, dict]:
    return {s["spec"]["name"]: s for s in lab.cli_json("manager1", "service", "ls")}


def live_tasks(lab, service: str) -> list[dict]:
    return [t for t in lab.cli_json("manager1", "service", "ps", service)
            if t["desired_state"] == "running"]


def running_images(lab, service: str) -> list[str]:
    return sorted(t["spec"]["container"]["image"] for t in live_tasks(lab, service)
                  if t["status"]["state"] == "running")


def names(lab, kind: str) -> set[str]:
    return {o["spec"]["name"] for o in lab.cli_json("manager1", kind, "ls")}


def test_a_service_created_scaled_updated_rolled_back_and_removed(lab, docker_config, host):
    # A 1 s monitor instead of Docker's 5 s: the update and the rollback replace 5 tasks one
    # by one, and the monitor's length proves nothing here (test_updates.py gates on it).
    res = docker(lab, host, "service", "create", "--name", "web", "--replicas", "3",
                 "--update-monitor", "1s", "--rollback-monitor", "1s",
                 "-p", "8080:80", "busybox:1", "httpd", "-f", "-p", "80", "-h", "/etc",
                 cfg=docker_config, timeout=180)
    # the CLI's progress display saw the tasks run and the service converge
    assert "verify: Service converged" in res.stdout + res.stderr, res.stdout + res.stderr
    svc = services(lab)["web"]
    assert svc["spec"]["mode"]["replicas"] == 3
    assert svc["spec"]["task_template"]["container"]["args"] == \
        ["httpd", "-f", "-p", "80", "-h", "/etc"]
    assert running_images(lab, "web") == ["busybox:1"] * 3
    # the published port answers through the routing mesh, asked from another host
    fetch = textwrap.dedent("""\
        import urllib.request, urllib.error
        try:
            print("status", urllib.request.urlopen('http://172.31.0.101:8080/hostname',
                                                   timeout=3).status)
        except urllib.error.HTTPError as e:
            print("status", e.code)
        """)
    wait_until(lambda: lab.exec("manager3", [sys.executable, "-c", fetch]).stdout.startswith(
        "status "), timeout=30, what="httpd on the published port of worker1, from manager3")

    docker(lab, host, "service", "scale", "web=5", cfg=docker_config, timeout=180)
    assert services(lab)["web"]["spec"]["mode"]["replicas"] == 5
    assert running_images(lab, "web") == ["busybox:1"] * 5

    res = docker(lab, host, "service", "update", "--image", "busybox:2", "web",
                 cfg=docker_config, timeout=300)
    svc = services(lab)["web"]
    assert svc["spec"]["task_template"]["container"]["image"] == "busybox:2"
    assert svc["update_status"]["state"] == "completed"
    assert running_images(lab, "web") == ["busybox:2"] * 5
    # the old tasks were replaced, not changed: their history is kept, shut down
    assert any(t["spec"]["container"]["image"] == "busybox:1" and t["desired_state"] == "shutdown"
               for t in lab.cli_json("manager1", "service", "ps", "web"))

    docker(lab, host, "service", "rollback", "web", cfg=docker_config, timeout=300)
    svc = services(lab)["web"]
    assert svc["spec"]["task_template"]["container"]["image"] == "busybox:1"
    assert svc["update_status"]["state"] == "rollback_completed"
    assert running_images(lab, "web") == ["busybox:1"] * 5

    out = docker(lab, host, "service", "ls", cfg=docker_config).stdout
    assert [r[1] for r in table(out)] == ["web"]
    docker(lab, host, "service", "rm", "web", cfg=docker_config)
    assert "web" not in services(lab)
    res = docker(lab, host, "service", "inspect", "web", cfg=docker_config, check=False)
    assert res.returncode != 0 and "web" in res.stderr


def test_docker_service_logs_names_each_lines_task_and_node(lab, docker_config, host):
    docker(lab, host, "service", "create", "-d", "--name", "talk", "busybox:1", "sh", "-c",
           "echo hello-out; echo hello-err >&2; exec sleep 100000", cfg=docker_config)
    try:
        task = wait_until(lambda: next((t for t in live_tasks(lab, "talk")
                                        if t["status"]["state"] == "running"), None),
                          timeout=60, what="talk's task running")

        def logged():
            res = docker(lab, host, "service", "logs", "--no-trunc", "talk", cfg=docker_config)
            return res if "hello-out" in res.stdout and "hello-err" in res.stderr else None
        res = wait_until(logged, timeout=30, what="both lines in docker service logs")
        # the CLI names each line's task and node from the com.docker.swarm.* details
        out = [ln for ln in res.stdout.splitlines() if "hello-out" in ln][0]
        assert out.startswith(f"talk.1.{task['id']}@{task['node_hostname']}"), out
        assert out.rstrip().endswith("| hello-out"), out
    finally:
        docker(lab, host, "service", "rm", "talk", cfg=docker_config, check=False)


@pytest.mark.parametrize("kind", ["secret", "config"])
def test_secrets_and_configs_created_listed_and_removed(lab, docker_config, host, kind,
                                                       tmp_path):
    src = tmp_path / "value.txt"
    src.write_text("v4lue\n")
    obj_id = docker(lab, host, kind, "create", f"my{kind}", str(src),
                    cfg=docker_config).stdout.strip()
    listed = {o["spec"]["name"]: o for o in lab.cli_json("manager1", kind, "ls")}
    assert listed[f"my{kind}"]["id"] == obj_id
    res = docker(lab, host, kind, "create", f"my{kind}", str(src), cfg=docker_config,
                 check=False)
    assert res.returncode != 0 and "already exists" in res.stderr
    out = docker(lab, host, kind, "ls", cfg=docker_config).stdout
    assert any(f"my{kind}" in row for row in table(out)), out
    docker(lab, host, kind, "rm", f"my{kind}", cfg=docker_config)
    assert f"my{kind}" not in names(lab, kind)


def test_an_overlay_network_created_listed_and_removed(lab, docker_config, host):
    net_id = docker(lab, host, "network", "create", "-d", "overlay", "--attachable", "mynet",
                    cfg=docker_config).stdout.strip()
    nets = {n["spec"]["name"]: n for n in lab.cli_json("manager1", "network", "ls")}
    assert nets["mynet"]["id"] == net_id and nets["mynet"]["spec"]["attachable"] is True
    rows = table(docker(lab, host, "network", "ls", cfg=docker_config).stdout)
    assert ["mynet", "overlay", "swarm"] in [r[1:4] for r in rows], rows
    res = docker(lab, host, "network", "create", "plain", cfg=docker_config, check=False)
    assert res.returncode != 0 and "overlay" in res.stderr
    assert "plain" not in names(lab, "network")
    docker(lab, host, "network", "rm", "mynet", cfg=docker_config)
    assert "mynet" not in names(lab, "network")


COMPOSE = """\
version: "3.8"
services:
  front:
    image: busybox:1
    command: ["httpd", "-f", "-p", "80", "-h", "/etc"]
    networks: [appnet]
    secrets: [token]
    configs:
      - source: settings
        target: /etc/settings.conf
    stop_grace_period: 1s
    deploy:
      replicas: 2
  back:
    image: busybox:1
    command: ["sleep", "100000"]
    networks: [appnet]
    stop_grace_period: 1s
networks:
  appnet:
    driver: overlay
secrets:
  token:
    file: ./token.txt
configs:
  settings:
    file: ./settings.conf
"""


def test_a_stack_deployed_listed_and_removed(lab, docker_config, host, tmp_path):
    (tmp_path / "stack.yml").write_text(COMPOSE)
    (tmp_path / "token.txt").write_text("t0ken")
    (tmp_path / "settings.conf").write_text("a=1\n")
    res = docker(lab, host, "stack", "deploy", "-c", str(tmp_path / "stack.yml"), "st",
                 cfg=docker_config, timeout=120)
    assert "Creating service st_front" in res.stdout, res.stdout + res.stderr
    svcs = services(lab)
    assert {"st_front", "st_back"} <= set(svcs)
    for s in ("st_front", "st_back"):
        assert svcs[s]["spec"]["labels"]["com.docker.stack.namespace"] == "st"
    assert "st_appnet" in names(lab, "network")
    assert "st_token" in names(lab, "secret") and "st_settings" in names(lab, "config")
    front = svcs["st_front"]["spec"]
    assert front["mode"]["replicas"] == 2
    c = front["task_template"]["container"]
    assert [(r["secret_name"], r["target"]) for r in c["secrets"]] == \
        [("st_token", "/run/secrets/token")]
    assert [(r["config_name"], r["target"]) for r in c["configs"]] == \
        [("st_settings", "/etc/settings.conf")]
    wait_until(lambda: len(running_images(lab, "st_front")) == 2
               and len(running_images(lab, "st_back")) == 1, timeout=60,
               what="the stack's tasks running")

    rows = table(docker(lab, host, "stack", "ls", cfg=docker_config).stdout)
    assert ["st", "2", "Swarm"] in rows, rows
    rows = table(docker(lab, host, "stack", "services", "st", cfg=docker_config).stdout)
    assert sorted((r[1], r[3]) for r in rows) == [("st_back", "1/1"), ("st_front", "2/2")], rows
    rows = table(docker(lab, host, "stack", "ps", "st", cfg=docker_config).stdout)
    running = [r for r in rows if "Running" in " ".join(r)]
    assert sorted(r[1].rsplit(".", 1)[0] for r in running) == \
        ["st_back", "st_front", "st_front"], rows

    docker(lab, host, "stack", "rm", "st", cfg=docker_config, timeout=120)
    assert not {"st_front", "st_back"} & set(services(lab))
    assert "st_appnet" not in names(lab, "network")
    assert "st_token" not in names(lab, "secret") and "st_settings" not in names(lab, "config")
