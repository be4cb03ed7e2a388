"""Issue 18: root CA rotation and certificate upkeep, the pure parts.

Cross-signed chains are checked with the `cryptography` library's own path builder (for
verifiers trusting the old root, the new one, or both) and with real TLS handshakes through the
ssl module (OpenSSL), which is what 2377 uses.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from common import errors, pki, tokens
from common.model import Cluster, RootCAState
from manager.controlapi import ca as ca_api
from manager.state.store import Store as StateStore

CLUSTER = "c" * 25


def _roots():
    old = pki.RootCA.generate(CLUSTER)
    new = pki.RootCA.generate(CLUSTER)
    cross = pki.cross_sign(new.cert_pem, old)
    return old, new, cross


def _leaf(ca: pki.RootCA, node_id: str = "node1") -> tuple[bytes, bytes]:
    key = pki.generate_key()
    cert = ca.issue(pki.make_csr(key, node_id), node_id, pki.ROLE_WORKER, CLUSTER, ["10.0.0.1"])
    return cert, key


def _x(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _verify(chain_pem: bytes, trusted: list[bytes]) -> list[x509.Certificate]:
    """cryptography's client-certificate path validation: the chain it built, leaf first."""
    certs = [_x(p) for p in pki.split_pems(chain_pem)]
    verifier = (PolicyBuilder().store(Store([_x(t) for t in trusted]))
                .time(datetime.now(timezone.utc)).build_client_verifier())
    return verifier.verify(certs[0], certs[1:]).chain


def test_cross_signed_chain_validates_for_old_and_new_trusting_verifiers():
    old, new, cross = _roots()
    during = pki.RootCA(new.cert_pem, new.key_pem, chain_pem=cross)
    chain, _ = _leaf(during)
    assert len(pki.split_pems(chain)) == 2  # the leaf, then the cross-signed new root
    # A verifier still trusting only the old root goes through the cross-signed certificate.
    built = _verify(chain, [old.cert_pem])
    assert built[-1] == _x(old.cert_pem) and built[1] == _x(cross)
    # One trusting only the new root stops at it.
    assert _verify(chain, [new.cert_pem])[-1] == _x(new.cert_pem)
    # Both: any path is fine.
    assert _verify(chain, [old.cert_pem, new.cert_pem])
    # A certificate of the old root is accepted by old- and both-trusting verifiers (the
    # transition), and refused once the old root is dropped.
    old_leaf, _ = _leaf(old)
    assert _verify(old_leaf, [old.cert_pem, new.cert_pem])
    with pytest.raises(VerificationError):
        _verify(old_leaf, [new.cert_pem])
    # shoal's own check agrees with cryptography's path builder.
    pki.verify_issued_by(chain, old.cert_pem)
    pki.verify_issued_by(chain, new.cert_pem)
    assert not pki.chains_to(old_leaf, new.cert_pem)


def test_roots_share_one_name_so_the_cross_signed_root_is_self_issued():
    old, new, cross = _roots()
    assert _x(cross).subject == _x(cross).issuer == _x(old.cert_pem).subject
    assert pki.key_id(cross) == pki.key_id(new.cert_pem) != pki.key_id(old.cert_pem)
    chain, _ = _leaf(pki.RootCA(new.cert_pem, new.key_pem, chain_pem=cross))
    assert pki.issuer_key_id(chain) == pki.key_id(new.cert_pem)


def test_a_foreign_root_is_refused():
    old, new, cross = _roots()
    other = pki.RootCA.generate(CLUSTER)
    chain, _ = _leaf(pki.RootCA(new.cert_pem, new.key_pem, chain_pem=cross))
    with pytest.raises(errors.Unauthorized, match="not issued by this cluster's CA"):
        pki.verify_issued_by(chain, other.cert_pem)
    # An intermediate the attacker signed itself does not help.
    forged = pki.cross_sign(new.cert_pem, other)
    leaf = pki.split_pems(chain)[0]
    assert not pki.chains_to(leaf + forged, old.cert_pem)


