"""The network part of a node's assignments: for every overlay network the node takes part in,
its identity (VNI, subnet), the endpoints on it anywhere in the cluster (the peer table that
replaces flooding and gossip), the services on it with their VIPs and live backends, and its
running standalone containers by name (for the node's DNS responders and load balancers).

A task is a backend only while it is running, still wanted (desired state running) and not
reported unhealthy: a task being shut down leaves every load balancer before its container is
stopped, so no new connection is sent to it.
"""
from __future__ import annotations

import hashlib
from typing import Optional

from common import codec
from common.model import Network, Service, Task
from common.nodestate import VXLAN_PORT
from manager.allocator.allocator import ingress_network, ingress_ports
from manager.state.store import Store


def _ip(addr: str) -> str:
    return addr.split("/")[0]


def holds_address(task: Task) -> bool:
    return not task.terminal


def is_backend(task: Task) -> bool:
    return (task.desired_state == "running" and task.status.state == "running"
            and getattr(task.status, "health", "") not in ("starting", "unhealthy"))


def node_network_state(store: Store, node_id: str) -> dict:
    node = store.peek("nodes", node_id)
    ingress = ingress_network(store)
    services = store.list("services")
    wanted: dict[str, Network] = {}
    for task in store.by_index("tasks", "node_id", node_id):
        if holds_address(task):
            for att in task.networks:
                net = store.peek("networks", att.network_id)
                if net is not None:
                    wanted[net.id] = net
    publishing = [s for s in services if ingress_ports(s.endpoint.ports)]
    node_ingress: Optional[dict] = None
    if ingress is not None and publishing and node is not None and node.ingress_attachment:
        wanted[ingress.id] = ingress
        node_ingress = {"address": node.ingress_attachment.address,
                        "mac": node.ingress_attachment.mac}
    networks = []
    if wanted:      # else (most nodes of a large cluster): no need to look at every node
        nodes = {n.id: n for n in store.list("nodes")}
        for net in sorted(wanted.values(), key=lambda n: n.vni):
            networks.append(_network_view(store, net, nodes, services))
    cluster = next(iter(store.list("clusters")), None)
    return {"networks": networks, "ingress": node_ingress,
            "vxlan_port": cluster.data_path_port if cluster else VXLAN_PORT}


def _network_view(store: Store, net: Network, nodes: dict, services: list[Service]) -> dict:
    endpoints = []
    backends: dict[str, list[str]] = {}
    containers: dict[str, list[str]] = {}
    for task in store.list("tasks"):
        for att in task.networks:
            if att.network_id != net.id:
                continue
            node = nodes.get(task.node_id)
            if holds_address(task) and node is not None and node.status.addr:
                endpoints.append({"ip": _ip(att.address), "mac": att.mac,
                                  "node_addr": node.status.addr})
            if task.standalone:
                if task.status.state == "running" and task.desired_up:
                    containers.setdefault(task.container_name, []).append(_ip(att.address))
            elif is_backend(task):
                backends.setdefault(task.service_id, []).append(_ip(att.address))
    if net.spec.ingress:
        for node in nodes.values():
            att = node.ingress_attachment
            if att is not None and att.network_id == net.id and node.status.addr:
                endpoints.append({"ip": _ip(att.address), "mac": att.mac,
                                  "node_addr": node.status.addr})
    service_views = []
    for svc in services:
        vip = next((v.addr for v in svc.endpoint.virtual_ips if v.network_id == net.id), "")
        attached = vip or any(n.target == net.id for n in svc.spec.task_template.networks)
        if not attached:
            continue
        view = {"id": svc.id, "name": svc.spec.name, "mode": svc.spec.endpoint_spec.mode,
                "vip": _ip(vip) if vip else "", "backends": sorted(backends.get(svc.id, [])),
                "aliases": sorted({a for n in svc.spec.task_template.networks if n.target == net.id
                                   for a in n.aliases})}
        if net.spec.ingress:
            view["ports"] = [{"protocol": p.protocol, "target_port": p.target_port,
                              "published_port": p.published_port}
                             for p in ingress_ports(svc.endpoint.ports)]
        service_views.append(view)
    endpoints.sort(key=lambda e: e["ip"])
    service_views.sort(key=lambda s: s["name"])
    return {"id": net.id, "name": net.spec.name, "vni": net.vni, "subnet": net.subnet,
            "gateway": net.gateway, "ingress": net.spec.ingress, "endpoints": endpoints,
            "services": service_views,
            # standalone containers by name (as Docker resolves them on attachable networks)
            "containers": {name: sorted(ips) for name, ips in sorted(containers.items())}}


def digest(state: dict) -> str:
    return hashlib.sha256(codec.pack(state)).hexdigest()[:16]
