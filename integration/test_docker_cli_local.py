"""The node-local endpoints and the event stream of shoal's Docker Engine API, with the unchanged
docker CLI in a lab of 1 manager + 2 workers with real containers: `docker ps` (with -a and a
label filter), `docker inspect`, `docker images`, `docker image inspect` on each node; `docker
events` live while shoal's CLI creates and removes a service, and again from the history with
--since/--until; /distribution against Debian's docker-registry running inside the lab, and the
CLI's digest warning for an image only the nodes' stores hold.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from integration.helpers import busybox_lab, wait_until
from integration.test_docker_cli import (  # noqa: F401 (docker_config: a fixture)
    DOCKER, docker, docker_config, pytestmark)
from tests import imagebuild

IMAGE = "busybox:1"
REGISTRY_PORT = 5000


def _registry_host() -> str:
    from shoal.lab.naming import host_address
    return f"{host_address('manager', 1)}:{REGISTRY_PORT}"


@pytest.fixture(scope="module")
def lab():
    """busybox_lab with the registry on manager1 trusted over plain HTTP by every node."""
    with busybox_lab("dkl", managers=1, workers=2,
                     daemon_args=["--insecure-registry", _registry_host()]) as lab:
        yield lab


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def running_tasks(lab, service: str) -> list[dict]:
    return [t for t in lab.cli_json("manager1", "service", "ps", service)
            if t["desired_state"] == "running" and t["status"]["state"] == "running"]


def hostnames(lab) -> dict[str, str]:
    return {n["id"]: n["hostname"] for n in lab.cli_json("manager1", "node", "ls")}


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("docker", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def raw_get(lab, host: str, path: str) -> tuple[int, object]:
    conn = _UnixHTTP(lab.host(host).docker_socket)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def test_docker_ps_inspect_images_and_image_inspect_on_every_node(lab, docker_config):
    lab.cli("manager1", "service", "create", "-d", "--name", "web", "--replicas", "3",
            "--container-label", "tier=front", "-e", "GREETING=hi", IMAGE, "sleep", "1000",
            timeout=60)
    try:
        tasks = wait_until(lambda: (lambda t: t if len(t) == 3 else None)(
            running_tasks(lab, "web")), timeout=90, what="3 running tasks of web")
        names = hostnames(lab)
        by_host: dict[str, set[str]] = {}
        for t in tasks:
            by_host.setdefault(names[t["node_id"]], set()).add(
                f"web.{t['slot']}.{t['id']}")
        shoal_images = {i["ref"]: i["id"] for i in lab.cli_json("manager1", "image", "ls")}
        for host in ("manager1", "worker1", "worker2"):
            expected = by_host.get(host, set())
            listed = json_lines(docker(lab, host, "ps", "--no-trunc", "--format", "{{json .}}",
                                       cfg=docker_config).stdout)
            assert {c["Names"] for c in listed} == expected, (host, listed)
            for c in listed:
                assert c["Image"] == IMAGE and c["State"] == "running"
                assert c["Status"].startswith("Up"), c
                assert "com.docker.swarm.service.name=web" in c["Labels"]
                assert "tier=front" in c["Labels"]
            filtered = docker(lab, host, "ps", "-a", "--filter",
                              "label=com.docker.swarm.service.name=web", "--format",
                              "{{.Names}}", cfg=docker_config).stdout.split()
            assert set(filtered) == expected
            assert docker(lab, host, "ps", "-a", "--filter", "label=com.docker.swarm.service."
                          "name=nothing", "-q", cfg=docker_config).stdout.strip() == ""
            for name in expected:
                [inspected] = json.loads(docker(lab, host, "inspect", name,
                                                cfg=docker_config).stdout)
                task_id = name.rsplit(".", 1)[1]
                assert inspected["Id"] == task_id and inspected["Name"] == "/" + name
                assert inspected["State"]["Running"] and inspected["State"]["Pid"] > 0
                assert inspected["Config"]["Cmd"] == ["sleep", "1000"]
                assert "GREETING=hi" in inspected["Config"]["Env"]
                labels = inspected["Config"]["Labels"]
                assert labels["com.docker.swarm.task.id"] == task_id
                assert labels["com.docker.swarm.service.name"] == "web"
                assert labels["com.docker.swarm.node.id"] in names
                assert names[labels["com.docker.swarm.node.id"]] == host
                assert inspected["Image"] == shoal_images[IMAGE]
                # the same container by a unique id prefix
                [again] = json.loads(docker(lab, host, "inspect", "--type", "container",
                                            task_id[:10], cfg=docker_config).stdout)
                assert again["Id"] == task_id
            images = json_lines(docker(lab, host, "images", "--no-trunc", "--format",
                                       "{{json .}}", cfg=docker_config).stdout)
            assert [(i["Repository"], i["Tag"], i["ID"]) for i in images] == \
                [("busybox", "1", shoal_images[IMAGE])]
            [image] = json.loads(docker(lab, host, "image", "inspect", IMAGE,
                                        cfg=docker_config).stdout)
            assert image["Id"] == shoal_images[IMAGE] and image["RepoTags"] == [IMAGE]
            assert image["RootFS"]["Type"] == "layers" and image["RootFS"]["Layers"]
        res = docker(lab, "worker1", "inspect", "--type", "container", "nosuch",
                     cfg=docker_config, check=False)
        assert res.returncode != 0 and "No such container: nosuch" in res.stderr
    finally:
        lab.cli("manager1", "service", "rm", "web", check=False)


def test_docker_events_stream_a_service_created_and_removed_by_shoal(lab, docker_config):
    cmd, env = lab.command("manager1", ["env", f"DOCKER_CONFIG={docker_config}", DOCKER,
                                        "events", "--format", "{{json .}}"])
    out = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    started = time.time()
    try:
        time.sleep(1.5)  # the CLI connects; events before that would be history, not live
        assert proc.poll() is None, "docker events exited early"
        lab.cli("manager1", "service", "create", "-d", "--name", "ev", "--replicas", "1",
                IMAGE, "sleep", "1000", timeout=60)
        lab.cli("manager1", "service", "scale", "ev=2", timeout=60)
        lab.cli("manager1", "service", "rm", "ev", timeout=60)

        def seen() -> list[dict]:
            out.seek(0)
            events = [e for e in json_lines(out.read().decode())
                      if e.get("Actor", {}).get("Attributes", {}).get("name") == "ev"]
            actions = [e["Action"] for e in events]
            return events if "create" in actions and "remove" in actions else []
        events = wait_until(seen, timeout=20, what="the create and remove events of ev")
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
    create = next(e for e in events if e["Action"] == "create")
    assert create["Type"] == "service" and create["scope"] == "swarm"
    assert create["Actor"]["ID"] and create["time"] >= int(started) - 1
    update = [e for e in events if e["Action"] == "update"
              and e["Actor"]["Attributes"].get("replicas.new") == "2"]
    assert update and update[0]["Actor"]["Attributes"]["replicas.old"] == "1"
    assert [e["Action"] for e in events][-1] == "remove"
    # The same from the manager's history: --since/--until end at once. The CLI sends `until`
    # in whole seconds, so the last events must be a second old to fall inside it.
    time.sleep(1.1)
    res = docker(lab, "manager1", "events", "--since", f"{int(started) - 1}", "--until", "0s",
                 "--filter", "scope=swarm", "--filter", "type=service", "--format",
                 "{{json .}}", cfg=docker_config, timeout=20)
    past = [e for e in json_lines(res.stdout) if e["Actor"]["Attributes"].get("name") == "ev"]
    assert [e["Action"] for e in past][0] == "create" and past[-1]["Action"] == "remove", past
    assert all(e["Type"] == "service" for e in json_lines(res.stdout))
    res = docker(lab, "manager1", "events", "--since", "1m", "--until", "0s", "--filter",
                 "event=remove", "--format", "{{.Type}} {{.Action}} {{.Actor.ID}}",
                 cfg=docker_config, timeout=20)
    assert f"service remove {create['Actor']['ID']}" in res.stdout.splitlines()
    # A worker holds no swarm events: its stream is empty, and ends at --until.
    res = docker(lab, "worker1", "events", "--since", "1m", "--until", "0s", "--filter",
                 "scope=swarm", cfg=docker_config, timeout=20)
    assert res.stdout.strip() == ""
    bad = docker(lab, "manager1", "events", "--since", "1m", "--until", "0s", "--filter",
                 "colour=red", cfg=docker_config, check=False, timeout=20)
    assert bad.returncode != 0 and "colour" in bad.stderr


def test_distribution_against_a_registry_and_the_cli_warning_for_a_local_image(
        lab, docker_config, tmp_path):
    if not imagebuild.LocalRegistry.available():
        pytest.skip("Debian's docker-registry is not installed")
    registry = _registry_host()
    config = tmp_path / "registry.yml"
    config.write_text("version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
                      f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
                      f"http: {{addr: {registry}}}\n")
    cmd, env = lab.command("manager1", [imagebuild.REGISTRY_BIN, "serve", str(config)])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    push = ("import asyncio, sys; from pathlib import Path; from tests import imagebuild as ib; "
            f"print(asyncio.run(ib.push_layout('http://{registry}', Path(sys.argv[1]), "
            "'team/busybox', '1')))")
    try:
        pushed = wait_until(lambda: (lambda r: r.stdout.strip() if r.returncode == 0 else None)(
            lab.exec("manager1", [sys.executable, "-c", push, str(lab.layout)])),
            timeout=30, what="a push to the registry")
        info = imagebuild.layout_image(lab.layout, "1")
        assert pushed == info["manifest_digest"]
        for host in ("manager1", "worker2"):
            status, body = raw_get(lab, host, f"/v1.44/distribution/{registry}/team/busybox:1"
                                              "/json")
            assert status == 200, body
            assert body["Descriptor"]["digest"] == pushed
            assert body["Descriptor"]["size"] == imagebuild.manifest_size(lab.layout, "1")
            assert body["Platforms"] == [{"architecture": info["config"]["architecture"],
                                          "os": "linux"}]
        status, body = raw_get(lab, "worker1", f"/distribution/{registry}/team/busybox:9/json")
        assert status == 404 and "not found" in body["message"]
        status, body = raw_get(lab, "worker1", "/distribution/busybox:1/json")
        assert status == 404 and "no default registry" in body["message"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # The docker CLI asks /distribution before a service create: for an image only the nodes'
    # stores hold, it warns as with dockerd and keeps the reference as given.
    res = docker(lab, "manager1", "service", "create", "-d", "--name", "warned", IMAGE,
                 "sleep", "1000", cfg=docker_config, timeout=60)
    try:
        assert "could not be accessed on a registry to record" in res.stderr
        [svc] = [s for s in lab.cli_json("manager1", "service", "ls")
                 if s["spec"]["name"] == "warned"]
        assert svc["spec"]["task_template"]["container"]["image"] == IMAGE
    finally:
        lab.cli("manager1", "service", "rm", "warned", check=False)


def test_a_worker_answers_its_own_containers_and_the_rest_stays_501(lab, docker_config):
    status, body = raw_get(lab, "worker2", "/containers/json?all=1")
    assert status == 200 and isinstance(body, list)
    status, body = raw_get(lab, "worker2", "/containers/x/logs")
    assert status == 501 and "does not serve yet" in body["message"]
    assert os.path.exists(lab.host("worker2").docker_socket)
