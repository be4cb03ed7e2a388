"""Load balancer: nftables backend for real (root only), IPVS planning and messages offline.

The nftables test builds three namespaces under its tmp directory and removes them again, also
on failure: cli (10.97.0.2) -- node (10.97.0.1 | 10.98.0.1) -- srv (10.98.0.11/12/13), no
default routes. srv has no route back to cli, so ingress only works if the node masquerades.
"""
from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys

import pytest

from worker.network import lb as lbmod
from worker.network.lb import Backend, Frontend, Op, plan_ipvs

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for ip in sys.argv[1:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, 8080)); s.listen(64); s.setblocking(False); sel.register(s, selectors.EVENT_READ, ip)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        c, _ = key.fileobj.accept()
        c.setblocking(True); c.sendall(key.data.encode()); c.close()
"""
BACKENDS = [Backend(f"10.98.0.{i}", 8080) for i in (11, 12, 13)]
VIP = Frontend("tcp", "10.99.0.10", 80)
INGRESS = Frontend("tcp", None, 8080)


def _addr(ns: str, ifname: str, *addrs: str) -> None:
    from worker.network import nsutil
    with nsutil.ipr(ns) as ip:
        idx = ip.link_lookup(ifname=ifname)[0]
        for a in addrs:
            ip.addr("add", index=idx, address=a, prefixlen=24)
        ip.link("set", index=idx, state="up")


def _enable_forwarding() -> None:
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")


@pytest.fixture
def lab(tmp_path):
    from worker.network import nsutil
    d = tmp_path / "ns"
    ns = {n: str(d / n) for n in ("cli", "node", "srv")}
    server = None
    try:
        for p in ns.values():
            nsutil.create(p)
        nsutil.veth(ns["cli"], "eth0", ns["node"], "c0")
        nsutil.veth(ns["srv"], "eth0", ns["node"], "s0")
        _addr(ns["cli"], "eth0", "10.97.0.2")
        _addr(ns["node"], "c0", "10.97.0.1")
        _addr(ns["node"], "s0", "10.98.0.1")
        _addr(ns["srv"], "eth0", *(b.ip for b in BACKENDS))
        with nsutil.ipr(ns["node"]) as ip:  # the VIP is reachable from the node, src 10.98.0.1
            ip.route("add", dst="10.99.0.10/32", oif=ip.link_lookup(ifname="s0")[0])
        nsutil.call_in(ns["node"], _enable_forwarding)
        server = subprocess.Popen(
            nsutil.nsenter_argv(ns["srv"], [sys.executable, "-c", SERVER,
                                            *(b.ip for b in BACKENDS)]),
            stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        yield ns
    finally:
        if server is not None:
            os.kill(server.pid, signal.SIGKILL)  # only the server this test started
            server.wait()
        for p in ns.values():
            nsutil.remove(p)
        nsutil.release_dir(str(d))


def _hits(ns: str, ip: str, port: int, n: int = 30) -> collections.Counter:
    from worker.network import nsutil

    def run() -> collections.Counter:
        got: collections.Counter = collections.Counter()
        for _ in range(n):
            with socket.create_connection((ip, port), timeout=3) as s:
                got[s.recv(64).decode()] += 1
        return got
    return nsutil.call_in(ns, run)


@root_only
def test_nftables_vip_and_ingress(lab):
    balancer = lbmod.NftablesBackend(lab["node"], table="shoaltest")
    try:
        balancer.ensure_service(VIP, BACKENDS)
        balancer.ensure_service(INGRESS, BACKENDS)
        assert "numgen inc mod 3" in balancer.ruleset()

        # local client on the node (output hook)
        hits = _hits(lab["node"], "10.99.0.10", 80)
        assert set(hits) == {b.ip for b in BACKENDS}, hits
        assert max(hits.values()) - min(hits.values()) <= 1     # round robin
        # remote client through the published port (prerouting + masquerade)
        hits = _hits(lab["cli"], "10.97.0.1", 8080)
        assert set(hits) == {b.ip for b in BACKENDS}, hits

        # drop one backend: no new connection reaches it
        balancer.ensure_service(VIP, BACKENDS[:2])
        balancer.ensure_service(INGRESS, BACKENDS[1:])
        assert set(_hits(lab["node"], "10.99.0.10", 80)) == {"10.98.0.11", "10.98.0.12"}
        assert set(_hits(lab["cli"], "10.97.0.1", 8080)) == {"10.98.0.12", "10.98.0.13"}

        # no backends: refused, not hanging
        balancer.ensure_service(VIP, [])
        with pytest.raises(OSError):
            _hits(lab["node"], "10.99.0.10", 80, n=1)

        balancer.remove_service(INGRESS)
        with pytest.raises(OSError):
            _hits(lab["cli"], "10.97.0.1", 8080, n=1)
    finally:
        balancer.flush()
    from worker.network import nsutil
    assert nsutil.run(lab["node"], ["nft", "list", "ruleset"]).stdout.strip() == ""
    balancer.flush()    # idempotent


@root_only
def test_nftables_all_ports_vip_keeps_the_clients_port(lab):
    """A service VIP balances every port; the backend gets the port the client asked for."""
    balancer = lbmod.NftablesBackend(lab["node"], table="shoaltest")
    vip = Frontend("tcp", "10.99.0.10", 0)
    try:
        balancer.ensure_service(vip, [Backend(b.ip, 0) for b in BACKENDS])
        assert "meta l4proto { tcp, udp }" in balancer.ruleset()
        hits = _hits(lab["node"], "10.99.0.10", 8080)
        assert set(hits) == {b.ip for b in BACKENDS}, hits
        with pytest.raises(OSError):               # nothing listens on 81 behind the VIP
            _hits(lab["node"], "10.99.0.10", 81, n=1)
    finally:
        balancer.flush()


@root_only
def test_task_table_balances_the_tasks_own_connections_only(lab):
    """A task's table: its VIPs for its own connections (output), nothing on prerouting, and no
    published ports."""
    table = lbmod.TaskNftables(lab["node"], table="shoaltest")
    vip = Frontend("tcp", "10.99.0.10", 0)
    try:
        table.replace_all({vip: [Backend(b.ip, 0) for b in BACKENDS]})
        hits = _hits(lab["node"], "10.99.0.10", 8080)
        assert set(hits) == {b.ip for b in BACKENDS}, hits
        assert "hook prerouting" not in table.ruleset()
        with pytest.raises(lbmod.LBError, match="VIPs only"):
            table.replace_all({INGRESS: BACKENDS})
    finally:
        table.flush()


@root_only
def test_pick_backend_without_ipvs(lab):
    # this kernel has no IPVS (no modules); a kernel with it reports /proc/net/ip_vs
    expected = "ipvs" if os.path.exists("/proc/net/ip_vs") else "nftables"
    assert lbmod.pick_backend(lab["node"]) == expected
    assert isinstance(lbmod.make_lb("auto", lab["node"]),
                      lbmod.IpvsBackend if expected == "ipvs" else lbmod.NftablesBackend)
    ipvs = lbmod.make_lb("ipvs", lab["node"])
    assert isinstance(ipvs, lbmod.IpvsBackend)
    if expected == "nftables":
        with pytest.raises(lbmod.LBError, match="IPVS is not available"):
            ipvs.ensure_service(VIP, BACKENDS)


def test_render_task_nftables_shape():
    text = lbmod.render_task_nftables("shoal", {Frontend("tcp", "10.99.0.10", 0): BACKENDS},
                                      redirects=(("127.0.0.11", 53, 35353),))
    assert "ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:35353" in text
    assert "ip daddr 10.99.0.10 meta l4proto { tcp, udp } dnat to numgen" in text
    # nothing is routed through a task, nothing in it is published: no other NAT hooks
    assert "hook prerouting" not in text and "hook postrouting" not in text


def test_render_nftables_shape():
    text = lbmod.render_nftables("shoal", {VIP: BACKENDS, INGRESS: BACKENDS[:1]})
    assert text.startswith("table ip shoal\ndelete table ip shoal\n")
    assert ("ip daddr 10.99.0.10 tcp dport 80 dnat ip to numgen inc mod 3 map "
            "{ 0 : 10.98.0.11 . 8080, 1 : 10.98.0.12 . 8080, 2 : 10.98.0.13 . 8080 }") in text
    assert "fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 ct mark set" in text
    assert "hook output" in text and "hook prerouting" in text and "masquerade" in text


def test_frontend_validation():
    with pytest.raises(ValueError):
        Frontend("sctp", None, 80)
    with pytest.raises(ValueError):
        Frontend("tcp", None, 0)          # a published port needs a port
    Frontend("tcp", "10.0.0.1", 0)        # a VIP with port 0: every port
    with pytest.raises(ValueError):
        lbmod.make_lb("iptables")


# -- IPVS, offline ---------------------------------------------------------------------------

A, B, C = (Backend(f"10.0.0.{i}", 80) for i in (1, 2, 3))


def test_plan_ipvs_new_service():
    assert plan_ipvs({}, {VIP: {A: 1, B: 1}}) == [
        Op("add_service", VIP), Op("add_dest", VIP, A, 1), Op("add_dest", VIP, B, 1)]


def test_plan_ipvs_diff_adds_before_deletes_and_sets_weights():
    ops = plan_ipvs({VIP: {A: 1, B: 1}}, {VIP: {B: 2, C: 1}})
    assert ops == [Op("set_dest", VIP, B, 2), Op("add_dest", VIP, C, 1),
                   Op("del_dest", VIP, A, 1)]


def test_plan_ipvs_noop_and_removal():
    assert plan_ipvs({VIP: {A: 1}}, {VIP: {A: 1}}) == []
    assert plan_ipvs({VIP: {A: 1}, INGRESS: {B: 1}}, {VIP: {A: 1}}) == [
        Op("del_service", INGRESS)]


def test_ipvs_messages_encode_without_kernel():
    from pyroute2.ipvs import IPVSDest, IPVSService
    from pyroute2.netlink.generic import ipvs as genl

    def encode(cmd: int, svc: IPVSService, dest: IPVSDest | None = None) -> genl.ipvsmsg:
        msg = genl.ipvsmsg()
        msg["cmd"] = cmd
        msg["version"] = genl.GENL_VERSION
        msg["attrs"] = [("IPVS_CMD_ATTR_SERVICE", svc.dump_nla() if dest is None
                         else svc.dump_key())]
        if dest is not None:
            msg["attrs"].append(("IPVS_CMD_ATTR_DEST", dest.dump_nla()))
        msg.encode()
        back = genl.ipvsmsg(msg.data)
        back.decode()
        return back

    svc = IPVSService(**lbmod.service_spec(VIP))
    back = encode(genl.IPVS_CMD_NEW_SERVICE, svc)
    attrs = back.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert attrs.get_attr("IPVS_SVC_ATTR_ADDR") == "10.99.0.10"
    assert attrs.get_attr("IPVS_SVC_ATTR_PORT") == 80
    assert attrs.get_attr("IPVS_SVC_ATTR_PROTOCOL") == socket.IPPROTO_TCP
    assert attrs.get_attr("IPVS_SVC_ATTR_SCHED_NAME") == "rr"

    dest = IPVSDest(**lbmod.dest_spec(A))
    back = encode(genl.IPVS_CMD_NEW_DEST, svc, dest)
    d = back.get_attr("IPVS_CMD_ATTR_DEST")
    assert d.get_attr("IPVS_DEST_ATTR_ADDR") == "10.0.0.1"
    assert d.get_attr("IPVS_DEST_ATTR_PORT") == 80
    assert d.get_attr("IPVS_DEST_ATTR_FWD_METHOD") == 0          # NAT, not direct routing

    ing = IPVSService(**lbmod.service_spec(INGRESS))
    back = encode(genl.IPVS_CMD_NEW_SERVICE, ing)
    attrs = back.get_attr("IPVS_CMD_ATTR_SERVICE")
    assert attrs.get_attr("IPVS_SVC_ATTR_FWMARK") == lbmod.fwmark_for(INGRESS)


def test_ipvs_backend_executes_plan_with_set_not_update():
    class FakeIPVS:
        def __init__(self):
            self.calls = []

        def service(self, command, service=None):
            self.calls.append(("service", command, dict(service)))

        def dest(self, command, service, dest=None):
            self.calls.append(("dest", command, dict(dest)))

    fake = FakeIPVS()
    lbmod.IpvsBackend(None).execute(fake, plan_ipvs({VIP: {A: 1, B: 1}}, {VIP: {B: 3, C: 1}}))
    verbs = [(c[0], c[1]) for c in fake.calls]
    assert verbs == [("dest", "set"), ("dest", "add"), ("dest", "del")]
    assert all(c[2]["fwd_method"] == 0 for c in fake.calls)
    assert "update" not in {c[1] for c in fake.calls}


def test_render_ipvs_marks():
    text = lbmod.render_ipvs_marks("shoal-ipvs", [INGRESS, VIP])
    assert f"meta mark set {lbmod.fwmark_for(INGRESS):#x}" in text
    assert "10.99.0.10" not in text     # VIPs need no mark: IPVS matches them by address


@root_only
def test_rendered_ipvs_marks_are_valid_nftables():
    """nft itself must accept the script (a chain named "mark" once made it refuse all of it)."""
    import subprocess
    script = lbmod.render_ipvs_marks("shoalcheck", [INGRESS, Frontend("udp", None, 53)])
    res = subprocess.run(["nft", "-c", "-f", "-"], input=script, text=True, capture_output=True)
    assert res.returncode == 0, res.stderr


def test_ipvs_mark_table_is_written_again_after_a_failed_write_fake_ipvs(monkeypatch):
    """IPVS is not in this kernel: its netlink side is a fake here. A mark table that could not be
    written (nft refused it) must be written by the retry: before, the frontend was already
    counted as marked and the retry skipped the table, leaving the port unbalanced for good."""
    class FakeKernelIPVS:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def service(self, command, service=None):
            if command == "get":
                raise LookupError("no such service")

        def dest(self, command, service, dest=None):
            return []

    written: list[list[Frontend]] = []
    failures = [lbmod.LBError("nft failed (1)")]

    def apply_marks(self):
        if failures:
            raise failures.pop()
        written.append(sorted(self.frontends, key=Frontend.sort_key))

    monkeypatch.setattr(lbmod.IpvsBackend, "_ipvs", lambda self: FakeKernelIPVS())
    monkeypatch.setattr(lbmod.IpvsBackend, "_apply_marks", apply_marks)
    backend = lbmod.IpvsBackend(None)
    with pytest.raises(lbmod.LBError):
        backend.ensure_service(INGRESS, [A])
    assert INGRESS not in backend.frontends
    backend.ensure_service(INGRESS, [A])          # the agent's retry
    assert written == [[INGRESS]]
    failures.append(lbmod.LBError("nft failed (1)"))
    with pytest.raises(lbmod.LBError):
        backend.remove_service(INGRESS)
    assert INGRESS in backend.frontends           # so that the retry rewrites the table
    backend.remove_service(INGRESS)
    assert written == [[INGRESS], []] and not backend.frontends