def _handshake(server_trust: bytes, server_chain: bytes, server_key: bytes,
               client_trust: bytes, client_chain: bytes, client_key: bytes) -> str:
    """One real TLS handshake over a socket pair; "ok" or the failure's text."""
    server_ctx = pki.server_ssl_context(server_trust, server_chain, server_key)
    client_ctx = pki.client_ssl_context(client_trust, client_chain, client_key)
    a, b = socket.socketpair()
    result: dict = {}

    def serve():
        try:
            s = server_ctx.wrap_socket(a, server_side=True)
            result["peer"] = s.getpeercert(binary_form=True)
            s.close()
        except (ssl.SSLError, OSError) as exc:
            result["server"] = str(exc)

    t = threading.Thread(target=serve)
    t.start()
    try:
        c = client_ctx.wrap_socket(b, server_hostname=None)
        c.close()
    except (ssl.SSLError, OSError) as exc:
        result["client"] = str(exc)
    t.join(10)
    a.close()
    b.close()
    if "client" in result or "server" in result:
        return result.get("client") or result["server"]
    if not result.get("peer"):
        return "server saw no client certificate"
    return "ok"


@pytest.mark.parametrize("old_path_length", [1, 0], ids=["root", "root-before-rotations"])
def test_tls_handshakes_across_the_transition(old_path_length):
    # Roots made before rotations existed have a path length of 0: OpenSSL counts the
    # cross-signed root as self-issued (same name) and still accepts the chain.
    old = pki.RootCA.generate(CLUSTER, path_length=old_path_length)
    new = pki.RootCA.generate(CLUSTER)
    cross = pki.cross_sign(new.cert_pem, old)
    during = pki.RootCA(new.cert_pem, new.key_pem, chain_pem=cross)
    old_cert, old_key = _leaf(old, "oldnode")
    new_cert, new_key = _leaf(during, "newnode")
    both = pki.join_pems([old.cert_pem, new.cert_pem])
    # A node still trusting the old root only talks with a rotated one, both ways.
    assert _handshake(old.cert_pem, old_cert, old_key, both, new_cert, new_key) == "ok"
    assert _handshake(both, new_cert, new_key, old.cert_pem, old_cert, old_key) == "ok"
    # Two rotated nodes, one of which already dropped the old root.
    assert _handshake(new.cert_pem, new_cert, new_key, both, new_cert, new_key) == "ok"
    # After the rotation a certificate of the old root is refused.
    assert _handshake(new.cert_pem, new_cert, new_key, both, old_cert, old_key) != "ok"


def test_retrust_server_drops_the_old_root_for_new_handshakes():
    old, new, cross = _roots()
    during = pki.RootCA(new.cert_pem, new.key_pem, chain_pem=cross)
    old_cert, old_key = _leaf(old, "oldnode")
    new_cert, new_key = _leaf(during, "newnode")
    both = pki.join_pems([old.cert_pem, new.cert_pem])
    server = pki.server_ssl_context(both, new_cert, new_key)
    client_old = pki.client_ssl_context(both, old_cert, old_key)

    def shake() -> bool:
        a, b = socket.socketpair()
        ok = {}

        def serve():
            try:
                s = server.wrap_socket(a, server_side=True)
                ok["peer"] = bool(s.getpeercert(binary_form=True))
                s.close()
            except (ssl.SSLError, OSError):
                ok["peer"] = False
        t = threading.Thread(target=serve)
        t.start()
        try:
            client_old.wrap_socket(b, server_hostname=None).close()
        except (ssl.SSLError, OSError):
            pass
        t.join(10)
        a.close()
        b.close()
        return ok.get("peer", False)

    assert shake()
    pki.retrust_server(server, new.cert_pem, new_cert, new_key)
    assert not shake()


def test_needs_renewal_counts_from_issue_not_from_the_backdated_start():
    ca = pki.RootCA.generate(CLUSTER)
    key = pki.generate_key()
    cert = ca.issue(pki.make_csr(key, "n"), "n", pki.ROLE_WORKER, CLUSTER, validity_seconds=120)
    now = datetime.now(timezone.utc)
    assert not pki.needs_renewal(cert, now)
    assert not pki.needs_renewal(cert, now + timedelta(seconds=50))
    assert pki.needs_renewal(cert, now + timedelta(seconds=65))
    # a one-minute certificate (the shortest accepted) is not renewed at every heartbeat
    short = ca.issue(pki.make_csr(key, "n"), "n", pki.ROLE_WORKER, CLUSTER, validity_seconds=60)
    assert not pki.needs_renewal(short, now + timedelta(seconds=5))


