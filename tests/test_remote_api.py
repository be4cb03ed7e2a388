"""Remote access (shoal/dockerapi/remote.py): the TLS listener in-process, with real handshakes
against a real CA and a real store, client certificates issued and revoked through the
control API (manager/controlapi/clientcerts.py), and shoal's CLI (-H) as the client."""
from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import aiohttp
import click
import pytest
from aiohttp import web
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import errors, pki
from common.httpserver import CTX, error_middleware
from common.model import Cluster
from manager import controlapi
from manager.controlapi.middleware import forward_middleware
from manager.state.store import Transaction
from shoal import localapi
from shoal.cli import main as shoal_main
from shoal.cli.client import Cli, HostAddr, TlsClient, make_cli, parse_host
from shoal.dockerapi.remote import RemoteListener
from tests.dockerapi_harness import DockerTestManager, FakeDaemon, _node

CLUSTER = "c1"


@dataclass
class Env:
    ca: pki.RootCA
    daemon: FakeDaemon
    manager: DockerTestManager
    port: int
    tmp: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def node_cert(self, node_id: str, role: str, ca: Optional[pki.RootCA] = None,
                  cluster: str = CLUSTER) -> tuple[bytes, bytes]:
        key = pki.generate_key()
        cert = (ca or self.ca).issue(pki.make_csr(key, node_id), node_id, role, cluster,
                                     ["127.0.0.1"])
        return cert, key

    def context(self, cert_key: Optional[tuple[bytes, bytes]] = None) -> ssl.SSLContext:
        if cert_key is None:
            return pki.client_ssl_context(self.ca.cert_pem)
        return pki.client_ssl_context(self.ca.cert_pem, *cert_key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _ndjson(request: web.Request) -> web.StreamResponse:
    """A stream that sends its lines apart in time, as `logs -f` does."""
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    for i in range(3):
        await resp.write(json.dumps({"line": i}).encode() + b"\n")
        await asyncio.sleep(0.05)
    await resp.write_eof()
    return resp


@contextlib.asynccontextmanager
async def remote_env() -> AsyncIterator[Env]:
    tmp = Path(tempfile.mkdtemp(prefix="shoal-remote-test-"))
    ca = pki.RootCA.generate(CLUSTER)
    manager = DockerTestManager()
    cluster = Cluster(id=CLUSTER)
    cluster.root_ca.cert_pem, cluster.root_ca.key_pem = ca.cert_pem, ca.key_pem
    cluster.root_ca.digest = ca.digest()
    txn = Transaction().create("clusters", cluster)
    txn.create("nodes", _node("n1", "m1", "127.0.0.1", "manager"))
    txn.create("nodes", _node("n2", "m2", "10.0.0.2", "manager"))
    txn.create("nodes", _node("n3", "w1", "10.0.0.3", "worker"))
    manager.commit(txn)
    manager.raft = None         # no raft here: /info shows no raft section
    daemon = FakeDaemon(manager)
    daemon.state.cluster_id = CLUSTER
    # shoal's own API on a real Unix socket, as shoald serves it (the listener proxies to it).
    daemon.socket_path = str(tmp / "shoal.sock")
    app = web.Application(middlewares=[error_middleware, forward_middleware])
    app[CTX] = daemon
    app.add_routes(localapi.routes() + controlapi.routes())
    app.router.add_get("/test/ndjson", _ndjson)
    unix_runner = web.AppRunner(app)
    await unix_runner.setup()
    await web.UnixSite(unix_runner, daemon.socket_path).start()
    port = _free_port()
    listener = RemoteListener(daemon, f"127.0.0.1:{port}", 1.0)
    cert, key = Env(ca, daemon, manager, port, tmp).node_cert("n1", pki.ROLE_MANAGER)
    await listener.start(ca.cert_pem, cert, key)
    try:
        yield Env(ca, daemon, manager, port, tmp)
    finally:
        await listener.stop()
        await unix_runner.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


async def _get(env: Env, ctx: ssl.SSLContext, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(env.url + path, ssl=ctx) as resp:
            raw = await resp.read()
            return resp.status, (json.loads(raw) if raw and raw[:1] in b"[{" else raw)


async def _issue(env: Env, name: str, expiry: float = 3600) -> tuple[bytes, bytes, str]:
    """A client certificate through the control API on the shoal socket, as the CLI asks."""
    key = pki.generate_key()
    body = {"name": name, "csr": pki.make_client_csr(key, name).decode(), "expiry": expiry}
    conn = aiohttp.UnixConnector(path=env.daemon.socket_path)
    async with aiohttp.ClientSession(connector=conn) as session:
        async with session.post("http://localhost/swarm/client-certs", json=body) as resp:
            answer = await resp.json()
            assert resp.status == 201, answer
    return answer["cert"].encode(), key, answer["id"]


async def _refused_in_handshake(env: Env, ctx: ssl.SSLContext) -> None:
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await _get(env, ctx, "/_ping")


def test_client_certificate_reaches_both_apis_and_no_cert_or_another_ca_fails_the_handshake():
    async def main() -> None:
        async with remote_env() as env:
            cert, key, client_id = await _issue(env, "alice")
            ident = pki.peer_certificate_identity(
                ssl.PEM_cert_to_DER_cert(cert.decode()))
            assert (ident.name, ident.client_id, ident.cluster_id) == ("alice", client_id, CLUSTER)
            ctx = env.context((cert, key))
            status, _ = await _get(env, ctx, "/_ping")
            assert status == 200
            status, nodes = await _get(env, ctx, "/v1.41/nodes")
            assert status == 200 and {n["ID"] for n in nodes} == {"n1", "n2", "n3"}
            # shoal's own API under /shoal, the same answer as on the socket
            status, shoal_nodes = await _get(env, ctx, "/shoal/nodes")
            assert status == 200 and {n["id"] for n in shoal_nodes} == {"n1", "n2", "n3"}
            status, body = await _get(env, ctx, "/shoal/no/such/thing")
            assert status == 404 and "no such endpoint" in body["message"]

            await _refused_in_handshake(env, env.context(None))
            other = pki.RootCA.generate(CLUSTER)     # same cluster id, another key
            foreign_key = pki.generate_key()
            foreign, _ = pki.issue_client(other, pki.make_client_csr(foreign_key, "alice"),
                                          "alice", client_id, CLUSTER, 3600)
            ctx_other = pki.client_ssl_context(env.ca.cert_pem, foreign, foreign_key)
            await _refused_in_handshake(env, ctx_other)
            # and a node certificate of the other CA too
            await _refused_in_handshake(
                env, env.context(env.node_cert("n1", pki.ROLE_MANAGER, ca=other)))
    asyncio.run(main())


def test_worker_certificate_is_refused_for_control_and_manager_certificates_are_trusted():
    async def main() -> None:
        async with remote_env() as env:
            worker = env.context(env.node_cert("n3", pki.ROLE_WORKER))
            for path in ("/v1.41/nodes", "/shoal/services", "/_ping"):
                status, body = await _get(env, worker, path)
                assert status == 403, (path, body)
                assert "worker certificate" in body["message"] and "n3" in body["message"]
            status, _ = await _get(env, env.context(env.node_cert("n2", pki.ROLE_MANAGER)),
                                   "/v1.41/services")
            assert status == 200
            # A demoted manager keeps its old certificate: the store says what it is now.
            n2 = env.manager.store.get("nodes", "n2")
            n2.role = "worker"
            env.manager.commit(Transaction().update("nodes", n2))
            status, body = await _get(env, env.context(env.node_cert("n2", pki.ROLE_MANAGER)),
                                      "/v1.41/services")
            assert status == 403 and "no longer a manager" in body["message"]
            # A certificate of another swarm's id signed by this CA (impossible in practice,
            # but the check is there).
            status, body = await _get(
                env, env.context(env.node_cert("n9", pki.ROLE_MANAGER, cluster="c2")), "/_ping")
            assert status == 401 and "another swarm" in body["message"]
    asyncio.run(main())


def test_revoked_and_unknown_client_certificates_are_refused_on_each_request():
    async def main() -> None:
        async with remote_env() as env:
            cert, key, client_id = await _issue(env, "bob")
            ctx = env.context((cert, key))
            # One connection pool throughout: revocation is checked per request, not per
            # handshake.
            async with aiohttp.ClientSession() as session:
                async with session.get(env.url + "/v1.41/services", ssl=ctx) as resp:
                    assert resp.status == 200
                conn = aiohttp.UnixConnector(path=env.daemon.socket_path)
                async with aiohttp.ClientSession(connector=conn) as local:
                    async with local.delete("http://localhost/swarm/client-certs/bob") as resp:
                        assert resp.status == 200
                        assert [c["id"] for c in await resp.json()] == [client_id]
                    async with local.get("http://localhost/swarm/client-certs") as resp:
                        listed = await resp.json()
                    assert [(c["name"], c["state"]) for c in listed] == [("bob", "revoked")]
                    async with local.delete("http://localhost/swarm/client-certs/bob") as resp:
                        assert resp.status == 404
                for path in ("/v1.41/services", "/shoal/services"):
                    async with session.get(env.url + path, ssl=ctx) as resp:
                        body = await resp.json()
                        assert resp.status == 401
                        assert "revoked" in body["message"] and "bob" in body["message"]
            # The name is free again once revoked.
            await _issue(env, "bob")
            # Signed by the CA but never recorded (or not replicated here yet): refused.
            stray_key = pki.generate_key()
            stray, _ = pki.issue_client(env.ca, pki.make_client_csr(stray_key, "eve"), "eve",
                                        "a" * 25, CLUSTER, 3600)
            status, body = await _get(env, env.context((stray, stray_key)), "/_ping")
            assert status == 401 and "not known to this swarm" in body["message"]
    asyncio.run(main())


def test_a_client_certificate_is_never_a_node_certificate():
    ca = pki.RootCA.generate(CLUSTER)
    key = pki.generate_key()
    cert, _ = pki.issue_client(ca, pki.make_client_csr(key, "ci"), "ci", "b" * 25, CLUSTER)
    # 2377's auth reads node identities only: a client certificate is refused there.
    with pytest.raises(errors.Unauthorized):
        pki.identity_from_pem(cert)
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID
    eku = x509.load_pem_x509_certificate(cert).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_node_without_a_manager_replica_cannot_check_client_certificates():
    async def main() -> None:
        async with remote_env() as env:
            cert, key, _ = await _issue(env, "carol")
            manager, env.daemon.manager = env.daemon.manager, None
            try:
                status, body = await _get(env, env.context((cert, key)), "/_ping")
                assert status == 503 and "not a swarm manager" in body["message"]
            finally:
                env.daemon.manager = manager
    asyncio.run(main())


# ---- issuing: bad input is refused, naming the field, and stores nothing -----------------

_BAD_NAMES = st.one_of(
    st.text(max_size=60).filter(lambda s: not pki.CLIENT_NAME_RE.match(s)),
    st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2), st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=_BAD_NAMES,
       expiry=st.one_of(st.just(3600), st.floats(max_value=59.0, allow_nan=False, allow_infinity=False),
                        st.floats(min_value=10 * 366 * 86400.0, allow_infinity=False),
                        st.text(max_size=5), st.booleans()),
       csr=st.one_of(st.just(None), st.text(max_size=40), st.integers()))
def test_bad_issue_requests_are_refused_naming_the_field_and_store_nothing(name, expiry, csr):
    async def main() -> None:
        async with remote_env() as env:
            key = pki.generate_key()
            good_csr = pki.make_client_csr(key, "x").decode()
            body = {"name": name, "expiry": expiry, "csr": good_csr if csr is None else csr}
            conn = aiohttp.UnixConnector(path=env.daemon.socket_path)
            async with aiohttp.ClientSession(connector=conn) as session:
                async with session.post("http://localhost/swarm/client-certs",
                                        data=json.dumps(body)) as resp:
                    answer = await resp.json()
            assert resp.status == 400, answer
            assert answer.get("field") in ("name", "expiry", "csr"), answer
            assert env.manager.store.list("client_certs") == []
    if name is not None and isinstance(name, str) and pki.CLIENT_NAME_RE.match(name):
        return
    asyncio.run(main())


def test_a_name_in_force_is_a_conflict():
    async def main() -> None:
        async with remote_env() as env:
            await _issue(env, "dup")
            key = pki.generate_key()
            body = {"name": "dup", "csr": pki.make_client_csr(key, "dup").decode()}
            conn = aiohttp.UnixConnector(path=env.daemon.socket_path)
            async with aiohttp.ClientSession(connector=conn) as session:
                async with session.post("http://localhost/swarm/client-certs", json=body) as r:
                    answer = await r.json()
            assert r.status == 409 and "client-cert rm dup" in answer["message"]
            assert len(env.manager.store.list("client_certs")) == 1
    asyncio.run(main())


# ---- shoal's CLI: client-cert, then -H over TLS (streams included) -------------------------

def _shoal(*args: str, env: Optional[dict] = None) -> Any:
    return CliRunner().invoke(shoal_main, list(args), env=env or {}, catch_exceptions=False)


def test_cli_issues_a_certificate_and_reaches_the_listener_with_it():
    async def main() -> None:
        async with remote_env() as env:
            out = env.tmp / "certs" / "alice"
            res = await asyncio.to_thread(_shoal, "--socket", env.daemon.socket_path, "swarm",
                                          "client-cert", "alice", "--expiry", "2h", "-o",
                                          str(out))
            assert res.exit_code == 0, res.output
            assert stat.S_IMODE(out.stat().st_mode) == 0o700
            assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
            assert (out / "ca.pem").read_bytes() == env.ca.cert_pem
            record, = env.manager.store.list("client_certs")
            assert record.name == "alice" and 7100 < record.not_after - time.time() < 7300
            # The manager never saw the key: only the certificate's public key matches it.
            assert "PRIVATE KEY" not in repr(env.manager.store.list("client_certs"))
            # Refused: the directory holds a key already (nothing issued).
            res = await asyncio.to_thread(_shoal, "--socket", env.daemon.socket_path, "swarm",
                                          "client-cert", "alice2", "-o", str(out))
            assert res.exit_code == 1 and "already holds" in res.output
            assert len(env.manager.store.list("client_certs")) == 1

            host = f"tcp://127.0.0.1:{env.port}"
            res = await asyncio.to_thread(_shoal, "-H", host, "--cert-path", str(out), "node",
                                          "ls")
            assert res.exit_code == 0, res.output
            assert "m1" in res.output and "w1" in res.output
            # The same through the environment variables.
            res = await asyncio.to_thread(
                _shoal, "swarm", "client-cert", "ls",
                env={"SHOAL_HOST": host, "SHOAL_CERT_PATH": str(out)})
            assert res.exit_code == 0 and "alice" in res.output and "active" in res.output

            client = TlsClient(parse_host(host), str(out))
            lines = await asyncio.to_thread(lambda: list(client.stream("GET", "/test/ndjson")))
            assert lines == [{"line": 0}, {"line": 1}, {"line": 2}]

            res = await asyncio.to_thread(
                _shoal, "--socket", env.daemon.socket_path, "swarm", "client-cert", "rm", "alice")
            assert res.exit_code == 0 and "revoked alice" in res.output
            res = await asyncio.to_thread(_shoal, "-H", host, "--cert-path", str(out), "node",
                                          "ls")
            assert res.exit_code == 1 and "revoked" in res.output

            # A refused request leaves no directory behind.
            bad = env.tmp / "certs" / "refused"
            res = await asyncio.to_thread(_shoal, "--socket", env.daemon.socket_path, "swarm",
                                          "client-cert", "bob", "--expiry", "10s", "-o",
                                          str(bad))
            assert res.exit_code == 1 and "expiry" in res.output and not bad.exists()
            # No certificates where the CLI looks: a clear error naming the file and the fix.
            res = await asyncio.to_thread(_shoal, "-H", host, "--cert-path",
                                          str(env.tmp / "none"), "node", "ls")
            assert res.exit_code == 1 and "no ca.pem" in res.output \
                and "client-cert" in res.output
    asyncio.run(main())


def test_cli_refuses_a_server_with_a_worker_certificate():
    async def main() -> None:
        async with remote_env() as env:
            out = env.tmp / "c"
            cert, key, _ = await _issue(env, "dan")
            out.mkdir()
            (out / "ca.pem").write_bytes(env.ca.cert_pem)
            (out / "cert.pem").write_bytes(cert)
            (out / "key.pem").write_bytes(key)
            port = _free_port()
            listener = RemoteListener(env.daemon, f"127.0.0.1:{port}", 1.0)
            await listener.start(env.ca.cert_pem, *env.node_cert("n3", pki.ROLE_WORKER))
            try:
                res = await asyncio.to_thread(_shoal, "-H", f"tcp://127.0.0.1:{port}",
                                              "--cert-path", str(out), "node", "ls")
            finally:
                await listener.stop()
            assert res.exit_code == 1 and "worker node n3" in res.output
    asyncio.run(main())


# ---- the -H parser ------------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("tcp://10.0.0.1:2376", HostAddr("tcp", host="10.0.0.1", port=2376)),
    ("tcp://m1", HostAddr("tcp", host="m1", port=2376)),
    ("tcp://m1.example.org:12", HostAddr("tcp", host="m1.example.org", port=12)),
    ("tcp://[::1]:2376", HostAddr("tcp", host="::1", port=2376)),
    ("unix:///run/shoal/shoal.sock", HostAddr("unix", path="/run/shoal/shoal.sock")),
])
def test_host_values(value, expected):
    assert parse_host(value) == expected
    assert parse_host(str(expected)) == expected


