"""Nodes: list, inspect, update (labels, availability, role: promote and demote), remove."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Optional

from aiohttp import web

from common import codec, errors, strict
from common.apipath import api_path
from common.httpserver import body_json, query_flag, query_int, reply, to_json_plain
from common.model import (AVAILABILITIES, ManagerStatus, NODE_ROLES, NODE_ROLE_MANAGER,
                          NODE_ROLE_WORKER, NODE_STATE_DOWN, Node, RemovedNode)
from common.nodestate import API_PORT, RAFT_PORT
from manager.controlapi.context import ApiContext, Manager, context_of, manager_of
from manager.state.store import Transaction


def node_view(manager: Manager, node: Node) -> dict:
    plain = codec.to_plain(node)
    ms = plain.get("manager_status")
    if node.role == NODE_ROLE_MANAGER and ms is not None:
        reach = manager.reachability()
        ms["reachability"] = reach.get(ms["raft_addr"], "unreachable")
        ms["leader"] = ms["reachability"] == "leader"
    return plain


def find_node(manager: Manager, ref: str) -> Node:
    node = manager.store.find("nodes", ref)
    if node is None:
        matches = [n for n in manager.store.list("nodes") if n.description.hostname == ref]
        if len(matches) == 1:
            node = matches[0]
        elif len(matches) > 1:
            raise errors.InvalidArgument(f"node name {ref!r} is ambiguous ({len(matches)} nodes "
                                         "have this hostname): use the node id")
    if node is None:
        raise errors.NotFound(f"no such node: {ref}")
    return node


class NodeListCache:
    """Each worker's JSON in the node list, kept by (id, version): the list is asked for all the
    time (dashboards, `node ls` in scripts and loops), a node's record changes seldom, and with
    5,000 nodes building every view again was 12 % of a busy leader (issue 20). A version is
    the store index of the write, so an unchanged (id, version) is an unchanged node. Managers'
    views carry live reachability and are built each time."""

    def __init__(self) -> None:
        self._json: dict[str, tuple[int, str]] = {}

    def render(self, manager: Manager, nodes: list[Node]) -> str:
        kept: dict[str, tuple[int, str]] = {}
        parts = []
        for node in nodes:
            if node.role == NODE_ROLE_MANAGER:
                parts.append(json.dumps(to_json_plain(node_view(manager, node))))
                continue
            hit = self._json.get(node.id)
            if hit is None or hit[0] != node.meta.version:
                hit = (node.meta.version, json.dumps(to_json_plain(node_view(manager, node))))
            kept[node.id] = hit
            parts.append(hit[1])
        self._json = kept  # removed nodes leave with the next list
        return "[" + ",".join(parts) + "]"


_LIST_CACHE = NodeListCache()


async def nodes_list(request: web.Request) -> web.Response:
    manager = manager_of(request)
    nodes = sorted(manager.store.list("nodes"), key=lambda n: (n.description.hostname, n.id))
    return web.Response(text=_LIST_CACHE.render(manager, nodes), content_type="application/json")


async def node_inspect(request: web.Request) -> web.Response:
    manager = manager_of(request)
    return reply(node_view(manager, find_node(manager, request.match_info["ref"])))


@dataclass
class NodeSpecChange:
    """`node update`: what is given changes, what is absent (or null) stays."""
    labels: Optional[dict[str, str]] = None
    availability: Optional[str] = None
    role: Optional[str] = None


async def node_update(request: web.Request) -> web.Response:
    manager = manager_of(request)
    data = await body_json(request)
    return reply(await update_node(context_of(request), manager, request.match_info["ref"],
                                   query_int(request, "version"), data))


async def update_node(ctx: ApiContext, manager: Manager, ref: str, version: Optional[int],
                      data: dict) -> dict:
    """Change a node's labels, availability or role (promote, demote) from a decoded body
    (a NodeSpecChange, or {"spec": ...}), on the leader; the node's view afterwards. The one
    way a node is updated (shoal's API and the Docker API's translation both call it)."""
    node = manager.store.get("nodes", find_node(manager, ref).id)
    if version is not None and version != node.meta.version:
        raise errors.Conflict(f"node {node.id} changed since version {version} (now "
                              f"{node.meta.version}); read it again and retry")
    change = strict.decode(NodeSpecChange, data["spec"] if "spec" in data else data,
                           "spec" if "spec" in data else "")
    labels = node.spec.labels if change.labels is None else change.labels
    if not all(labels):
        raise errors.InvalidArgument("labels: a label needs a non-empty key", field="labels")
    availability = change.availability or node.spec.availability
    if availability not in AVAILABILITIES:
        raise errors.InvalidArgument(f"invalid availability {availability!r}: use one of "
                                     f"{', '.join(AVAILABILITIES)}", field="availability")
    role = change.role or node.spec.desired_role
    if role not in NODE_ROLES:
        raise errors.InvalidArgument(f"invalid role {role!r}: use worker or manager", field="role")
    node.spec.labels, node.spec.availability = labels, availability
    node.meta.updated_at = time.time()
    if role == NODE_ROLE_MANAGER and node.role != NODE_ROLE_MANAGER:
        await _promote(manager, node)
    elif role == NODE_ROLE_WORKER and node.role == NODE_ROLE_MANAGER:
        handed = await _demote(ctx, manager, node, version, data)
        if handed is not None:
            return handed
    else:
        await manager.propose(Transaction().update("nodes", node))
    return node_view(manager, manager.store.get("nodes", node.id))


async def _promote(manager: Manager, node: Node) -> None:
    if not node.status.addr:
        raise errors.FailedPrecondition(f"node {node.description.hostname} has never reported its "
                                        "address; start it before promoting it")
    node.spec.desired_role = NODE_ROLE_MANAGER
    node.role = NODE_ROLE_MANAGER
    node.manager_status = ManagerStatus(raft_addr=f"{node.status.addr}:{RAFT_PORT}",
                                        api_addr=f"{node.status.addr}:{API_PORT}")
    # The node sees its new role in its next heartbeat, renews its certificate as a manager and
    # asks to be added to raft (/raft/join).
    await manager.propose(Transaction().update("nodes", node))


async def _demote(ctx: ApiContext, manager: Manager, node: Node, version: Optional[int],
                  data: dict) -> Optional[dict]:
    """None once demoted here; the new leader's answer when this leader had to hand over."""
    managers = manager.manager_nodes()
    if len(managers) <= 1:
        raise errors.FailedPrecondition(f"cannot demote {node.description.hostname}: it is the last "
                                        "manager of the swarm (promote another node first)")
    reach = manager.reachability()
    remaining = [m for m in managers if m.id != node.id]
    up = sum(1 for m in remaining if reach.get(m.manager_status.raft_addr) in ("leader", "reachable"))
    need = len(remaining) // 2 + 1
    if up < need:
        raise errors.FailedPrecondition(
            f"cannot demote {node.description.hostname}: of the {len(remaining)} managers that would "
            f"remain only {up} are reachable and {need} are needed for quorum; bring managers back "
            "first")
    raft_addr = node.manager_status.raft_addr if node.manager_status else ""
    if raft_addr == manager.raft.self_addr:
        # A leader cannot remove itself cleanly: hand leadership over, then let the new leader do it.
        await manager.raft.transfer_leadership()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and (manager.is_leader or manager.leader_api_addr() is None):
            await asyncio.sleep(0.05)
        leader = manager.leader_api_addr()
        if manager.is_leader or leader is None:
            raise errors.Unavailable("leadership could not be handed over to demote this manager; retry")
        path = api_path("nodes", node.id, "update")
        if version is not None:
            path += f"?version={version}"
        return await ctx.peer_client(leader).request("POST", path, data, timeout=30)
    async with manager.membership_lock:
        if raft_addr in manager.raft.member_addrs():
            await manager.raft.remove_member(raft_addr)
        fresh = manager.store.get("nodes", node.id)
        fresh.spec = node.spec
        fresh.spec.desired_role = NODE_ROLE_WORKER
        fresh.role = NODE_ROLE_WORKER
        fresh.manager_status = None
        fresh.meta.updated_at = time.time()
        await manager.propose(Transaction().update("nodes", fresh, check_version=False))
    return None


