"""The allocator: overlay subnets and VNIs, a VIP per service per network, an address per task
per network, the nodes' ingress addresses and the published ports.

Every allocation is written in the same transaction as the object that owns it (the network, the
service, the task, the node), so a crash between "allocated" and "recorded" cannot leak anything:
what is in use is exactly what the store's live objects hold. The leader keeps that picture in
memory to answer quickly, rebuilt from the store whenever a leader starts and whenever a pool
looks exhausted (which also reclaims what a failed commit left reserved).

An address is released when its owner goes: a task when it reaches a terminal state or is
deleted, a service or node when it is deleted. Released addresses are not reused at once (the
cursor moves on), so stale ARP and conntrack entries for a dead task do not hit its successor.
"""
from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

from common import errors
from common.nodestate import API_PORT, RAFT_PORT, VXLAN_PORT
from common.model import (TASK_TERMINAL_STATES, Network, NetworkAttachment, NetworkingConfig,
                          NetworkSpec, Node, PortConfig, Service, ServiceSpec, Task,
                          VirtualIP)
from manager.state.store import Event, Store

# What the nodes themselves listen on. A published port would take this traffic from them (the
# routing mesh answers on every node), so publishing one is refused.
CLUSTER_PORTS = {("tcp", API_PORT): "the cluster API", ("tcp", RAFT_PORT): "raft",
                 ("udp", VXLAN_PORT): "the overlay networks (VXLAN)"}


def cluster_ports(store: Store) -> dict[tuple[str, int], str]:
    """CLUSTER_PORTS with the swarm's own data path port (`swarm init --data-path-port`)."""
    cluster = next(iter(store.list("clusters")), None)
    port = cluster.data_path_port if cluster else VXLAN_PORT
    ports = {k: v for k, v in CLUSTER_PORTS.items() if k != ("udp", VXLAN_PORT)}
    ports[("udp", port)] = "the overlay networks (VXLAN)"
    return ports

INGRESS_NAME = "ingress"
INGRESS_SUBNET = "10.0.0.0/24"          # docker's default, so operators find what they know
VNI_FIRST = 4096
VNI_LAST = 2 ** 24 - 1
PUBLISHED_PORTS = (30000, 32767)
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")


def mac_for(ip: str) -> str:
    """A locally administered MAC derived from the address, as docker does (02:42:<ip>)."""
    packed = ipaddress.IPv4Address(ip.split("/")[0]).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed)


def ingress_network(store: Store) -> Optional[Network]:
    for net in store.list("networks"):
        if net.spec.ingress:
            return net
    return None


def ingress_ports(spec_ports: Iterable[PortConfig]) -> list[PortConfig]:
    return [p for p in spec_ports if p.publish_mode == "ingress"]


def host_bound_ports(store: Store, *, owner: str = "",
                     node_id: str = "") -> dict[tuple[str, int], Task]:
    """(protocol, port) -> the live task that binds it in host mode: on `node_id` only if given,
    never `owner`'s (a service id). A port is either this or an ingress port, never both."""
    tasks = store.by_index("tasks", "node_id", node_id) if node_id else store.list("tasks")
    return {(p.protocol, p.published_port): t for t in tasks
            if (not owner or t.service_id != owner) and t.desired_up and not t.terminal
            for p in t.ports if p.publish_mode == "host" and p.published_port}


def ingress_port_holders(store: Store) -> dict[tuple[str, int], Service]:
    """(protocol, port) -> the service that publishes it on every node."""
    return {(p.protocol, p.published_port): svc for svc in store.list("services")
            for p in ingress_ports(svc.endpoint.ports)}


def service_network_ids(svc: Service) -> list[str]:
    """The networks the service's tasks attach to, in order; ingress first when it publishes
    ingress ports (as docker does: the mesh reaches the task on its first interface)."""
    ids = [n.target for n in svc.spec.task_template.networks]
    if ingress_ports(svc.endpoint.ports) and svc.endpoint.virtual_ips:
        ingress_ids = [v.network_id for v in svc.endpoint.virtual_ips if v.network_id not in ids]
        ids = ingress_ids + ids
    return ids


