"""Cluster PKI: the root CA, node certificates and the TLS contexts built from them.

A node's identity is its certificate: CN is the node id, OU its role, O the cluster id, as in
Docker Swarm. Peers are reached by IP address, so TLS hostname checks are off and endpoints check
the role in the peer certificate instead (see `peer_identity`).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import re
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import InvalidArgument, Unauthorized

ROLE_MANAGER = "swarm-manager"
ROLE_WORKER = "swarm-worker"
ROLES = (ROLE_MANAGER, ROLE_WORKER)
# A user's client certificate for remote access (shoal/dockerapi/remote.py). Not in ROLES:
# it is never a node, so 2377's `peer_identity` refuses it.
ROLE_CLIENT = "swarm-client"
DEFAULT_CLIENT_VALIDITY_SECONDS = 30 * 86400

ROOT_CN = "shoal-root-ca"
DEFAULT_NODE_VALIDITY_SECONDS = 90 * 86400
# Peers' clocks disagree a little; a certificate valid "from now" would be refused by a node
# whose clock runs behind the CA's.
CLOCK_SKEW = timedelta(minutes=1)

# Node ids end up in CN (at most 64 characters by X.509) and in a DNS SAN.
_NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# A client's CN is NAME.ID (ID: 25 characters, common/ids.py), within X.509's 64.
CLIENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,37}\Z")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def generate_key() -> bytes:
    """A new ECDSA P-256 private key, PEM PKCS8, unencrypted (file permissions protect it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument("private key must be an ECDSA key")
    return key


def _check_node_id(node_id: str) -> None:
    if not isinstance(node_id, str) or not _NODE_ID_RE.match(node_id):
        raise InvalidArgument(
            f"invalid node id {node_id!r}: use 1-64 letters, digits, '.', '_' or '-'",
            field="node_id")


def make_csr(key_pem: bytes, node_id: str) -> bytes:
    """A CSR for node_id. The CA ignores the subject asked for; it is there for people reading it."""
    _check_node_id(node_id)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
           .sign(_load_key(key_pem), hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def ca_digest(cert_pem: bytes) -> str:
    """Lowercase hex SHA-256 of the certificate's DER: what join tokens pin."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def pinned_ca_matches(ca_cert_pem: bytes, expected_digest: str) -> bool:
    """Whether the CA a manager handed us is the one the join token names."""
    try:
        actual = ca_digest(ca_cert_pem)
    except ValueError:
        return False
    # bytes, because compare_digest refuses non-ASCII str and the digest comes from user input
    return hmac.compare_digest(actual.encode(), expected_digest.strip().lower().encode("utf-8"))


@dataclass
class RootCA:
    cert_pem: bytes
    key_pem: bytes
    # During a root rotation the new root issues, and its certificate cross-signed by the old
    # root rides along after each leaf, so a verifier that trusts only the old root still
    # reaches it through this intermediate.
    chain_pem: bytes = b""

    @classmethod
    def generate(cls, cluster_id: str, validity_days: int = 7300,
                 path_length: int = 1) -> RootCA:
        """A new self-signed root. Its path length of 1 admits the one intermediate shoal ever
        makes, a root cross-signed by the previous one during a rotation (roots made before
        rotations existed have 0; OpenSSL still accepts their cross-signed successor as
        self-issued, strict path builders such as cryptography's do not)."""
        key = ec.generate_private_key(ec.SECP256R1())
        # Every root of a cluster has this one name, so a root cross-signed by the previous one
        # is self-issued (RFC 5280) and escapes the roots' path length of 0; verifiers tell the
        # roots apart by key identifier.
        name = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
        ])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(now + timedelta(days=validity_days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=path_length),
                               critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cls(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=key_pem)

    def digest(self) -> str:
        return ca_digest(self.cert_pem)

    def issue(self, csr_pem: bytes, node_id: str, role: str, cluster_id: str,
              ip_sans: Iterable[str] = (),
              validity_seconds: float = DEFAULT_NODE_VALIDITY_SECONDS) -> bytes:
        """Sign a node certificate for the key in csr_pem.

        The subject comes from the arguments, never from the CSR: the CSR only proves possession
        of the key, while the caller (the CA service) has decided who the node is and its role.
        """
        if role not in ROLES:
            raise InvalidArgument(
                f"invalid role {role!r}: must be {ROLE_MANAGER!r} or {ROLE_WORKER!r}", field="role")
        _check_node_id(node_id)
        public_key = _csr_public_key(csr_pem)
        try:
            ips = [ipaddress.ip_address(ip) for ip in ip_sans]
        except ValueError as e:
            raise InvalidArgument(f"invalid IP address for the certificate: {e}",
                                  field="ip_sans") from None
        loopback = ipaddress.ip_address("127.0.0.1")
        if loopback not in ips:
            ips.append(loopback)

        ca_cert = x509.load_pem_x509_certificate(self.cert_pem)
        ca_key = _load_key(self.key_pem)
        now = _now()
        # A certificate outliving its issuer would be refused anyway; end it with the CA.
        not_after = min(now + timedelta(seconds=validity_seconds), ca_cert.not_valid_after_utc)
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, node_id),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
        ])
        sans: list[x509.GeneralName] = [x509.DNSName(node_id)]
        sans += [x509.IPAddress(ip) for ip in ips]
        cert = (x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(ca_cert.subject)
                .public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                # every node both serves (dispatcher, raft) and dials other nodes
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM) + self.chain_pem


