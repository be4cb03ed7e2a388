import asyncio
import hashlib
import ipaddress
import os
import re
import ssl
import stat
import tempfile
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common import pki
from common.errors import InvalidArgument, Unauthorized
from common.pki import (
    ROLE_MANAGER, ROLE_WORKER, NodeIdentity, RootCA, ca_digest, client_ssl_context,
    generate_key, identity_from_der, identity_from_pem, make_csr, needs_renewal, peer_identity,
    pinned_ca_matches, server_ssl_context, verify_issued_by,
)

# Key generation and signing are cheap with P-256, but share the CAs across tests anyway.
CA = RootCA.generate("cluster-a")
OTHER_CA = RootCA.generate("cluster-b")


def _node(ca: RootCA, node_id: str, role: str = ROLE_WORKER, **kw) -> tuple[bytes, bytes]:
    key = generate_key()
    cert = ca.issue(make_csr(key, node_id), node_id, role, ca_cluster(ca), **kw)
    return cert, key


def ca_cluster(ca: RootCA) -> str:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    return cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value


def test_root_ca_is_a_self_signed_ca():
    cert = x509.load_pem_x509_certificate(CA.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "shoal-root-ca"
    assert ca_cluster(CA) == "cluster-a"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    cert.verify_directly_issued_by(cert)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=7299) < life < timedelta(days=7301)


def test_generate_key_is_pkcs8_p256():
    pem = generate_key()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem, None)
    assert key.curve.name == "secp256r1"


def test_issue_and_identity_round_trip():
    cert_pem, _ = _node(CA, "node1", ROLE_MANAGER, ip_sans=["10.0.0.5", "fd00::5"])
    ident = identity_from_pem(cert_pem)
    assert (ident.node_id, ident.role, ident.cluster_id) == ("node1", ROLE_MANAGER, "cluster-a")
    assert ident.is_manager
    assert ident.not_after.tzinfo is not None and ident.not_before.tzinfo is not None
    life = ident.not_after - ident.not_before
    # 90 days plus the minute of backdating for clock skew
    assert life == timedelta(days=90, minutes=1)
    assert ident.not_before < datetime.now(timezone.utc) - timedelta(seconds=50)

    cert = x509.load_pem_x509_certificate(cert_pem)
    assert identity_from_der(cert.public_bytes(serialization.Encoding.DER)) == ident
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["node1"]
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("10.0.0.5", "fd00::5", "127.0.0.1")}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    verify_issued_by(cert_pem, CA.cert_pem)


def test_issue_ignores_the_subject_the_csr_asks_for():
    key = generate_key()
    csr = make_csr(key, "i-am-the-manager")
    ident = identity_from_pem(CA.issue(csr, "node7", ROLE_WORKER, "cluster-a"))
    assert ident.node_id == "node7" and ident.role == ROLE_WORKER


def test_issue_loopback_is_not_duplicated():
    cert_pem, _ = _node(CA, "node2", ip_sans=["127.0.0.1"])
    sans = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_issue_refuses_forged_csr():
    key = generate_key()
    der = x509.load_pem_x509_csr(make_csr(key, "aaaa")).public_bytes(serialization.Encoding.DER)
    # Change the signed subject after signing: still well-formed, signature no longer matches.
    forged = der.replace(b"aaaa", b"bbbb")
    assert forged != der
    forged_pem = x509.load_der_x509_csr(forged).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidArgument) as info:
        CA.issue(forged_pem, "bbbb", ROLE_WORKER, "cluster-a")
    assert info.value.message.startswith("certificate signing request")
    assert "signature" in info.value.message
    assert info.value.field == "csr"


@pytest.mark.parametrize("garbage", [b"", b"not a csr", b"-----BEGIN CERTIFICATE REQUEST-----\n"
                                     b"AAAA\n-----END CERTIFICATE REQUEST-----\n"])
def test_issue_refuses_unreadable_csr(garbage):
    with pytest.raises(InvalidArgument) as info:
        CA.issue(garbage, "node1", ROLE_WORKER, "cluster-a")
    assert info.value.message.startswith("certificate signing request")