# ---- network planning (pure) -------------------------------------------------------------------

def _overlaps(a: ipaddress.IPv4Network, taken: Iterable[ipaddress.IPv4Network]) -> Optional[ipaddress.IPv4Network]:
    for t in taken:
        if a.overlaps(t):
            return t
    return None


def plan_network(store: Store, cfg: NetworkingConfig, spec: NetworkSpec, network_id: str) -> Network:
    """A new network with its VNI, subnet and gateway chosen (or the given ones checked)."""
    existing = store.list("networks")
    taken_nets = {ipaddress.IPv4Network(n.subnet): n for n in existing if n.subnet}
    # An overlay holding a node's own address would take that node's cluster traffic.
    node_addrs = _node_addresses(store)
    if spec.ipam and spec.ipam[0].subnet:
        try:
            subnet = ipaddress.IPv4Network(spec.ipam[0].subnet, strict=True)
        except ValueError as exc:
            raise errors.InvalidArgument(f"--subnet {spec.ipam[0].subnet!r} is not an IPv4 network "
                                         f"in CIDR form such as 10.1.2.0/24: {exc}", field="subnet")
        if subnet.prefixlen > 29:
            raise errors.InvalidArgument(f"--subnet {subnet} is too small: use a /29 or larger",
                                         field="subnet")
        clash = _overlaps(subnet, taken_nets)
        if clash is not None:
            raise errors.Conflict(f"--subnet {subnet} overlaps {clash} of network "
                                  f"{taken_nets[clash].spec.name!r}: pick another subnet",
                                  field="subnet")
        holder = _overlaps(subnet, node_addrs)
        if holder is not None:
            raise errors.Conflict(f"--subnet {subnet} holds the address {holder.network_address} "
                                  f"of node {node_addrs[holder]}, which the nodes reach each "
                                  "other by: pick a subnet outside their network", field="subnet")
    else:
        subnet = _free_subnet(cfg, [*taken_nets, *node_addrs],
                              prefer=INGRESS_SUBNET if spec.ingress else None)
    gateway = spec.ipam[0].gateway if spec.ipam and spec.ipam[0].gateway else ""
    if gateway:
        try:
            gw = ipaddress.IPv4Address(gateway)
        except ValueError:
            raise errors.InvalidArgument(f"--gateway {gateway!r} is not an IPv4 address",
                                         field="gateway") from None
        if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
            raise errors.InvalidArgument(f"--gateway {gw} is not a host address of {subnet}",
                                         field="gateway")
    else:
        gw = subnet.network_address + 1
    used_vnis = {n.vni for n in existing}
    vni = next((v for v in range(VNI_FIRST, VNI_LAST + 1) if v not in used_vnis), None)
    if vni is None:
        raise errors.ResourceExhausted("no VXLAN network identifier is free: remove a network")
    return Network(id=network_id, spec=spec, vni=vni, subnet=str(subnet), gateway=f"{gw}")


def _node_addresses(store: Store) -> dict[ipaddress.IPv4Network, str]:
    """Every node's own address (as a /32), with the node's name."""
    out = {}
    for node in store.list("nodes"):
        try:
            addr = ipaddress.IPv4Network(f"{node.status.addr}/32")
        except ValueError:
            continue  # never reported, or not IPv4
        out[addr] = node.description.hostname or node.id
    return out


def _free_subnet(cfg: NetworkingConfig, taken: Iterable[ipaddress.IPv4Network],
                 prefer: Optional[str]) -> ipaddress.IPv4Network:
    taken = list(taken)
    if prefer is not None:
        candidate = ipaddress.IPv4Network(prefer)
        if _overlaps(candidate, taken) is None:
            return candidate
    for pool in cfg.default_addr_pools:
        pool_net = ipaddress.IPv4Network(pool, strict=False)
        if cfg.subnet_size < pool_net.prefixlen:
            continue
        for candidate in pool_net.subnets(new_prefix=cfg.subnet_size):
            if _overlaps(candidate, taken) is None:
                return candidate
    raise errors.ResourceExhausted(
        f"the address pools {', '.join(cfg.default_addr_pools)} have no free /{cfg.subnet_size}: "
        "remove a network or give --subnet explicitly")


