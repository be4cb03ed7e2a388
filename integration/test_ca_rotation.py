"""Issue 18, "Must show" 5 and 7: root CA rotation, short-lived certificates renewing by
themselves, and `node rm --force` revoking a live node's certificate, on real shoald processes
in namespace hosts.

One lab of 3 managers and 3 workers (plus one spare host that joins later) serves the whole
module; tests run in file order and build on each other's state, the destructive one last.
"""
from __future__ import annotations

import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509

from common import pki, tokens
from integration.helpers import busybox_lab, needs_root, node_table, wait_until

pytestmark = [needs_root, pytest.mark.lab]

NODES = ["manager1", "manager2", "manager3", "worker1", "worker2", "worker3"]
# What an agent logs when a heartbeat fails, or its certificate upkeep does.
HEARTBEAT_FAILURES = ("lost the session", "certificate upkeep not done")


@pytest.fixture(scope="module")
def lab():
    with busybox_lab("ca", managers=3, workers=3) as lab:
        lab.cli("manager1", "service", "create", "--detach", "--name", "web", "--replicas", "6",
                "busybox:1", "sleep", "100000", timeout=60)
        wait_until(lambda: len(web_containers(lab)) == 6, timeout=90, what="6 web containers")
        lab.spare = lab.add_host("worker", join=False)  # joins after the rotation
        yield lab


def web_containers(lab) -> set[tuple[str, str, int]]:
    out = set()
    for h in NODES:
        for c in lab.cli_json(h, "container", "ls"):
            if c["service"] == "web" and c["state"] == "running":
                out.add((h, c["id"], c["pid"]))
    return out


def certs_of(lab, host: str) -> tuple[bytes, bytes]:
    """The node's trust bundle and certificate chain, as on its disk."""
    d = Path(lab.host(host).data_root) / "certificates"
    return (d / "ca.crt").read_bytes(), (d / "node.crt").read_bytes()


def log_of(lab, host: str) -> str:
    return Path(lab.host(host).log).read_text(errors="replace")


def failures_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(f in line for f in HEARTBEAT_FAILURES)]


# 5 -------------------------------------------------------------------------------------------
def test_rotation_gives_every_node_a_certificate_of_the_new_root(lab):
    old_root = lab.cli("manager1", "swarm", "ca").stdout.encode()
    assert pki.split_pems(old_root) and b"PRIVATE" not in old_root
    lab.old_worker_token = lab.cli("manager1", "swarm", "join-token", "-q", "worker").stdout.strip()
    before = web_containers(lab)
    log_sizes = {h: len(log_of(lab, h)) for h in NODES}

    res = lab.cli("manager2", "swarm", "ca", "--rotate", "--cert-expiry", "2m", timeout=240)
    out = res.stdout
    print(out)  # the progress, for the record (pytest -s)
    assert "desired root digest: sha256:" in out
    assert "rotated TLS certificates:  6/6 nodes" in out
    assert "rotated CA certificates:   6/6 nodes" in out
    new_root = b"-----BEGIN" + out.split("-----BEGIN", 1)[1].encode()
    assert pki.ca_digest(new_root) != pki.ca_digest(old_root)
    assert out.split("sha256:")[1].split()[0] == pki.ca_digest(new_root)
    assert lab.cli("manager3", "swarm", "ca").stdout.encode() == new_root

    for h in NODES:
        trust, chain = certs_of(lab, h)
        # The old root is dropped from every node's trust, and each certificate chains to
        # the new root alone.
        assert [pki.ca_digest(p) for p in pki.split_pems(trust)] == [pki.ca_digest(new_root)], h
        assert pki.chains_to(chain, new_root), h
        assert not pki.chains_to(pki.split_pems(chain)[0], old_root), h
        leaf = x509.load_pem_x509_certificate(chain)
        life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert life.total_seconds() <= 120 + 61, h  # --cert-expiry 2m (plus the clock skew)
    # The services never stopped: the same containers, the same processes.
    assert web_containers(lab) == before
    assert all(n["status"] == "ready" for n in node_table(lab, "manager1").values())
    for h in NODES:
        assert failures_in(log_of(lab, h)[log_sizes[h]:]) == [], h
    digest = lab.cli_json("manager1", "swarm", "inspect")["root_ca"]["digest"]
    assert digest == pki.ca_digest(new_root)
    lab.new_root = new_root


