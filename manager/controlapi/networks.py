"""Control API for overlay networks: create, list, inspect, remove."""
from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from common import codec, errors, strict
from common.httpserver import body_json, reply
from common.ids import new_id
from common.model import Network, NetworkSpec, Task
from manager.allocator.allocator import NAME_RE, ingress_network, ingress_ports, plan_network
from manager.controlapi.context import manager_of
from manager.specs.cluster import overlay_subnet
from manager.specs.data_objects import validate_labels
from manager.state.store import Transaction

DRIVERS = ("overlay",)


def find_network(manager, ref: str) -> Network:
    net = manager.store.find("networks", ref)
    if net is None:
        raise errors.NotFound(f"no such network: {ref}")
    return net


def parse_network_spec(data: Any) -> NetworkSpec:
    spec = strict.decode(NetworkSpec, data)
    if not NAME_RE.match(spec.name):
        raise errors.InvalidArgument(f"network name {spec.name!r}: use letters, digits, '_', '.' "
                                     "and '-', starting with a letter or digit (at most 63)",
                                     field="name")
    spec.driver = spec.driver or "overlay"
    if spec.driver not in DRIVERS:
        raise errors.InvalidArgument(f"driver {spec.driver!r} is not supported in a swarm: use "
                                     "--driver overlay", field="driver")
    validate_labels(spec.labels)
    if len(spec.ipam) > 1:
        raise errors.InvalidArgument("one --subnet per network", field="subnet")
    if spec.ipam and spec.ipam[0].gateway and not spec.ipam[0].subnet:
        raise errors.InvalidArgument("--gateway needs --subnet", field="gateway")
    if spec.ipam and spec.ipam[0].subnet:
        overlay_subnet(spec.ipam[0].subnet, "ipam[0].subnet")
    return spec


def network_view(manager, net: Network) -> dict:
    plain = codec.to_plain(net)
    plain["services"] = sorted(s.spec.name for s in _services_using(manager, net))
    plain["containers"] = _containers_on(manager, net)
    return plain


def _containers_on(manager, net: Network) -> list[dict]:
    """Standalone containers with an address on the network (stopped ones hold none)."""
    views = [_container_view(manager, t, net) for t in manager.store.list("tasks")
             if t.standalone and not t.terminal and any(a.network_id == net.id for a in t.networks)]
    return sorted(views, key=lambda c: (c["name"], c["node"]))


def _container_view(manager, task: Task, net: Network) -> dict:
    node = manager.store.get("nodes", task.node_id)
    return {"id": task.id, "name": task.container_name,
            "node": node.description.hostname if node else task.node_id,
            "address": next((a.address for a in task.networks if a.network_id == net.id), "")}


def _services_using(manager, net: Network) -> list:
    out = []
    for svc in manager.store.list("services"):
        if any(n.target == net.id for n in svc.spec.task_template.networks) or \
                (net.spec.ingress and ingress_ports(svc.endpoint.ports)):
            out.append(svc)
    return out


async def create_network(manager, data: dict) -> Network:
    """A new overlay network from a decoded body (shoal's NetworkSpec, or {"spec": ...}): the
    one way a network is created (shoal's API and the Docker API's)."""
    spec = parse_network_spec(data.get("spec", data))
    manager.require_leader()
    async with manager.allocator.lock:     # two creates must not pick the same subnet or VNI
        if manager.store.by_name("networks", spec.name) is not None:
            raise errors.Conflict(f"network {spec.name!r} already exists", field="name")
        if spec.ingress and ingress_network(manager.store) is not None:
            raise errors.Conflict(f"an ingress network already exists "
                                  f"({ingress_network(manager.store).spec.name!r}): remove it "
                                  "first", field="ingress")
        cluster = manager.cluster()
        net = plan_network(manager.store, cluster.spec.networking, spec, new_id())
        net.meta.created_at = net.meta.updated_at = time.time()
        await manager.propose(Transaction().create("networks", net))
    return net


async def network_create(request: web.Request) -> web.Response:
    net = await create_network(manager_of(request), await body_json(request))
    return reply({"id": net.id}, status=201)


async def network_list(request: web.Request) -> web.Response:
    manager = manager_of(request)
    nets = sorted(manager.store.list("networks"), key=lambda n: n.spec.name)
    return reply([network_view(manager, n) for n in nets])


async def network_inspect(request: web.Request) -> web.Response:
    manager = manager_of(request)
    return reply(network_view(manager, find_network(manager, request.match_info["ref"])))


async def remove_network(manager, ref: str) -> Network:
    net = find_network(manager, ref)
    users = _services_using(manager, net)
    if users:
        names = ", ".join(sorted(s.spec.name for s in users))
        raise errors.FailedPrecondition(
            f"network {net.spec.name!r} is in use by service(s) {names}: remove them or update "
            f"them without it first", field="network")
    containers = _containers_on(manager, net)
    if containers:
        names = ", ".join(f"{c['name']} (on {c['node']})" for c in containers)
        raise errors.FailedPrecondition(
            f"network {net.spec.name!r} is in use by container(s) {names}: remove them first with "
            "'shoal container rm -f NAME' on their node", field="network")
    active = [t for t in manager.store.list("tasks")
              if not t.terminal and any(a.network_id == net.id for a in t.networks)]
    if active:
        raise errors.FailedPrecondition(
            f"network {net.spec.name!r} still has {len(active)} active endpoint(s) of tasks being "
            "shut down: try again in a few seconds", field="network")
    await manager.propose(Transaction().delete("networks", net.id, expect_version=net.meta.version))
    return net


async def network_remove(request: web.Request) -> web.Response:
    net = await remove_network(manager_of(request), request.match_info["ref"])
    return reply({"id": net.id})


def routes() -> list[web.RouteDef]:
    return [
        web.post("/networks/create", network_create),
        web.get("/networks", network_list),
        web.get("/networks/{ref}", network_inspect),
        web.delete("/networks/{ref}", network_remove),
    ]
