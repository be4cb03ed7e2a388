"""The unchanged docker CLI against shoal's Docker Engine API socket, in a lab of 3 managers +
2 workers with real containers: version negotiation, info, nodes, a service's list, tasks and
inspect, and dockerd's refusal on a worker.

The CLI is Debian's docker.io binary, unpacked by scripts/setup.sh (no dockerd ever runs);
`shoal lab exec` points it at each host's socket through DOCKER_HOST.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile

import pytest

from integration.helpers import busybox_lab, needs_root, wait_until
from tests import imagebuild

DOCKER = os.environ.get("SHOAL_TEST_DOCKER", "/opt/shoal-test/docker-cli/usr/bin/docker")
IMAGE = "busybox:1"

pytestmark = [
    needs_root, pytest.mark.lab,
    pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
    pytest.mark.skipif(not imagebuild.busybox_available(),
                       reason="busybox-static is not installed"),
    pytest.mark.skipif(not os.access(DOCKER, os.X_OK),
                       reason=f"no docker CLI at {DOCKER}: run scripts/setup.sh"),
]


@pytest.fixture(scope="module")
def lab():
    with busybox_lab("dkr", managers=3, workers=2, tags=[IMAGE]) as lab:
        yield lab


@pytest.fixture(scope="module")
def docker_config():
    # The CLI's own config directory: never the root user's ~/.docker.
    d = tempfile.mkdtemp(prefix="shoal-docker-cfg-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def docker(lab, host: str, *args: str, cfg: str, check: bool = True,
           timeout: float = 30) -> subprocess.CompletedProcess:
    res = lab.exec(host, ["env", f"DOCKER_CONFIG={cfg}", DOCKER, *args], timeout=timeout)
    if check:
        assert res.returncode == 0, (f"docker {' '.join(args)} on {host} exited with "
                                     f"{res.returncode}: {res.stderr.strip() or res.stdout}")
    return res


def node_ids(lab) -> dict[str, str]:
    return {n["hostname"]: n["id"] for n in lab.cli_json("manager1", "node", "ls")}


def table(text: str) -> list[list[str]]:
    """A docker table's rows (header dropped), cells split on runs of 2+ spaces."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return [re.split(r"\s{2,}", ln.strip()) for ln in lines[1:]]


def test_each_host_has_a_root_only_docker_socket_and_lab_exec_points_docker_at_it(lab):
    hosts = lab.hosts()
    listed = json.loads(subprocess.run(
        [sys.executable, "-m", "shoal.cli", "lab", "ls", "--name", lab.name, "--format", "json"],
        capture_output=True, text=True, check=True).stdout)
    assert {h["name"]: h["docker_socket"] for h in listed} == \
        {h.name: h.docker_socket for h in hosts}
    for h in hosts:
        st = os.stat(h.docker_socket)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
        env = lab.exec(h.name, ["env"], check=True).stdout
        assert f"DOCKER_HOST=unix://{h.docker_socket}\n" in env