def test_tokens_change_digest_and_keep_their_secret():
    old, new, _ = _roots()
    token = tokens.new_token(old.cert_pem)
    rotated = tokens.with_ca(token, new.cert_pem)
    a, b = tokens.parse_token(token), tokens.parse_token(rotated)
    assert a.ca_digest == old.digest() and b.ca_digest == new.digest() != a.ca_digest
    assert a.secret == b.secret
    assert not pki.pinned_ca_matches(new.cert_pem, a.ca_digest)
    assert pki.pinned_ca_matches(new.cert_pem, b.ca_digest)


def test_bundle_digest_and_split():
    old, new, _ = _roots()
    both = pki.join_pems([old.cert_pem, new.cert_pem])
    assert [pki.ca_digest(p) for p in pki.split_pems(both)] == [old.digest(), new.digest()]
    assert pki.bundle_digest(both) != pki.bundle_digest(new.cert_pem)
    assert pki.bundle_digest(both) == pki.bundle_digest(both.replace(b"\n", b"\r\n"))


# ---- the managers' side, on a bare store -------------------------------------------------------

class _FakeManager:
    """Fake: the few parts of a manager ca.py touches, over a real Store applying at once."""

    def __init__(self, cluster: Cluster) -> None:
        from manager.state.store import Transaction
        self.store = StateStore()
        self.store.apply(Transaction().create("clusters", cluster).encode())
        self.cluster_id = cluster.id

    def cluster(self):
        return self.store.get("clusters", self.cluster_id)

    async def propose(self, txn, timeout: float = 1.5):
        result = self.store.apply(txn.encode())
        assert result["ok"], result
        return result


def _cluster() -> Cluster:
    root = pki.RootCA.generate(CLUSTER)
    c = Cluster(id=CLUSTER, root_ca=RootCAState(cert_pem=root.cert_pem, key_pem=root.key_pem,
                                                 digest=root.digest()))
    c.join_tokens.worker = tokens.new_token(root.cert_pem)
    c.join_tokens.manager = tokens.new_token(root.cert_pem)
    return c


def test_rotation_ends_when_every_node_reports_the_new_root():
    from common.model import Node, NodeTLS, RemovedNode
    from manager.state.store import Transaction
    m = _FakeManager(_cluster())
    for i in range(2):
        m.store.apply(Transaction().create("nodes", Node(id=f"n{i}")).encode())
    m.store.apply(Transaction().create("removed_nodes", RemovedNode(id="gone", removed_at=1.0))
                  .encode())
    old_token = m.cluster().join_tokens.worker
    view = asyncio.run(ca_api.rotate_root(m, cert_expiry=120))
    assert view["rotating"] and view["progress"] == {"total": 2, "certs": 0, "trust": 0,
                                                      "pending": ["n0", "n1"]}
    cluster = m.cluster()
    assert cluster.spec.ca_config.node_cert_expiry == 120
    issuer = ca_api.issuing_ca(cluster)
    assert pki.key_id(issuer.cert_pem) == pki.key_id(cluster.root_ca.rotation.cert_pem)
    want = (pki.key_id(issuer.cert_pem), pki.bundle_digest(ca_api.trust_bundle(cluster)))
    m.store.apply(Transaction().create("node_tls", NodeTLS(id="n0", issuer_key_id=want[0],
                                                           trust_digest=want[1])).encode())
    asyncio.run(ca_api._finish_if_done(m))
    assert m.cluster().root_ca.rotation is not None  # n1 has not renewed yet
    m.store.apply(Transaction().create("node_tls", NodeTLS(id="n1", issuer_key_id=want[0],
                                                           trust_digest=want[1])).encode())
    asyncio.run(ca_api._finish_if_done(m))
    done = m.cluster()
    assert done.root_ca.rotation is None
    assert pki.key_id(done.root_ca.cert_pem) == want[0]
    assert ca_api.trust_bundle(done) == pki.join_pems([done.root_ca.cert_pem])
    new_token = done.join_tokens.worker
    assert tokens.parse_token(new_token).ca_digest == done.root_ca.digest
    assert tokens.parse_token(old_token).ca_digest in done.root_ca.previous_digests
    # The second phase: nodes now report trusting the new root alone.
    assert ca_api.progress(m, done).trust == 0
    # A node removed before the rotation can only hold an old root's certificate: forgotten.
    assert m.store.list("removed_nodes") == []


