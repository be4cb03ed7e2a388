"""The Python `docker` SDK (docker-py, from PyPI) against shoal's Docker Engine API socket, in a
lab of 3 managers + 2 workers with real containers (issue 16, must-show 3): the swarm, nodes,
a service with the usual options created, scaled, updated, listed with its tasks and logs and
removed, secrets, configs and an overlay network. Every effect is checked through shoal's own
CLI, the published port through the routing mesh.

The SDK talks to a follower, so each write is forwarded to the leader."""
from __future__ import annotations

import sys
import textwrap

import pytest

from integration.helpers import busybox_lab, leader_of, wait_until
from integration.test_docker_cli import (  # noqa: F401 (docker_config: a fixture)
    docker as docker_cli, docker_config, pytestmark)

docker = pytest.importorskip("docker", reason="the docker SDK is a test extra: pip install "
                                              "'docker>=7'")
from docker.types import (ConfigReference, EndpointSpec, Resources,  # noqa: E402
                          RestartPolicy, SecretReference, ServiceMode, UpdateConfig)

SECOND = 1_000_000_000


@pytest.fixture(scope="module")
def lab():
    with busybox_lab("dsk", managers=3, workers=2, tags=["busybox:1", "busybox:2"]) as lab:
        yield lab


@pytest.fixture(scope="module")
def client(lab):
    """An SDK client on a follower's Docker socket."""
    leader = wait_until(lambda: leader_of(lab, "manager1"), what="a leader")
    follower = next(m for m in ("manager1", "manager2", "manager3") if m != leader)
    c = docker.DockerClient(base_url="unix://" + lab.host(follower).docker_socket, timeout=60)
    yield c
    c.close()


def shoal_services(lab) -> dict[str, dict]:
    return {s["spec"]["name"]: s for s in lab.cli_json("manager1", "service", "ls")}


def running(lab, service: str) -> list[dict]:
    return [t for t in lab.cli_json("manager1", "service", "ps", service)
            if t["desired_state"] == "running" and t["status"]["state"] == "running"]


def shoal_names(lab, kind: str) -> dict[str, dict]:
    return {o["spec"]["name"]: o for o in lab.cli_json("manager1", kind, "ls")}


def test_swarm_and_nodes(lab, client):
    swarm = client.swarm
    swarm.reload()
    assert swarm.attrs["ID"] and swarm.attrs["JoinTokens"]["Worker"].startswith("SHLTKN-")
    assert swarm.version == swarm.attrs["Version"]["Index"]
    shoal_nodes = {n["hostname"]: n for n in lab.cli_json("manager1", "node", "ls")}
    nodes = {n.attrs["Description"]["Hostname"]: n for n in client.nodes.list()}
    assert set(nodes) == set(shoal_nodes) == {"manager1", "manager2", "manager3", "worker1",
                                              "worker2"}
    for name, n in nodes.items():
        assert n.id == shoal_nodes[name]["id"]
    managers = {n.attrs["Description"]["Hostname"]
                for n in client.nodes.list(filters={"role": "manager"})}
    assert managers == {"manager1", "manager2", "manager3"}


def test_secrets_configs_and_networks(lab, client):
    secret = client.secrets.create(name="sdk-s", data=b"s3cret", labels={"a": "1"})
    assert shoal_names(lab, "secret")["sdk-s"]["id"] == secret.id
    assert client.secrets.get("sdk-s").id == secret.id
    assert "sdk-s" in {s.name for s in client.secrets.list()}
    # a secret's bytes never come back
    assert "Data" not in client.secrets.get(secret.id).attrs["Spec"]
    config = client.configs.create(name="sdk-c", data=b"k=v\n", labels={"b": "2"})
    assert shoal_names(lab, "config")["sdk-c"]["id"] == config.id
    assert client.configs.get(config.id).name == "sdk-c"
    assert "sdk-c" in {c.name for c in client.configs.list()}
    net = client.networks.create("sdk-net", driver="overlay", labels={"c": "3"})
    assert shoal_names(lab, "network")["sdk-net"]["id"] == net.id
    assert net.attrs["Driver"] == "overlay" and net.attrs["Scope"] == "swarm"
    assert "sdk-net" in {n.name for n in client.networks.list()}
    secret.remove()
    config.remove()
    net.remove()
    assert "sdk-s" not in shoal_names(lab, "secret")
    assert "sdk-c" not in shoal_names(lab, "config")
    assert "sdk-net" not in shoal_names(lab, "network")


FETCH = textwrap.dedent("""\
    import sys, urllib.request, urllib.error
    try:
        print("status", urllib.request.urlopen(sys.argv[1], timeout=3).status)
    except urllib.error.HTTPError as e:
        print("status", e.code)
    """)


