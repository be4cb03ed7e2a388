"""VXLAN overlay between two namespace "hosts" (root only).

Everything lives in namespaces this test creates under its tmp directory and removes again,
also on failure: no default route, no address outside 192.168.250.0/24 and 10.10.0.0/24.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

from worker.network import nsutil  # noqa: E402
from worker.network.overlay import OverlayError, OverlayNetwork, Peer, vxlan_notrack  # noqa: E402

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
VNI = 4242
MAC_A, MAC_B, MAC_C = "02:42:0a:0a:00:02", "02:42:0a:0a:00:03", "02:42:0a:0a:00:04"


def _links(path: str) -> set[str]:
    with nsutil.ipr(path) as ip:
        return {l.get_attr("IFLA_IFNAME") for l in ip.get_links()}


def _kind(path: str, ifname: str) -> str:
    with nsutil.ipr(path) as ip:
        link = ip.get_links(ip.link_lookup(ifname=ifname)[0])[0]
        return link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND")


@pytest.fixture
def two_hosts(tmp_path):
    """Two host namespaces joined by a veth pair: hostA 192.168.250.1, hostB .2 (MTU 1500)."""
    hosts = {"a": str(tmp_path / "hosts" / "a"), "b": str(tmp_path / "hosts" / "b")}
    try:
        for path in hosts.values():
            nsutil.create(path)
        nsutil.veth(hosts["a"], "eth0", hosts["b"], "eth0")
        for name, addr in (("a", "192.168.250.1"), ("b", "192.168.250.2")):
            with nsutil.ipr(hosts[name]) as ip:
                idx = ip.link_lookup(ifname="eth0")[0]
                ip.addr("add", index=idx, address=addr, prefixlen=24)
                ip.link("set", index=idx, state="up")
        yield hosts, tmp_path
    finally:
        # sweep whatever a failed test left in the nodes' netns dirs, then the hosts themselves
        for name in hosts:
            d = tmp_path / name / "netns"
            for entry in (os.listdir(d) if d.is_dir() else []):
                nsutil.remove(str(d / entry))
            nsutil.release_dir(str(d))
        for path in hosts.values():
            nsutil.remove(path)
        nsutil.release_dir(str(tmp_path / "hosts"))


def _ping(path: str, target: str, size: int = 56, count: int = 2) -> subprocess.CompletedProcess:
    return nsutil.run(path, [BUSYBOX, "ping", "-c", str(count), "-W", "2", "-s", str(size),
                             target], timeout=30)


def test_attach_rejects_foreign_address_and_cleans_up(two_hosts):
    hosts, tmp = two_hosts
    net = OverlayNetwork("shltc", VNI, "10.10.0.0/24", "192.168.250.1",
                         netns_dir=str(tmp / "a" / "netns"), node_netns=hosts["a"])
    try:
        with pytest.raises(Exception):
            net.attach("early", "10.10.0.9/24", MAC_A)     # before ensure(): no overlay yet
        assert not os.path.exists(net.task_netns_path("early"))
        net.ensure()
        with pytest.raises(OverlayError):
            net.attach("bad", "10.20.0.2/24", MAC_A)
        with pytest.raises(ValueError):
            OverlayNetwork("x", 0, "10.0.0.0/24", "1.2.3.4")
    finally:
        net.remove()
    assert not os.path.exists(net.netns_path)
    assert _links(hosts["a"]) == {"lo", "eth0"}


def test_overlay_ping_mtu_and_cleanup(two_hosts):
    hosts, tmp = two_hosts
    nets = {
        "a": OverlayNetwork("shlta", VNI, "10.10.0.0/24", "192.168.250.1",
                            netns_dir=str(tmp / "a" / "netns"), node_netns=hosts["a"]),
        "b": OverlayNetwork("shltb", VNI, "10.10.0.0/24", "192.168.250.2",
                            netns_dir=str(tmp / "b" / "netns"), node_netns=hosts["b"]),
    }
    try:
        for net in nets.values():
            net.ensure()
            net.ensure()    # idempotent
        ns_a = nets["a"].attach("taska", "10.10.0.2/24", MAC_A)
        ns_b = nets["b"].attach("taskb", "10.10.0.3/24", MAC_B)
        assert ns_a == str(tmp / "a" / "netns" / "taska")
        peers = [Peer(MAC_A, "10.10.0.2", "192.168.250.1"), Peer(MAC_B, "10.10.0.3", "192.168.250.2")]
        # a stale entry first, to prove set_peers replaces it
        nets["a"].set_peers([Peer("02:42:0a:0a:00:63", "10.10.0.99", "192.168.250.9")])
        for net in nets.values():
            net.set_peers(peers)
        fdb_a, arp_a = nets["a"].peers()
        assert fdb_a == {MAC_B: "192.168.250.2"}        # only the remote one, no all-zero entry
        assert arp_a == {"10.10.0.3": MAC_B}

        # MTU: underlay 1500 - 50 on vxlan, bridge, both veth ends
        assert nets["a"].mtu == 1450
        with nsutil.ipr(nets["a"].netns_path) as ip:
            mtus = {l.get_attr("IFLA_IFNAME"): l.get_attr("IFLA_MTU") for l in ip.get_links()}
            vx = ip.link_lookup(ifname="vxlan0")[0]
            info = ip.get_links(vx)[0].get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
            assert info.get_attr("IFLA_VXLAN_ID") == VNI
            assert info.get_attr("IFLA_VXLAN_LEARNING") == 0
            assert info.get_attr("IFLA_VXLAN_PORT") == 4789
            assert info.get_attr("IFLA_VXLAN_LOCAL") == "192.168.250.1"
        assert set(mtus.values()) - {65536} == {1450}, mtus
        with nsutil.ipr(ns_a) as ip:
            eth0 = ip.get_links(ip.link_lookup(ifname="eth0")[0])[0]
            assert eth0.get_attr("IFLA_MTU") == 1450
            assert eth0.get_attr("IFLA_ADDRESS") == MAC_A
            routes = [r.get_attr("RTA_DST") for r in ip.get_routes(family=2, table=254)]
            assert routes == ["10.10.0.0"]             # subnet route only, no default

        # the vxlan socket lives in the host namespace, not in the overlay one
        out = nsutil.run(hosts["a"], ["ss", "-uan"]).stdout
        assert ":4789" in out

        r = _ping(ns_a, "10.10.0.3")
        assert r.returncode == 0, r.stdout + r.stderr
        # largest frame that fits the overlay MTU (1422 + 8 ICMP + 20 IP = 1450) passes
        r = _ping(ns_b, "10.10.0.2", size=1422)
        assert r.returncode == 0, r.stdout + r.stderr

        # the task's interface is a macvlan of vxlan0: no veth, no bridge in the way
        assert _kind(ns_a, "eth0") == "macvlan"
        assert _links(nets["a"].netns_path) == {"lo", "vxlan0"}
        # two tasks of one node reach each other without leaving it
        ns_c = nets["a"].attach("taskc", "10.10.0.4/24", MAC_C)
        r = _ping(ns_c, "10.10.0.2")
        assert r.returncode == 0, r.stdout + r.stderr
        # an agent restarted meanwhile (no attachment record) still detaches the right interface
        OverlayNetwork("shlta", VNI, "10.10.0.0/24", "192.168.250.1",
                       netns_dir=str(tmp / "a" / "netns"), node_netns=hosts["a"]).detach("taskc")
        assert not os.path.exists(ns_c)
        assert _links(ns_a) == {"lo", "eth0"}

        # detach one side: its namespace goes, the network stays
        nets["b"].detach("taskb")
        assert not os.path.exists(ns_b)
        assert _ping(ns_a, "10.10.0.3", count=1).returncode != 0
    finally:
        for net in nets.values():
            net.remove()
    for name, net in nets.items():
        assert not os.path.exists(net.netns_path)
        assert not os.path.exists(net.task_netns_path("taska"))
        assert not os.path.ismount(net.netns_dir)
        assert not os.listdir(net.netns_dir)
        assert _links(hosts[name]) == {"lo", "eth0"}
        fdb = nsutil.run(hosts[name], ["bridge", "fdb", "show"]).stdout
        assert "192.168.250" not in fdb
        out = nsutil.run(hosts[name], ["ss", "-uan"]).stdout
        assert ":4789" not in out


def test_an_older_bridge_layout_serves_its_tasks_until_they_are_gone(two_hosts):
    """An overlay namespace from shoal <= 0.1 (bridge br0, veths) with a task still on it keeps
    working, takes new tasks the same way, and is converted once no task hangs on it."""
    hosts, tmp = two_hosts
    net = OverlayNetwork("shltd", VNI, "10.10.0.0/24", "192.168.250.1",
                         netns_dir=str(tmp / "a" / "netns"), node_netns=hosts["a"])
    old_task = net.task_netns_path("old")
    try:
        net.ensure()
        nsutil.create(old_task)         # what the old layout made for a running task
        fd = os.open(old_task, os.O_RDONLY)
        try:
            with nsutil.ipr(net.netns_path) as ov:
                ov.link("add", ifname="br0", kind="bridge")
                br = ov.link_lookup(ifname="br0")[0]
                ov.link("set", index=ov.link_lookup(ifname="vxlan0")[0], master=br)
                ov.link("add", ifname="veold", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
                ov.link("set", index=ov.link_lookup(ifname="veold")[0], master=br, state="up")
                ov.link("set", index=br, state="up")
        finally:
            os.close(fd)
        with nsutil.ipr(old_task) as tk:
            idx = tk.link_lookup(ifname="eth0")[0]
            tk.link("set", index=idx, address=MAC_A, mtu=1450)
            tk.addr("add", index=idx, address="10.10.0.2", prefixlen=24)
            tk.link("set", index=idx, state="up")

        net.ensure()                    # an agent of this version starts
        assert "br0" in _links(net.netns_path)
        ns_new = net.attach("new", "10.10.0.3/24", MAC_B)
        assert _kind(ns_new, "eth0") == "veth"
        r = _ping(ns_new, "10.10.0.2")
        assert r.returncode == 0, r.stdout + r.stderr

        net.detach("new")
        with nsutil.ipr(net.netns_path) as ov:     # the old task goes
            ov.link("del", index=ov.link_lookup(ifname="veold")[0])
        nsutil.remove(old_task)
        net.ensure()
        assert _links(net.netns_path) == {"lo", "vxlan0"}
        ns_new = net.attach("new", "10.10.0.3/24", MAC_B)
        assert _kind(ns_new, "eth0") == "macvlan"
    finally:
        net.remove()
        nsutil.remove(old_task)
    assert not os.path.exists(net.netns_path)
    assert _links(hosts["a"]) == {"lo", "eth0"}


def test_vxlan_datagrams_bypass_the_nodes_conntrack(two_hosts):
    """A node with NAT tables (one that publishes a port) tracks every packet in its namespace;
    the overlay's encapsulated traffic is exempt, and the exemption goes with the last overlay."""
    hosts, tmp = two_hosts
    nets = {
        name: OverlayNetwork(f"shlt{name}", VNI, "10.10.0.0/24", f"192.168.250.{i}",
                             netns_dir=str(tmp / name / "netns"), node_netns=hosts[name])
        for i, name in ((1, "a"), (2, "b"))}
    tracked = lambda: nsutil.run(hosts["a"], ["cat", "/proc/net/nf_conntrack"]).stdout  # noqa: E731
    try:
        # a NAT rule (an empty NAT chain does not) makes the kernel track the namespace
        nat = ("table ip natdemo {\n  chain out { type nat hook output priority -100; "
               "policy accept; ip daddr 192.0.2.1 dnat to 192.0.2.2; }\n}\n")
        assert nsutil.run(hosts["a"], ["nft", "-f", "-"], input=nat).returncode == 0
        for name, mac, ip in (("a", MAC_A, "10.10.0.2"), ("b", MAC_B, "10.10.0.3")):
            nets[name].ensure()
            nets[name].attach(f"task{name}", f"{ip}/24", mac)
            vxlan_notrack(hosts[name], True)
        peers = [Peer(MAC_A, "10.10.0.2", "192.168.250.1"), Peer(MAC_B, "10.10.0.3", "192.168.250.2")]
        for net in nets.values():
            net.set_peers(peers)
        r = _ping(nets["a"].task_netns_path("taska"), "10.10.0.3")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "dport=4789" not in tracked(), tracked()

        vxlan_notrack(hosts["a"], False)
        vxlan_notrack(hosts["a"], False)        # idempotent
        assert _ping(nets["a"].task_netns_path("taska"), "10.10.0.3").returncode == 0
        assert "dport=4789" in tracked()        # the exemption, not the kernel, kept it out
    finally:
        for name, net in nets.items():
            net.remove()
            vxlan_notrack(hosts[name], False)
        nsutil.run(hosts["a"], ["nft", "delete", "table", "ip", "natdemo"])
    assert nsutil.run(hosts["a"], ["nft", "list", "tables"]).stdout.strip() == ""


