"""POST /nodes/{id}/update?version=N and DELETE /nodes/{id}?force=: Docker's NodeSpec
translated (translate/nodes.py), then the control API's own functions on the leader
(manager/controlapi/nodes.update_node, remove_node): labels, availability, promote and demote,
removal of a worker."""
from __future__ import annotations

from aiohttp import web

from common import errors
from common.model import Node
from manager.controlapi import nodes as shoal_nodes
from manager.controlapi.nodes import find_node
from shoal.dockerapi import leader
from shoal.dockerapi.access import daemon_of, manager_of
from shoal.dockerapi.errors import bad_request, not_found
from shoal.dockerapi.query import flag, json_body
from shoal.dockerapi.translate.nodes import node_path, node_spec_change


def lookup(manager, ref: str) -> Node:
    """By id, unique id prefix or hostname (as dockerd); Docker's 404 otherwise."""
    try:
        return find_node(manager, ref)
    except errors.NotFound:
        raise not_found(f"node {ref} not found") from None


def version_of(request: web.Request, what: str) -> int:
    """The `version` query parameter dockerd requires of an update."""
    value = request.query.get("version", "")
    if not value.isdecimal() or not value.isascii() or len(value) > 19:
        raise bad_request(f"invalid {what} version {value!r}: send the Version.Index of the "
                          f"{what} you read")
    return int(value)


async def node_update(request: web.Request, params: dict[str, str]) -> web.Response:
    # The node first (404), then the version (400), then the body, as dockerd.
    node = lookup(manager_of(request), params["id"])
    version = version_of(request, "node")
    change = node_spec_change(await json_body(request, "a NodeSpec"))
    ctx = daemon_of(request)

    async def local(manager) -> dict:
        return await shoal_nodes.update_node(ctx, manager, node.id, version, change)

    path = leader.shoal_path("nodes", node.id, "update", version=version)
    await leader.write(request, "POST", path, change, local, node_path,
                       leader.changed("nodes", node.id))
    return web.Response(status=200)


async def node_delete(request: web.Request, params: dict[str, str]) -> web.Response:
    node = lookup(manager_of(request), params["id"])
    force = flag(request, "force")

    async def local(manager) -> dict:
        await shoal_nodes.remove_node(manager, node.id, force)
        return {}

    path = leader.shoal_path("nodes", node.id, force="true" if force else None)
    await leader.write(request, "DELETE", path, None, local,
                       settled=leader.removed("nodes", node.id))
    return web.Response(status=200)
