"""Client certificates for remote access: issue (from a CSR, so the key stays with the user),
list, revoke.

The record of each certificate is in the replicated store; the remote listener
(shoal/dockerapi/remote.py) accepts a client certificate only while its record is there and
not revoked, so `rm` on any manager reaches every manager with the replica.
"""
from __future__ import annotations

import time

from aiohttp import web
from cryptography import x509

from common import errors, pki
from common.httpserver import body_json, field, reply
from common.ids import new_id
from common.model import ClientCert
from manager.controlapi.ca import issuing_ca, trust_bundle
from manager.controlapi.context import Manager, manager_of
from manager.state.store import Transaction

MIN_EXPIRY = 60.0
MAX_EXPIRY = 10 * 365 * 86400.0


def client_cert_view(cert: ClientCert, now: float) -> dict:
    state = "revoked" if cert.revoked_at else "expired" if cert.not_after <= now else "active"
    return {"id": cert.id, "name": cert.name, "serial": cert.serial,
            "created_at": cert.meta.created_at, "not_after": cert.not_after,
            "revoked_at": cert.revoked_at, "state": state}


def in_force(cert: ClientCert, now: float) -> bool:
    return not cert.revoked_at and cert.not_after > now


def refusal(manager: Manager, ident: pki.ClientIdentity, now: float) -> str | None:
    """Why this manager refuses a client certificate the handshake verified, or None."""
    record = manager.store.get("client_certs", ident.client_id)
    who = f"client certificate {ident.name!r} (id {ident.client_id})"
    if record is None:
        return (f"{who} is not known to this swarm: it was never issued here or this manager "
                "has not replicated it yet; get one with 'shoal swarm client-cert NAME -o DIR'")
    if record.serial != ident.serial:
        return f"{who} does not match the certificate issued under that id"
    if record.revoked_at:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.revoked_at))
        return (f"{who} was revoked at {when} ('shoal swarm client-cert rm'); ask an operator "
                "for a new one")
    if record.not_after <= now:
        return f"{who} has expired; ask an operator for a new one"
    return None


def _expiry(data: dict) -> float:
    value = field(data, "expiry", float, required=False, default=pki.DEFAULT_CLIENT_VALIDITY_SECONDS)
    if not MIN_EXPIRY <= value <= MAX_EXPIRY:
        raise errors.InvalidArgument(
            f"expiry {value:g}s is out of range: give between {MIN_EXPIRY:g}s and "
            f"{MAX_EXPIRY / 86400:g} days (e.g. --expiry 30d)", field="expiry")
    return value


async def client_cert_create(request: web.Request) -> web.Response:
    manager = manager_of(request)
    cluster = manager.cluster()
    if cluster is None:
        raise errors.Unavailable("the cluster object is not replicated here yet; retry in a moment")
    data = await body_json(request)
    name = pki.check_client_name(field(data, "name", str))
    csr = field(data, "csr", str).encode()
    expiry = _expiry(data)
    now = time.time()
    if any(c.name == name and in_force(c, now) for c in manager.store.list("client_certs")):
        raise errors.Conflict(
            f"a client certificate named {name!r} is in force; revoke it with 'shoal swarm "
            f"client-cert rm {name}' or pick another name", field="name")
    client_id = new_id()
    ca = issuing_ca(cluster)  # the new root during a rotation (manager/controlapi/ca.py)
    cert_pem, serial = pki.issue_client(ca, csr, name, client_id, cluster.id, expiry)
    not_after = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc.timestamp()
    record = ClientCert(id=client_id, name=name, serial=serial, not_after=not_after)
    record.meta.created_at = record.meta.updated_at = now
    await manager.propose(Transaction().create("client_certs", record))
    return reply({**client_cert_view(record, now), "cert": cert_pem.decode(),
                  "ca_cert": trust_bundle(cluster).decode()}, status=201)


async def client_cert_list(request: web.Request) -> web.Response:
    manager = manager_of(request)
    now = time.time()
    certs = sorted(manager.store.list("client_certs"), key=lambda c: (c.name, c.meta.created_at))
    return reply([client_cert_view(c, now) for c in certs])


async def client_cert_revoke(request: web.Request) -> web.Response:
    """Revoke the certificates in force named REF (or the one whose id is, or starts with, REF)."""
    manager = manager_of(request)
    ref = request.match_info["ref"]
    now = time.time()
    certs = manager.store.list("client_certs")
    targets = [c for c in certs if c.name == ref and not c.revoked_at]
    if not targets:
        targets = [c for c in certs if c.id == ref and not c.revoked_at]
    if not targets and len(ref) >= 4:
        by_prefix = [c for c in certs if c.id.startswith(ref) and not c.revoked_at]
        targets = by_prefix if len(by_prefix) == 1 else []
    if not targets:
        raise errors.NotFound(f"no client certificate in force named {ref!r} (or with that id); "
                              "see 'shoal swarm client-cert ls'", field="name")
    txn = Transaction()
    revoked = []
    for cert in targets:
        cert = manager.store.get("client_certs", cert.id)
        cert.revoked_at = cert.meta.updated_at = now
        txn.update("client_certs", cert)
        revoked.append(cert)
    await manager.propose(txn)
    return reply([client_cert_view(c, now) for c in revoked])


def routes() -> list[web.RouteDef]:
    return [
        web.get("/swarm/client-certs", client_cert_list),
        web.post("/swarm/client-certs", client_cert_create),
        web.delete("/swarm/client-certs/{ref}", client_cert_revoke),
    ]