class _LinkMonitor:
    """`ip -o monitor link` in a namespace: every link message, as the kernel sends it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.proc = subprocess.Popen(["nsenter", f"--net={path}", "ip", "-o", "monitor", "link"],
                                     stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        # listening for sure once it reports a link made after it started
        with nsutil.ipr(path) as ip:
            ip.link("add", ifname="monready", kind="bridge")
        self._until("monready")
        with nsutil.ipr(path) as ip:
            ip.link("del", index=ip.link_lookup(ifname="monready")[0])

    def _until(self, word: str) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if word in line:
                return
        raise AssertionError(f"ip monitor ended before reporting {word}")

    def stop(self) -> list[str]:
        with nsutil.ipr(self.path) as ip:      # a last event, so that everything before is read
            ip.link("add", ifname="monend", kind="bridge")
        try:
            self._until("monend")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        with nsutil.ipr(self.path) as ip:
            ip.link("del", index=ip.link_lookup(ifname="monend")[0])
        return self.lines


def test_the_nodes_ingress_interface_keeps_its_mac_against_udev(two_hosts):
    """Debian's systemd-udevd gives a new MAC (MACAddressPolicy=persistent) to an interface that
    appears in the host's namespace with a random one, a moment later. Seen in the VM lab: the
    node's ingress interface lost the MAC its peers send to, and the routing mesh from that node
    reached only its local tasks. The interface is born with its MAC, so udev leaves it alone,
    and one changed anyway is set back on the next sync."""
    hosts, tmp = two_hosts
    nets = {
        name: OverlayNetwork(f"shlu{name}", VNI, "10.10.0.0/24", f"192.168.250.{i}",
                             netns_dir=str(tmp / name / "netns"), node_netns=hosts[name])
        for i, name in ((1, "a"), (2, "b"))}
    try:
        for net in nets.values():
            net.ensure()
        tmp_name = nets["a"]._host_ifname(f"node:{VNI}")
        # the overlay namespace is where the interface is made, before it moves to the node's
        monitor = _LinkMonitor(nets["a"].netns_path)
        try:
            nets["a"].attach_node("10.10.0.2/24", MAC_A, "shoal_ingress")
        finally:
            lines = monitor.stop()
        born = [re.search(r"link/ether (\S+)", line).group(1) for line in lines
                if f" {tmp_name}@" in line and "link/ether" in line]
        assert born and set(born) == {MAC_A}, f"born with {born}, not {MAC_A}:\n{''.join(lines)}"
        nets["b"].attach("taskb", "10.10.0.3/24", MAC_B)
        peers = [Peer(MAC_A, "10.10.0.2", "192.168.250.1"), Peer(MAC_B, "10.10.0.3", "192.168.250.2")]
        for net in nets.values():
            net.set_peers(peers)
        ns_b = nets["b"].task_netns_path("taskb")
        assert _ping(ns_b, "10.10.0.2").returncode == 0

        # what udev did in the lab: another MAC on the node's interface
        with nsutil.ipr(hosts["a"]) as ip:
            ip.link("set", index=ip.link_lookup(ifname="shoal_ingress")[0],
                    address="f2:a0:62:c5:ae:ca")
        assert _ping(ns_b, "10.10.0.2", count=1).returncode != 0
        nets["a"].attach_node("10.10.0.2/24", MAC_A, "shoal_ingress")     # the next sync
        with nsutil.ipr(hosts["a"]) as ip:
            link = ip.get_links(ip.link_lookup(ifname="shoal_ingress")[0])[0]
        assert link.get_attr("IFLA_ADDRESS") == MAC_A
        r = _ping(ns_b, "10.10.0.2")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        for net in nets.values():
            net.remove()
    for name in nets:
        assert _links(hosts[name]) == {"lo", "eth0"}
