"""/networks: create (overlays only), list (filters name, id, label, driver, scope, type),
inspect and delete, through the control API's functions (manager/controlapi/networks.py) on
the leader. Only the swarm's networks exist here: no dockerd runs beside shoal."""
from __future__ import annotations

import asyncio
import re
import time

from aiohttp import web

from manager.controlapi import networks as shoal_networks
from shoal.dockerapi import filters, leader
from shoal.dockerapi.access import manager_of
from shoal.dockerapi.query import json_body
from shoal.dockerapi.errors import DockerError, json_answer, not_found
from shoal.dockerapi.translate.objects import network as network_json, network_spec, object_path

_ACCEPTED = ("name", "id", "label", "driver", "scope", "type", "dangling")
# How long a delete waits for the tasks of removed services to let go of the network (dockerd
# removes a swarm network once no service uses it; `docker stack rm` relies on that).
RELEASE_WAIT = 30.0


def _lookup(manager, ref: str):
    net = manager.store.find("networks", ref)
    if net is None:
        raise not_found(f"network {ref} not found")
    return net


def _services_on(manager, net) -> list[str]:
    return sorted(s.spec.name for s in manager.store.list("services")
                  if any(n.target == net.id for n in s.spec.task_template.networks))


def _match(f: filters.Filters, key: str, value: str) -> bool:
    """dockerd's Args.Match: equal, or the filter's value as a regular expression."""
    wanted = f.get(key)
    if not wanted:
        return True
    for w in wanted:
        if w == value:
            return True
        try:
            if re.search(w, value):
                return True
        except re.error:
            continue
    return False


async def create(request: web.Request, params: dict[str, str]) -> web.Response:
    spec = network_spec(await json_body(request))

    async def local(manager) -> dict:
        return {"id": (await shoal_networks.create_network(manager, spec)).id}

    answer = await leader.write(request, "POST", "/networks/create", spec, local, object_path,
                                settled=leader.created("networks"))
    return json_answer({"Id": answer["id"], "Warning": ""}, status=201)


async def listing(request: web.Request, params: dict[str, str]) -> web.Response:
    manager = manager_of(request)
    f = filters.parse(request.query.get("filters"), _ACCEPTED)
    out = []
    for net in sorted(manager.store.list("networks"), key=lambda n: n.spec.name):
        kind = "builtin" if net.spec.ingress else "custom"
        if (_match(f, "name", net.spec.name) and _match(f, "id", net.id)
                and f.labels("label", net.spec.labels) and f.exact("driver", net.spec.driver)
                and f.exact("scope", "swarm") and f.exact("type", kind)):
            if "dangling" in f and (f.get("dangling")[0].lower() in ("1", "true")) != \
                    (not _services_on(manager, net)):
                continue
            out.append(network_json(net, _services_on(manager, net)))
    return json_answer(out)


async def inspect(request: web.Request, params: dict[str, str]) -> web.Response:
    manager = manager_of(request)
    scope = request.query.get("scope", "")
    if scope not in ("", "swarm"):
        raise not_found(f"network {params['id']} not found")
    net = _lookup(manager, params["id"])
    return json_answer(network_json(net, _services_on(manager, net)))


async def delete(request: web.Request, params: dict[str, str]) -> web.Response:
    manager = manager_of(request)
    net = _lookup(manager, params["id"])

    async def local(manager) -> dict:
        await shoal_networks.remove_network(manager, net.id)
        return {}

    deadline = time.monotonic() + RELEASE_WAIT
    while True:
        try:
            await leader.write(request, "DELETE", leader.shoal_path("networks", net.id), None,
                               local, settled=leader.removed("networks", net.id))
            return web.Response(status=204)
        except DockerError:
            # Tasks of services already removed still hold addresses on it: shoal refuses
            # until they stopped; dockerd's delete waits on no task, so wait for them here.
            if _services_on(manager, net) or not _releasing(manager, net) \
                    or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


def _releasing(manager, net) -> bool:
    return any(not t.terminal and not t.standalone and any(a.network_id == net.id
                                                           for a in t.networks)
               for t in manager.store.list("tasks"))