@pytest.mark.parametrize("role", ["manager", "worker", "swarm-admin", ""])
def test_issue_validates_role(role):
    csr = make_csr(generate_key(), "node1")
    with pytest.raises(InvalidArgument) as info:
        CA.issue(csr, "node1", role, "cluster-a")
    assert info.value.field == "role"


def test_issue_validates_node_id_and_ips():
    csr = make_csr(generate_key(), "node1")
    with pytest.raises(InvalidArgument):
        CA.issue(csr, "", ROLE_WORKER, "cluster-a")
    with pytest.raises(InvalidArgument):
        CA.issue(csr, "x" * 65, ROLE_WORKER, "cluster-a")
    with pytest.raises(InvalidArgument) as info:
        CA.issue(csr, "node1", ROLE_WORKER, "cluster-a", ip_sans=["10.0.0.300"])
    assert info.value.field == "ip_sans"


def test_identity_refuses_non_node_certificates():
    with pytest.raises(Unauthorized):
        identity_from_pem(CA.cert_pem)  # no OU role
    with pytest.raises(Unauthorized):
        identity_from_der(b"junk")


def test_verify_issued_by_other_ca_fails():
    cert_pem, _ = _node(OTHER_CA, "node1")
    with pytest.raises(Unauthorized):
        verify_issued_by(cert_pem, CA.cert_pem)
    verify_issued_by(cert_pem, OTHER_CA.cert_pem)


def test_verify_issued_by_same_name_other_key_fails():
    # Same subject as CA, different key: only the signature tells them apart.
    impostor = RootCA.generate("cluster-a")
    cert_pem, _ = _node(impostor, "node1")
    with pytest.raises(Unauthorized):
        verify_issued_by(cert_pem, CA.cert_pem)


def test_verify_issued_by_expired_fails():
    cert_pem, _ = _node(CA, "node1", validity_seconds=-5)  # expired 5 s ago
    with pytest.raises(Unauthorized) as info:
        verify_issued_by(cert_pem, CA.cert_pem)
    assert "expired" in info.value.message

    fresh, _ = _node(CA, "node2")
    later = datetime.now(timezone.utc) + timedelta(days=91)
    with pytest.raises(Unauthorized):
        verify_issued_by(fresh, CA.cert_pem, now=later)
    earlier = datetime.now(timezone.utc) - timedelta(hours=1)
    with pytest.raises(Unauthorized):
        verify_issued_by(fresh, CA.cert_pem, now=earlier)


def test_node_cert_does_not_outlive_ca():
    short_ca = RootCA.generate("short", validity_days=1)
    cert_pem, _ = _node(short_ca, "node1")
    ca_end = x509.load_pem_x509_certificate(short_ca.cert_pem).not_valid_after_utc
    assert identity_from_pem(cert_pem).not_after == ca_end


def test_needs_renewal_around_fraction():
    cert_pem, _ = _node(CA, "node1", validity_seconds=1000)
    ident = identity_from_pem(cert_pem)
    total = ident.not_after - ident.not_before
    at = lambda f: ident.not_before + total * f  # noqa: E731
    assert not needs_renewal(cert_pem, now=at(0.0))
    assert not needs_renewal(cert_pem, now=at(0.45))
    assert needs_renewal(cert_pem, now=at(0.55))
    assert needs_renewal(cert_pem, now=at(1.5))
    assert not needs_renewal(cert_pem, now=at(0.75), fraction=0.2)
    assert needs_renewal(cert_pem, now=at(0.85), fraction=0.2)
    assert not needs_renewal(cert_pem)  # freshly issued


def test_ca_digest_stable_and_hex():
    d = ca_digest(CA.cert_pem)
    assert re.fullmatch(r"[0-9a-f]{64}", d)
    assert d == CA.digest() == ca_digest(CA.cert_pem)
    der = x509.load_pem_x509_certificate(CA.cert_pem).public_bytes(serialization.Encoding.DER)
    assert d == hashlib.sha256(der).hexdigest()
    # re-encoding the PEM (line endings, trailing space) does not change the digest
    assert ca_digest(CA.cert_pem.replace(b"\n", b"\r\n") + b"\n") == d
    assert ca_digest(OTHER_CA.cert_pem) != d


