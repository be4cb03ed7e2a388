"""GET /nodes (filters id, name, label, node.label, role, membership) and GET /nodes/{id}."""
from __future__ import annotations

from aiohttp import web

from common import errors
from manager.controlapi.nodes import find_node
from shoal.dockerapi import filters
from shoal.dockerapi.access import manager_of
from shoal.dockerapi.errors import bad_request, json_answer, not_found
from shoal.dockerapi.translate import tls
from shoal.dockerapi.translate.nodes import node as node_json

_ACCEPTED = ("id", "name", "label", "node.label", "role", "membership")
_ROLES = ("worker", "manager")
_MEMBERSHIPS = ("accepted", "pending")


async def node_list(request: web.Request, params: dict[str, str]) -> web.Response:
    manager = manager_of(request)
    f = filters.parse(request.query.get("filters"), _ACCEPTED)
    for role in f.get("role"):
        if role and role.lower() not in _ROLES:
            raise bad_request(f"Invalid role filter: '{role}'")
    for m in f.get("membership"):
        if m and m.lower() not in _MEMBERSHIPS:
            raise bad_request(f"Invalid membership filter: '{m}'")
    roles = {r.lower() for r in f.get("role") if r}
    # Every node shoal knows has been admitted by its join token: Docker's "accepted".
    memberships = {m.lower() for m in f.get("membership") if m}
    reach = manager.reachability()
    out = []
    for n in sorted(manager.store.list("nodes"), key=lambda n: (n.description.hostname, n.id)):
        if not (f.prefix("id", n.id) and f.prefix("name", n.description.hostname)
                # "label" is the engine's labels, which shoal nodes have none of
                and f.labels("label", {}) and f.labels("node.label", n.spec.labels)
                and (not roles or n.role in roles)
                and (not memberships or "accepted" in memberships)):
            continue
        out.append(node_json(n, reach, _tls(manager, n.id)))
    return json_answer(out)


async def node_inspect(request: web.Request, params: dict[str, str]) -> web.Response:
    manager = manager_of(request)
    ref = params["id"]
    try:
        n = find_node(manager, ref)
    except errors.NotFound:
        raise not_found(f"node {ref} not found") from None
    return json_answer(node_json(n, manager.reachability(), _tls(manager, n.id)))


def _tls(manager, node_id: str) -> dict | None:
    cluster = manager.cluster()
    return tls.node_tls(cluster, manager.store.get("node_tls", node_id)) if cluster else None
