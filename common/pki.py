"""Cluster PKI: the root CA, node certificates and the TLS contexts built from them.

A node's identity is its certificate: CN is the node id, OU its role, O the cluster id, as in
Docker Swarm. Peers are reached by IP address, so TLS hostname checks are off and endpoints check
the role in the peer certificate instead (see `peer_identity`).
"""
from __future__ import annotations

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

    @classmethod
    def generate(cls, cluster_id: str, validity_days: int = 7300) -> RootCA:
        key = ec.generate_private_key(ec.SECP256R1())
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
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        return cert.public_bytes(serialization.Encoding.PEM)


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
    """True once less than `fraction` of the certificate's validity period remains."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    now = now or _now()
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return (end - now) < (end - start) * fraction


def verify_issued_by(cert_pem: bytes, ca_cert_pem: bytes, now: datetime | None = None) -> None:
    """Raise Unauthorized unless cert_pem was signed by the CA and is valid at `now`."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError as e:
        raise Unauthorized(f"certificate is not readable: {e}") from None
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise Unauthorized("certificate was not issued by this cluster's CA") from None
    now = now or _now()
    if now > cert.not_valid_after_utc:
        raise Unauthorized(
            f"certificate expired at {cert.not_valid_after_utc.isoformat()}; the node must "
            "rejoin the swarm with a join token")
    if now < cert.not_valid_before_utc:
        raise Unauthorized(
            f"certificate is not valid before {cert.not_valid_before_utc.isoformat()}; "
            "check the clocks of the nodes")


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
    return cert.public_bytes(serialization.Encoding.PEM), format(serial, "x")


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
