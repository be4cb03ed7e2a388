"""The swarm's root CA: show it, rotate it (`shoal swarm ca [--rotate]`), and the nodes' reports
of their TLS material that drive a rotation to its end.

A rotation follows SwarmKit's design: a new root is made and cross-signed by the old one; from
then on managers issue from the new root, each leaf followed by the cross-signed certificate,
so that a node still trusting only the old root accepts it. Nodes are told to trust both roots
and to renew; once every node holds a certificate from the new root and trusts it, the new root
replaces the old one, nodes are told to trust it alone, and join tokens pin it.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

from aiohttp import web

from common import errors, pki, tokens
from common.httpserver import body_json, field, reply
from common.model import Cluster, NodeTLS, RootCAState, RootRotation
from manager.controlapi.context import Manager, caller_node_id, manager_of
from manager.specs.cluster import validate_cluster_spec
from manager.state.store import Transaction

log = logging.getLogger("shoal.ca")

# Old roots a cluster remembers, to tell "an old token" from "another swarm's token".
_PREVIOUS_KEPT = 5


def issuing_ca(cluster: Cluster) -> pki.RootCA:
    """The CA that signs node and client certificates now: the new root during a rotation."""
    rot = cluster.root_ca.rotation
    if rot is not None:
        return pki.RootCA(cert_pem=rot.cert_pem, key_pem=rot.key_pem,
                          chain_pem=rot.cross_signed_pem)
    return pki.RootCA(cert_pem=cluster.root_ca.cert_pem, key_pem=cluster.root_ca.key_pem)


def trust_bundle(cluster: Cluster) -> bytes:
    """The roots every node should trust now: both during a rotation, else the root."""
    rot = cluster.root_ca.rotation
    roots = [cluster.root_ca.cert_pem] + ([rot.cert_pem] if rot is not None else [])
    return pki.join_pems(roots)


@dataclasses.dataclass
class Progress:
    total: int
    certs: int        # nodes holding a certificate from the desired root
    trust: int        # nodes trusting exactly the desired bundle
    pending: list[str]

    @property
    def done(self) -> bool:
        return self.certs == self.total and self.trust == self.total


def progress(manager: Manager, cluster: Cluster) -> Progress:
    rot = cluster.root_ca.rotation
    want_issuer = pki.key_id(rot.cert_pem if rot is not None else cluster.root_ca.cert_pem)
    want_trust = pki.bundle_digest(trust_bundle(cluster))
    nodes = manager.store.list("nodes")
    certs = trust = 0
    pending = []
    for node in nodes:
        rec: Optional[NodeTLS] = manager.store.get("node_tls", node.id)
        has_cert = rec is not None and rec.issuer_key_id == want_issuer
        trusts = rec is not None and rec.trust_digest == want_trust
        certs += has_cert
        trust += trusts
        if not (has_cert and trusts):
            pending.append(node.description.hostname or node.id)
    return Progress(total=len(nodes), certs=certs, trust=trust, pending=sorted(pending))


def ca_view(manager: Manager, cluster: Cluster) -> dict:
    rot = cluster.root_ca.rotation
    p = progress(manager, cluster)
    return {
        "cert_pem": cluster.root_ca.cert_pem.decode(),
        "digest": cluster.root_ca.digest,
        "rotating": rot is not None,
        "desired_digest": pki.ca_digest(rot.cert_pem) if rot is not None else cluster.root_ca.digest,
        "node_cert_expiry": cluster.spec.ca_config.node_cert_expiry,
        "progress": {"total": p.total, "certs": p.certs, "trust": p.trust,
                     "pending": p.pending[:20]},
    }


def _cluster_or_unavailable(manager: Manager) -> Cluster:
    cluster = manager.cluster()
    if cluster is None:
        raise errors.Unavailable("the cluster object is not replicated here yet; retry in a moment")
    return cluster


async def ca_inspect(request: web.Request) -> web.Response:
    manager = manager_of(request)
    return reply(ca_view(manager, _cluster_or_unavailable(manager)))


async def ca_rotate(request: web.Request) -> web.Response:
    manager = manager_of(request)
    data = await body_json(request, required=False)
    expiry = field(data, "cert_expiry", float, required=False)
    force_rotate = field(data, "force_rotate", int, required=False)
    return reply(await rotate_root(manager, expiry, force_rotate))


async def rotate_root(manager: Manager, cert_expiry: Optional[float] = None,
                      force_rotate: Optional[int] = None) -> dict:
    """Start a root rotation on the leader. A rotation under way is replaced by a fresh one
    from the current root (as docker's `--rotate` does): nodes simply renew again.
    `force_rotate`: the value of Docker's rotation counter a Docker client asked for (one
    higher than it read); shoal's own callers leave it and the counter goes up by one."""
    current = _cluster_or_unavailable(manager)
    cluster = manager.store.get("clusters", current.id)
    counter = cluster.spec.ca_config.force_rotate
    cluster.spec.ca_config.force_rotate = max(counter + 1, force_rotate or 0)
    if cert_expiry is not None:
        cluster.spec.ca_config.node_cert_expiry = cert_expiry
        validate_cluster_spec(cluster.spec)
    old = pki.RootCA(cert_pem=cluster.root_ca.cert_pem, key_pem=cluster.root_ca.key_pem)
    new = pki.RootCA.generate(cluster.id)
    cluster.root_ca.rotation = RootRotation(
        cert_pem=new.cert_pem, key_pem=new.key_pem,
        cross_signed_pem=pki.cross_sign(new.cert_pem, old), started_at=time.time())
    cluster.meta.updated_at = time.time()
    await manager.propose(Transaction().update("clusters", cluster))
    log.info("root CA rotation started: new root %s", pki.ca_digest(new.cert_pem))
    return ca_view(manager, _cluster_or_unavailable(manager))


