"""One VXLAN overlay network on one node.

Layout (per network, per node)::

    node namespace (underlay)          overlay namespace <netns_dir>/<prefix>-ov<vni>
      eth0 192.168.x.y  <-- UDP 4789 --   vxlan0 (VNI, learning off, proxy)
                                            |  macvlan children, mode bridge
                                            +-- task namespace: eth0 (the task's MAC and address)
                                            +-- task namespace: eth0 ...

The vxlan device is created in the node's namespace and then moved: a vxlan device keeps the
namespace it was created in for its UDP socket, so encapsulated traffic uses the node's underlay
while the device itself is only reachable from the overlay namespace.

A task's interface is a macvlan of vxlan0, moved into the task's namespace, not a veth on a
bridge (Docker's layout, and shoal 0.1's): a veth hands every frame to the backlog queue of the
other side and a bridge adds a forwarding step of its own. A macvlan transmits straight into
vxlan0, and vxlan0 delivers a decapsulated frame straight to the macvlan owning its destination
MAC. One TCP stream between tasks on two nodes gains about a seventh
(bench/overlay_layout_bench.py). Macvlans of one vxlan0 in bridge mode reach each other
directly, which is how two tasks of one node talk. An overlay namespace made by an older shoal
(a bridge br0 with veths) keeps that layout for as long as anything hangs on it (a task, or the
node's own ingress address), and is rebuilt the new way once nothing does.

Remote endpoints come from the dispatcher's peer table, never from flooding or learning:
 - one static FDB entry per remote MAC on vxlan0 (dst = the remote node's underlay address), and
   no all-zero entry, so unknown unicast / broadcast is never sent to anybody;
 - one permanent neighbour entry per remote IP on vxlan0. vxlan0 has ``proxy`` on, so it answers
   ARP requests from local containers out of that table (ARP suppression). The kernel looks the
   entry up on the *vxlan* device, not on the bridge, which is why the entries live there.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Optional

from pyroute2.netlink.rtnl.ndmsg import NTF_SELF, NUD_NOARP, NUD_PERMANENT

from common.nodestate import VXLAN_PORT
from worker.network import nsutil

log = logging.getLogger("shoal.network")

VXLAN_OVERHEAD = 50          # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
VXLAN = "vxlan0"
LEGACY_BRIDGE = "br0"        # the layout of shoal <= 0.1: see the module's docstring


class OverlayError(Exception):
    pass


# The node's VXLAN datagrams bypass conntrack. A node that publishes a port holds NAT tables,
# which make the kernel track every packet in its namespace, and an encapsulated stream would
# pay for a lookup on both nodes that nothing ever uses: no rule rewrites VXLAN.
NOTRACK_TABLE = "shoal_vxlan"


def vxlan_notrack(node_netns: Optional[str], on: bool, port: int = VXLAN_PORT) -> None:
    """Install (or remove) the node's table exempting VXLAN from conntrack (idempotent)."""
    script = nsutil.nft_reset(NOTRACK_TABLE)
    if on:
        script += (f"table ip {NOTRACK_TABLE} {{\n"
                   f"  chain prerouting {{ type filter hook prerouting priority raw; policy accept; "
                   f"udp dport {port} notrack; }}\n"
                   f"  chain output {{ type filter hook output priority raw; policy accept; "
                   f"udp dport {port} notrack; }}\n}}\n")
    nsutil.nft(node_netns, script, OverlayError)


@dataclass(frozen=True)
class Peer:
    """A remote endpoint: its overlay MAC and IP and the underlay address of its node."""
    mac: str
    ip: str
    underlay_ip: str


@dataclass
class Attachment:
    task_id: str
    netns_path: str
    ifname: str
    created_netns: bool


def _short(*parts: object, n: int = 10) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()[:n]


def _first(ip, **lookup) -> Optional[int]:
    found = ip.link_lookup(**lookup)
    return found[0] if found else None


