"""The VM lab: shoal on three QEMU guests running Debian's own kernel, which has IPVS.

One booted cluster serves the whole package (integration/vm/conftest.py: booting and
provisioning under software emulation takes minutes). It is formed by vagrant/provision.sh, the
script Vagrant runs, and torn down at the end whatever happens. When a test fails, the guests'
consoles, journals and shoald logs are copied to /var/tmp/shoal-vm-logs/ and the path is printed.

Select or deselect with `-m vm` / `-m "not vm"`.
"""
from __future__ import annotations

import json
import re
import shlex
import time

import pytest

from integration.helpers import wait_until
from integration.vm.conftest import LOG_ROOT, MANAGERS, TIMINGS, say
from tests import imagebuild
from worker.network.lb import Frontend, fwmark_for

pytestmark = [pytest.mark.vm]

VENV_PY = "/opt/shoal/venv/bin/python"
TOOLS = "/vagrant/integration/vm/guest_tools.py"
IMAGE = "web:1"
# a port per load balancer: what one scenario leaves behind cannot answer for the other
PORTS = {"ipvs": 8080, "nftables": 8081}
# Each task serves its own hostname (the task id's first 12 characters), so a reply names the
# task that answered it.
WEB_CMD = ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && "
                       "exec httpd -f -p 80 -h /www"]


@pytest.fixture(scope="module")
def lab(vm_lab):
    """The package's booted and provisioned guests (integration/vm/conftest.py)."""
    return vm_lab


def api(g, path: str):
    """GET from the guest's shoald API: polls through the CLI would cost 10-15 s each here."""
    return json.loads(g.run(["python3", TOOLS, "api", "GET", path], check=True).out)


def nodes_ready(g, n: int) -> list[dict]:
    nodes = api(g, "/nodes")
    return nodes if len(nodes) == n and all(x["status"]["state"] == "ready" for x in nodes) else []


def get(client, ip: str, port: int, count: int) -> list[str]:
    """Bodies of ``count`` requests to ip:port, each on a new connection (FAILED:... for errors)."""
    return client.run(["python3", TOOLS, "get", f"http://{ip}:{port}/", str(count)],
                      timeout=300, check=True).out.split()


# ---- must-show 1 -------------------------------------------------------------------------------
def test_three_guests_form_a_cluster_with_the_vagrant_provisioning(lab):
    manager = lab.guests[0]
    # the user's view, through the CLI
    nodes = wait_until(lambda: (lambda n: n if len(n) == 3 and all(
        x["status"] == "ready" for x in n) else None)(manager.shoal_json("node", "ls")),
        timeout=180, interval=5, what="3 ready nodes in `shoal node ls`")
    assert sorted(x["hostname"] for x in nodes) == ["vm1", "vm2", "vm3"]
    roles = {x["hostname"]: x["role"] for x in nodes}
    assert roles == {g.name: ("manager" if g.index <= MANAGERS else "worker")
                     for g in lab.guests}
    # every node advertises its address on the lab segment, as it would on Vagrant's network
    addrs = {x["description"]["hostname"]: x["status"]["addr"] for x in api(manager, "/nodes")}
    assert addrs == {g.name: g.ip for g in lab.guests}
    # the last node prints the note on deploying a first service
    assert "shoal service create" in lab.provision_results["vm3"].out
    for g in lab.guests:
        # shoal installed from the shared tree into the image's venv, without a network
        assert g.sh("readlink -f /usr/local/bin/shoald").out.strip() == "/opt/shoal/venv/bin/shoald"
        assert "dependencies missing" not in lab.provision_results[g.name].out
        # the guests reach each other and nothing else
        routes = g.sh("ip route").out
        assert "default" not in routes, (g.name, routes)


# ---- the IPVS backend against a real kernel, without the cluster ---------------------------------
def test_ipvs_backend_balances_real_traffic_in_a_guest_kernel(lab):
    """shoal's IpvsBackend (not ipvsadm) installs a fwmark service in vm1's kernel for two
    backends in guest-local namespaces; the other guests' requests reach both."""
    g, others = lab.guests[0], lab.guests[1:]
    probe = "/vagrant/integration/vm/probe_ipvs.py"
    port = 9099
    env: dict = {}
    try:
        out = g.run([VENV_PY, probe, "up", str(port)], env=env, check=True).out
        info = json.loads(out.strip().splitlines()[-1])
        assert info["picked"] == "ipvs", "pick_backend() does not see IPVS in the guest kernel"
        table = g.sh("ipvsadm -Ln").out
        assert f"FWM  {info['fwmark']} rr" in table, table
        assert len(re.findall(r"-> 10\.99\.[12]\.2:80\s+Masq", table)) == 2, table
        for client in [g, *others]:
            got = client.run(["python3", TOOLS, "get", f"http://{g.ip}:{port}/", "4"],
                             check=True).out.split()
            assert sorted(got) == ["b1", "b1", "b2", "b2"], (client.name, got)
        g.run([VENV_PY, probe, "remove", str(port)], env=env, check=True)
        table = g.sh("ipvsadm -Ln").out
        assert "FWM" not in table, table
    finally:
        g.run([VENV_PY, probe, "down"], env=env, check=False)


# ---- must-show 2-4: the routing mesh on both load balancers -------------------------------------
@pytest.fixture(scope="module")
def web_image(lab):
    tar = lab.share / "web.tar"
    imagebuild.build_busybox_oci_tar(tar, tag="1")
    for g in lab.guests:
        g.shoal("image", "import", "/shoal-lab/web.tar", IMAGE, timeout=300)
    return IMAGE


