"""Joining: the CA certificate, the token-authenticated join, raft membership for managers, certificate renewal."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time

from aiohttp import web

from common import errors, pki, strict, tokens
from common.httpserver import body_json, field, reply
from common.ids import new_id
from common.model import (ManagerStatus, NODE_ROLE_MANAGER, Node, NodeDescription,
                          NodeSpec, NodeStatus)
from common.nodestate import API_PORT, RAFT_PORT
from manager.controlapi.ca import issuing_ca, trust_bundle
from manager.controlapi.context import Manager, identity_of, manager_of
from manager.controlapi.middleware import local_only
from manager.state.store import Transaction


log = logging.getLogger("shoal.api")

@local_only
async def join_ca(request: web.Request) -> web.Response:
    manager = manager_of(request)
    cluster = manager.cluster()
    if cluster is None:
        raise errors.Unavailable("this manager has not replicated the swarm yet; retry")
    return web.Response(body=cluster.root_ca.cert_pem, content_type="application/x-pem-file")


async def join(request: web.Request) -> web.Response:
    manager = manager_of(request)
    cluster = manager.cluster()
    data = await body_json(request)
    token_text = field(data, "token", str)
    parsed = tokens.parse_token(token_text)
    if not pki.pinned_ca_matches(cluster.root_ca.cert_pem, parsed.ca_digest):
        if parsed.ca_digest in cluster.root_ca.previous_digests:
            raise errors.Unauthorized(
                "the join token pins a root CA this swarm has rotated out ('shoal swarm ca "
                "--rotate'); get the current token with 'shoal swarm join-token worker' (or "
                "manager) on a manager")
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
    cert = issuing_ca(cluster).issue(
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
                  "cert": cert.decode(), "ca_cert": trust_bundle(cluster).decode(),
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
    manager = manager_of(request)
    ident = identity_of(request)
    if ident is None or not ident.is_manager:
        raise errors.PermissionDenied("only a node with a manager certificate can join raft")
    node = manager.store.get("nodes", ident.node_id)
    if node is None or node.role != NODE_ROLE_MANAGER or node.manager_status is None:
        raise errors.PermissionDenied(f"node {ident.node_id} is not a manager of this swarm")
    return reply(await _admit_to_raft(manager, node.manager_status.raft_addr))


async def certificate_renew(request: web.Request) -> web.Response:
    manager = manager_of(request)
    ident = identity_of(request)
    node = manager.store.get("nodes", ident.node_id) if ident else None
    if node is None:
        raise errors.PermissionDenied("this node was removed from the swarm; leave and join again")
    cluster = manager.cluster()
    data = await body_json(request)
    csr = field(data, "csr", str).encode()
    role = pki.ROLE_MANAGER if node.role == NODE_ROLE_MANAGER else pki.ROLE_WORKER
    cert = issuing_ca(cluster).issue(csr, node.id, role, cluster.id, [node.status.addr] if node.status.addr else [],
                                   cluster.spec.ca_config.node_cert_expiry)
    return reply({"cert": cert.decode(), "role": node.role})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/join/ca", join_ca),
        web.post("/join", join),
        web.post("/raft/join", raft_join),
        web.post("/certificates/renew", certificate_renew),
    ]
