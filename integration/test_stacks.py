"""Stacks from Compose files, end to end, in a lab of 3 managers + 3 workers with real containers:
a file written for `docker stack deploy` deploys unchanged; a redeploy changes only what the
edit changed; `stack rollback` undoes it; depends_on holds a service until its dependency is
healthy; refused files leave nothing; `stack rm` leaves nothing on any host but named volumes.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

from integration.helpers import busybox_lab, needs_root, wait_until
from shoal.lab import processes
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(), reason="busybox-static is not installed")]

SECRET = "stack-secret-" + os.urandom(8).hex()

APP = """\
version: "3.8"
x-defaults: &defaults
  restart: on-failure
services:
  web:
    <<: *defaults
    image: busybox:1
    command: ["sh", "-c", "mkdir -p /www && echo web > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: ["${WEB_PORT:-8080}:80"]
    networks: [front]
    environment:
      GREETING: ${GREETING:-hello}
      FROM_SHELL: ${FROM_SHELL}
    deploy:
      replicas: 2
      update_config: {parallelism: 1, delay: 0s, order: start-first}
  api:
    image: busybox:1
    command: ["sh", "-c", "mkdir -p /www && echo api-answer > /www/index.html && exec httpd -f -p 8080 -h /www"]
    networks: [front, back]
    secrets: [db_password]
    configs: [{source: api_conf, target: /etc/api.conf}]
    healthcheck:
      test: ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/ >/dev/null"]
      interval: 1s
      retries: 3
    deploy:
      replicas: 2
      placement: {constraints: [node.role==worker]}
      resources: {limits: {memory: 64M, cpus: "0.5"}}
      update_config: {parallelism: 1, delay: 0s, monitor: 1s}
  db:
    image: busybox:1
    command: ["sh", "-c", "echo stored > /data/row && exec sleep 100000"]
    networks: [back]
    volumes: ["dbdata:/data"]
    healthcheck: {test: ["CMD", "test", "-f", "/data/row"], interval: 1s}
    deploy:
      placement: {constraints: [node.hostname==worker1]}
  agent:
    image: busybox:1
    command: ["sleep", "100000"]
    environment: ["NODE_ID={{.Node.ID}}"]
    deploy: {mode: global}
  extra:
    image: busybox:1
    command: ["sleep", "100000"]
networks:
  front: {}
  back: {}
volumes:
  dbdata: {}
secrets:
  db_password: {file: ./db_password.txt}
configs:
  api_conf: {content: "greeting=${GREETING:-hello}"}
"""


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="shoal-stack-"))
    (d / "db_password.txt").write_text(SECRET)
    (d / ".env").write_text("GREETING=hi-from-dotenv\n")
    (d / "app.yml").write_text(APP)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def lab():
    with busybox_lab("stk", managers=3, workers=3, tags=["busybox:1", "busybox:2"]) as lab:
        yield lab


def stack(lab, *args: str, check: bool = True, timeout: float = 180, env: dict | None = None):
    """`shoal stack ...` on manager1, with extra variables in its environment (the shell's)."""
    argv = ["shoal", "stack", *args]
    full, base = lab.command("manager1", argv)
    return processes.run("manager1", argv, full, {**base, **(env or {})}, check=check,
                         timeout=timeout, input=None)


def tasks_of(lab, name: str) -> list[dict]:
    return lab.cli_json("manager1", "stack", "ps", name)


def live(lab, name: str, service: str) -> list[dict]:
    return [t for t in tasks_of(lab, name) if t["service_name"] == service
            and t["desired_state"] == "running"]


def in_task(lab, task: dict, *argv: str) -> str:
    container = f"{task['service_name']}.{task['slot'] or task['node_id']}.{task['id']}"
    return lab.cli(task["node_hostname"], "container", "exec", container, "--", *argv).stdout


# ---- 1. a realistic file deploys unchanged ---------------------------------------------------
def test_a_docker_stack_file_deploys_and_converges(lab, workdir):
    res = stack(lab, "deploy", "-c", str(workdir / "app.yml"), "app",
                env={"FROM_SHELL": "shell-value"})
    assert "Stack app is running" in res.stdout, res.stdout + res.stderr
    services = {s["spec"]["name"]: s for s in lab.cli_json("manager1", "stack", "services", "app")}
    assert set(services) == {"app_web", "app_api", "app_db", "app_agent", "app_extra"}
    for s in services.values():
        assert s["spec"]["labels"]["com.docker.stack.namespace"] == "app"
    names = {n["spec"]["name"]: n for n in lab.cli_json("manager1", "network", "ls")}
    assert {"app_front", "app_back", "app_default"} <= set(names)
    assert names["app_front"]["spec"]["labels"]["com.docker.stack.namespace"] == "app"

    web = live(lab, "app", "app_web")
    assert len(web) == 2 and all(t["status"]["state"] == "running" for t in web)
    env = in_task(lab, web[0], "env")
    assert "GREETING=hi-from-dotenv" in env and "FROM_SHELL=shell-value" in env
    # web reaches api by the service's name in the file, through the overlay
    assert "api-answer" in in_task(lab, web[0], "wget", "-q", "-O-", "http://api:8080/")
    api = live(lab, "app", "app_api")
    assert {t["node_hostname"] for t in api} <= {"worker1", "worker2", "worker3"}
    assert in_task(lab, api[0], "cat", "/run/secrets/db_password") == SECRET
    assert in_task(lab, api[0], "cat", "/etc/api.conf") == "greeting=hi-from-dotenv"
    db = live(lab, "app", "app_db")
    assert [t["node_hostname"] for t in db] == ["worker1"]
    assert in_task(lab, db[0], "cat", "/data/row").strip() == "stored"
    # the published port answers through the routing mesh
    fetch = ("import urllib.request; print(urllib.request.urlopen("
             "'http://172.31.0.101:8080/', timeout=3).read().decode().strip())")
    wait_until(lambda: lab.exec("manager2", [sys.executable, "-c", fetch]).stdout.strip() == "web",
               timeout=20, what="web on the published port of worker1, from manager2")


# ---- a deploy the managers refuse midway is undone -----------------------------------------------
def test_a_deploy_refused_midway_leaves_nothing_behind(lab, workdir):
    """The port conflict is only found when the managers allocate it, after the stack's network
    and secret were created: the deploy removes them again."""
    (workdir / "clash.yml").write_text(
        "services:\n  first:\n    image: busybox:1\n    command: [sleep, '100000']\n"
        "    secrets: [s]\n  second:\n    image: busybox:1\n    command: [sleep, '100000']\n"
        "    ports: ['8080:80']\nsecrets:\n  s: {file: ./db_password.txt}\n")
    res = stack(lab, "deploy", "-c", str(workdir / "clash.yml"), "clash", check=False)
    assert res.returncode == 1 and "8080" in res.stderr and "already published" in res.stderr, \
        res.stdout + res.stderr
    assert "undoing" in res.stdout
    assert "clash" not in {s["name"] for s in lab.cli_json("manager1", "stack", "ls")}
    for kind in ("network", "secret", "service"):
        left = [o["spec"]["name"] for o in lab.cli_json("manager1", kind, "ls")
                if o["spec"]["name"].startswith("clash_")]
        assert not left, (kind, left)


# ---- 7. templates in a global service ---------------------------------------------------------
def test_a_global_service_sees_its_own_node_id(lab):
    nodes = {n["hostname"]: n["id"] for n in lab.cli_json("manager1", "node", "ls")}
    agents = live(lab, "app", "app_agent")
    assert {t["node_hostname"] for t in agents} == set(nodes)
    for t in agents:
        env = in_task(lab, t, "env")
        assert f"NODE_ID={nodes[t['node_hostname']]}" in env, (t["node_hostname"], env)


# ---- 2. a redeploy changes only what changed ---------------------------------------------------
def test_redeploy_changes_only_the_edited_services_and_prunes(lab, workdir):
    before = {t["id"]: t["service_name"] for t in tasks_of(lab, "app") if t["desired_state"] == "running"}
    edited = APP.replace("  api:\n    image: busybox:1", "  api:\n    image: busybox:2") \
        .replace("deploy:\n      replicas: 2\n      update_config: {parallelism: 1, delay: 0s, order: start-first}",
                 "deploy:\n      replicas: 3\n      update_config: {parallelism: 1, delay: 0s, order: start-first}")
    edited = edited[:edited.index("  extra:")] + edited[edited.index("networks:\n  front"):]
    assert edited.count("busybox:2") == 1 and "replicas: 3" in edited and "extra" not in edited
    (workdir / "app2.yml").write_text(edited)
    res = stack(lab, "deploy", "--prune", "-c", str(workdir / "app2.yml"), "app",
                env={"FROM_SHELL": "shell-value"})
    out = res.stdout
    assert "Updating service app_api" in out and "Updating service app_web" in out, out
    assert "Updating service app_db" not in out and "Updating service app_agent" not in out
    assert "Removing service app_extra" in out
    after = {t["id"]: t for t in tasks_of(lab, "app") if t["desired_state"] == "running"}
    # every task of db and agent kept its id; web kept its two and got a third
    for tid, svc in before.items():
        if svc in ("app_db", "app_agent", "app_web"):
            assert tid in after, f"{svc} task {tid} was replaced"
    assert len([t for t in after.values() if t["service_name"] == "app_web"]) == 3
    api = [t for t in after.values() if t["service_name"] == "app_api"]
    assert len(api) == 2 and all(t["spec"]["container"]["image"] == "busybox:2" for t in api)
    assert not any(t["id"] in before for t in api)
    svc = json.loads(lab.cli("manager1", "service", "inspect", "app_api").stdout)
    svc = svc[0] if isinstance(svc, list) else svc
    assert svc["update_status"]["state"] == "completed"
    assert "app_extra" not in {s["spec"]["name"] for s in lab.cli_json("manager1", "stack", "services", "app")}


# ---- 8. stack rollback --------------------------------------------------------------------------
def test_stack_rollback_returns_every_service_to_the_previous_deploy(lab):
    stack(lab, "rollback", "app")
    services = {s["spec"]["name"]: s for s in lab.cli_json("manager1", "stack", "services", "app")}
    assert services["app_api"]["spec"]["task_template"]["container"]["image"] == "busybox:1"
    assert services["app_web"]["spec"]["mode"]["replicas"] == 2
    wait_until(lambda: len(live(lab, "app", "app_web")) == 2 and
               all(t["spec"]["container"]["image"] == "busybox:1" for t in live(lab, "app", "app_api")),
               timeout=60, what="the rollback to converge")


# ---- 4. depends_on: service_healthy ---------------------------------------------------------------
DEPENDS = """\
services:
  db:
    image: busybox:1
    command: ["sh", "-c", "sleep 3 && touch /tmp/ready && exec sleep 100000"]
    healthcheck: {test: ["CMD", "test", "-f", "/tmp/ready"], interval: 1s, retries: 30}
  app:
    image: busybox:1
    command: ["sleep", "100000"]
    depends_on:
      db: {condition: service_healthy}
"""


def test_depends_on_holds_the_dependent_until_its_dependency_is_healthy(lab, workdir):
    (workdir / "dep.yml").write_text(DEPENDS)
    stack(lab, "deploy", "-d", "-c", str(workdir / "dep.yml"), "dep")
    samples = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ts = tasks_of(lab, "dep")
        db_healthy = any(t["service_name"] == "dep_db" and t["status"].get("health") == "healthy"
                         for t in ts)
        app_tasks = [t for t in ts if t["service_name"] == "dep_app"]
        samples.append((db_healthy, len(app_tasks)))
        if any(t["status"]["state"] == "running" for t in app_tasks):
            break
        time.sleep(0.2)
    assert samples and samples[-1][1] >= 1, samples
    first_app = next(i for i, (_, n) in enumerate(samples) if n)
    # before db was healthy no app task existed at all; and there were samples of that wait
    assert all(not n for healthy, n in samples if not healthy)
    assert first_app >= 3 and not samples[0][0], samples
    assert samples[first_app][0] or samples[first_app - 1][0]
    ps = stack(lab, "ps", "dep").stdout
    assert "dep_app" in ps
    stack(lab, "rm", "dep")


# ---- 5. refused files leave nothing -------------------------------------------------------------
def test_unsupported_keys_refuse_before_anything_exists(lab, workdir):
    bad = "services:\n  web:\n    image: busybox:1\n    command: [sleep, '1000']\n" \
          "    privileged: true\n    devices: ['/dev/fuse:/dev/fuse']\n" \
          "networks:\n  n: {}\nsecrets:\n  s: {file: ./db_password.txt}\n"
    (workdir / "bad.yml").write_text(bad)
    res = stack(lab, "deploy", "-c", str(workdir / "bad.yml"), "bad", check=False)
    assert res.returncode == 1
    assert "bad.yml:5:5: services.web.privileged" in res.stderr, res.stderr
    assert "bad.yml:6:5: services.web.devices" in res.stderr
    assert "nothing was deployed" in res.stderr
    assert "bad" not in {s["name"] for s in lab.cli_json("manager1", "stack", "ls")}
    assert not [n for n in lab.cli_json("manager1", "network", "ls") if n["spec"]["name"].startswith("bad_")]
    assert not [s for s in lab.cli_json("manager1", "secret", "ls") if s["spec"]["name"].startswith("bad_")]

    res = stack(lab, "deploy", "--allow-unsupported", "-c", str(workdir / "bad.yml"), "bad")
    assert "WARNING" in res.stderr and "services.web.privileged" in res.stderr
    assert "Stack bad is running" in res.stdout
    stack(lab, "rm", "bad")

    # what only the cluster can tell: an external secret that does not exist, a spec the
    # managers' own checks refuse; named with file and line, before anything is created
    (workdir / "ext.yml").write_text(
        "services:\n  web:\n    image: busybox:1\n    cap_add: [NOT_A_CAP]\n    secrets: [k]\n"
        "secrets:\n  k: {external: true}\n")
    res = stack(lab, "deploy", "-c", str(workdir / "ext.yml"), "ext", check=False)
    assert res.returncode == 1 and "nothing was changed" in res.stderr, res.stderr
    assert "ext.yml:7:3: secrets.k: external secret 'k' does not exist" in res.stderr, res.stderr
    assert "ext.yml:2:3: services.web: the managers would refuse it" in res.stderr
    assert "NOT_A_CAP" in res.stderr
    assert not [n for n in lab.cli_json("manager1", "network", "ls") if n["spec"]["name"].startswith("ext_")]

    (workdir / "broken.yml").write_text("services:\n  web:\n    image: [busybox\n")
    res = stack(lab, "deploy", "-c", str(workdir / "broken.yml"), "broken", check=False)
    assert res.returncode == 1 and "YAML syntax error" in res.stderr
    assert "broken.yml:4:1" in res.stderr or "broken.yml:3:" in res.stderr, res.stderr


# ---- 6. two files merge --------------------------------------------------------------------------
def test_two_files_merge_and_stack_config_prints_the_result(lab, workdir):
    (workdir / "base.yml").write_text(
        "services:\n  web:\n    image: busybox:1\n    ports: ['8081:80']\n"
        "    environment: {A: '1', B: '1'}\n    deploy: {replicas: 1}\n")
    (workdir / "override.yml").write_text(
        "services:\n  web:\n    image: busybox:2\n    ports: ['8082:81']\n"
        "    environment: {B: '2'}\n")
    res = stack(lab, "config", "-c", str(workdir / "base.yml"), "-c", str(workdir / "override.yml"))
    import yaml
    merged = yaml.safe_load(res.stdout)["services"]["web"]
    assert merged["image"] == "busybox:2"
    assert merged["environment"] == {"A": "1", "B": "2"}
    assert [p["published"] for p in merged["ports"]] == [8081, 8082]
    assert merged["deploy"] == {"replicas": 1}


# ---- 3. stack rm leaves nothing but named volumes ------------------------------------------------
def _leftovers(lab, host: str) -> list[str]:
    out = []
    data_root = Path(lab.host(host).data_root)
    netns_dir = data_root / "netns"
    if netns_dir.exists() and os.listdir(netns_dir):
        out.append(f"namespaces {os.listdir(netns_dir)}")
    containers = data_root / "executor" / "containers"
    if containers.exists() and os.listdir(containers):
        out.append(f"containers {os.listdir(containers)}")
    mounts = Path(f"/proc/{lab.host(host).pid}/mountinfo").read_text()
    for line in mounts.splitlines():
        if f"{data_root}/executor/containers/" in line or "/secrets/" in line and str(data_root) in line:
            out.append(f"mount {line.split()[4]}")
    tables = lab.exec(host, ["nft", "list", "tables"], check=True).stdout.strip()
    if tables:
        out.append(f"nft {tables}")
    return out


def test_stack_rm_removes_everything_but_named_volumes(lab):
    stack(lab, "rm", "app")
    assert "app" not in {s["name"] for s in lab.cli_json("manager1", "stack", "ls")}
    for kind in ("network", "secret", "config"):
        left = [o["spec"]["name"] for o in lab.cli_json("manager1", kind, "ls")
                if o["spec"]["name"].startswith("app_")]
        assert not left, (kind, left)
    hosts = [h.name for h in lab.hosts()]
    try:
        wait_until(lambda: all(not _leftovers(lab, h) for h in hosts), timeout=60,
                   what="nothing of the stack left on any host")
    except AssertionError:
        raise AssertionError("; ".join(f"{h}: {_leftovers(lab, h)}" for h in hosts)) from None
    volumes = lab.cli_json("worker1", "volume", "ls")
    names = [v.get("Name") or v.get("name") for v in volumes]
    assert "app_dbdata" in names, volumes
    lab.cli("worker1", "volume", "rm", "app_dbdata")
    assert "app_dbdata" not in [v.get("Name") or v.get("name") for v in lab.cli_json("worker1", "volume", "ls")]
    assert json.dumps(lab.cli_json("manager1", "stack", "ls")) == "[]"