def all_netns(g) -> list[str]:
    """Every network namespace in the guest that a path names (the load balancer may live in an
    ingress namespace of its own rather than the root one), the root namespace first."""
    paths = g.sh("findmnt -rn -t nsfs -o TARGET | sort -u", check=False).out.split()
    return ["/proc/1/ns/net", *paths]


def ipvs_tables(g) -> dict[str, str]:
    out = {}
    for ns in all_netns(g):
        r = g.sh(f"nsenter --net={shlex.quote(ns)} ipvsadm -Ln", check=False)
        if r.rc == 0:
            out[ns] = r.out
    return out


def real_servers(g, mark: int) -> list[str] | None:
    """Real servers of the fwmark service in whichever namespace has it (None: no such service)."""
    for table in ipvs_tables(g).values():
        lines = table.splitlines()
        for i, line in enumerate(lines):
            if line.split()[:2] == ["FWM", str(mark)]:
                servers = []
                for nxt in lines[i + 1:]:
                    if not nxt.strip().startswith("->"):
                        break
                    servers.append(nxt.split()[1])
                return servers
    return None


def running_tasks(manager, service: str) -> dict[str, str]:
    """Running tasks of the service: hostname (= task id[:12]) -> ingress address."""
    tasks = api(manager, f"/tasks?service={service}&desired_state=running")
    return {t["id"][:12]: t["networks"][0]["address"].split("/")[0] if t.get("networks") else ""
            for t in tasks if t["status"]["state"] == "running"}


def check_mesh(lab, service: str, n: int, backend: str, port: int) -> None:
    """n tasks run; on every guest the load balancer has exactly those n backends; every guest's
    published port reaches every task, from every guest."""
    manager = lab.guests[0]
    tasks = wait_until(lambda: (lambda t: t if len(t) == n else None)(running_tasks(manager, service)),
                       timeout=300, interval=3, what=f"{n} running tasks of {service}")
    wanted = sorted(f"{ip}:80" for ip in tasks.values())
    mark = fwmark_for(Frontend("tcp", None, port))
    for g in lab.guests:
        if backend == "ipvs":
            wait_until(lambda: sorted(real_servers(g, mark) or []) == wanted, timeout=120,
                       interval=3, what=f"IPVS real servers {wanted} on {g.name} "
                                        f"(have {real_servers(g, mark)})")
        else:
            assert real_servers(g, mark) is None, f"{g.name} uses IPVS with --lb-backend nftables"
    for client in lab.guests:
        for target in lab.guests:
            # rr (IPVS) and numgen inc (nftables) both rotate: 2 rounds reach every task
            wait_until(lambda: set(get(client, target.ip, port, 2 * n)) == set(tasks),
                       timeout=120, interval=3,
                       what=f"{client.name} -> {target.name}:{port} reaching all of "
                            f"{sorted(tasks)} (last: {get(client, target.ip, port, n)})")


@pytest.mark.parametrize("backend", ["ipvs", "nftables"])
def test_published_service_routing_mesh(lab, web_image, backend, request):
    manager = lab.guests[0]
    port = PORTS[backend]
    # The Vagrant way of choosing the load balancer: SHOAL_OPTS, re-provisioned. The default
    # (auto) must pick IPVS on this kernel; nftables is asked for by name.
    opts = "" if backend == "ipvs" else "--lb-backend nftables"
    t0 = time.monotonic()
    lab.provision(managers=MANAGERS, opts=opts)
    wait_until(lambda: nodes_ready(manager, 3), timeout=180, interval=3, what="3 ready nodes")
    for g in lab.guests:
        assert f'SHOAL_OPTS="{opts}"' in g.sh("cat /etc/default/shoald").out
    service = f"web-{backend}"
    mark = fwmark_for(Frontend("tcp", None, port))
    # --detach: check_mesh waits for the tasks itself; the CLI's own progress loop (a process
    # that takes 10-15 s to start under emulation, then polls) only adds time to overrun.
    manager.shoal("service", "create", "--detach", "--name", service, "--replicas", "3",
                  "--publish", f"published={port},target=80", web_image, *WEB_CMD, timeout=300)
    try:
        for replicas in (3, 5, 2):  # must-show 3: scaling changes the real servers, both ways
            if replicas != 3:
                manager.shoal("service", "scale", "--detach", f"{service}={replicas}", timeout=300)
            try:
                check_mesh(lab, service, replicas, backend, port)
            except AssertionError:
                dest = lab.snapshot_network(
                    LOG_ROOT / f"{time.strftime('%Y%m%d-%H%M%S')}-{backend}-{replicas}")
                say(request, f"network state at the failure in {dest}")
                # which paths fail: the check stops at the first pair that does
                for client in lab.guests:
                    for target in lab.guests:
                        try:
                            answers = get(client, target.ip, port, replicas)
                        except Exception as exc:  # the failure being reported matters more
                            answers = f"could not ask: {exc}"
                        say(request, f"{client.name} -> {target.name}:{port}: {answers}")
                raise

        manager.shoal("service", "rm", service)
        for g in lab.guests:
            wait_until(lambda: real_servers(g, mark) is None, timeout=120, interval=3,
                       what=f"the IPVS service gone from {g.name}")
            wait_until(lambda: all(r.startswith("FAILED") for r in get(g, g.ip, port, 1)),
                       timeout=120, interval=3, what=f"port {port} closed on {g.name}")
    finally:
        # a failed scenario must not leave its service to the next one
        manager.shoal("service", "rm", service, check=False)
    TIMINGS[f"mesh scenario ({backend})"] = time.monotonic() - t0
    say(request, f"routing mesh scenario ({backend}) in {time.monotonic() - t0:.0f} s")