# ---- address pools ------------------------------------------------------------------------------

@dataclass
class _Pool:
    network: ipaddress.IPv4Network
    held: dict[int, str] = field(default_factory=dict)    # address -> owner id
    cursor: int = 0

    def __post_init__(self) -> None:
        self.first = int(self.network.network_address) + 1
        self.last = int(self.network.broadcast_address) - 1
        self.cursor = self.first

    def reserve(self, ip: str, owner: str) -> None:
        self.held[int(ipaddress.IPv4Address(ip.split("/")[0]))] = owner

    def take(self, owner: str) -> Optional[str]:
        size = self.last - self.first + 1
        for step in range(size):
            candidate = self.first + (self.cursor - self.first + step) % size
            if candidate not in self.held:
                self.held[candidate] = owner
                self.cursor = candidate + 1 if candidate < self.last else self.first
                return f"{ipaddress.IPv4Address(candidate)}/{self.network.prefixlen}"
        return None

    def free(self) -> int:
        return self.last - self.first + 1 - len(self.held)

    def release(self, ip: str, owner: str) -> None:
        key = int(ipaddress.IPv4Address(ip.split("/")[0]))
        if self.held.get(key) == owner:
            del self.held[key]


def _task_holds(task: Task) -> bool:
    return task.status.state not in TASK_TERMINAL_STATES


