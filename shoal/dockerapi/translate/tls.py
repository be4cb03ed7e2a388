"""Docker's TLSInfo of the swarm (ClusterInfo.TLSInfo, RootRotationInProgress) and of each node
(Node.Description.TLSInfo), from shoal's root CA state and the nodes' TLS reports (node_tls).

`docker swarm ca --rotate` counts a node as rotated when its TLSInfo's issuer subject and public
key equal the swarm's, and its TrustRoot string equals the swarm's: so both sides are written by
the same functions here. Docker's []byte fields travel as base64."""
from __future__ import annotations

import base64
import functools
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common import pki
from common.model import Cluster, NodeTLS

_EMPTY = {"TrustRoot": "", "CertIssuerSubject": "", "CertIssuerPublicKey": ""}


@functools.lru_cache(maxsize=16)
def _issuer(cert_pem: bytes) -> tuple[str, str, str]:
    """(key id, base64 DER subject, base64 DER public key) of a root; empty strings for one
    that does not parse (an answer about the swarm must not fail for its TLS details)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return "", "", ""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return (pki.key_id(cert_pem), base64.b64encode(cert.subject.public_bytes()).decode(),
            base64.b64encode(spki).decode())


@functools.lru_cache(maxsize=16)
def _digest(bundle_pem: bytes) -> str:
    return pki.bundle_digest(bundle_pem)


def _desired_root(c: Cluster) -> bytes:
    rot = c.root_ca.rotation
    return rot.cert_pem if rot is not None else c.root_ca.cert_pem


def _info(trust_pem: bytes, issuer_pem: Optional[bytes]) -> dict:
    _, subject, key = _issuer(issuer_pem) if issuer_pem else ("", "", "")
    return {"TrustRoot": trust_pem.decode("ascii", "replace"), "CertIssuerSubject": subject,
            "CertIssuerPublicKey": key}


def cluster_tls(c: Cluster) -> dict:
    """The swarm's TLSInfo: the root nodes should end up trusting and holding certificates of
    (the new one while a rotation is under way)."""
    root = _desired_root(c)
    return _info(root, root)


def rotation_in_progress(c: Cluster) -> bool:
    return c.root_ca.rotation is not None


def node_tls(c: Cluster, rec: Optional[NodeTLS]) -> dict:
    """A node's TLSInfo from its last report: the roots it trusts (when they are roots this swarm
    has now) and the root that issued its certificate."""
    if rec is None:
        return dict(_EMPTY)
    roots = [c.root_ca.cert_pem] + ([c.root_ca.rotation.cert_pem] if c.root_ca.rotation else [])
    trust = b""
    for candidate in (_desired_root(c), pki.join_pems(roots), c.root_ca.cert_pem):
        if _digest(candidate) == rec.trust_digest:
            trust = candidate
            break
    issuer = next((r for r in roots if _issuer(r)[0] == rec.issuer_key_id), None)
    return _info(trust, issuer)