def test_rotation_keeps_the_new_key_out_of_the_api_view():
    from manager.controlapi.swarm import cluster_view
    m = _FakeManager(_cluster())
    asyncio.run(ca_api.rotate_root(m))
    plain = cluster_view(m.cluster())
    assert "key_pem" not in plain["root_ca"] and "key_pem" not in plain["root_ca"]["rotation"]
    assert b"PRIVATE KEY" not in repr(ca_api.ca_view(m, m.cluster())).encode()


def test_rotate_refuses_a_bad_expiry_naming_the_field():
    m = _FakeManager(_cluster())
    with pytest.raises(errors.InvalidArgument, match="node_cert_expiry"):
        asyncio.run(ca_api.rotate_root(m, cert_expiry=1.0))
    assert m.cluster().root_ca.rotation is None


def test_cli_progress_follows_dockers_two_phases():
    from shoal.cli.swarm import swarm
    from shoal.cli.swarm_ca import _converged, _progress_line
    assert "ca" in swarm.commands
    p = {"total": 6, "certs": 3, "trust": 0, "pending": []}
    assert _progress_line({"rotating": True, "progress": p}) == \
        "rotating... TLS certificates: 3/6 nodes"
    assert _progress_line({"rotating": False, "progress": {**p, "certs": 6, "trust": 5}}) == \
        "rotating... CA certificates:  5/6 nodes"
    assert not _converged({"rotating": True, "progress": {**p, "certs": 6, "trust": 6}})
    assert _converged({"rotating": False, "progress": {**p, "certs": 6, "trust": 6}})


def test_the_certificate_report_rides_on_the_heartbeat(tmp_path):
    """An agent's TLS report (issuer, trusted roots) was a second request every period, and
    the leader parsed the root for each: the heartbeat now carries it, its answer says what to
    hold, and the agent asks separately only a manager that answered without it. A report like
    the last one commits nothing."""
    from common.model import Node
    from common.nodestate import NodeFiles
    from manager.state.store import Transaction
    from worker import certsync
    m = _FakeManager(_cluster())
    m.store.apply(Transaction().create("nodes", Node(id="n1")).encode())
    cluster = m.cluster()
    answer = asyncio.run(ca_api.tls_status(m, "n1", {"issuer": "old", "trust": "stale"}))
    assert answer["issuer"] == pki.key_id(cluster.root_ca.cert_pem) and "bundle" in answer
    rec = m.store.get("node_tls", "n1")
    assert (rec.issuer_key_id, rec.trust_digest) == ("old", "stale")
    current = {"issuer": "old", "trust": answer["trust"]}
    again = asyncio.run(ca_api.tls_status(m, "n1", current))
    assert "bundle" not in again
    index = m.store.index
    asyncio.run(ca_api.tls_status(m, "n1", current))
    assert m.store.index == index

    # the agent's side: a node holding a certificate of this root, trusting it
    files = NodeFiles(tmp_path)
    root = pki.RootCA(cluster.root_ca.cert_pem, cluster.root_ca.key_pem)
    key = pki.generate_key()
    cert = root.issue(pki.make_csr(key, "n1"), "n1", pki.ROLE_WORKER, CLUSTER)
    files.save_certs(cluster.root_ca.cert_pem, cert, key)
    report = certsync.report(files)
    held = asyncio.run(ca_api.tls_status(m, "n1", report))

    class Agent:
        host = type("Host", (), {"files": files})()
        asked: list = []

        async def request_managers(self, method, path, body=None):
            self.asked.append(path)
            return held

        async def renew_certificate(self):
            raise AssertionError("nothing to renew")

    agent = Agent()
    asyncio.run(certsync.sync(agent, held))        # the heartbeat's answer: no other request
    assert agent.asked == []
    asyncio.run(certsync.sync(agent, None))        # an older manager's heartbeat answer
    assert agent.asked == ["/certificates/status"]