def test_a_service_with_the_usual_options(lab, client, docker_config):
    secret = client.secrets.create(name="web-token", data=b"t0ken")
    config = client.configs.create(name="web-conf", data=b"a=1\n")
    net = client.networks.create("web-net", driver="overlay")
    svc = client.services.create(
        "busybox:1", ["sh", "-c", "echo sdk-hello; exec httpd -f -p 80 -h /etc"],
        name="sdkweb", mode=ServiceMode("replicated", replicas=2),
        endpoint_spec=EndpointSpec(ports={8081: 80}), env=["GREETING=hi"],
        labels={"team": "sdk"}, container_labels={"role": "web"}, networks=["web-net"],
        secrets=[SecretReference(secret.id, "web-token")],
        configs=[ConfigReference(config.id, "web-conf", filename="/etc/web.conf")],
        resources=Resources(cpu_limit=SECOND // 2, mem_limit=64 << 20,
                            mem_reservation=8 << 20),
        update_config=UpdateConfig(parallelism=1, delay=SECOND // 10),
        restart_policy=RestartPolicy(condition="on-failure", delay=SECOND, max_attempts=3),
        constraints=["node.role==worker"], stop_grace_period=SECOND)
    try:
        spec = shoal_services(lab)["sdkweb"]["spec"]
        assert spec["mode"]["replicas"] == 2 and spec["labels"] == {"team": "sdk"}
        c = spec["task_template"]["container"]
        assert c["image"] == "busybox:1" and c["env"] == ["GREETING=hi"]
        assert c["labels"] == {"role": "web"}
        assert [(s["secret_name"], s["target"]) for s in c["secrets"]] == \
            [("web-token", "/run/secrets/web-token")]
        assert [(r["config_name"], r["target"]) for r in c["configs"]] == \
            [("web-conf", "/etc/web.conf")]
        tt = spec["task_template"]
        assert [n["target"] for n in tt["networks"]] == [net.id]
        assert tt["resources"]["limits"] == {"nano_cpus": SECOND // 2, "memory_bytes": 64 << 20}
        assert tt["resources"]["reservations"]["memory_bytes"] == 8 << 20
        assert tt["restart_policy"]["condition"] == "on-failure"
        assert tt["restart_policy"]["max_attempts"] == 3
        assert tt["placement"]["constraints"] == ["node.role==worker"]
        assert spec["update_config"]["parallelism"] == 1
        assert spec["update_config"]["delay"] == pytest.approx(0.1)
        assert [(p["target_port"], p["published_port"]) for p in
                spec["endpoint_spec"]["ports"]] == [(80, 8081)]
        tasks = wait_until(lambda: len(running(lab, "sdkweb")) == 2 and running(lab, "sdkweb"),
                           timeout=90, what="sdkweb's 2 tasks running")
        assert {t["node_hostname"] for t in tasks} <= {"worker1", "worker2"}
        # the published port answers through the routing mesh, from a manager to a worker
        url = f"http://{lab.host('worker1').address}:8081/web.conf"
        wait_until(lambda: lab.exec("manager3", [sys.executable, "-c", FETCH, url])
                   .stdout.startswith("status "), timeout=30, what="httpd through the mesh")

        # the spec as the SDK sent it (insertDefaults=false, the default) and with defaults
        sent = client.api.inspect_service(svc.id)["Spec"]
        full = client.api.inspect_service(svc.id, insert_defaults=True)["Spec"]
        assert "Isolation" not in sent["TaskTemplate"]["ContainerSpec"]
        assert full["TaskTemplate"]["ContainerSpec"]["Isolation"] == "default"
        assert sent["TaskTemplate"]["ContainerSpec"]["Env"] == ["GREETING=hi"]

        svc.reload()
        svc.scale(4)
        assert shoal_services(lab)["sdkweb"]["spec"]["mode"]["replicas"] == 4
        wait_until(lambda: len(running(lab, "sdkweb")) == 4, timeout=90,
                   what="sdkweb scaled to 4")
        svc.reload()
        assert svc.attrs["Spec"]["Mode"] == {"Replicated": {"Replicas": 4}}
        # the scale kept everything else the SDK had sent
        assert svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"] == ["GREETING=hi"]
        assert svc.attrs["PreviousSpec"]["Mode"] == {"Replicated": {"Replicas": 2}}

        svc.update(image="busybox:2", force_update=True)
        spec = shoal_services(lab)["sdkweb"]["spec"]
        assert spec["task_template"]["container"]["image"] == "busybox:2"
        assert spec["task_template"]["force_update"] == 1
        assert spec["mode"]["replicas"] == 4
        assert spec["task_template"]["container"]["env"] == ["GREETING=hi"]
        wait_until(lambda: sorted(t["spec"]["container"]["image"]
                                  for t in running(lab, "sdkweb")) == ["busybox:2"] * 4,
                   timeout=180, what="the rolling update to busybox:2")

        # a change through shoal's own CLI shows in the Docker view
        lab.cli("manager1", "service", "scale", "sdkweb=3")
        svc.reload()
        assert svc.attrs["Spec"]["Mode"] == {"Replicated": {"Replicas": 3}}
        assert svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == "busybox:2"
        # the docker CLI's read-modify-write of it keeps what the SDK and shoal had set
        docker_cli(lab, "manager2", "service", "update", "--detach", "--label-add", "via=cli",
                   "sdkweb", cfg=docker_config)
        spec = shoal_services(lab)["sdkweb"]["spec"]
        assert spec["labels"] == {"team": "sdk", "via": "cli"}
        assert spec["mode"]["replicas"] == 3
        assert spec["task_template"]["container"]["env"] == ["GREETING=hi"]
        assert spec["task_template"]["container"]["image"] == "busybox:2"

        tasks = svc.tasks(filters={"desired-state": "running"})
        wait_until(lambda: len(svc.tasks(filters={"desired-state": "running"})) == 3,
                   timeout=60, what="3 tasks desired running")
        assert all(t["ServiceID"] == svc.id for t in tasks)

        def logged():
            out = b"".join(svc.logs(stdout=True, stderr=True))
            return b"sdk-hello" in out
        wait_until(logged, timeout=30, what="the service's log through the SDK")
        listed = {s.name: s for s in client.services.list(filters={"label": "team=sdk"})}
        assert set(listed) == {"sdkweb"}
    finally:
        svc.remove()
    assert "sdkweb" not in shoal_services(lab)
    wait_until(lambda: _removable(secret, config, net), timeout=30,
               what="the service's secret, config and network free to remove")
    assert "web-token" not in shoal_names(lab, "secret")


def _removable(secret, config, net) -> bool:
    for obj in (secret, config, net):
        try:
            obj.remove()
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError:   # still in use while the tasks stop
            return False
    return True
