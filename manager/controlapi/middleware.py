"""The control API's middlewares: who may call what on 2377 (auth), and writes forwarded to the leader.

Reads are served from the local replica (with a Shoal-Warning header while this manager has no
leader). Writes are served by the leader: a follower forwards them (forward_middleware), so a
user can talk to any manager; across a failover they get a definite answer (forwarding.py).
On 2377 every caller is known by its certificate (auth_middleware): joiners come with no
certificate and may only reach /join; agents with any node certificate reach the dispatcher and
certificate renewal; the control API needs a manager certificate.
"""
from __future__ import annotations

import time

from aiohttp import web

from common import errors, pki
from manager.controlapi import forwarding, replay
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


def check_disk_for(manager, method: str, path: str) -> None:
    """On the leader: refuse a change a user asked for when the disk is about to fill."""
    if _asks_for_a_change_to(method, path):
        manager.disk_guard.check()


@web.middleware
async def forward_middleware(request: web.Request, handler):
    ctx = context_of(request)
    if not _leader_only(request) or getattr(handler, "local_only", False):
        response = await handler(request)
        if request.method in ("GET", "HEAD") and ctx.manager is not None \
                and not response.prepared:
            warning = forwarding.stale_warning(ctx.manager)
            if warning:
                response.headers[forwarding.WARNING_HEADER] = warning
        return response
    return await _deliver(request, handler, ctx, manager_of(request))


# The cluster keeping itself running: one attempt each, the agents and joiners retry.
_SYSTEM_PREFIXES = ("/dispatcher/", "/certificates/", "/raft/", "/join")


async def _deliver(request: web.Request, handler, ctx, manager) -> web.StreamResponse:
    """A write, on the leader or forwarded to it, with a definite answer (forwarding.py)."""
    forwarded_id = request.headers.get(forwarding.REQUEST_ID_HEADER)
    request_id = forwarded_id or forwarding.new_request_id()
    # A forwarded request gets one attempt here: the forwarder retries.
    one_attempt = forwarded_id is not None or request.path.startswith(_SYSTEM_PREFIXES)
    deadline = time.monotonic() + (0.0 if one_attempt else forwarding.DELIVER_DEADLINE)
    read_back = replay.read_back_request(request)
    raw = await request.read()
    ident = identity_of(request)
    origin = ident.node_id if ident and not request.get(FORWARDED_LOCAL) else ""

    async def local(maybe_applied: bool) -> forwarding.Answer:
        check_disk_for(manager, request.method, request.path)

        async def run() -> forwarding.Answer:
            return forwarding.Answer.of(await handler(request))
        return await forwarding.serve_on_leader(
            manager, request_id, maybe_applied, run,
            lambda result: replay.replay_answer(request, read_back, manager, result))

    async def remote(leader: str, maybe_applied: bool) -> forwarding.Answer:
        headers = {FORWARDED_NODE_HEADER: origin, forwarding.REQUEST_ID_HEADER: request_id}
        if maybe_applied:
            headers[forwarding.RETRY_HEADER] = "1"
        return await forwarding.send_to_leader(ctx, manager, leader, request.method,
                                               request.path_qs, raw, headers)

    try:
        answer = await forwarding.deliver(
            manager, ctx, local=local, remote=remote, answer_of=lambda a: a, deadline=deadline,
            maybe_applied=forwarding.RETRY_HEADER in request.headers)
    except forwarding.NoLeader as exc:
        if forwarded_id is None:
            raise
        # To the forwarder: not applied, try the next leader.
        return web.Response(status=exc.status, body=forwarding.no_leader_body(exc),
                            content_type="application/json")
    return answer.response()


def local_only(handler):
    handler.local_only = True
    return handler