async def _finish_if_done(manager: Manager) -> None:
    """Once every node holds a certificate from the new root and trusts it: make it the root,
    drop the old one from the bundle, and pin it in the join tokens."""
    cluster = manager.cluster()
    if cluster is None or cluster.root_ca.rotation is None or not progress(manager, cluster).done:
        return
    cluster = manager.store.get("clusters", cluster.id)
    rot = cluster.root_ca.rotation
    old_digest = cluster.root_ca.digest
    cluster.root_ca = RootCAState(
        cert_pem=rot.cert_pem, key_pem=rot.key_pem, digest=pki.ca_digest(rot.cert_pem),
        rotation=None,
        previous_digests=([old_digest] + cluster.root_ca.previous_digests)[:_PREVIOUS_KEPT])
    cluster.join_tokens.worker = tokens.with_ca(cluster.join_tokens.worker, rot.cert_pem)
    cluster.join_tokens.manager = tokens.with_ca(cluster.join_tokens.manager, rot.cert_pem)
    cluster.meta.updated_at = time.time()
    txn = Transaction().update("clusters", cluster)
    # A node removed before the rotation began holds, at best, a certificate of the old root,
    # which nobody trusts any more: its record has done its work.
    for removed in manager.store.list("removed_nodes"):
        if removed.removed_at < rot.started_at:
            txn.delete("removed_nodes", removed.id)
    try:
        await manager.propose(txn)
    except errors.Conflict:
        return  # someone changed the cluster meanwhile; the next report tries again
    log.info("root CA rotation done: the root is %s; the old one is no longer trusted",
             cluster.root_ca.digest)


async def certificate_status(request: web.Request) -> web.Response:
    """A node's report of its TLS material, from agents that do not send it with their
    heartbeats; the answer says what it should trust and which root its certificate should
    come from."""
    manager = manager_of(request)
    node_id = caller_node_id(request, "certificate status reports")
    data = await body_json(request)
    return reply(await tls_status(manager, node_id, data))


async def tls_status(manager, node_id: str, report: dict) -> dict:
    """Note a node's report ({"issuer", "trust"}) and answer what it should hold: each
    heartbeat of every node comes here, so a report like the last one reads and writes nothing."""
    issuer = field(report, "issuer", str)
    trust = field(report, "trust", str)
    cluster = _cluster_or_unavailable(manager)
    if manager.store.peek("nodes", node_id) is not None:
        rec = manager.store.peek("node_tls", node_id)
        if rec is None or (rec.issuer_key_id, rec.trust_digest) != (issuer, trust):
            new = NodeTLS(id=node_id, issuer_key_id=issuer[:128], trust_digest=trust[:128])
            new.meta.updated_at = time.time()
            txn = Transaction()
            if rec is None:
                txn.create("node_tls", new)
            else:
                txn.update("node_tls", new, check_version=False)
            await manager.propose(txn)
        if cluster.root_ca.rotation is not None:
            await _finish_if_done(manager)
            cluster = _cluster_or_unavailable(manager)
    bundle = trust_bundle(cluster)
    rot = cluster.root_ca.rotation
    answer = {"trust": pki.bundle_digest(bundle),
              "issuer": pki.key_id(rot.cert_pem if rot is not None else cluster.root_ca.cert_pem)}
    if answer["trust"] != trust:
        answer["bundle"] = bundle.decode()
    return answer


def routes() -> list[web.RouteDef]:
    return [
        web.get("/swarm/ca", ca_inspect),
        web.post("/swarm/ca/rotate", ca_rotate),
        web.post("/certificates/status", certificate_status),
    ]
