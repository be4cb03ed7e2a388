"""The node's side of certificate upkeep: each heartbeat period it reports the root that issued
its certificate and the roots it trusts (POST /certificates/status), renews when the managers
want a certificate from another root (a root rotation) or when its own runs past half its
life, and trusts what the managers say to trust once its certificate chains to it."""
from __future__ import annotations

import logging
from typing import Protocol

from common import errors, pki
from common.nodestate import NodeFiles

log = logging.getLogger("shoal.agent")


class CertHost(Protocol):
    files: NodeFiles

    async def install_trust(self, bundle_pem: bytes) -> None: ...


class Renewer(Protocol):
    host: CertHost

    async def request_managers(self, method: str, path: str, body: dict | None = None) -> dict: ...
    async def renew_certificate(self) -> None: ...


def report(files: NodeFiles) -> dict:
    """What this node holds: the root that issued its certificate, the roots it trusts."""
    ca, cert, _ = files.load_certs()
    return {"issuer": pki.issuer_key_id(cert), "trust": pki.bundle_digest(ca)}


async def sync(agent: Renewer, answer: dict | None = None) -> None:
    """Act on the managers' answer to this node's report: the one its heartbeat carried, or
    (from a manager that answers heartbeats without one) one asked for here."""
    ca, cert, _ = agent.host.files.load_certs()
    have_trust, have_issuer = pki.bundle_digest(ca), pki.issuer_key_id(cert)
    if answer is None:
        answer = await agent.request_managers("POST", "/certificates/status",
                                              {"issuer": have_issuer, "trust": have_trust})
    want_issuer, want_trust = answer.get("issuer") or "", answer.get("trust") or ""
    # The certificate first: the new trust may drop the root the current one chains to.
    if (want_issuer and want_issuer != have_issuer) or pki.needs_renewal(cert):
        await agent.renew_certificate()
    if want_trust and want_trust != have_trust:
        bundle = (answer.get("bundle") or "").encode()
        if not bundle or pki.bundle_digest(bundle) != want_trust:
            raise errors.Unavailable("the manager's trust bundle does not match its digest; "
                                     "asking again at the next heartbeat")
        await agent.host.install_trust(bundle)
        log.info("trusted root CAs changed: %d root(s) now", len(pki.split_pems(bundle)))
