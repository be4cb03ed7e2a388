"""This node's part of the overlay networks, driven by the network state in its assignments.

Per network with a local task (and the ingress network while any service publishes a port):
an overlay namespace (a VXLAN device, see overlay.py) whose static FDB and neighbour entries are
exactly the cluster's endpoints on it. Per task on a network: its own namespace with one
interface per network (eth0, eth1, ... in the order the allocator gave), a DNS responder on
127.0.0.11 inside it that knows the services of the task's networks, and the service VIPs
load-balanced by nftables in that namespace (DNAT on output, so replies come back through the
same conntrack).

The ingress routing mesh: the node itself gets an address on the ingress network (an interface
of the ingress overlay in the node's namespace) and a load balancer in the node's namespace that
sends every published port to the tasks' ingress addresses, wherever they run, masquerading so
that replies return through this node.

Netlink and nft calls block; they all run in one worker thread (the one seam where this module
leaves asyncio), which also serialises them.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from common import errors
from common.model import Task
from common.nodestate import VXLAN_PORT
from worker.network import nsutil
from worker.network.dns import DnsServer, ServiceTable, upstreams_from_resolv_conf
from worker.network.lb import Backend, Frontend, LoadBalancer, TaskNftables, make_lb
from worker.network.overlay import OverlayNetwork, Peer, vxlan_notrack

log = logging.getLogger("shoal.network")

DNS_ADDRESS = "127.0.0.11"
INGRESS_IFNAME = "shoal_ingress"
# Host-mode ports reach their task over a node-local bridge, as docker's docker_gwbridge.
GW_BRIDGE = "shoal_gwbridge"
GW_NETWORK = ipaddress.IPv4Network("172.18.0.0/16")
GW_ADDRESS = "172.18.0.1"
RESOLV_CONF = f"nameserver {DNS_ADDRESS}\noptions ndots:0\n"


@dataclass
class TaskNetworking:
    task_id: str
    netns: str
    network_ids: list[str]
    resolv_conf: Path
    host_ports: list[tuple[str, int, int]] = field(default_factory=list)  # proto, published, target
    gw_ip: str = ""
    dns: Optional[DnsServer] = None
    lb: Optional[TaskNftables] = None
    vips: dict[Frontend, list[Backend]] = field(default_factory=dict)


class NodeNetworks:
    def __init__(self, data_root: Path, underlay_ip: str, lb_kind: str = "auto") -> None:
        self.data_root = Path(data_root)
        self.netns_dir = str(self.data_root / "netns")
        # Several nodes share one machine in the lab: names in shared places carry the node.
        self.prefix = "s" + hashlib.sha1(str(self.data_root.resolve()).encode()).hexdigest()[:6]
        self.underlay_ip = underlay_ip
        self.lb_kind = lb_kind
        self.views: dict[str, dict] = {}          # network id -> the managers' view of it
        self.node_ingress: Optional[dict] = None
        self.vxlan_port = VXLAN_PORT            # the swarm's, from the managers' state
        self.overlays: dict[str, OverlayNetwork] = {}
        self.tasks: dict[str, TaskNetworking] = {}
        self._ingress_lb: Optional[LoadBalancer] = None
        self._published: dict[Frontend, list[Backend]] = {}
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self._lock = asyncio.Lock()
        self._have_state = asyncio.Event()
        self._gc_done = False

    async def _call(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    # ---- the managers' state ----------------------------------------------------------------
    async def apply(self, state: dict) -> None:
        """Make this node's overlays, peers, DNS tables and load balancers match ``state``.
        Raises after trying everything when some part failed (the caller asks again)."""
        async with self._lock:
            self.views = {n["id"]: n for n in state.get("networks", [])}
            self.node_ingress = state.get("ingress")
            self.vxlan_port = int(state.get("vxlan_port") or VXLAN_PORT)
            failures: list[str] = []
            for net_id, view in self.views.items():
                try:
                    ov = await self._overlay(view)
                    await self._call(ov.set_peers, [Peer(e["mac"], e["ip"], e["node_addr"])
                                                    for e in view["endpoints"]])
                except Exception as exc:  # noqa: BLE001 - one network must not block the others
                    log.warning("network %s: %s", view["name"], exc)
                    failures.append(f"{view['name']}: {exc}")
            try:
                await self._sync_ingress()
            except Exception as exc:  # noqa: BLE001
                log.warning("ingress: %s", exc)
                failures.append(f"ingress: {exc}")
            for tn in list(self.tasks.values()):
                try:
                    await self._sync_task(tn)
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"task {tn.task_id}: {exc}")
            await self._drop_unused_overlays()
            self._have_state.set()
            if failures:
                raise errors.ShoalError("network state not fully applied: " + "; ".join(failures))

    async def _overlay(self, view: dict) -> OverlayNetwork:
        ov = self.overlays.get(view["id"])
        if ov is not None and (ov.vni, str(ov.network), ov.vxlan_port) != \
                (view["vni"], view["subnet"], self.vxlan_port):
            await self._call(ov.remove)
            ov = None
        if ov is None:
            ov = OverlayNetwork(name_prefix=self.prefix, vni=view["vni"], subnet=view["subnet"],
                                underlay_ip=self.underlay_ip, netns_dir=self.netns_dir,
                                vxlan_port=self.vxlan_port)
            await self._call(ov.ensure)
            if not self.overlays:
                await self._call(vxlan_notrack, None, True, self.vxlan_port)
            self.overlays[view["id"]] = ov
        return ov

    async def _drop_unused_overlays(self) -> None:
        in_use = {nid for tn in self.tasks.values() for nid in tn.network_ids}
        for net_id in [n for n in self.overlays if n not in self.views and n not in in_use]:
            ov = self.overlays.pop(net_id)
            log.info("removing overlay VNI %s from this node", ov.vni)
            await self._call(ov.remove)
            if not self.overlays:
                await self._call(vxlan_notrack, None, False)
        if not self._gc_done:
            # Overlays left by an earlier run whose network is gone meanwhile.
            self._gc_done = True
            wanted = {ov.netns_path for ov in self.overlays.values()}
            for name in _listdir(self.netns_dir):
                path = os.path.join(self.netns_dir, name)
                vni = _overlay_vni(name, self.prefix)
                if vni is not None and path not in wanted:
                    stale = OverlayNetwork(name_prefix=self.prefix, vni=vni, subnet="0.0.0.0/0",
                                           underlay_ip=self.underlay_ip, netns_dir=self.netns_dir)
                    log.info("removing stale overlay VNI %s", vni)
                    await self._call(stale.remove)
            if not self.overlays:       # an earlier run's, with its last network gone
                await self._call(vxlan_notrack, None, False)

    # ---- the routing mesh -------------------------------------------------------------------
    async def _sync_ingress(self) -> None:
        view = next((v for v in self.views.values() if v["ingress"]), None)
        wanted: dict[Frontend, list[Backend]] = {}
        if view is not None and self.node_ingress:
            ov = self.overlays[view["id"]]
            await self._call(ov.attach_node, self.node_ingress["address"],
                             self.node_ingress["mac"], INGRESS_IFNAME)
            await self._call(_enable_forwarding)
            for svc in view["services"]:
                for p in svc.get("ports", []):
                    fe = Frontend(p["protocol"], None, p["published_port"])
                    wanted[fe] = [Backend(ip, p["target_port"]) for ip in svc["backends"]]
        host_mode = False
        for tn in self.tasks.values():
            for proto, published, target in tn.host_ports:
                if tn.gw_ip:
                    wanted.setdefault(Frontend(proto, None, published), []).append(
                        Backend(tn.gw_ip, target))
                    host_mode = True
        if host_mode:
            # DNAT to the gateway bridge forwards: with no ingress network on this node (nothing
            # published in ingress mode anywhere) nothing else has turned forwarding on.
            await self._call(_enable_forwarding)
        if not wanted and not self._published:
            return
        if self._ingress_lb is None:
            self._ingress_lb = await self._call(make_lb, self.lb_kind, None)
            log.info("routing mesh load balancer: %s", type(self._ingress_lb).__name__)
        for fe in [f for f in self._published if f not in wanted]:
            await self._call(self._ingress_lb.remove_service, fe)
            del self._published[fe]
        for fe, backends in wanted.items():
            if self._published.get(fe) != backends:
                await self._call(self._ingress_lb.ensure_service, fe, backends)
                self._published[fe] = backends

    # ---- tasks ----------------------------------------------------------------------------
    async def attach(self, task: Task, adopted: bool = False) -> tuple[Optional[str], list]:
        """Give the task its interfaces, resolver and VIPs; returns (netns path, extra binds).
        An adopted task (its container survived an agent restart) keeps its interfaces."""
        host_ports = [(p.protocol, p.published_port, p.target_port) for p in task.ports
                      if p.publish_mode == "host" and p.published_port]
        if not task.networks and not host_ports:
            return None, []
        if not self._have_state.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._have_state.wait(), 10)
        async with self._lock:
            netns = os.path.join(self.netns_dir, task.id)
            tn = self.tasks.get(task.id)
            if tn is None:
                resolv = self.data_root / "resolv" / f"{task.id}.conf"
                tn = TaskNetworking(task.id, netns, [a.network_id for a in task.networks], resolv,
                                    host_ports)
            try:
                if not (adopted and nsutil.exists(netns)):
                    for i, att in enumerate(task.networks):
                        view = self.views.get(att.network_id)
                        if view is None:
                            raise errors.Unavailable(f"network {att.network_id} of task {task.id} "
                                                     "is not known on this node yet")
                        ov = await self._overlay(view)
                        await self._call(ov.attach, task.id, att.address, att.mac,
                                         netns_path=netns, ifname=f"eth{i}")
                if host_ports:
                    tn.gw_ip = await self._call(self._gateway_link, task.id, netns,
                                                f"eth{len(task.networks)}", adopted)
                tn.resolv_conf.parent.mkdir(parents=True, exist_ok=True)
                tn.resolv_conf.write_text(RESOLV_CONF)
                if tn.dns is None:
                    # on a port of its own: the task may run a DNS server on 53 itself
                    tn.dns = DnsServer(ServiceTable(), DNS_ADDRESS, 0, netns=netns,
                                       upstreams=_task_upstreams(task))
                    await tn.dns.start()
                if tn.lb is None:
                    tn.lb = TaskNftables(netns, redirects=((DNS_ADDRESS, 53, tn.dns.bound[1]),))
                    await self._call(tn.lb.replace_all, {}, True)
                self.tasks[task.id] = tn
                await self._sync_task(tn)
                if host_ports:
                    await self._sync_ingress()
            except BaseException:
                self.tasks.pop(task.id, None)
                await self._release(tn)
                raise
        return netns, [(str(tn.resolv_conf), "/etc/resolv.conf", True)]

    async def _sync_task(self, tn: TaskNetworking) -> None:
        """The task's resolver answers for the services and standalone containers of its
        networks (not the ingress: it is for published ports, not discovery); the services'
        VIPs are balanced in its namespace."""
        table = ServiceTable()
        vips: dict[Frontend, list[Backend]] = {}
        for net_id in reversed(tn.network_ids):      # the first network wins a shared name
            view = self.views.get(net_id)
            if view is None or view["ingress"]:
                continue
            for name, ips in view.get("containers", {}).items():
                table.set_service(name, task_ips=ips, mode="dnsrr")  # a service's name wins
            for svc in view["services"]:
                for name in [svc["name"], *svc.get("aliases", [])]:
                    if svc["vip"] and svc["mode"] == "vip":
                        table.set_service(name, vips=[svc["vip"]], task_ips=svc["backends"])
                    else:
                        table.set_service(name, task_ips=svc["backends"], mode="dnsrr")
                if svc["vip"] and svc["mode"] == "vip":
                    vips[Frontend("tcp", svc["vip"], 0)] = [Backend(ip, 0) for ip in svc["backends"]]
        if tn.dns is not None:
            tn.dns.table = table
        if tn.lb is not None and vips != tn.vips:
            await self._call(tn.lb.replace_all, vips)
            tn.vips = vips

    async def detach(self, task_id: str) -> None:
        """Everything the task had goes: resolver, interfaces, namespace (idempotent)."""
        async with self._lock:
            tn = self.tasks.pop(task_id, None)
            netns = os.path.join(self.netns_dir, task_id)
            if tn is None and not nsutil.exists(netns):
                return
            await self._release(tn or TaskNetworking(task_id, netns, [],
                                                     self.data_root / "resolv" / f"{task_id}.conf"))
            await self._drop_unused_overlays()
            if tn is not None and tn.host_ports:
                await self._sync_ingress()

    async def detach_except(self, keep: set[str]) -> None:
        """Task namespaces no assigned task claims (left by a crash between attach and start)."""
        for name in _listdir(self.netns_dir):
            if _overlay_vni(name, self.prefix) is None and name not in keep:
                log.info("removing the network namespace of task %s: no task claims it", name)
                await self.detach(name)

    async def _release(self, tn: TaskNetworking) -> None:
        if tn.dns is not None:
            await tn.dns.stop()
            tn.dns = None
        for ov in self.overlays.values():
            await self._call(ov.detach, tn.task_id)
        await self._call(_drop_gateway_link, tn.task_id)
        await self._call(nsutil.remove, tn.netns)
        with contextlib.suppress(FileNotFoundError):
            tn.resolv_conf.unlink()

    def _gateway_link(self, task_id: str, netns: str, ifname: str, adopted: bool) -> str:
        """A veth from the node's gateway bridge into the task, with a default route back
        through the node (replies to clients of a host-mode port leave that way)."""
        with nsutil.ipr(None) as node:
            br = _first(node, GW_BRIDGE)
            if br is None:
                node.link("add", ifname=GW_BRIDGE, kind="bridge")
                br = _first(node, GW_BRIDGE)
                node.addr("add", index=br, address=GW_ADDRESS, prefixlen=GW_NETWORK.prefixlen)
            node.link("set", index=br, state="up")
        nsutil.create(netns)
        with nsutil.ipr(netns) as tk:
            idx = _first(tk, ifname)
            if idx is not None and adopted:
                addrs = [a.get_attr("IFA_ADDRESS") for a in tk.get_addr(index=idx)]
                if addrs:
                    return addrs[0]
            if idx is not None:
                tk.link("del", index=idx)
        used = {tn.gw_ip for tn in self.tasks.values() if tn.gw_ip}
        ip = _gateway_ip(task_id, used)
        host_if = _gw_ifname(task_id)
        fd = os.open(netns, os.O_RDONLY)
        try:
            with nsutil.ipr(None) as node:
                old = _first(node, host_if)
                if old is not None:
                    node.link("del", index=old)
                node.link("add", ifname=host_if, kind="veth", peer={"ifname": ifname, "net_ns_fd": fd})
                hidx = _first(node, host_if)
                node.link("set", index=hidx, master=_first(node, GW_BRIDGE))
                node.link("set", index=hidx, state="up")
        finally:
            os.close(fd)
        with nsutil.ipr(netns) as tk:
            idx = _first(tk, ifname)
            tk.addr("add", index=idx, address=ip, prefixlen=GW_NETWORK.prefixlen)
            tk.link("set", index=idx, state="up")
            tk.route("add", dst="0.0.0.0/0", gateway=GW_ADDRESS)
        return ip

    async def close(self) -> None:
        """The agent stops: resolvers stop with it; kernel state stays for the next start."""
        async with self._lock:
            for tn in self.tasks.values():
                if tn.dns is not None:
                    await tn.dns.stop()
                    tn.dns = None
            self.tasks.clear()
        self._thread.shutdown(wait=False)


def _enable_forwarding() -> None:
    path = "/proc/sys/net/ipv4/ip_forward"
    with open(path) as f:
        if f.read().strip() == "1":
            return
    with open(path, "w") as f:
        f.write("1")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _overlay_vni(name: str, prefix: str) -> Optional[int]:
    head = f"{prefix}-ov"
    if name.startswith(head) and name[len(head):].isdigit():
        return int(name[len(head):])
    return None


def _first(ip, ifname: str) -> Optional[int]:
    found = ip.link_lookup(ifname=ifname)
    return found[0] if found else None


def _gw_ifname(task_id: str) -> str:
    return "gw" + hashlib.sha1(task_id.encode()).hexdigest()[:12]


def _gateway_ip(task_id: str, used: set[str]) -> str:
    """A stable address per task (so an adopted task keeps it), probing past collisions."""
    size = GW_NETWORK.num_addresses - 3          # minus network, gateway, broadcast
    start = int(hashlib.sha1(task_id.encode()).hexdigest(), 16) % size
    for step in range(size):
        ip = str(GW_NETWORK.network_address + 2 + (start + step) % size)
        if ip not in used:
            return ip
    raise errors.ResourceExhausted("no free address on the node's gateway bridge")


def _drop_gateway_link(task_id: str) -> None:
    """The task's gateway veth; the bridge too once no task hangs on it."""
    with nsutil.ipr(None) as node:
        idx = _first(node, _gw_ifname(task_id))
        if idx is not None:
            node.link("del", index=idx)
        br = _first(node, GW_BRIDGE)
        if br is not None and not any(link.get_attr("IFLA_MASTER") == br
                                      for link in node.get_links()):
            node.link("del", index=br)


def _task_upstreams(task: Task) -> list[tuple[str, int]]:
    """Where the task's embedded DNS sends names it does not know: the task's own nameservers
    (`--dns`, compose's `dns:`), as Docker's embedded DNS does, else the node's."""
    dns = task.spec.container.dns_config
    servers = []
    for server in (dns.nameservers if dns else []):
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(server).version == 4:
                servers.append((server, 53))
    return servers or upstreams_from_resolv_conf()