def test_pinned_ca_matches():
    assert pinned_ca_matches(CA.cert_pem, CA.digest())
    assert pinned_ca_matches(CA.cert_pem, CA.digest().upper())
    assert not pinned_ca_matches(OTHER_CA.cert_pem, CA.digest())
    assert not pinned_ca_matches(b"garbage", CA.digest())
    assert not pinned_ca_matches(CA.cert_pem, "")
    assert not pinned_ca_matches(CA.cert_pem, "é" * 64)


def test_ssl_contexts_settings_and_key_file_removed(monkeypatch):
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(*a, **kw):
        path = real_mkdtemp(*a, **kw)
        made.append(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        return path

    monkeypatch.setattr(pki.tempfile, "mkdtemp", spy)
    cert_pem, key_pem = _node(CA, "node1")
    server = server_ssl_context(CA.cert_pem, cert_pem, key_pem)
    client = client_ssl_context(CA.cert_pem, cert_pem, key_pem)
    anon = client_ssl_context(CA.cert_pem)
    assert len(made) == 2
    assert not any(os.path.exists(p) for p in made)
    assert server.verify_mode == ssl.CERT_OPTIONAL
    assert client.verify_mode == anon.verify_mode == ssl.CERT_REQUIRED
    assert not client.check_hostname
    for ctx in (server, client, anon):
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(ValueError):
        client_ssl_context(CA.cert_pem, cert_pem, None)


# --- real TLS handshakes over loopback -------------------------------------------------------

async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext):
    """Returns (what the server saw as peer identity, or 'no-handler'; what the client read)."""
    seen: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ident = peer_identity(writer.get_extra_info("ssl_object"))
        if not seen.done():
            seen.set_result(ident)
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), 5)
            try:
                got = await asyncio.wait_for(reader.read(100), 5)
            finally:
                writer.close()
        except (ssl.SSLError, ConnectionError) as e:
            got = e
        try:
            ident = await asyncio.wait_for(asyncio.shield(seen), 0.5)
        except asyncio.TimeoutError:
            ident = "no-handler"
        return ident, got
    finally:
        server.close()
        await server.wait_closed()


def _server_ctx() -> ssl.SSLContext:
    cert, key = _node(CA, "manager1", ROLE_MANAGER, ip_sans=["127.0.0.1"])
    return server_ssl_context(CA.cert_pem, cert, key)


def test_tls_with_node_cert_gives_peer_identity():
    cert, key = _node(CA, "worker9", ROLE_WORKER)
    ident, got = asyncio.run(_handshake(_server_ctx(), client_ssl_context(CA.cert_pem, cert, key)))
    assert isinstance(ident, NodeIdentity)
    assert (ident.node_id, ident.role, ident.cluster_id) == ("worker9", ROLE_WORKER, "cluster-a")
    assert got == b"hello\n"


def test_tls_without_client_cert_has_no_identity():
    ident, got = asyncio.run(_handshake(_server_ctx(), client_ssl_context(CA.cert_pem)))
    assert ident is None
    assert got == b"hello\n"


def test_tls_client_cert_from_other_ca_is_refused():
    cert, key = _node(OTHER_CA, "intruder", ROLE_MANAGER)
    ident, got = asyncio.run(
        _handshake(_server_ctx(), client_ssl_context(CA.cert_pem, cert, key)))
    # With TLS 1.3 the client may finish its side before the server rejects its certificate,
    # so the refusal shows up as an error or EOF on the first read, never as data.
    assert ident == "no-handler"
    assert got == b"" or isinstance(got, Exception)


def test_tls_server_from_other_ca_is_refused():
    cert, key = _node(OTHER_CA, "fake-manager", ROLE_MANAGER)
    server_ctx = server_ssl_context(OTHER_CA.cert_pem, cert, key)
    ident, got = asyncio.run(_handshake(server_ctx, client_ssl_context(CA.cert_pem)))
    assert isinstance(got, ssl.SSLCertVerificationError)
    assert ident == "no-handler"