def test_head_ping_headers_over_the_raw_socket(lab):
    path = lab.host("manager2").docker_socket
    for request_path in ("/_ping", "/v1.41/_ping"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(f"HEAD {request_path} HTTP/1.1\r\nHost: docker\r\n"
                      "Connection: close\r\n\r\n".encode())
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        head = raw.decode("latin-1").split("\r\n")
        assert head[0].startswith("HTTP/1.1 200"), head[0]
        headers = {k.lower(): v for k, _, v in (ln.partition(": ") for ln in head[1:] if ln)}
        assert headers["api-version"] == "1.44"
        assert headers["ostype"] == "linux"
        assert headers["swarm"] == "active/manager"
        assert headers["docker-experimental"] == "false"
        assert headers["cache-control"] == "no-cache, no-store, must-revalidate"
        assert headers["pragma"] == "no-cache"
    worker = lab.host("worker1").docker_socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(worker)
        s.sendall(b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        raw = s.recv(65536).decode("latin-1")
    assert "Swarm: active/worker" in raw


def test_docker_version_negotiates_with_the_server(lab, docker_config):
    api = docker(lab, "manager1", "version", "--format", "{{.Server.APIVersion}}",
                 cfg=docker_config).stdout.strip()
    assert tuple(int(x) for x in api.split(".")) >= (1, 41)
    out = docker(lab, "manager1", "version", cfg=docker_config).stdout
    assert re.search(r"API version:\s+1\.44 \(minimum version 1\.24\)", out), out
    assert "Server:" in out and "OS/Arch:" in out


def test_docker_info_shows_the_swarm(lab, docker_config):
    ids = node_ids(lab)
    out = docker(lab, "manager1", "info", cfg=docker_config).stdout
    assert re.search(r"^ Swarm: active$", out, re.M), out
    assert re.search(r"^  Is Manager: true$", out, re.M), out
    assert re.search(rf"^  NodeID: {ids['manager1']}$", out, re.M), out
    assert re.search(r"^  Managers: 3$", out, re.M) and re.search(r"^  Nodes: 5$", out, re.M)
    sw = json.loads(docker(lab, "worker2", "info", "--format", "{{json .Swarm}}",
                           cfg=docker_config).stdout)
    assert (sw["NodeID"], sw["LocalNodeState"], sw["ControlAvailable"]) == \
        (ids["worker2"], "active", False)


def test_docker_node_ls_lists_every_node(lab, docker_config):
    ids = node_ids(lab)

    def listed():
        rows = table(docker(lab, "manager2", "node", "ls", cfg=docker_config).stdout)
        return rows if len(rows) == 5 and all(r[2] == "Ready" for r in rows) else None
    rows = wait_until(listed, timeout=30, what="5 ready nodes in `docker node ls`")
    by_host = {}
    for r in rows:
        nid, *rest = r
        self_mark = nid.endswith(" *")
        nid = nid.removesuffix(" *")
        by_host[rest[0]] = (nid, self_mark, rest[1:])
    assert set(by_host) == set(ids)
    for host, (nid, self_mark, cells) in by_host.items():
        assert nid == ids[host]
        assert self_mark == (host == "manager2")
        assert cells[0] == "Ready" and cells[1] == "Active"
    statuses = sorted(by_host[m][2][2] for m in ("manager1", "manager2", "manager3"))
    assert statuses == ["Leader", "Reachable", "Reachable"]
    for w in ("worker1", "worker2"):
        # no manager status: the engine version follows directly
        assert by_host[w][2][2] != "Reachable" and by_host[w][2][2] != "Leader"


def test_docker_node_inspect_self_and_pretty(lab, docker_config):
    ids = node_ids(lab)
    nodes = json.loads(docker(lab, "manager3", "node", "inspect", "self",
                              cfg=docker_config).stdout)
    assert len(nodes) == 1 and nodes[0]["ID"] == ids["manager3"]
    assert nodes[0]["Description"]["Hostname"] == "manager3"
    assert nodes[0]["Spec"]["Role"] == "manager"
    assert nodes[0]["ManagerStatus"]["Reachability"] == "reachable"
    pretty = docker(lab, "manager3", "node", "inspect", "--pretty", "self",
                    cfg=docker_config).stdout
    assert re.search(rf"^ID:\s+{ids['manager3']}$", pretty, re.M), pretty
    assert re.search(r"^Hostname:\s+manager3$", pretty, re.M), pretty
    assert re.search(r"^ State:\s+Ready$", pretty, re.M), pretty
    assert re.search(r"^Manager Status:$", pretty, re.M), pretty
    by_host = json.loads(docker(lab, "manager1", "node", "inspect", "worker1",
                                cfg=docker_config).stdout)
    assert by_host[0]["ID"] == ids["worker1"] and "ManagerStatus" not in by_host[0]


def test_a_service_through_docker_service_ls_ps_and_inspect(lab, docker_config):
    lab.cli("manager1", "service", "create", "-d", "--name", "web", "--replicas", "3", IMAGE,
            "sleep", "1000", timeout=60)

    def converged():
        rows = table(docker(lab, "manager3", "service", "ls", cfg=docker_config).stdout)
        return rows if rows and rows[0][1:4] == ["web", "replicated", "3/3"] else None
    rows = wait_until(converged, timeout=60, what="web at 3/3 in `docker service ls`")
    assert len(rows) == 1 and rows[0][4] == IMAGE

    # another manager's replica may be a moment behind the one that showed 3/3
    def all_running():
        rows = table(docker(lab, "manager2", "service", "ps", "web", cfg=docker_config).stdout)
        return rows if len(rows) == 3 and all(r[4] == "Running" and r[5].startswith("Running ")
                                               for r in rows) else None
    ps = wait_until(all_running, timeout=30, what="3 running tasks in manager2's `docker service ps`")
    hosts = {h.name for h in lab.hosts()}
    assert sorted(r[1] for r in ps) == ["web.1", "web.2", "web.3"], ps
    for r in ps:
        # ID, NAME, IMAGE, NODE, DESIRED STATE, CURRENT STATE
        assert r[2] == IMAGE and r[3] in hosts, r
        assert r[4] == "Running" and r[5].startswith("Running "), r

    inspected = json.loads(docker(lab, "manager1", "service", "inspect", "web",
                                  cfg=docker_config).stdout)
    assert len(inspected) == 1
    svc = inspected[0]
    assert svc["Spec"]["Name"] == "web"
    assert svc["Spec"]["Mode"] == {"Replicated": {"Replicas": 3}}
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == IMAGE
    assert svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"] == ["sleep", "1000"]
    assert isinstance(svc["Spec"]["UpdateConfig"]["Monitor"], int)
    # Go's RFC 3339 with nanoseconds: the docker CLI re-encodes the time it read, and Go drops
    # the fraction's trailing zeros (one time in ten the last digit is a zero)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", svc["CreatedAt"])
    by_id = json.loads(docker(lab, "manager1", "service", "inspect", svc["ID"][:6],
                              cfg=docker_config).stdout)
    assert by_id[0]["ID"] == svc["ID"]
    pretty = docker(lab, "manager1", "service", "inspect", "--pretty", "web",
                    cfg=docker_config).stdout
    assert re.search(rf"^ID:\s+{svc['ID']}$", pretty, re.M), pretty
    assert re.search(r"^Name:\s+web$", pretty, re.M), pretty
    assert re.search(r"^ Replicas:\s+3$", pretty, re.M), pretty
    assert re.search(rf"^ Image:\s+{re.escape(IMAGE)}$", pretty, re.M), pretty
    assert re.search(r"^ Args:\s+sleep 1000", pretty, re.M), pretty


def test_a_worker_answers_cluster_reads_as_dockerd_does(lab, docker_config):
    res = docker(lab, "worker1", "node", "ls", cfg=docker_config, check=False)
    # Docker's error shape: the CLI prints the message itself, not a JSON body.
    assert res.returncode != 0
    assert res.stderr.startswith("Error response from daemon: This node is not a swarm "
                                 "manager. Worker nodes can't be used to view or modify "
                                 "cluster state."), res.stderr
    res = docker(lab, "worker2", "service", "ls", cfg=docker_config, check=False)
    assert res.returncode != 0
    assert res.stderr.startswith("Error response from daemon: This node is not a swarm "
                                 "manager."), res.stderr
    res = docker(lab, "manager1", "service", "inspect", "nosuchservice", cfg=docker_config,
                 check=False)
    assert res.returncode != 0 and "no such service: nosuchservice" in res.stderr, res.stderr


def test_shoal_lab_exec_runs_docker_against_the_host(lab, docker_config):
    res = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "lab", "exec", "--name", lab.name, "manager1", "--",
         "env", f"DOCKER_CONFIG={docker_config}", DOCKER, "node", "ls", "--format",
         "{{.Hostname}} {{.Self}}"],
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "manager1 true" in res.stdout.splitlines()
