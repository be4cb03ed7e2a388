"""The control API's middlewares: who may call what on 2377 (auth), and writes forwarded to the leader.

Reads are served from the local replica. Writes are served by the leader: a follower forwards
them (forward_middleware), so a user can talk to any manager. On 2377 every caller is known by
its certificate (auth_middleware): joiners come with no certificate and may only reach /join;
agents with any node certificate reach the dispatcher and certificate renewal; the control API
needs a manager certificate.
"""
from __future__ import annotations

import asyncio

from aiohttp import web

from common import errors, pki
from manager.controlapi.context import FORWARDED_LOCAL, IDENTITY, context_of, identity_of, manager_of


FORWARDED_NODE_HEADER = "X-Shoal-Forwarded-Node"


# Paths any caller may reach on 2377: the join handshake is authenticated by the token.
_OPEN_PATHS = ("/_ping", "/join")


# Paths any node of the swarm may reach with its certificate.
_NODE_PATHS = ("/dispatcher/", "/certificates/")


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
                request[FORWARDED_LOCAL] = True
        _refuse_removed(request, ident)
        request[IDENTITY] = ident
        if not request.path.startswith(_NODE_PATHS) and not ident.is_manager \
                and not request.get(FORWARDED_LOCAL):
            raise errors.PermissionDenied(
                f"{request.path} is for managers; node {ident.node_id} holds a worker certificate")
        return await handler(request)
    return auth


def _refuse_removed(request: web.Request, ident: pki.NodeIdentity) -> None:
    """A removed node's certificate stays valid until it expires: refuse it by the replicated
    record of removed nodes (only managers hold it; a worker's 2377 serves no control API)."""
    manager = context_of(request).manager
    if manager is not None and manager.store.get("removed_nodes", ident.node_id) is not None:
        raise errors.PermissionDenied(
            f"node {ident.node_id} was removed from the swarm ('node rm'): its certificate is "
            "revoked; run 'shoal swarm leave --force' on it and join again with a join token")


def _leader_only(request: web.Request) -> bool:
    if request.path in ("/_ping", "/join/ca"):
        return False
    if request.path.startswith(("/dispatcher/", "/certificates/", "/raft/", "/join")):
        return True
    return request.method not in ("GET", "HEAD")


# The nodes' own reports and renewals: the cluster keeping itself running, never refused for disk.
_SYSTEM_WRITES = ("/dispatcher/heartbeat", "/dispatcher/status", "/dispatcher/assignments",
                  "/certificates/")


def _asks_for_a_change_to(method: str, path: str) -> bool:
    """A write a user asked for, other than a removal or a stop (see manager/diskguard.py)."""
    if method in ("GET", "HEAD", "DELETE") or path.endswith("/stop"):
        return False
    return not path.startswith(_SYSTEM_WRITES) and path != "/join/ca"


def leader_to_forward_to(ctx, manager) -> str | None:
    """None when this manager is the leader; else the leader's API address, once it is known
    and connected (Unavailable otherwise)."""
    if manager.is_leader:
        return None
    leader = manager.leader_api_addr()
    if leader is None or leader == ctx.state.api_addr:
        raise errors.Unavailable(manager.no_leader_reason())
    if not manager.leader_connected():
        raise errors.Unavailable(manager.leader_unreachable_reason())
    return leader


async def forward_to_leader(ctx, manager, leader: str, method: str, path_qs: str, raw: bytes,
                            headers: dict[str, str]) -> tuple[int, bytes]:
    """A control API request sent on to the leader: its status and body."""
    client = ctx.peer_client(leader)
    # Fail fast when the leader is cut off: a client should hear "no quorum", not hang. A new
    # connection gives up after 1 s; a pooled one to a leader that has just been cut off would
    # wait for the whole timeout, so the forward also ends once raft loses the leader.
    client.connect_timeout = 1.0
    forward = asyncio.ensure_future(client.request_raw(
        method, path_qs, raw=raw, timeout=30.0, headers=headers))
    try:
        while not (await asyncio.wait({forward}, timeout=0.25))[0]:
            if not manager.leader_connected():
                raise errors.Unavailable(
                    f"{manager.leader_unreachable_reason()} (lost while forwarding this request, "
                    f"which may or may not have been applied)")
        return forward.result()
    finally:
        forward.cancel()  # done: no effect; abandoned: closes its connection


def check_disk_for(manager, method: str, path: str) -> None:
    """On the leader: refuse a change a user asked for when the disk is about to fill."""
    if _asks_for_a_change_to(method, path):
        manager.disk_guard.check()


@web.middleware
async def forward_middleware(request: web.Request, handler):
    ctx = context_of(request)
    if not _leader_only(request) or getattr(handler, "local_only", False):
        return await handler(request)
    manager = manager_of(request)
    leader = leader_to_forward_to(ctx, manager)
    if leader is None:
        check_disk_for(manager, request.method, request.path)
        return await handler(request)
    ident = identity_of(request)
    headers = {FORWARDED_NODE_HEADER: ident.node_id if ident and not request.get(FORWARDED_LOCAL) else ""}
    status, data = await forward_to_leader(ctx, manager, leader, request.method,
                                           request.path_qs, await request.read(), headers)
    return web.Response(status=status, body=data, content_type="application/json")


def local_only(handler):
    handler.local_only = True
    return handler