@dataclass
class OverlayNetwork:
    """Create, populate and remove the overlay namespace of one network on this node.

    ``name_prefix`` must be unique per node (several nodes share a machine in the lab).
    ``netns_dir`` is where namespaces are bind-mounted (the node's ``<data_root>/netns``).
    ``node_netns`` is the namespace holding the underlay; None means the caller's own (the normal
    case: shoald runs in the node's namespace). Tests pass a path to play several nodes at once.
    """
    name_prefix: str
    vni: int
    subnet: str
    underlay_ip: str
    underlay_if: Optional[str] = None
    netns_dir: str = "/run/shoal/netns"
    node_netns: Optional[str] = None
    vxlan_port: int = VXLAN_PORT   # the swarm's data path port (`swarm init --data-path-port`)
    attachments: dict[str, Attachment] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.vni < 2 ** 24:
            raise ValueError(f"VNI {self.vni} out of range 1..16777215")
        self.network = ipaddress.ip_network(self.subnet, strict=False)

    # -- names --
    @property
    def netns_path(self) -> str:
        return os.path.join(self.netns_dir, f"{self.name_prefix}-ov{self.vni}")

    @property
    def _tmp_vxlan(self) -> str:
        # unique in the node namespace for the moment between creation and the move
        return f"vx{_short(self.name_prefix, self.vni)}"

    def task_netns_path(self, task_id: str) -> str:
        return os.path.join(self.netns_dir, task_id)

    def _host_ifname(self, task_id: str) -> str:
        # a macvlan's name until it reaches its namespace; a legacy veth's overlay side
        return f"ve{_short(task_id, n=12)}"     # 14 chars: IFNAMSIZ is 16 with the NUL

    @property
    def _alias(self) -> str:
        # marks this network's interfaces in task namespaces, so a detach after an agent
        # restart (no Attachment record) still finds the right one
        return f"shoal-ov{self.vni}"

    # -- underlay --
    def underlay_mtu(self) -> int:
        with nsutil.ipr(self.node_netns) as ip:
            idx = self._underlay_index(ip)
            return ip.get_links(idx)[0].get_attr("IFLA_MTU")

    def _underlay_index(self, ip) -> int:
        if self.underlay_if:
            idx = _first(ip, ifname=self.underlay_if)
            if idx is None:
                raise OverlayError(f"underlay interface {self.underlay_if} not found")
            return idx
        for addr in ip.get_addr(family=socket.AF_INET):
            if addr.get_attr("IFA_ADDRESS") == self.underlay_ip:
                return addr["index"]
        raise OverlayError(f"no interface holds the underlay address {self.underlay_ip}")

    @property
    def mtu(self) -> int:
        return self.underlay_mtu() - VXLAN_OVERHEAD

    # -- lifecycle --
    def ensure(self) -> str:
        """Create what is missing (idempotent); returns the overlay namespace path."""
        mtu = self.mtu
        nsutil.create(self.netns_path)
        with nsutil.ipr(self.netns_path) as ov:
            br = _first(ov, ifname=LEGACY_BRIDGE)
            if br is not None and not [l for l in ov.get_links()
                                       if l.get_attr("IFLA_MASTER") == br
                                       and l.get_attr("IFLA_IFNAME") != VXLAN]:
                ov.link("del", index=br)        # no task on the old layout: convert
                br = None
            has_vxlan = _first(ov, ifname=VXLAN) is not None
        if not has_vxlan:
            self._create_vxlan(mtu)
        with nsutil.ipr(self.netns_path) as ov:
            vx = _first(ov, ifname=VXLAN)
            if br is not None:
                ov.link("set", index=vx, master=br)
            ov.link("set", index=vx, mtu=mtu, state="up")
        return self.netns_path

    def _create_vxlan(self, mtu: int) -> None:
        tmp = self._tmp_vxlan
        with nsutil.ipr(self.node_netns) as node:
            stale = _first(node, ifname=tmp)
            if stale is not None:       # a crash between create and move
                node.link("del", index=stale)
            spec = dict(ifname=tmp, kind="vxlan", vxlan_id=self.vni,
                        vxlan_local=self.underlay_ip, vxlan_port=self.vxlan_port,
                        vxlan_learning=0, vxlan_proxy=1, mtu=mtu)
            if self.underlay_if:
                spec["vxlan_link"] = self._underlay_index(node)
            node.link("add", **spec)
            idx = _first(node, ifname=tmp)
            fd = os.open(self.netns_path, os.O_RDONLY)
            try:
                node.link("set", index=idx, net_ns_fd=fd)
            finally:
                os.close(fd)
        with nsutil.ipr(self.netns_path) as ov:
            ov.link("set", index=_first(ov, ifname=tmp), ifname=VXLAN)

    def attach(self, task_id: str, ip_cidr: str, mac: str, *, netns_path: Optional[str] = None,
               ifname: str = "eth0") -> str:
        """Give the task an interface on this network; returns its namespace path.

        A new namespace is created at ``<netns_dir>/<task_id>`` unless ``netns_path`` names an
        existing one (a task on several networks: pass ``ifname="eth1"`` etc.). No default
        route: only the subnet route of the address.
        """
        iface = ipaddress.ip_interface(ip_cidr)
        if iface.ip not in self.network:
            raise OverlayError(f"{ip_cidr} is outside the network {self.network}")
        path = netns_path or self.task_netns_path(task_id)
        created = not nsutil.exists(path)
        nsutil.create(path)
        try:
            with nsutil.ipr(path) as tk:
                old = _first(tk, ifname=ifname)
                if old is not None:     # re-attach after a crash: start from scratch
                    tk.link("del", index=old)
            mtu = self.mtu
            self._plug(self._host_ifname(task_id), path, ifname, mtu, mac)
            with nsutil.ipr(path) as tk:
                idx = _first(tk, ifname=ifname)
                tk.link("set", index=idx, ifalias=self._alias)
                tk.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                tk.link("set", index=idx, state="up")
        except BaseException:
            self._drop(task_id, path, created)
            raise
        self.attachments[task_id] = Attachment(task_id, path, ifname, created)
        return path

    def _plug(self, tmp_name: str, target_netns: Optional[str], ifname: str, mtu: int,
              mac: str) -> None:
        """Create an interface on this network in ``target_netns`` (None: the node's own), named
        ``ifname`` there: a macvlan of vxlan0, or a veth into the bridge of an old layout.

        The MAC is given at creation, not set afterwards: an interface born with a random MAC
        that arrives in the host's namespace is fair game for systemd-udevd's
        MACAddressPolicy=persistent (Debian's default), which may replace the MAC a moment after
        we set ours. The peers' FDB entries name our MAC, so traffic to the node then vanishes.
        An address given at creation is not "random" and udev leaves it alone."""
        self._clear_target(tmp_name, target_netns)
        with nsutil.ipr(self.netns_path) as ov:
            vx = _first(ov, ifname=VXLAN)
            if vx is None:
                raise OverlayError(f"overlay {self.netns_path} has no {VXLAN}: call ensure()")
            old = _first(ov, ifname=tmp_name)
            if old is not None:         # a crash between create and move, or a legacy veth
                ov.link("del", index=old)
            fd = os.open(target_netns or self._own_netns(), os.O_RDONLY)
            try:
                br = _first(ov, ifname=LEGACY_BRIDGE)
                if br is not None:
                    ov.link("add", ifname=tmp_name, kind="veth", mtu=mtu,
                            peer={"ifname": ifname, "net_ns_fd": fd, "mtu": mtu, "address": mac})
                    idx = _first(ov, ifname=tmp_name)
                    ov.link("set", index=idx, master=br)
                    ov.link("set", index=idx, state="up")
                    return
                ov.link("add", ifname=tmp_name, kind="macvlan", link=vx, macvlan_mode="bridge",
                        mtu=mtu, address=mac)
                ov.link("set", index=_first(ov, ifname=tmp_name), net_ns_fd=fd)
            finally:
                os.close(fd)
        with nsutil.ipr(target_netns) as tk:
            tk.link("set", index=_first(tk, ifname=tmp_name), ifname=ifname)

    def _clear_target(self, tmp_name: str, target_netns: Optional[str]) -> None:
        with nsutil.ipr(target_netns) as tk:
            old = _first(tk, ifname=tmp_name)     # a crash between the move and the rename
            if old is not None:
                tk.link("del", index=old)

    def _own_netns(self) -> str:
        return self.node_netns or f"/proc/{os.getpid()}/ns/net"

    def attach_node(self, ip_cidr: str, mac: str, ifname: str) -> None:
        """Give the node itself an address on this network (idempotent): an interface of this
        network in the node's namespace. The routing mesh forwards published ports from it."""
        iface = ipaddress.ip_interface(ip_cidr)
        with nsutil.ipr(self.node_netns) as node:
            idx = _first(node, ifname=ifname)
            if idx is not None:
                have = {a.get_attr("IFA_ADDRESS") for a in node.get_addr(index=idx,
                                                                       family=socket.AF_INET)}
                if have == {str(iface.ip)}:
                    link = node.get_links(idx)[0]
                    if link.get_attr("IFLA_ADDRESS", "").lower() != mac.lower():
                        # Something in the host changed it (an interface made by an older
                        # shoal, then given another MAC by udev): the peers still send to ours.
                        log.warning("%s had MAC %s instead of %s; set it back", ifname,
                                    link.get_attr("IFLA_ADDRESS"), mac)
                        node.link("set", index=idx, address=mac)
                    return
                node.link("del", index=idx)
        mtu = self.mtu
        self._plug(self._host_ifname(f"node:{self.vni}"), self.node_netns, ifname, mtu, mac)
        with nsutil.ipr(self.node_netns) as node:
            idx = _first(node, ifname=ifname)
            node.link("set", index=idx, ifalias=self._alias)
            node.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            node.link("set", index=idx, state="up")

    def detach(self, task_id: str) -> None:
        """Remove the task's interface; its namespace too once nothing else is in it."""
        att = self.attachments.pop(task_id, None)
        path = att.netns_path if att else self.task_netns_path(task_id)
        self._drop(task_id, path, att.created_netns if att else True)

    def _drop(self, task_id: str, path: str, created: bool) -> None:
        if nsutil.exists(self.netns_path):
            with nsutil.ipr(self.netns_path) as ov:
                # a legacy veth (takes its peer with it), or a macvlan never moved
                idx = _first(ov, ifname=self._host_ifname(task_id))
                if idx is not None:
                    ov.link("del", index=idx)
        if nsutil.exists(path):
            with nsutil.ipr(path) as tk:
                for link in tk.get_links():
                    if link.get_attr("IFLA_IFALIAS") == self._alias:
                        tk.link("del", index=link["index"])
                others = [l for l in tk.get_links() if l.get_attr("IFLA_IFNAME") != "lo"]
            if created and not others:
                nsutil.remove(path)

    def set_peers(self, peers: list[Peer]) -> None:
        """Make vxlan0's static FDB and neighbour entries exactly the given remote endpoints."""
        wanted_fdb = {p.mac.lower(): p.underlay_ip for p in peers
                      if p.underlay_ip != self.underlay_ip}
        wanted_arp = {p.ip: p.mac.lower() for p in peers if p.underlay_ip != self.underlay_ip}
        with nsutil.ipr(self.netns_path) as ov:
            vx = _first(ov, ifname=VXLAN)
            if vx is None:
                raise OverlayError(f"overlay {self.netns_path} has no {VXLAN}: call ensure()")
            current_fdb, current_arp = self._entries(ov, vx)
            for mac, dst in current_fdb.items():
                if wanted_fdb.get(mac) != dst:
                    ov.fdb("del", ifindex=vx, lladdr=mac, dst=dst)
            for mac, dst in wanted_fdb.items():
                if current_fdb.get(mac) != dst:
                    ov.fdb("append", ifindex=vx, lladdr=mac, dst=dst,
                           state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF)
            for ip_, mac in current_arp.items():
                if wanted_arp.get(ip_) != mac:
                    ov.neigh("del", ifindex=vx, dst=ip_, lladdr=mac)
            for ip_, mac in wanted_arp.items():
                if current_arp.get(ip_) != mac:
                    ov.neigh("replace", ifindex=vx, dst=ip_, lladdr=mac, state=NUD_PERMANENT)

    @staticmethod
    def _entries(ov, vx: int) -> tuple[dict[str, str], dict[str, str]]:
        fdb: dict[str, str] = {}
        for msg in ov.fdb("dump"):
            if msg["ifindex"] != vx:
                continue
            dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
            if dst and mac:
                fdb[mac.lower()] = dst
        arp: dict[str, str] = {}
        for msg in ov.get_neighbours(family=socket.AF_INET, ifindex=vx):
            dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
            if dst and mac:
                arp[dst] = mac.lower()
        return fdb, arp

    def peers(self) -> tuple[dict[str, str], dict[str, str]]:
        """(FDB mac -> underlay ip, neighbour ip -> mac) as programmed on vxlan0."""
        if not nsutil.exists(self.netns_path):
            return {}, {}
        with nsutil.ipr(self.netns_path) as ov:
            vx = _first(ov, ifname=VXLAN)
            return self._entries(ov, vx) if vx is not None else ({}, {})

    def remove(self) -> None:
        """Delete everything this network put on the node (idempotent)."""
        for task_id in list(self.attachments):
            self.detach(task_id)
        if nsutil.exists(self.netns_path):
            # delete devices explicitly: namespace teardown is asynchronous in the kernel and the
            # vxlan UDP socket (in the node namespace) should be gone when we return
            with nsutil.ipr(self.netns_path) as ov:
                for name in (VXLAN, LEGACY_BRIDGE):    # vxlan0 takes its macvlans with it
                    idx = _first(ov, ifname=name)
                    if idx is not None:
                        ov.link("del", index=idx)
                for link in ov.get_links():
                    if link.get_attr("IFLA_IFNAME") != "lo":
                        ov.link("del", index=link["index"])
        nsutil.remove(self.netns_path)
        with nsutil.ipr(self.node_netns) as node:
            stale = _first(node, ifname=self._tmp_vxlan)
            if stale is not None:
                node.link("del", index=stale)
        nsutil.release_dir(self.netns_dir)