async def node_remove(request: web.Request) -> web.Response:
    node = await remove_node(manager_of(request), request.match_info["ref"],
                             query_flag(request, "force"))
    return reply({"id": node.id})


async def remove_node(manager: Manager, ref: str, force: bool) -> Node:
    """Remove a worker from the swarm (down, or `force`), on the leader: shoal's API and the
    Docker API's both call this."""
    node = find_node(manager, ref)
    name = node.description.hostname or node.id
    if node.role == NODE_ROLE_MANAGER:
        raise errors.FailedPrecondition(f"node {name} is a manager and a member of raft: demote it "
                                        f"first with 'shoal node demote {name}'")
    if node.status.state != NODE_STATE_DOWN and not force:
        raise errors.FailedPrecondition(f"node {name} is not down and can't be removed: stop it "
                                        "first, or use --force")
    if node.id == manager.node_id:
        raise errors.FailedPrecondition("a node cannot remove itself; use 'shoal swarm leave'")
    # The record revokes its certificate on 2377 (middleware.py), which stays valid until it expires.
    removed = RemovedNode(id=node.id, removed_at=time.time())
    await manager.propose(Transaction().delete("nodes", node.id).create("removed_nodes", removed))
    return node


def routes() -> list[web.RouteDef]:
    return [
        web.get("/nodes", nodes_list),
        web.get("/nodes/{ref}", node_inspect),
        web.post("/nodes/{ref}/update", node_update),
        web.delete("/nodes/{ref}", node_remove),
    ]
