"""Issue 4, "Must show": overlay networks, service discovery, VIPs and the routing mesh in a lab of
3 managers + 3 workers (real shoald processes in network-namespace hosts, runc containers).

Servers are busybox httpd serving /etc (so /hostname names the task); UDP is answered by the
host's python3 bind-mounted into a busybox container (busybox has no UDP server applet).
Clients run in the lab hosts' namespaces (node to node over the underlay) or inside task
containers (busybox nc / nslookup over the overlay).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from integration.helpers import needs_root, unique_lab_name, wait_until
from shoal.lab.netlab import Lab
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(),
                                 reason="busybox-static is not installed")]

IMAGE = "busybox:1"
WORKERS = ["worker1", "worker2", "worker3"]
HOSTS = ["manager1", "manager2", "manager3", *WORKERS]
ADDR = {"manager1": "172.31.0.11", "manager2": "172.31.0.12", "manager3": "172.31.0.13",
        "worker1": "172.31.0.101", "worker2": "172.31.0.102", "worker3": "172.31.0.103"}
HTTPD = ["httpd", "-f", "-p", "80", "-h", "/etc"]
HOST_PYTHON = ["--mount", "type=bind,source=/usr,target=/usr,readonly",
               "--mount", "type=bind,source=/lib,target=/lib,readonly",
               "--mount", "type=bind,source=/lib64,target=/lib64,readonly"]
UDP_SERVER = ("import socket,os; s=socket.socket(2,2); s.bind(('0.0.0.0',53)); "
              "[s.sendto(os.uname().nodename.encode(),a) for d,a in iter(lambda: s.recvfrom(99),None)]")

# Many short requests from a lab host; prints {"answers": {task: n}, "failures": n}.
CLIENT = r"""
import collections, json, socket, sys
ip, port, n, proto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
answers, failures = collections.Counter(), 0
for _ in range(n):
    try:
        if proto == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
            s.sendto(b"?", (ip, port)); data = s.recvfrom(200)[0]
        else:
            s = socket.create_connection((ip, port), timeout=3)
            s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n"); data = b""
            while chunk := s.recv(4096):
                data += chunk
            data = data.rsplit(b"\r\n\r\n", 1)[-1]
        s.close()
        answers[data.decode().strip()] += 1
    except OSError:
        failures += 1