def test_join_tokens_pin_the_new_root(lab):
    new_token = lab.cli("manager1", "swarm", "join-token", "-q", "worker").stdout.strip()
    assert tokens.parse_token(new_token).ca_digest == pki.ca_digest(lab.new_root)
    assert tokens.parse_token(new_token).secret == tokens.parse_token(lab.old_worker_token).secret
    remote = f"{lab.host('manager1').address}:2377"
    old = lab.cli(lab.spare, "swarm", "join", "--token", lab.old_worker_token, remote,
                  check=False, timeout=90)
    assert old.returncode != 0
    assert "does not match the join token" in old.stderr, old.stderr
    lab.cli(lab.spare, "swarm", "join", "--token", new_token, remote, timeout=90)
    wait_until(lambda: node_table(lab, "manager1")[lab.spare]["status"] == "ready",
               what=f"{lab.spare} ready")
    trust, chain = certs_of(lab, lab.spare)
    assert pki.chains_to(chain, lab.new_root)


# 7 -------------------------------------------------------------------------------------------
def test_two_minute_certificates_renew_before_expiry_without_a_failed_heartbeat(lab):
    hosts = NODES + [lab.spare]
    seen: dict[str, set[bytes]] = {h: set() for h in hosts}
    log_sizes = {h: len(log_of(lab, h)) for h in hosts}
    first_not_after = {}
    for h in hosts:
        leaf = x509.load_pem_x509_certificate(certs_of(lab, h)[1])
        first_not_after[h] = leaf.not_valid_after_utc
    # Past the expiry of every certificate held at the start, watching every 3 s that each
    # node holds a valid one and that no node is ever Down.
    deadline = max(first_not_after.values()).timestamp() + 15
    while time.time() < deadline:
        now = datetime.now(timezone.utc)
        for h in hosts:
            chain = certs_of(lab, h)[1]
            leaf = x509.load_pem_x509_certificate(chain)
            assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc, \
                f"{h} holds a certificate not valid now ({leaf.not_valid_after_utc})"
            assert pki.chains_to(chain, lab.new_root), h
            seen[h].add(chain)
        states = {name: n["status"] for name, n in node_table(lab, "manager1").items()}
        assert set(states.values()) == {"ready"}, states
        time.sleep(3)
    for h in hosts:
        assert len(seen[h]) >= 2, f"{h} never renewed its certificate"
        leaf = x509.load_pem_x509_certificate(certs_of(lab, h)[1])
        assert leaf.not_valid_after_utc > first_not_after[h], h
        assert failures_in(log_of(lab, h)[log_sizes[h]:]) == [], h
        assert "node certificate renewed" in log_of(lab, h)[log_sizes[h]:], h


# 3 of the issue: revocation ------------------------------------------------------------------
TLS_PROBE = textwrap.dedent("""
    import json, ssl, sys, urllib.request
    certdir, addr = sys.argv[1], sys.argv[2]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(certdir + "/ca.crt")
    ctx.load_cert_chain(certdir + "/node.crt", certdir + "/node.key")
    req = urllib.request.Request("https://" + addr + "/dispatcher/assignments", method="POST",
                                 data=b'{"since": 0, "wait": 0}',
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            print(r.status)
    except urllib.error.HTTPError as e:
        print(e.code, json.loads(e.read())["message"])
    except (ssl.SSLError, OSError) as e:
        print("refused", e)
""")


def probe(lab, host: str, manager: str) -> str:
    certdir = f"{lab.host(host).data_root}/certificates"
    addr = f"{lab.host(manager).address}:2377"
    return lab.exec(host, [sys.executable, "-c", TLS_PROBE, certdir, addr],
                    check=True).stdout.strip()


def test_node_rm_force_revokes_a_live_nodes_certificate(lab):
    assert probe(lab, "worker3", "manager1") == "200"
    log_size = len(log_of(lab, "worker3"))
    lab.cli("manager1", "node", "rm", "--force", "worker3")
    # Every manager refuses it: the record of removed nodes is replicated.
    for m in ("manager1", "manager2", "manager3"):
        answer = wait_until(lambda: (a := probe(lab, "worker3", m)).startswith("403") and a,
                            timeout=10, what=f"{m} to refuse worker3")
        assert "was removed from the swarm" in answer and "revoked" in answer, answer
    # The node learns it: its agent says so.
    wait_until(lambda: "was removed from the swarm" in log_of(lab, "worker3")[log_size:],
               timeout=15, what="worker3 to learn it was removed")
    # The others are still served.
    assert probe(lab, "worker2", "manager2") == "200"