@pytest.mark.parametrize("value,words", [
    ("", "empty"), ("10.0.0.1:2376", "no scheme"), ("http://m1:2376", "scheme 'http'"),
    ("tcp://m1:0", "port"), ("tcp://m1:65536", "port"), ("tcp://m1:x", "port"),
    ("tcp://:2376", "host is missing"), ("tcp://m1:2376/v1", "path"), ("tcp://[::1", "closed"),
    ("tcp://[zz]:1", "IPv6"), ("tcp://::1:2376", "brackets"), ("tcp://999.1.1.1", "neither"),
    ("unix://relative.sock", "absolute"), ("tcp://m 1", "spaces"), ("tcp://-m1", "neither"),
])
def test_bad_host_values_say_what_is_wrong(value, words):
    with pytest.raises(ValueError, match=words):
        parse_host(value)
    with pytest.raises(click.BadParameter) as info:
        make_cli("/run/shoal/shoal.sock", value or "x:", None)
    assert "tcp://HOST[:PORT]" in str(info.value)


@given(st.text(max_size=80))
def test_host_parser_never_fails_otherwise(value):
    """Any text: an address that reads back the same, or a ValueError; nothing else."""
    try:
        addr = parse_host(value)
    except ValueError as exc:
        assert str(exc)
        return
    assert parse_host(str(addr)) == addr


_LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)


@given(host=st.one_of(st.ip_addresses(v=4).map(str), st.lists(_LABEL, min_size=1,
                                                                max_size=3).map(".".join),
                      st.ip_addresses(v=6).map(lambda a: f"[{a}]")),
       port=st.one_of(st.none(), st.integers(1, 65535)))
def test_generated_good_hosts_are_read(host, port):
    value = f"tcp://{host}" + (f":{port}" if port is not None else "")
    addr = parse_host(value)
    assert addr.scheme == "tcp" and addr.port == (port or 2376)
    assert addr.host == host.strip("[]")


@given(port=st.one_of(st.integers(max_value=0), st.integers(min_value=65536),
                      st.text(min_size=1, max_size=6).filter(lambda s: not s.isdigit())))
def test_generated_bad_ports_are_refused(port):
    with pytest.raises(ValueError):
        parse_host(f"tcp://10.0.0.1:{port}")


def test_bad_host_from_the_environment_is_a_usage_error_naming_the_option():
    res = CliRunner().invoke(shoal_main, ["service", "ls"], env={"SHOAL_HOST": "ftp://m1"})
    assert res.exit_code == 2
    assert "SHOAL_HOST" in res.output and "scheme 'ftp'" in res.output


def test_unix_host_is_the_socket():
    cli = Cli("/run/shoal/shoal.sock", "unix:///tmp/other.sock")
    assert cli.socket_path == "/tmp/other.sock" and cli.remote is None


def test_lab_daemons_serve_the_remote_api_only_when_asked(monkeypatch):
    from shoal.lab.daemons import DOCKER_TCP_ENV, default_daemon_argv
    from shoal.lab.errors import LabError
    kw = dict(host="manager1", address="172.31.0.11", data_root="/d", socket="/r/m1.sock")
    monkeypatch.delenv(DOCKER_TCP_ENV, raising=False)
    assert "--docker-tcp" not in default_daemon_argv(**kw)
    monkeypatch.setenv(DOCKER_TCP_ENV, "2376")
    argv = default_daemon_argv(**kw)
    assert argv[argv.index("--docker-tcp") + 1] == "172.31.0.11:2376"
    monkeypatch.setenv(DOCKER_TCP_ENV, "yes")
    with pytest.raises(LabError, match=DOCKER_TCP_ENV):
        default_daemon_argv(**kw)