print(json.dumps({"answers": answers, "failures": failures}))
"""


@pytest.fixture(scope="module")
def image_dir():
    d = Path(tempfile.mkdtemp(prefix="shoal-img-"))
    try:
        yield imagebuild.build_busybox_oci_layout(d / "busybox", tag="1")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(image_dir):
    lab = Lab(unique_lab_name("net"))
    try:
        lab.up(managers=3, workers=3)
        lab.cli("manager1", "swarm", "update", "--dispatcher-heartbeat", "1s")
        for h in HOSTS:
            lab.cli(h, "image", "import", str(image_dir), IMAGE, timeout=120)
        yield lab
    finally:
        lab.down()


# ---- helpers -------------------------------------------------------------------------------

def create(lab, name: str, *args: str) -> None:
    lab.cli("manager1", "service", "create", "-d", "--name", name, *args, timeout=60)


def running(lab, service: str) -> list[dict]:
    return [t for t in lab.cli_json("manager1", "service", "ps", service)
            if t["desired_state"] == "running" and t["status"]["state"] == "running"]


def wait_running(lab, service: str, n: int, timeout: float = 60) -> list[dict]:
    return wait_until(lambda: (lambda ts: ts if len(ts) == n else None)(running(lab, service)),
                      timeout=timeout, what=f"{n} running tasks of {service}")


def in_task(lab, task: dict, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
    return lab.cli(task["node_hostname"], "container", "exec", task["id"], "--", *cmd,
                   check=check, timeout=30)


def http_via_nc(lab, client: dict, target: str) -> str:
    """The body of GET /hostname from inside a task, through busybox nc ('' when refused)."""
    res = in_task(lab, client, "sh", "-c",
                  f"printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc {target} 80")
    return res.stdout.rsplit("\r\n\r\n", 1)[-1].strip() if res.returncode == 0 else ""


def hit(lab, host: str, ip: str, port: int, n: int, proto: str = "tcp") -> dict:
    res = lab.exec(host, [sys.executable, "-c", CLIENT, ip, str(port), str(n), proto],
                   check=True, timeout=120)
    return json.loads(res.stdout)


def short_ids(tasks: list[dict]) -> set[str]:
    return {t["id"][:12] for t in tasks}


def task_ip(task: dict, network_id: str) -> str:
    return next(a["address"].split("/")[0] for a in task["networks"] if a["network_id"] == network_id)


# ---- 1. discovery and isolation ------------------------------------------------------------

def test_services_find_each_other_by_name_across_hosts_and_networks_isolate(lab):
    lab.cli("manager1", "network", "create", "appnet")
    lab.cli("manager1", "network", "create", "othernet")
    appnet = lab.cli_json("manager1", "network", "ls")
    appnet_id = next(n["id"] for n in appnet if n["spec"]["name"] == "appnet")
    create(lab, "api", "--network", "appnet", "--replicas", "2",
           "--constraint", "node.hostname==worker1", IMAGE, *HTTPD)
    create(lab, "front", "--network", "appnet", "--constraint", "node.hostname==worker2",
           IMAGE, "sleep", "100000")
    create(lab, "outsider", "--network", "othernet", "--constraint", "node.hostname==worker3",
           IMAGE, "sleep", "100000")
    api = wait_running(lab, "api", 2)
    front = wait_running(lab, "front", 1)[0]
    outsider = wait_running(lab, "outsider", 1)[0]
    assert {t["node_hostname"] for t in api} == {"worker1"} and front["node_hostname"] == "worker2"

    # by name: the VIP, balanced over both tasks
    inspected = json.loads(lab.cli("manager1", "service", "inspect", "api").stdout)
    inspected = inspected[0] if isinstance(inspected, list) else inspected
    vip = inspected["endpoint"]["virtual_ips"][0]
    look = in_task(lab, front, "nslookup", "api", check=True).stdout
    assert vip["addr"].split("/")[0] in look, look
    seen = wait_until(lambda: {http_via_nc(lab, front, "api") for _ in range(8)} >= short_ids(api),
                      timeout=30, what="both api tasks answering through the VIP")
    assert seen
    # tasks.NAME: every task's address
    look = in_task(lab, front, "nslookup", "tasks.api", check=True).stdout
    for t in api:
        assert task_ip(t, appnet_id) in look, look
    assert http_via_nc(lab, front, task_ip(api[0], appnet_id)) == api[0]["id"][:12]

    # another network: neither the name nor the address reaches it
    assert in_task(lab, outsider, "nslookup", "api").returncode != 0
    assert http_via_nc(lab, outsider, task_ip(api[0], appnet_id)) == ""
    assert http_via_nc(lab, outsider, vip["addr"].split("/")[0]) == ""


# ---- attachable networks: standalone containers ---------------------------------------------

def test_standalone_containers_join_attachable_networks_only(lab, tmp_path):
    res = lab.cli("worker3", "container", "run", "-d", "--network", "appnet", IMAGE, "sleep", "1000",
                  check=False)
    assert res.returncode != 0 and "'appnet' is not attachable" in res.stderr, res.stderr
    assert "shoal network create --attachable" in res.stderr
    lab.cli("manager1", "network", "create", "--attachable", "shared")
    create(lab, "echo", "--network", "shared", "--constraint", "node.hostname==worker1",
           IMAGE, *HTTPD)
    echo = wait_running(lab, "echo", 1)[0]

    lab.cli("worker3", "container", "run", "-d", "--name", "probe", "--network", "shared",
            "--mount", "type=tmpfs,target=/scratch", "-w", "/scratch", IMAGE, "sleep", "100000")
    probe = {"node_hostname": "worker3", "id": "probe"}
    assert in_task(lab, probe, "sh", "-c", "pwd; grep ' /scratch tmpfs ' /proc/mounts",
                   check=True).stdout.startswith("/scratch\ntmpfs /scratch tmpfs"), "mount or workdir"
    # the service by name, across hosts, from the standalone container
    wait_until(lambda: http_via_nc(lab, probe, "echo") == echo["id"][:12], timeout=30,
               what="the standalone container reaching the service by name")
    rows = lab.cli("manager1", "node", "ps", "worker3").stdout.splitlines()
    assert [r for r in rows if r.split()[1:3] == ["probe", IMAGE]], rows
    net = json.loads(lab.cli("manager1", "network", "inspect", "shared").stdout)[0]
    assert [(c["name"], c["node"]) for c in net["containers"]] == [("probe", "worker3")]
    # ... and the service's task reaches the container by its name (as on Docker's attachable
    # networks) and its address
    addr = net["containers"][0]["address"].split("/")[0]
    look = wait_until(lambda: (lambda r: r.stdout if r.returncode == 0 else None)(
        in_task(lab, echo, "nslookup", "probe")), timeout=20, what="the container's name resolving")
    assert addr in look, look
    assert in_task(lab, echo, "ping", "-c", "1", "-W", "3", addr).returncode == 0
    seen = json.loads(lab.cli("worker3", "container", "inspect", "probe").stdout)[0]
    assert (seen["name"], seen["state"], seen["exit"]) == ("probe", "running", None), seen
    assert (seen["config"]["workdir"], seen["config"]["args"]) == ("/scratch", ["sleep", "100000"])
    assert [(n["network"], n["address"]) for n in seen["networks"]] == \
        [("shared", net["containers"][0]["address"])], seen["networks"]
    assert seen["task"]["state"] == "running" and seen["task"]["desired_state"] == "running"
    # in the foreground (as `docker run`): its output, then its exit code; --rm leaves nothing
    res = lab.cli("worker3", "container", "run", "--rm", "--name", "once", "--network", "shared",
                  IMAGE, "sh", "-c", "nslookup echo >/dev/null && echo found echo; echo oops >&2; "
                  "exit 3", check=False)
    assert (res.returncode, res.stdout, res.stderr) == (3, "found echo\n", "oops\n"), res
    assert not [c for c in lab.cli_json("worker3", "container", "ls", "--all") if c["name"] == "once"]
    # limits reach its cgroup, as `docker run --memory --cpus --pids-limit`
    res = lab.cli("worker3", "container", "run", "--rm", "--memory", "64m", "--cpus", "0.5",
                  "--pids-limit", "32", IMAGE, "sh", "-c",
                  "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; "
                  "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || "
                  "cat /sys/fs/cgroup/memory.max; "
                  "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || "
                  "cat /sys/fs/cgroup/cpu.max")
    assert res.stdout.splitlines()[:2] == ["32", str(64 << 20)], res.stdout
    assert res.stdout.splitlines()[2] in ("50000", "50000 100000"), res.stdout
    res = lab.cli("worker3", "container", "run", "--rm", "--memory", "1k", IMAGE, "true",
                  check=False)
    assert res.returncode != 0 and "resources.limits.memory_bytes" in res.stderr \
        and "at least 4m" in res.stderr, res.stderr
    res = lab.cli("worker3", "container", "run", "-d", "--rm", "--name", "brief", IMAGE, "true")
    wait_until(lambda: not [c for c in lab.cli_json("worker3", "container", "ls", "--all")
                            if c["name"] == "brief"], timeout=20, what="-d --rm removing it")
    # --restart, as Docker's: its node runs the same container again (its name, address,
    # writable layer and log) until the policy says no more
    lab.cli("worker3", "container", "run", "-d", "--name", "flaky", "--network", "shared",
            "--restart", "on-failure:2", IMAGE, "sh", "-c",
            "echo run $(echo x >> /runs; wc -l < /runs) $(ip -o -4 addr show eth0 | "
            "awk '{print $4}'); exit 3")

    def inspect(name: str) -> dict:
        return json.loads(lab.cli("worker3", "container", "inspect", name).stdout)[0]
    flaky = wait_until(lambda: (lambda c: c if c["task"]["state"] == "failed" else None)(
        inspect("flaky")), timeout=30, what="flaky failing for good after 2 restarts")
    assert flaky["restart_count"] == 2 and flaky["exit"]["exit_code"] == 3, flaky
    assert flaky["task"]["restart_policy"] == "on-failure:2", flaky["task"]
    address = flaky["networks"][0]["address"]
    runs = lab.cli("worker3", "container", "logs", "flaky").stdout.splitlines()
    assert runs == [f"run {n} {address}" for n in (1, 2, 3)], (runs, address)
    lab.cli("worker3", "container", "rm", "flaky")
    # in the foreground the first exit ends the run, as `docker run --restart`; the node
    # restarts the container behind it
    res = lab.cli("worker3", "container", "run", "--name", "twice", "--restart", "on-failure:1",
                  IMAGE, "sh", "-c", "echo hi; exit 4", check=False)
    assert (res.returncode, res.stdout) == (4, "hi\n"), res
    wait_until(lambda: inspect("twice")["restart_count"] == 1
               and inspect("twice")["task"]["state"] == "failed", timeout=30,
               what="twice restarted once, then failed")
    lab.cli("worker3", "container", "rm", "twice")
    # always: any exit restarts it; `container stop` ends that for good
    lab.cli("worker3", "container", "run", "-d", "--name", "phoenix", "--restart", "always",
            IMAGE, "sh", "-c", "sleep 0.5")
    wait_until(lambda: inspect("phoenix")["restart_count"] >= 2, timeout=30,
               what="phoenix restarted twice")
    # between runs `container ls` lists it as restarting (its backoff grows: soon caught)
    wait_until(lambda: [c["state"] for c in lab.cli_json("worker3", "container", "ls")
                        if c["name"] == "phoenix"] == ["restarting"], timeout=30,
               what="phoenix listed as restarting")
    lab.cli("worker3", "container", "stop", "phoenix")
    stopped = inspect("phoenix")
    time.sleep(2)
    assert inspect("phoenix")["restart_count"] == stopped["restart_count"]
    assert (stopped["state"], stopped["task"]["state"]) == ("stopped", "shutdown"), stopped
    lab.cli("worker3", "container", "rm", "phoenix")
    # its daemon restarts: the container keeps running and is adopted, addressed as before.
    # One that exits meanwhile is restarted by its policy once the daemon is back.
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    lab.cli("worker3", "container", "run", "-d", "--name", "latecomer", "--restart",
            "on-failure:1", "--mount", f"type=bind,source={ctl},target=/ctl", IMAGE, "sh", "-c",
            "echo up; while [ ! -e /ctl/go ]; do sleep 0.1; done; exit 5")
    lab.kill("worker3")
    (ctl / "go").touch()
    time.sleep(1)  # it exits while no daemon watches it
    lab.start("worker3")
    late = wait_until(lambda: (lambda c: c if c["task"]["state"] == "failed" else None)(
        inspect("latecomer")), timeout=30, what="latecomer restarted once, then failed")
    assert (late["restart_count"], late["exit"]["exit_code"]) == (1, 5), late
    assert lab.cli("worker3", "container", "logs", "latecomer").stdout == "up\nup\n"
    lab.cli("worker3", "container", "rm", "latecomer")
    wait_until(lambda: http_via_nc(lab, probe, "echo") == echo["id"][:12], timeout=30,
               what="the adopted container reaching the service by name again")
    assert in_task(lab, echo, "ping", "-c", "1", "-W", "3", addr).returncode == 0
    # a manager's own daemon runs one too (its agent asks the leader, wherever it is)
    lab.cli("manager2", "container", "run", "-d", "--name", "probe", "--network", "shared",
            IMAGE, "sleep", "100000")
    wait_until(lambda: http_via_nc(lab, {"node_hostname": "manager2", "id": "probe"}, "echo")
               == echo["id"][:12], timeout=30, what="the manager's container reaching the service")

    # -p binds a port of its own node only (no network needed), as `docker run -p`. This runs
    # before any service publishes a port in ingress mode, which would turn forwarding on.
    lab.cli("worker2", "container", "run", "-d", "--name", "web", "-p", "9200:80", IMAGE, *HTTPD)
    r = wait_until(lambda: (lambda r: r if r["answers"] else None)(
        hit(lab, "manager1", ADDR["worker2"], 9200, 3)), timeout=20, what="worker2:9200")
    assert r["failures"] == 0, r
    assert hit(lab, "manager1", ADDR["worker1"], 9200, 2)["failures"] == 2
    res = lab.cli("worker2", "container", "run", "-d", "-p", "9200:81", IMAGE, *HTTPD, check=False)
    assert res.returncode != 0 and "9200/tcp is already bound on this node by web" in res.stderr
    lab.cli("worker2", "container", "rm", "-f", "web")

    # clear refusals: a name taken on this node, a running container without -f, a missing image
    res = lab.cli("worker3", "container", "run", "--name", "probe", IMAGE, "true", check=False)
    assert res.returncode != 0 and "'probe' is in use on this node" in res.stderr, res.stderr
    res = lab.cli("worker3", "container", "rm", "probe", check=False)
    assert res.returncode != 0 and "rm -f" in res.stderr and "container stop" in res.stderr
    res = lab.cli("worker3", "container", "run", "--network", "shared", "nosuch:1", "true",
                  check=False)
    assert res.returncode != 0 and "could not be created" in res.stderr and "nosuch" in res.stderr
    res = lab.cli("worker3", "container", "rm", "echo", check=False)
    assert res.returncode != 0 and "a service's containers go with their service" in res.stderr
    lab.cli("manager1", "service", "rm", "echo")
    res = lab.cli("manager1", "network", "rm", "shared", check=False)
    assert res.returncode != 0 and "probe (on manager2), probe (on worker3)" in res.stderr, res.stderr

    # stop keeps the container (stopped), rm removes it; rm -f stops and removes
    lab.cli("worker3", "container", "stop", "probe")
    stopped = [c for c in lab.cli_json("worker3", "container", "ls", "--all") if c["name"] == "probe"]
    assert len(stopped) == 1 and stopped[0]["state"] == "stopped", stopped
    seen = json.loads(lab.cli("worker3", "container", "inspect", "probe").stdout)[0]
    assert seen["state"] == "stopped" and seen["exit"]["message"], seen  # adopted: code unknown
    lab.cli("worker3", "container", "rm", "probe")
    lab.cli("manager2", "container", "rm", "-f", "probe")
    for host in ("worker3", "manager2"):
        assert not [c for c in lab.cli_json(host, "container", "ls", "--all") if c["name"] == "probe"]
    # nothing holds the network any more; test 5 checks that nothing is left on any host
    wait_until(lambda: lab.cli("manager1", "network", "rm", "shared", check=False).returncode == 0,
               timeout=30, what="the attachable network removable")


# ---- 2 and 3. the routing mesh ---------------------------------------------------------------

def test_published_port_answers_on_every_node_and_follows_tasks(lab):
    create(lab, "web", "--replicas", "3", "--publish", "8080:80",
           "--constraint", "node.role==worker", IMAGE, *HTTPD)
    tasks = wait_running(lab, "web", 3)
    ids = short_ids(tasks)
    # every node, including managers that run no task of it, from another node's namespace
    for host in HOSTS:
        client = "worker3" if host == "manager1" else "manager1"
        got = wait_until(lambda: (lambda r: r if set(r["answers"]) == ids and not r["failures"]
                                  else None)(hit(lab, client, ADDR[host], 8080, 30)),
                         timeout=30, what=f"every web task answering on {host}:8080")
        assert got["failures"] == 0

    # scale up: the new tasks join every node's balancer within seconds
    lab.cli("manager1", "service", "scale", "-d", "web=5")
    tasks = wait_running(lab, "web", 5)
    ids = short_ids(tasks)
    wait_until(lambda: set(hit(lab, "manager2", ADDR["manager3"], 8080, 40)["answers"]) == ids,
               timeout=20, what="all 5 tasks behind the published port")

    # a task dies: after the balancers follow, no request goes to it (none fails)
    victim = tasks[0]
    pid = next(c["pid"] for c in lab.cli_json(victim["node_hostname"], "container", "ls")
               if c["id"] == victim["id"])
    os.kill(pid, signal.SIGKILL)        # the task's container process, started by this test
    def replaced():
        now = running(lab, "web")
        return now if len(now) == 5 and victim["id"] not in {t["id"] for t in now} else None
    tasks = wait_until(replaced, timeout=60, what="the killed task replaced")
    ids = short_ids(tasks)
    def settled():
        r = hit(lab, "manager1", ADDR["worker2"], 8080, 40)
        return r if set(r["answers"]) == ids and r["failures"] == 0 else None
    r = wait_until(settled, timeout=20, what="the balancers following the replacement")
    assert victim["id"][:12] not in r["answers"]
    r = hit(lab, "manager3", ADDR["manager2"], 8080, 60)
    assert r["failures"] == 0 and set(r["answers"]) <= ids, r


def test_udp_publishing_and_host_mode_binds_only_where_tasks_run(lab):
    create(lab, "dns", "--replicas", "2", "--publish", "9053:53/udp",
           "--constraint", "node.role==worker", *HOST_PYTHON, IMAGE,
           "/usr/bin/python3", "-c", UDP_SERVER)
    ids = short_ids(wait_running(lab, "dns", 2))
    wait_until(lambda: set(hit(lab, "manager1", ADDR["manager2"], 9053, 20, "udp")["answers"])
               == ids, timeout=30, what="both UDP tasks answering through the mesh")

    create(lab, "pinned", "--publish", "published=9100,target=80,mode=host",
           "--constraint", "node.hostname==worker1", IMAGE, *HTTPD)
    task = wait_running(lab, "pinned", 1)[0]
    r = wait_until(lambda: (lambda r: r if r["answers"] else None)(
        hit(lab, "manager1", ADDR["worker1"], 9100, 5)), timeout=20, what="host port on worker1")
    assert set(r["answers"]) == {task["id"][:12]} and r["failures"] == 0
    for host in ("worker2", "manager2"):
        r = hit(lab, "manager1", ADDR[host], 9100, 3)
        assert r["failures"] == 3 and not r["answers"], (host, r)


# ---- 5. removal leaves nothing behind ----------------------------------------------------------

def _leftovers(lab, host: str) -> list[str]:
    """Everything networking could have left on a host: namespaces, devices, nft tables, FDB."""
    out = []
    netns_dir = Path(lab.host(host).data_root) / "netns"
    if netns_dir.exists() and os.listdir(netns_dir):
        out.append(f"namespaces {os.listdir(netns_dir)}")
    links = lab.exec(host, ["ip", "-o", "link"], check=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name not in ("lo", "eth0"):
            out.append(f"device {name}")
    tables = lab.exec(host, ["nft", "list", "tables"], check=True).stdout.strip()
    if tables:
        out.append(f"nft {tables}")
    fdb = lab.exec(host, ["bridge", "fdb", "show"], check=True).stdout
    out += [f"fdb {line}" for line in fdb.splitlines() if "vxlan" in line or "dst" in line]
    return out


def test_network_rm_refused_while_used_then_removal_leaves_nothing(lab):
    res = lab.cli("manager1", "network", "rm", "appnet", check=False)
    assert res.returncode != 0 and "api" in res.stderr and "front" in res.stderr, res.stderr
    for svc in ("api", "front", "outsider", "web", "dns", "pinned"):
        lab.cli("manager1", "service", "rm", svc, check=False)

    def removed(name: str):
        res = lab.cli("manager1", "network", "rm", name, check=False)
        return res.returncode == 0 or "no such network" in res.stderr
    for name in ("appnet", "othernet"):
        wait_until(lambda: removed(name), timeout=60, what=f"{name} removable")
    names = {n["spec"]["name"] for n in lab.cli_json("manager1", "network", "ls")}
    assert names == {"ingress"}
    # nothing publishes any more: the ingress namespace, its veth and the nft tables go too
    try:
        wait_until(lambda: all(not _leftovers(lab, h) for h in HOSTS), timeout=60,
                   what="no networking left on any host")
    except AssertionError:
        raise AssertionError("; ".join(f"{h}: {_leftovers(lab, h)}" for h in HOSTS)) from None


def test_network_cli_errors_are_clear(lab):
    res = lab.cli("manager1", "network", "create", "--driver", "bridge", "x", check=False)
    assert res.returncode != 0 and "--driver overlay" in res.stderr
    res = lab.cli("manager1", "network", "create", "--subnet", "10.0.0.0/16", "clash", check=False)
    assert res.returncode != 0 and "overlaps" in res.stderr and "ingress" in res.stderr
    res = lab.cli("manager1", "service", "create", "--name", "lost", "--network", "nowhere",
                  IMAGE, check=False)
    assert res.returncode != 0 and "shoal network create nowhere" in res.stderr
    lab.cli("manager1", "service", "create", "-d", "--name", "p1", "--publish", "8181:80",
            IMAGE, *HTTPD)
    try:
        res = lab.cli("manager1", "service", "create", "--name", "p2", "--publish", "8181:80",
                      IMAGE, check=False)
        assert res.returncode != 0 and "8181/tcp is already published by service 'p1'" in res.stderr
    finally:
        lab.cli("manager1", "service", "rm", "p1")