@dataclass(frozen=True)
class NodeIdentity:
    node_id: str
    role: str
    cluster_id: str
    not_after: datetime
    not_before: datetime

    @property
    def is_manager(self) -> bool:
        return self.role == ROLE_MANAGER


def _single(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def _identity(cert: x509.Certificate) -> NodeIdentity:
    node_id = _single(cert.subject, NameOID.COMMON_NAME)
    role = _single(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    cluster_id = _single(cert.subject, NameOID.ORGANIZATION_NAME)
    if not node_id or role not in ROLES or cluster_id is None:
        raise Unauthorized("certificate is not a shoal node certificate "
                           f"(subject {cert.subject.rfc4514_string()})")
    return NodeIdentity(node_id=node_id, role=role, cluster_id=cluster_id,
                        not_after=cert.not_valid_after_utc, not_before=cert.not_valid_before_utc)


# Every request on 2377 and every heartbeat's certificate report asked for these again, each a
# certificate parse, for the same few certificates: pure functions of the bytes, so each is
# remembered (issue 20's profile: 4 % of a leader's time with 5,000 nodes joining). Only
# certificates that passed a TLS handshake against the swarm's CA, or this node's own, get here.
_PER_NODE = 8192
_PER_ROOT = 64


@functools.lru_cache(maxsize=_PER_NODE)
def identity_from_der(der: bytes) -> NodeIdentity:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise Unauthorized(f"certificate is not readable: {e}") from None
    return _identity(cert)


def identity_from_pem(cert_pem: bytes) -> NodeIdentity:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise Unauthorized(f"certificate is not readable: {e}") from None
    return _identity(cert)


def needs_renewal(cert_pem: bytes, now: datetime | None = None, fraction: float = 0.5) -> bool:
    """True once less than `fraction` of the certificate's validity period remains.

    The period is counted from the moment of issue: certificates start CLOCK_SKEW early, and
    with a one-minute expiry counting that minute would make a node renew at every heartbeat.
    """
    start, end = _validity(cert_pem)
    now = now or _now()
    if end - start > CLOCK_SKEW:
        start += CLOCK_SKEW
    return (end - now) < (end - start) * fraction


@functools.lru_cache(maxsize=_PER_NODE)
def _validity(cert_pem: bytes) -> tuple[datetime, datetime]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def verify_issued_by(cert_pem: bytes, ca_cert_pem: bytes, now: datetime | None = None) -> None:
    """Raise Unauthorized unless cert_pem's leaf chains to a root of the bundle ca_cert_pem
    (directly, or through an intermediate that follows the leaf in cert_pem, such as a
    cross-signed root during a rotation) and is valid at `now`."""
    try:
        certs = [x509.load_pem_x509_certificate(p) for p in split_pems(cert_pem)]
        roots = [x509.load_pem_x509_certificate(p) for p in split_pems(ca_cert_pem)]
    except ValueError as e:
        raise Unauthorized(f"certificate is not readable: {e}") from None
    if not certs or not roots:
        raise Unauthorized("certificate is not readable: no PEM certificate in it")
    now = now or _now()
    if not _chains(certs[0], certs[1:], roots, now):
        raise Unauthorized("certificate was not issued by this cluster's CA")
    cert = certs[0]
    if now > cert.not_valid_after_utc:
        raise Unauthorized(
            f"certificate expired at {cert.not_valid_after_utc.isoformat()}; the node must "
            "rejoin the swarm with a join token")
    if now < cert.not_valid_before_utc:
        raise Unauthorized(
            f"certificate is not valid before {cert.not_valid_before_utc.isoformat()}; "
            "check the clocks of the nodes")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _chains(leaf: x509.Certificate, intermediates: list[x509.Certificate],
            roots: list[x509.Certificate], now: datetime) -> bool:
    """Leaf -> root, or leaf -> one intermediate -> root: the only shapes shoal issues."""
    if any(_issued_by(leaf, r) for r in roots):
        return True
    for mid in intermediates:
        if not mid.not_valid_before_utc <= now <= mid.not_valid_after_utc:
            continue
        if _issued_by(leaf, mid) and any(_issued_by(mid, r) for r in roots):
            return True
    return False


def chains_to(cert_pem: bytes, root_pem: bytes, now: datetime | None = None) -> bool:
    """Whether cert_pem (leaf first, then its intermediates) is valid under the one root."""
    try:
        verify_issued_by(cert_pem, root_pem, now)
        return True
    except Unauthorized:
        return False


_PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)


def split_pems(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle or chain, in order."""
    return [m.group(0).strip() + b"\n" for m in _PEM_RE.finditer(bundle or b"")]


def join_pems(pems: Iterable[bytes]) -> bytes:
    return b"".join(p.strip() + b"\n" for p in pems if p.strip())


@functools.lru_cache(maxsize=_PER_ROOT)
def bundle_digest(bundle: bytes) -> str:
    """SHA-256 over the DER of every certificate of a trust bundle: what a node holds is the
    bundle the managers want it to hold when the digests match."""
    h = hashlib.sha256()
    for pem in split_pems(bundle):
        h.update(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER))
    return h.hexdigest()


@functools.lru_cache(maxsize=_PER_ROOT)
def key_id(cert_pem: bytes) -> str:
    """Hex subject key identifier of the (first) certificate: names a root whatever signed it."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()


@functools.lru_cache(maxsize=_PER_NODE)
def issuer_key_id(cert_pem: bytes) -> str:
    """Hex authority key identifier of the leaf: the key of the root that issued it."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return ""
    return (aki.key_identifier or b"").hex()


def cross_sign(new_root_pem: bytes, old: RootCA) -> bytes:
    """The new root's certificate (its subject, key and extensions) issued by the old root: the
    intermediate that lets verifiers still trusting only the old root accept the new root's
    certificates during a rotation. It ends with the old root."""
    new = x509.load_pem_x509_certificate(new_root_pem)
    old_cert = x509.load_pem_x509_certificate(old.cert_pem)
    old_key = _load_key(old.key_pem)
    builder = (x509.CertificateBuilder()
               .subject_name(new.subject)
               .issuer_name(old_cert.subject)
               .public_key(new.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(_now() - CLOCK_SKEW)
               .not_valid_after(min(new.not_valid_after_utc, old_cert.not_valid_after_utc)))
    for ext in new.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(old_key.public_key()), critical=False)
    return builder.sign(old_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def load_cert_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # The ssl module loads keys from files only. Keep the file in a fresh 0700 directory, on
    # tmpfs when there is one so the key never reaches a disk, and remove it straight after.
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    tmpdir = tempfile.mkdtemp(prefix="shoal-tls-", dir=base)
    try:
        path = os.path.join(tmpdir, "node.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cert_pem.rstrip(b"\n") + b"\n" + key_pem)
        ctx.load_cert_chain(path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def server_ssl_context(ca_cert_pem: bytes, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """TLS for port 2377. Client certificates are optional so that a joining node (which has none
    yet) can reach the join endpoint; every other endpoint requires `peer_identity`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca_cert_pem.decode("ascii"))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    load_cert_chain(ctx, cert_pem, key_pem)
    return ctx


def retrust_server(ctx: ssl.SSLContext, ca_cert_pem: bytes, cert_pem: bytes,
                   key_pem: bytes) -> None:
    """Give a listening context new trust roots (a root rotation drops the old one).

    A context's trust store only grows, and the server holds its context for life; so each new
    handshake switches to a fresh context from the callback OpenSSL runs on every ClientHello
    (with or without SNI: nodes are dialed by IP and send none).
    """
    fresh = server_ssl_context(ca_cert_pem, cert_pem, key_pem)

    def switch(ssl_object: Any, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        ssl_object.context = fresh

    ctx.sni_callback = switch


def client_ssl_context(ca_cert_pem: bytes, cert_pem: bytes | None = None,
                       key_pem: bytes | None = None) -> ssl.SSLContext:
    """TLS for dialing another node: trusts only the cluster CA, presents our cert if given."""
    if (cert_pem is None) != (key_pem is None):
        raise ValueError("client_ssl_context needs both cert_pem and key_pem, or neither")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Nodes are dialed by IP, and any cert from our CA is a node; callers check the role.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_cert_pem.decode("ascii"))
    if cert_pem is not None and key_pem is not None:
        load_cert_chain(ctx, cert_pem, key_pem)
    return ctx


def peer_identity(ssl_object: Any) -> NodeIdentity | None:
    """The verified peer's identity, or None on a plain connection or when it sent no cert.

    Only call this on a connection made with one of the contexts above: the certificate is
    trusted because the handshake already checked it against the cluster CA.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return identity_from_der(der)


# ---- client certificates (remote access) ----------------------------------------------------

def check_client_name(name: Any) -> str:
    if not isinstance(name, str) or not CLIENT_NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid client name {name!r}: use 1-38 letters, digits, '_' or '-', starting with "
            "a letter or digit", field="name")
    return name


def make_client_csr(key_pem: bytes, name: str) -> bytes:
    """A CSR for a client certificate; as for nodes, the CA decides the subject."""
    check_client_name(name)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .sign(_load_key(key_pem), hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class ClientIdentity:
    name: str
    client_id: str
    cluster_id: str
    serial: str          # hex: ties the certificate to its record in the store


def client_cn(name: str, client_id: str) -> str:
    return f"{name}.{client_id}"


def issue_client(ca: RootCA, csr_pem: bytes, name: str, client_id: str, cluster_id: str,
                 validity_seconds: float = DEFAULT_CLIENT_VALIDITY_SECONDS) -> tuple[bytes, str]:
    """A client certificate (CN=NAME.ID, OU=swarm-client, O=cluster) and its serial in hex.

    Client authentication only: a client certificate can never serve as a node.
    """
    check_client_name(name)
    if not re.fullmatch(r"[a-z0-9]{25}", client_id or ""):
        raise InvalidArgument(f"invalid client id {client_id!r}", field="id")
    public_key = _csr_public_key(csr_pem)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = _load_key(ca.key_pem)
    now = _now()
    not_after = min(now + timedelta(seconds=validity_seconds), ca_cert.not_valid_after_utc)
    serial = x509.random_serial_number()
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, client_cn(name, client_id)),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_CLIENT),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
    ])
    cert = (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM) + ca.chain_pem, format(serial, "x")


def _csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, TypeError) as e:
        raise InvalidArgument(f"certificate signing request is not readable: {e}",
                              field="csr") from None
    if not valid:
        raise InvalidArgument(
            "certificate signing request has an invalid signature: it must be signed by the "
            "key it asks a certificate for", field="csr")
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise InvalidArgument("certificate signing request must carry an ECDSA public key",
                              field="csr")
    return public_key


def peer_certificate_identity(der: bytes) -> NodeIdentity | ClientIdentity:
    """A node's or a client's identity from a certificate the handshake verified."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise Unauthorized(f"certificate is not readable: {e}") from None
    if _single(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) != ROLE_CLIENT:
        return _identity(cert)
    cn = _single(cert.subject, NameOID.COMMON_NAME) or ""
    cluster_id = _single(cert.subject, NameOID.ORGANIZATION_NAME)
    name, _, client_id = cn.rpartition(".")
    if not name or not client_id or cluster_id is None:
        raise Unauthorized("certificate is not a shoal client certificate "
                           f"(subject {cert.subject.rfc4514_string()})")
    return ClientIdentity(name=name, client_id=client_id, cluster_id=cluster_id,
                          serial=format(cert.serial_number, "x"))


def remote_server_ssl_context(ca_cert_pem: bytes, cert_pem: bytes,
                              key_pem: bytes) -> ssl.SSLContext:
    """TLS for the remote API (--docker-tcp): the node's certificate, and a client certificate
    from the cluster CA REQUIRED in the handshake (no open endpoint there, unlike 2377)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca_cert_pem.decode("ascii"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    load_cert_chain(ctx, cert_pem, key_pem)
    return ctx