class Allocator:
    """The leader's view of what is allocated. Callers hold ``lock`` from allocation until the
    owning transaction is committed (or released again when it fails)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = asyncio.Lock()
        self._pools: dict[str, _Pool] = {}
        self._ports: Optional[dict[tuple[str, int], str]] = None     # (proto, port) -> service id

    # -- pools ------------------------------------------------------------------------------
    def _pool(self, network_id: str) -> _Pool:
        pool = self._pools.get(network_id)
        if pool is None:
            pool = self._build_pool(network_id)
            self._pools[network_id] = pool
        return pool

    def _build_pool(self, network_id: str) -> _Pool:
        net = self.store.get("networks", network_id)
        if net is None:
            raise errors.NotFound(f"network {network_id} does not exist")
        pool = _Pool(ipaddress.IPv4Network(net.subnet))
        pool.reserve(net.gateway, "gateway")
        for svc in self.store.list("services"):
            for vip in svc.endpoint.virtual_ips:
                if vip.network_id == network_id:
                    pool.reserve(vip.addr, svc.id)
        for task in self.store.list("tasks"):
            if _task_holds(task):
                for att in task.networks:
                    if att.network_id == network_id:
                        pool.reserve(att.address, task.id)
        for node in self.store.list("nodes"):
            att = node.ingress_attachment
            if att is not None and att.network_id == network_id:
                pool.reserve(att.address, node.id)
        return pool

    def _take(self, network_id: str, owner: str) -> str:
        addr = self._pool(network_id).take(owner)
        if addr is None:
            # Perhaps a failed commit left addresses reserved: look at the store again.
            self._pools[network_id] = pool = self._build_pool(network_id)
            addr = pool.take(owner)
        if addr is None:
            net = self.store.get("networks", network_id)
            raise errors.ResourceExhausted(
                f"network {net.spec.name if net else network_id} ({net.subnet if net else '?'}) "
                "has no free address: use a larger subnet or fewer tasks")
        return addr

    def has_free_address(self, network_id: str) -> bool:
        """From what this allocator holds, without looking at the store again: cheap enough for
        each of thousands of nodes while a network is full."""
        return self._pool(network_id).free() > 0

    def _release(self, network_id: str, addr: str, owner: str) -> None:
        pool = self._pools.get(network_id)
        if pool is not None and addr:
            pool.release(addr, owner)

    # -- ports --------------------------------------------------------------------------------
    def _port_table(self) -> dict[tuple[str, int], str]:
        if self._ports is None:
            self._ports = {key: svc.id for key, svc in ingress_port_holders(self.store).items()}
        return self._ports

    # -- services -----------------------------------------------------------------------------
    def resolve_networks(self, spec: ServiceSpec) -> None:
        """Network names in the spec become ids; unknown names and the ingress are refused."""
        seen = set()
        for att in spec.task_template.networks:
            net = self.store.find("networks", att.target)
            if net is None:
                raise errors.NotFound(f"network {att.target!r} not found: create it with "
                                      f"'shoal network create {att.target}'", field="networks")
            if net.spec.ingress:
                raise errors.InvalidArgument(
                    f"a service cannot attach to the ingress network {net.spec.name!r} itself: "
                    "publish a port (--publish) and the routing mesh attaches it", field="networks")
            if net.id in seen:
                raise errors.InvalidArgument(f"network {net.spec.name!r} is listed twice",
                                             field="networks")
            seen.add(net.id)
            att.target = net.id

    def allocate_service(self, svc: Service, old: Optional[Service] = None) -> None:
        """Resolve the service's ports and VIPs in place; keeps what the old version had."""
        self.resolve_networks(svc.spec)
        ports = self._port_table()
        old_ports = {(p.protocol, p.target_port): p.published_port
                     for p in (old.endpoint.ports if old else []) if p.publish_mode == "ingress"}
        resolved: list[PortConfig] = []
        claimed: dict[tuple[str, int], str] = {}
        host_bound = self._host_bound(svc.id)
        reserved = cluster_ports(self.store)
        for spec_port in svc.spec.endpoint_spec.ports:
            p = PortConfig(**vars(spec_port))
            used_for = reserved.get((p.protocol, p.published_port))
            if used_for:
                raise errors.InvalidArgument(
                    f"port {p.published_port}/{p.protocol} carries {used_for} between the "
                    "nodes and cannot be published: pick another published port", field="publish")
            # One port, one owner: a node's balancer would spread it over both otherwise.
            holder = ports.get((p.protocol, p.published_port))
            if p.publish_mode == "host" and holder and holder != svc.id:
                other = self.store.get("services", holder)
                raise errors.Conflict(
                    f"port {p.published_port}/{p.protocol} is published on every node by service "
                    f"{other.spec.name if other else holder!r}: pick another published port",
                    field="publish")
            if p.publish_mode == "ingress" and (p.protocol, p.published_port) in host_bound:
                raise errors.Conflict(
                    f"port {p.published_port}/{p.protocol} is bound in host mode by "
                    f"{host_bound[(p.protocol, p.published_port)]}: pick another published port",
                    field="publish")
            if p.publish_mode == "ingress":
                if not p.published_port:
                    p.published_port = old_ports.get((p.protocol, p.target_port)) or \
                        self._free_port(p.protocol, ports, {**claimed, **host_bound}, svc.id)
                key = (p.protocol, p.published_port)
                holder = ports.get(key)
                if (holder and holder != svc.id) or key in claimed:
                    other = self.store.get("services", holder) if holder else None
                    name = other.spec.name if other else svc.spec.name
                    raise errors.Conflict(
                        f"port {p.published_port}/{p.protocol} is already published by service "
                        f"{name!r}: pick another published port", field="publish")
                claimed[key] = svc.id
            resolved.append(p)
        if claimed and svc.spec.endpoint_spec.mode == "dnsrr":
            raise errors.InvalidArgument("ingress ports need a VIP: use --endpoint-mode vip, or "
                                         "publish with mode=host for a dnsrr service",
                                         field="endpoint_mode")
        wanted = [n.target for n in svc.spec.task_template.networks]
        if claimed:
            ingress = ingress_network(self.store)
            if ingress is None:
                raise errors.FailedPrecondition(
                    "there is no ingress network to publish ports on: create one with "
                    "'shoal network create --ingress ingress'", field="publish")
            wanted = [ingress.id] + wanted
        old_vips = {v.network_id: v.addr for v in (old.endpoint.virtual_ips if old else [])}
        vips: list[VirtualIP] = []
        taken: list[VirtualIP] = []
        try:
            if svc.spec.endpoint_spec.mode == "vip":
                for nid in wanted:
                    if nid in old_vips:
                        vips.append(VirtualIP(nid, old_vips[nid]))
                    else:
                        vip = VirtualIP(nid, self._take(nid, svc.id))
                        taken.append(vip)
                        vips.append(vip)
        except BaseException:
            for vip in taken:
                self._release(vip.network_id, vip.addr, svc.id)
            raise
        # The ports change hands only now that nothing can fail any more.
        for key, holder in list(ports.items()):
            if holder == svc.id and key not in claimed:
                del ports[key]
        ports.update(claimed)
        keep = {v.network_id for v in vips}
        for nid, addr in old_vips.items():
            if nid not in keep:
                self._release(nid, addr, svc.id)
        svc.endpoint.ports = resolved
        svc.endpoint.virtual_ips = vips

    def _host_bound(self, owner: str) -> dict[tuple[str, int], str]:
        """Host-mode ports live tasks of others bind, and where: (protocol, port) -> text."""
        bound: dict[tuple[str, int], str] = {}
        for key, t in host_bound_ports(self.store, owner=owner).items():
            node = self.store.get("nodes", t.node_id)
            bound[key] = f"{t.name} on {node.description.hostname if node else t.node_id}"
        return bound

    def _free_port(self, proto: str, ports: dict, claimed: dict, owner: str) -> int:
        lo, hi = PUBLISHED_PORTS
        for port in range(lo, hi + 1):
            if (proto, port) not in ports and (proto, port) not in claimed:
                return port
        raise errors.ResourceExhausted(f"every port of {lo}-{hi}/{proto} is published: give "
                                       "the published port explicitly", field="publish")

    def release_service(self, svc: Service) -> None:
        for vip in svc.endpoint.virtual_ips:
            self._release(vip.network_id, vip.addr, svc.id)
        if self._ports is not None:
            for key in [k for k, v in self._ports.items() if v == svc.id]:
                del self._ports[key]

    # -- tasks ----------------------------------------------------------------------------------
    def allocate_task(self, task: Task, svc: Service) -> None:
        self.allocate_attachments(task, service_network_ids(svc))

    def allocate_attachments(self, task: Task, network_ids: list[str]) -> None:
        """An address on each network, in order (eth0, eth1, ...), owned by the task."""
        if task.networks:
            return
        attachments: list[NetworkAttachment] = []
        try:
            for nid in network_ids:
                addr = self._take(nid, task.id)
                attachments.append(NetworkAttachment(nid, addr, mac_for(addr)))
        except BaseException:
            for att in attachments:
                self._release(att.network_id, att.address, task.id)
            raise
        task.networks = attachments

    def release_task(self, task: Task) -> None:
        for att in task.networks:
            self._release(att.network_id, att.address, task.id)

    # -- nodes ----------------------------------------------------------------------------------
    def allocate_node(self, node: Node, ingress: Network) -> None:
        addr = self._take(ingress.id, node.id)
        node.ingress_attachment = NetworkAttachment(ingress.id, addr, mac_for(addr))

    def release_node(self, node: Node) -> None:
        att = node.ingress_attachment
        if att is not None:
            self._release(att.network_id, att.address, node.id)

    # -- store events -----------------------------------------------------------------------
    def observe(self, e: Event) -> None:
        """Owners that went: give their addresses and ports back."""
        if e.table == "tasks":
            if e.action == "delete" or not _task_holds(e.obj):
                self.release_task(e.obj)    # the owner check makes a second release harmless
        elif e.table == "services" and e.action == "delete":
            self.release_service(e.obj)
        elif e.table == "nodes" and e.action == "delete":
            self.release_node(e.obj)
        elif e.table == "networks" and e.action == "delete":
            self._pools.pop(e.obj.id, None)


def networks_outdated(svc: Service, task: Task) -> bool:
    """Publishing a first ingress port (or the last one going) changes the networks a task
    needs: such tasks are replaced like any outdated task."""
    return bool(task.networks or svc.endpoint.virtual_ips) and \
        [a.network_id for a in task.networks] != service_network_ids(svc)
