"""The VM lab: shoal on three QEMU guests running Debian's own kernel, which has IPVS.

One booted cluster serves the whole module (booting and provisioning under software emulation
takes minutes). It is formed by vagrant/provision.sh, the script Vagrant runs, and torn down
at the end whatever happens: only the QEMU processes this module started are killed. When a
test fails, the guests' consoles, journals and shoald logs are copied to
/var/tmp/shoal-vm-logs/ and the path is printed.

Select or deselect with `-m vm` / `-m "not vm"`.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import pytest

from integration.helpers import wait_until
from integration.vm.lab import GuestError, VMLab
from tests import imagebuild
from worker.network.lb import Frontend, fwmark_for

pytestmark = [pytest.mark.vm]

MANAGERS = int(os.environ.get("SHOAL_VM_MANAGERS", "1"))
VENV_PY = "/opt/shoal/venv/bin/python"
IMAGE = "web:1"
PORT = 8080
# Each task serves its own hostname (the task id's first 12 characters), so a reply names the
# task that answered it.
WEB_CMD = ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && "
                       "exec httpd -f -p 80 -h /www"]
LOG_ROOT = Path("/var/tmp/shoal-vm-logs")
TIMINGS: dict[str, float] = {}


def say(request, text: str) -> None:
    """Print past pytest's capture: the timings belong in the CI log."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n[vm lab] {text}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def lab(request):
    if os.geteuid() != 0:
        pytest.fail("the VM lab needs root (debootstrap, 9p shares): run scripts/test.sh as root")
    lab = VMLab(n=3)
    failed_before = request.session.testsfailed
    ok = False
    try:
        t0 = time.monotonic()
        lab.start()
        if lab.build_seconds:
            TIMINGS["image build (cold)"] = lab.build_seconds
            say(request, f"built the guest image in {lab.build_seconds:.0f} s")
        TIMINGS["boot"] = lab.wait_ready()
        say(request, f"3 guests up in {TIMINGS['boot']:.0f} s ({lab.accel})")
        t1 = time.monotonic()
        lab.provision_results = lab.provision(managers=MANAGERS)
        TIMINGS["provision"] = time.monotonic() - t1
        say(request, f"provisioned with vagrant/provision.sh in {TIMINGS['provision']:.0f} s")
        ok = True
        yield lab
        TIMINGS["total"] = time.monotonic() - t0
        say(request, "timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()))
    finally:
        try:
            if not ok or request.session.testsfailed > failed_before:
                dest = LOG_ROOT / time.strftime("%Y%m%d-%H%M%S")
                lab.collect_logs(dest)
                say(request, f"guest logs (consoles, journals, shoald) in {dest}")
        finally:
            lab.stop()
            lab.remove()


def nodes_ready(g, n: int) -> list[dict]:
    nodes = g.shoal_json("node", "ls")
    return nodes if len(nodes) == n and all(x["status"] == "ready" for x in nodes) else []


# ---- must-show 1 -------------------------------------------------------------------------------
def test_three_guests_form_a_cluster_with_the_vagrant_provisioning(lab):
    manager = lab.guests[0]
    nodes = wait_until(lambda: nodes_ready(manager, 3), timeout=120, what="3 ready nodes")
    assert sorted(x["hostname"] for x in nodes) == ["vm1", "vm2", "vm3"]
    roles = {x["hostname"]: x["role"] for x in nodes}
    assert roles == {g.name: ("manager" if g.index <= MANAGERS else "worker")
                     for g in lab.guests}
    # every node's daemon advertises its address on the lab segment, as Vagrant's would
    addrs = {x["hostname"]: x.get("addr") or x.get("status", {}).get("addr") for x in nodes}
    for g in lab.guests:
        info = json.loads(g.shoal("info", "--format", "json").out)
        assert info["swarm"]["state"] == "active", (g.name, info["swarm"])
        assert g.ip in json.dumps(info), (g.name, info)
    # the last node prints the note on deploying a first service
    assert "shoal service create" in lab.provision_results["vm3"].out
    # shoal came from the shared source tree, installed offline (no route out of the guests)
    for g in lab.guests:
        assert g.sh("readlink -f /usr/local/bin/shoald").out.strip() == "/opt/shoal/venv/bin/shoald"
        routes = g.sh("ip route").out
        assert "default" not in routes, (g.name, routes)
    del addrs


# ---- the IPVS backend against a real kernel, without the cluster ---------------------------------
def test_ipvs_backend_balances_real_traffic_in_a_guest_kernel(lab):
    """shoal's IpvsBackend (not ipvsadm) installs a fwmark service in vm1's kernel for two
    backends in guest-local namespaces; the other guests' requests reach both."""
    g, others = lab.guests[0], lab.guests[1:]
    probe = "/vagrant/integration/vm/probe_ipvs.py"
    port = 9099
    env = {"PYTHONPATH": "/opt/shoal/src"}
    try:
        out = g.run([VENV_PY, probe, "up", str(port)], env=env, check=True).out
        info = json.loads(out.strip().splitlines()[-1])
        assert info["picked"] == "ipvs", "pick_backend() does not see IPVS in the guest kernel"
        table = g.sh("ipvsadm -Ln").out
        assert f"FWM  {info['fwmark']} rr" in table, table
        assert len(re.findall(r"-> 10\.99\.[12]\.2:80\s+Masq", table)) == 2, table
        for client in [g, *others]:
            got = client.sh(f"for i in 1 2 3 4; do busybox wget -q -T 5 -O - "
                            f"http://{g.ip}:{port}/; done").out.split()
            assert sorted(set(got)) == ["b1", "b2"], (client.name, got)
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


def running_tasks(manager, service: str) -> set[str]:
    tasks = manager.shoal_json("service", "ps", "-f", "desired-state=running", "--no-trunc", service)
    return {t["id"][:12] for t in tasks if t["status"]["state"] == "running"}


def replies(client, ip: str, count: int) -> list[str]:
    r = client.sh(f"for i in $(seq {count}); do busybox wget -q -T 5 -O - "
                  f"http://{ip}:{PORT}/ || echo FAILED; done", timeout=300)
    return r.out.split()


def check_mesh(lab, service: str, n: int, backend: str) -> None:
    """n tasks run; on every guest the load balancer has n backends; every guest's published
    port reaches every task, from every guest."""
    manager = lab.guests[0]
    tasks = wait_until(lambda: (lambda t: t if len(t) == n else None)(running_tasks(manager, service)),
                       timeout=300, interval=2, what=f"{n} running tasks of {service}")
    mark = fwmark_for(Frontend("tcp", None, PORT))
    for g in lab.guests:
        if backend == "ipvs":
            servers = wait_until(lambda: (lambda s: s if s and len(s) == n else None)(
                real_servers(g, mark)), timeout=120, interval=2,
                what=f"{n} IPVS real servers on {g.name}")
            assert len(set(servers)) == n, (g.name, servers)
        else:
            assert real_servers(g, mark) is None, f"{g.name} uses IPVS with --lb-backend nftables"
    for client in lab.guests:
        for target in lab.guests:
            # rr (IPVS) and numgen inc (nftables) both rotate: 3 rounds reach every task
            got = wait_until(lambda: (lambda r: r if set(r) == tasks else None)(
                replies(client, target.ip, 3 * n)), timeout=120, interval=3,
                what=f"{client.name} -> {target.name}:{PORT} reaching all of {sorted(tasks)}")
            assert "FAILED" not in got


@pytest.mark.parametrize("backend", ["ipvs", "nftables"])
def test_published_service_routing_mesh(lab, web_image, backend, request):
    manager = lab.guests[0]
    # The Vagrant way of choosing the load balancer: SHOAL_OPTS, re-provisioned. The default
    # (auto) must pick IPVS on this kernel; nftables is asked for by name.
    opts = "" if backend == "ipvs" else "--lb-backend nftables"
    t0 = time.monotonic()
    lab.provision(managers=MANAGERS, opts=opts)
    wait_until(lambda: nodes_ready(manager, 3), timeout=180, interval=2, what="3 ready nodes")
    for g in lab.guests:
        assert f'SHOAL_OPTS="{opts}"' in g.sh("cat /etc/default/shoald").out
    service = f"web-{backend}"
    manager.shoal("service", "create", "--name", service, "--replicas", "3",
                  "--publish", f"published={PORT},target=80", web_image, *WEB_CMD, timeout=300)
    check_mesh(lab, service, 3, backend)

    # must-show 3: scaling changes the real servers, both ways
    manager.shoal("service", "scale", f"{service}=5", timeout=300)
    check_mesh(lab, service, 5, backend)
    manager.shoal("service", "scale", f"{service}=2", timeout=300)
    check_mesh(lab, service, 2, backend)

    manager.shoal("service", "rm", service)
    mark = fwmark_for(Frontend("tcp", None, PORT))
    for g in lab.guests:
        wait_until(lambda: real_servers(g, mark) is None, timeout=120, interval=2,
                   what=f"the IPVS service gone from {g.name}")
        wait_until(lambda: g.sh(f"busybox wget -q -T 3 -O - http://{g.ip}:{PORT}/", check=False).rc != 0,
                   timeout=120, interval=2, what=f"port {PORT} closed on {g.name}")
    TIMINGS[f"mesh scenario ({backend})"] = time.monotonic() - t0
    say(request, f"routing mesh scenario ({backend}) in {time.monotonic() - t0:.0f} s")
