"""The control API of a manager (aiohttp), and the cluster endpoints nodes use on 2377.

Reads are served from the local replica. Writes are served by the leader: a follower forwards
them (forward_middleware), so a user can talk to any manager. On 2377 every caller is known by
its certificate (auth_middleware): joiners come with no certificate and may only reach /join;
agents with any node certificate reach the dispatcher and certificate renewal; the control API
needs a manager certificate.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import Optional, Protocol

from aiohttp import web

from common import codec, errors, pki, strict, tokens
from common.httpclient import ApiClient
from common.ids import new_id
from common.model import (AVAILABILITIES, NODE_ROLE_MANAGER, NODE_ROLE_WORKER, NODE_ROLES,
                          NODE_STATE_DOWN, Cluster, ManagerStatus, Node,
                          NodeDescription, NodeSpec, NodeStatus)
from common.nodestate import API_PORT, NodeState, RAFT_PORT
from manager import autolock
from manager.cluster_spec import parse_cluster_spec
from manager.httputil import CTX, body_json, field, query_flag, query_int, reply
from manager.manager import Manager
from manager.store import Transaction

log = logging.getLogger("shoal.api")

FORWARDED_NODE_HEADER = "X-Shoal-Forwarded-Node"
# Paths any caller may reach on 2377: the join handshake is authenticated by the token.
_OPEN_PATHS = ("/_ping", "/join")
# Paths any node of the swarm may reach with its certificate.
_NODE_PATHS = ("/dispatcher/", "/certificates/")


class ApiContext(Protocol):
    manager: Optional[Manager]
    state: NodeState

    def peer_client(self, addr: str) -> ApiClient: ...


def _ctx(request: web.Request) -> ApiContext:
    return request.app[CTX]


def _manager(request: web.Request) -> Manager:
    ctx = _ctx(request)
    if ctx.manager is None:
        if not ctx.state.in_swarm:
            raise errors.NotInSwarm("this node is not part of a swarm: run 'shoal swarm init' to "
                                    "create one or 'shoal swarm join' to join one")
        raise errors.NotAManager("this node is not a swarm manager: run the command on a manager "
                                 "node, or promote this node with 'shoal node promote' on a manager")
    return ctx.manager


def _identity(request: web.Request) -> Optional[pki.NodeIdentity]:
    return request.get("identity")


# ---- middlewares ----------------------------------------------------------------------------
def auth_middleware(cluster_id_of):
    @web.middleware
    async def auth(request: web.Request, handler):
        if request.path == "/_ping" or request.path.startswith("/join"):
            return await handler(request)
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        ident = pki.peer_identity(ssl_object) if ssl_object is not None else None
        if ident is None:
            raise errors.Unauthorized("this endpoint needs a client certificate issued by the "
                                      "swarm's CA (the join endpoints are the only open ones)")
        if ident.cluster_id != cluster_id_of():
            raise errors.Unauthorized("the client certificate belongs to another swarm")
        if ident.is_manager and FORWARDED_NODE_HEADER in request.headers:
            # A manager forwarding an agent's request vouches for that agent.
            origin = request.headers[FORWARDED_NODE_HEADER]
            if origin:
                ident = pki.NodeIdentity(origin, pki.ROLE_WORKER, ident.cluster_id,
                                         ident.not_after, ident.not_before)
            else:
                request["forwarded_local"] = True
        request["identity"] = ident
        if not request.path.startswith(_NODE_PATHS) and not ident.is_manager \
                and not request.get("forwarded_local"):
            raise errors.PermissionDenied(
                f"{request.path} is for managers; node {ident.node_id} holds a worker certificate")
        return await handler(request)
    return auth


def _leader_only(request: web.Request) -> bool:
    if request.path in ("/_ping", "/join/ca"):
        return False
    if request.path.startswith(("/dispatcher/", "/certificates/", "/raft/", "/join")):
        return True
    return request.method not in ("GET", "HEAD")


# The nodes' own reports and renewals: the cluster keeping itself running, never refused for disk.
_SYSTEM_WRITES = ("/dispatcher/heartbeat", "/dispatcher/status", "/dispatcher/assignments",
                  "/certificates/")


def _asks_for_a_change(request: web.Request) -> bool:
    """A write a user asked for, other than a removal or a stop (see manager/diskguard.py)."""
    if request.method in ("GET", "HEAD", "DELETE") or request.path.endswith("/stop"):
        return False
    return not request.path.startswith(_SYSTEM_WRITES) and request.path != "/join/ca"


@web.middleware
async def forward_middleware(request: web.Request, handler):
    ctx = _ctx(request)
    if not _leader_only(request) or getattr(handler, "local_only", False):
        return await handler(request)
    manager = _manager(request)
    if manager.is_leader:
        if _asks_for_a_change(request):
            manager.disk_guard.check()
        return await handler(request)
    leader = manager.leader_api_addr()
    if leader is None or leader == ctx.state.api_addr:
        raise errors.Unavailable(manager.no_leader_reason())
    if not manager.leader_connected():
        raise errors.Unavailable(manager.leader_unreachable_reason())
    ident = _identity(request)
    headers = {FORWARDED_NODE_HEADER: ident.node_id if ident and not request.get("forwarded_local") else ""}
    client = ctx.peer_client(leader)
    # Fail fast when the leader is cut off: a client should hear "no quorum", not hang. A new
    # connection gives up after 1 s; a pooled one to a leader that has just been cut off would
    # wait for the whole timeout, so the forward also ends once raft loses the leader.
    client.connect_timeout = 1.0
    forward = asyncio.ensure_future(client.request_raw(
        request.method, request.path_qs, raw=await request.read(), timeout=30.0, headers=headers))
    try:
        while not (await asyncio.wait({forward}, timeout=0.25))[0]:
            if not manager.leader_connected():
                raise errors.Unavailable(
                    f"{manager.leader_unreachable_reason()} (lost while forwarding this request, "
                    f"which may or may not have been applied)")
        status, data = forward.result()
    finally:
        forward.cancel()  # done: no effect; abandoned: closes its connection
    return web.Response(status=status, body=data, content_type="application/json")


def local_only(handler):
    handler.local_only = True
    return handler


# ---- views ----------------------------------------------------------------------------------
def node_view(manager: Manager, node: Node) -> dict:
    plain = codec.to_plain(node)
    ms = plain.get("manager_status")
    if node.role == NODE_ROLE_MANAGER and ms is not None:
        reach = manager.reachability()
        ms["reachability"] = reach.get(ms["raft_addr"], "unreachable")
        ms["leader"] = ms["reachability"] == "leader"
    return plain


def cluster_view(cluster: Cluster) -> dict:
    plain = codec.to_plain(cluster)
    plain["root_ca"].pop("key_pem", None)  # the CA key never leaves the managers' store
    plain.pop("unlock_keys", None)  # only `swarm unlock-key` shows it (manager/autolock.py)
    return plain


# ---- swarm ----------------------------------------------------------------------------------
async def swarm_inspect(request: web.Request) -> web.Response:
    manager = _manager(request)
    cluster = manager.cluster()
    if cluster is None:
        raise errors.Unavailable("the cluster object is not replicated here yet; retry in a moment")
    return reply(cluster_view(cluster))


async def swarm_update(request: web.Request) -> web.Response:
    manager = _manager(request)
    cluster = manager.store.get("clusters", manager.cluster().id)
    version = query_int(request, "version")
    data = await body_json(request, required=False)
    if "spec" in data:
        spec = parse_cluster_spec(data["spec"])
        cluster.spec = spec
    if query_flag(request, "rotate_worker_token"):
        cluster.join_tokens.worker = tokens.new_token(cluster.root_ca.cert_pem)
    if query_flag(request, "rotate_manager_token"):
        cluster.join_tokens.manager = tokens.new_token(cluster.root_ca.cert_pem)
    new_unlock_key = autolock.apply_swarm_update(cluster, query_flag(request, "rotate_manager_unlock_key"))
    if version is not None and version != cluster.meta.version:
        raise errors.Conflict(f"the swarm changed since version {version} (now {cluster.meta.version}); "
                              "read it again and retry")
    cluster.meta.updated_at = time.time()
    await manager.propose(Transaction().update("clusters", cluster))
    view = cluster_view(manager.cluster())
    if new_unlock_key:  # printed once by the CLI, like docker
        view["unlock_key"] = new_unlock_key
    return reply(view)


# ---- nodes ----------------------------------------------------------------------------------
def _find_node(manager: Manager, ref: str) -> Node:
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


async def nodes_list(request: web.Request) -> web.Response:
    manager = _manager(request)
    nodes = sorted(manager.store.list("nodes"), key=lambda n: (n.description.hostname, n.id))
    return reply([node_view(manager, n) for n in nodes])


async def node_inspect(request: web.Request) -> web.Response:
    manager = _manager(request)
    return reply(node_view(manager, _find_node(manager, request.match_info["ref"])))


@dataclass
class NodeSpecChange:
    """`node update`: what is given changes, what is absent (or null) stays."""
    labels: Optional[dict[str, str]] = None
    availability: Optional[str] = None
    role: Optional[str] = None


async def node_update(request: web.Request) -> web.Response:
    manager = _manager(request)
    node = manager.store.get("nodes", _find_node(manager, request.match_info["ref"]).id)
    version = query_int(request, "version")
    if version is not None and version != node.meta.version:
        raise errors.Conflict(f"node {node.id} changed since version {version} (now "
                              f"{node.meta.version}); read it again and retry")
    data = await body_json(request)
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
        return await _demote(request, manager, node)
    else:
        await manager.propose(Transaction().update("nodes", node))
    return reply(node_view(manager, manager.store.get("nodes", node.id)))


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


async def _demote(request: web.Request, manager: Manager, node: Node) -> web.Response:
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
        client = _ctx(request).peer_client(leader)
        status, data = await client.request_raw("POST", request.path_qs,
                                                raw=await request.read(), timeout=30)
        return web.Response(status=status, body=data, content_type="application/json")
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
    return reply(node_view(manager, manager.store.get("nodes", node.id)))


async def node_remove(request: web.Request) -> web.Response:
    manager = _manager(request)
    node = _find_node(manager, request.match_info["ref"])
    force = query_flag(request, "force")
    name = node.description.hostname or node.id
    if node.role == NODE_ROLE_MANAGER:
        raise errors.FailedPrecondition(f"node {name} is a manager and a member of raft: demote it "
                                        f"first with 'shoal node demote {name}'")
    if node.status.state != NODE_STATE_DOWN and not force:
        raise errors.FailedPrecondition(f"node {name} is not down and can't be removed: stop it "
                                        "first, or use --force")
    if node.id == manager.node_id:
        raise errors.FailedPrecondition("a node cannot remove itself; use 'shoal swarm leave'")
    await manager.propose(Transaction().delete("nodes", node.id))
    return reply({"id": node.id})


# ---- join, certificates, raft membership, dispatcher ----------------------------------------
@local_only
async def join_ca(request: web.Request) -> web.Response:
    manager = _manager(request)
    cluster = manager.cluster()
    if cluster is None:
        raise errors.Unavailable("this manager has not replicated the swarm yet; retry")
    return web.Response(body=cluster.root_ca.cert_pem, content_type="application/x-pem-file")


def _root_ca(cluster: Cluster) -> pki.RootCA:
    return pki.RootCA(cert_pem=cluster.root_ca.cert_pem, key_pem=cluster.root_ca.key_pem)


async def join(request: web.Request) -> web.Response:
    manager = _manager(request)
    cluster = manager.cluster()
    data = await body_json(request)
    token_text = field(data, "token", str)
    parsed = tokens.parse_token(token_text)
    if not pki.pinned_ca_matches(cluster.root_ca.cert_pem, parsed.ca_digest):
        raise errors.Unauthorized("the join token belongs to another swarm (its CA digest does not "
                                  "match this swarm's); get a token from a manager of this swarm")
    role = tokens.role_for_token(token_text, cluster.join_tokens.worker, cluster.join_tokens.manager)
    if role is None:
        raise errors.Unauthorized("invalid join token: it is neither this swarm's worker nor its "
                                  "manager token (it may have been rotated); get the current one "
                                  "with 'shoal swarm join-token worker' on a manager")
    addr = field(data, "advertise_addr", str)
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise errors.InvalidArgument(f"advertise_addr {addr!r} is not an IP address",
                                     field="advertise_addr") from None
    description = strict.decode(NodeDescription, data.get("description") or {}, "description")
    csr = field(data, "csr", str).encode()
    node_id = new_id()
    cert = _root_ca(cluster).issue(
        csr, node_id, pki.ROLE_MANAGER if role == NODE_ROLE_MANAGER else pki.ROLE_WORKER,
        cluster.id, [addr], cluster.spec.ca_config.node_cert_expiry)
    now = time.time()
    node = Node(id=node_id, spec=NodeSpec(desired_role=role), description=description,
                status=NodeStatus(addr=addr), role=role)
    node.meta.created_at = node.meta.updated_at = now
    raft_info = None
    if role == NODE_ROLE_MANAGER:
        node.manager_status = ManagerStatus(raft_addr=f"{addr}:{RAFT_PORT}", api_addr=f"{addr}:{API_PORT}")
        await manager.propose(Transaction().create("nodes", node))
        raft_info = await _admit_to_raft(manager, node.manager_status.raft_addr)
    else:
        await manager.propose(Transaction().create("nodes", node))
    log.info("node %s (%s) joined as %s", node_id, description.hostname, role)
    return reply({"node_id": node_id, "cluster_id": cluster.id, "role": role,
                  "cert": cert.decode(), "ca_cert": cluster.root_ca.cert_pem.decode(),
                  "managers": manager.manager_api_addrs(), "raft": raft_info})


async def _admit_to_raft(manager: Manager, raft_addr: str) -> dict:
    """Start adding a manager to raft and return what it needs to start its replica.

    The addition commits only once the newcomer runs raft (it counts in the new majority), so
    it completes in the background; the lock keeps membership changes one at a time.
    """
    await asyncio.wait_for(manager.membership_lock.acquire(), timeout=30)
    members = manager.raft.member_addrs()

    async def add() -> None:
        try:
            if raft_addr not in members:
                await manager.raft.add_member(raft_addr, timeout=30)
                log.info("raft member %s added", raft_addr)
        except Exception as exc:
            log.warning("adding raft member %s: %s", raft_addr, exc)
        finally:
            manager.membership_lock.release()

    asyncio.get_running_loop().create_task(add())
    return {"secret": manager.files.load_raft_secret().hex(),
            "members": sorted(set(members) | {raft_addr})}


async def raft_join(request: web.Request) -> web.Response:
    """A promoted node asks for the raft secret and peers, and to be added to raft."""
    manager = _manager(request)
    ident = _identity(request)
    if ident is None or not ident.is_manager:
        raise errors.PermissionDenied("only a node with a manager certificate can join raft")
    node = manager.store.get("nodes", ident.node_id)
    if node is None or node.role != NODE_ROLE_MANAGER or node.manager_status is None:
        raise errors.PermissionDenied(f"node {ident.node_id} is not a manager of this swarm")
    return reply(await _admit_to_raft(manager, node.manager_status.raft_addr))


async def certificate_renew(request: web.Request) -> web.Response:
    manager = _manager(request)
    ident = _identity(request)
    node = manager.store.get("nodes", ident.node_id) if ident else None
    if node is None:
        raise errors.PermissionDenied("this node was removed from the swarm; leave and join again")
    cluster = manager.cluster()
    data = await body_json(request)
    csr = field(data, "csr", str).encode()
    role = pki.ROLE_MANAGER if node.role == NODE_ROLE_MANAGER else pki.ROLE_WORKER
    cert = _root_ca(cluster).issue(csr, node.id, role, cluster.id, [node.status.addr] if node.status.addr else [],
                                   cluster.spec.ca_config.node_cert_expiry)
    return reply({"cert": cert.decode(), "role": node.role})


async def dispatcher_heartbeat(request: web.Request) -> web.Response:
    manager = _manager(request)
    ident = _identity(request)
    if ident is None:
        raise errors.Unauthorized("heartbeats need the node's certificate")
    data = await body_json(request)
    addr = field(data, "addr", str)
    description = field(data, "description", dict, required=False)
    raft_disk = field(data, "raft_disk", dict, required=False)
    if raft_disk is not None:
        manager.disk_guard.note(ident.node_id, field(raft_disk, "free", int),
                                field(raft_disk, "path", str))
    return reply(await manager.dispatcher.heartbeat(ident.node_id, addr, description))


def routes() -> list[web.RouteDef]:
    return [
        web.get("/swarm", swarm_inspect),
        web.post("/swarm/update", swarm_update),
        web.get("/nodes", nodes_list),
        web.get("/nodes/{ref}", node_inspect),
        web.post("/nodes/{ref}/update", node_update),
        web.delete("/nodes/{ref}", node_remove),
        web.get("/join/ca", join_ca),
        web.post("/join", join),
        web.post("/raft/join", raft_join),
        web.post("/certificates/renew", certificate_renew),
        web.post("/dispatcher/heartbeat", dispatcher_heartbeat),
        *autolock.routes(),
    ]
