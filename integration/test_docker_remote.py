"""Remote access with mutual TLS (issue 16, must-show 4), in a lab of 3 managers + 1 worker
whose daemons serve `--docker-tcp ADDRESS:2376`: the unchanged docker CLI and shoal's own CLI,
run on the host itself (the root network namespace, outside every lab namespace), reach a
manager with a certificate from `shoal swarm client-cert`; without one, with one from another
CA, or after `client-cert rm` (on another manager) they are refused.

The root namespace is not on the lab's underlay: `host_link` plugs it into the underlay's br0
with a veth pair and an address of the lab's subnet that no host uses, with /32 routes to the
managers only (no default route, no NAT), and always removes it.
"""
from __future__ import annotations

import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from common import pki
from integration.helpers import busybox_lab, wait_until
from shoal.lab.daemons import DOCKER_TCP_ENV
from shoal.lab.naming import SUBNET, underlay_namespace
from integration.test_docker_cli import DOCKER, IMAGE, pytestmark  # noqa: F401

PORT = 2376
# Below manager1 (.11) and above anything the lab gives out: no lab host has it.
HOST_ADDR = f"{SUBNET}.9"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture(scope="module")
def lab():
    old = os.environ.get(DOCKER_TCP_ENV)
    os.environ[DOCKER_TCP_ENV] = str(PORT)
    try:
        with busybox_lab("drm", managers=3, workers=1, tags=[IMAGE]) as lab:
            # The daemons' argv is recorded in the lab: nothing else needs the variable.
            _restore(old)
            yield lab
    finally:
        _restore(old)


def _restore(old: str | None) -> None:
    if old is None:
        os.environ.pop(DOCKER_TCP_ENV, None)
    else:
        os.environ[DOCKER_TCP_ENV] = old


@pytest.fixture(scope="module")
def managers(lab) -> dict[str, str]:
    """manager name -> address, reachable from the root namespace for the module's tests."""
    addrs = {h.name: h.address for h in lab.hosts() if h.role == "manager"}
    outer, inner = f"sr-{lab.name}", f"sp-{lab.name}"
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns",
            underlay_namespace(lab.name))
        _ip("-n", underlay_namespace(lab.name), "link", "set", inner, "master", "br0", "up")
        _ip("addr", "add", f"{HOST_ADDR}/32", "dev", outer)
        _ip("link", "set", outer, "up")
        for addr in addrs.values():
            _ip("route", "add", f"{addr}/32", "dev", outer, "src", HOST_ADDR)
        for addr in addrs.values():
            wait_until(lambda a=addr: _tcp_open(a, PORT), timeout=20,
                       what=f"{addr}:{PORT} reachable from the host")
        yield addrs
    finally:
        # Removing one end removes the pair, its address and its routes.
        subprocess.run(["ip", "link", "del", outer], capture_output=True, timeout=10)


def _tcp_open(addr: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((addr, port)) == 0


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="shoal-remote-"))
    (d / "docker").mkdir()          # the docker CLI's config: never root's ~/.docker
    yield d
    shutil.rmtree(d, ignore_errors=True)


def docker(addr: str, cert_dir: Path, cfg: Path, *args: str) -> subprocess.CompletedProcess:
    """The docker CLI on the host, as a laptop would run it."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cfg),
           "DOCKER_CONFIG": str(cfg), "DOCKER_HOST": f"tcp://{addr}:{PORT}",
           "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_dir)}
    return subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True, timeout=30)


def shoal_remote(addr: str, cert_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cert_dir),
           "SHOAL_CERT_PATH": str(cert_dir), "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "shoal.cli", "-H", f"tcp://{addr}:{PORT}",
                           *args], env=env, capture_output=True, text=True, timeout=30)


def _issue(lab, host: str, name: str, out: Path) -> None:
    lab.cli(host, "swarm", "client-cert", name, "--expiry", "1h", "-o", str(out))


def test_remote_docker_and_shoal_clis_with_a_client_certificate_and_every_refusal(
        lab, managers, workdir):
    m1, m2, m3 = (managers[f"manager{i}"] for i in (1, 2, 3))
    cfg = workdir / "docker"
    lab.cli("manager1", "service", "create", "--name", "web", "--replicas", "1", IMAGE,
            "sleep", "1000")
    certs = workdir / "laptop"
    _issue(lab, "manager1", "laptop", certs)
    assert oct(certs.stat().st_mode & 0o777) == "0o700"
    assert oct((certs / "key.pem").stat().st_mode & 0o777) == "0o600"

    # Accepted: the docker CLI, on every manager (each checks its own replica).
    hostnames = {h.name for h in lab.hosts()}
    for addr in (m1, m3):
        res = wait_until(lambda a=addr: _ok(docker(a, certs, cfg, "node", "ls")), timeout=20,
                         what=f"docker node ls through tcp://{addr}:{PORT}")
        assert hostnames <= set(res.stdout.split()), res.stdout
    res = docker(m1, certs, cfg, "service", "ls")
    assert res.returncode == 0 and "web" in res.stdout, res.stderr
    # shoal's CLI too, through the same listener (shoal's API under /shoal/).
    res = shoal_remote(m2, certs, "service", "ls")
    assert res.returncode == 0 and "web" in res.stdout, res.stderr
    res = shoal_remote(m2, certs, "swarm", "client-cert", "ls")
    assert res.returncode == 0 and "laptop" in res.stdout and "active" in res.stdout

    # Refused: no client certificate (only the CA, so the server itself is verified).
    no_cert = workdir / "no-cert"
    no_cert.mkdir()
    shutil.copy(certs / "ca.pem", no_cert / "ca.pem")
    res = docker(m1, no_cert, cfg, "node", "ls")
    assert res.returncode != 0 and "manager1" not in res.stdout
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _python_get(m1, certs / "ca.pem", None)
    res = shoal_remote(m1, no_cert, "service", "ls")
    assert res.returncode == 1 and "no cert.pem" in res.stderr

    # Refused: a certificate of another CA (same layout, same cluster id even).
    cluster_id = lab.cli_json("manager1", "swarm", "inspect")["id"]
    other = pki.RootCA.generate(cluster_id)
    foreign = workdir / "foreign"
    foreign.mkdir()
    key = pki.generate_key()
    cert, _ = pki.issue_client(other, pki.make_client_csr(key, "laptop"), "laptop", "f" * 25,
                               cluster_id, 3600)
    shutil.copy(certs / "ca.pem", foreign / "ca.pem")
    (foreign / "cert.pem").write_bytes(cert)
    (foreign / "key.pem").write_bytes(key)
    res = docker(m1, foreign, cfg, "node", "ls")
    assert res.returncode != 0 and "manager1" not in res.stdout
    res = shoal_remote(m1, foreign, "service", "ls")
    assert res.returncode == 1 and "TLS" in res.stderr, res.stderr

    # Refused after `client-cert rm` on another manager: every manager's replica holds it.
    res = lab.cli("manager2", "swarm", "client-cert", "rm", "laptop")
    assert "revoked laptop" in res.stdout
    for addr in (m1, m2, m3):
        res = wait_until(lambda a=addr: _refused(docker(a, certs, cfg, "node", "ls")),
                         timeout=20, what=f"tcp://{addr}:{PORT} refusing the revoked cert")
        assert "revoked" in res.stderr and "laptop" in res.stderr, res.stderr
    res = shoal_remote(m3, certs, "service", "ls")
    assert res.returncode == 1 and "revoked" in res.stderr


def test_logs_follow_streams_over_the_remote_api(lab, managers, workdir):
    """An NDJSON stream (`service logs -f`) through the TLS listener, line by line as the
    task writes them."""
    certs = workdir / "streamer"
    _issue(lab, "manager1", "streamer", certs)
    lab.cli("manager1", "service", "create", "--name", "ticker", "--replicas", "1", IMAGE,
            "sh", "-c", "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.3; done")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(certs),
           "SHOAL_CERT_PATH": str(certs), "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli", "-H", f"tcp://{managers['manager2']}:{PORT}",
         "service", "logs", "-f", "--raw", "ticker"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                seen.append(line.strip())
        assert len(seen) >= 3 and all(x.startswith("tick") for x in seen), \
            (seen, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        assert proc.poll() is None      # still following
    finally:
        proc.kill()                      # the process this test started, by its handle
        proc.wait(timeout=10)
    lab.cli("manager1", "service", "rm", "ticker")


def test_a_worker_serves_no_cluster_control_and_its_node_certificate_is_refused(
        lab, managers, workdir):
    """The worker's own node certificate, used against a manager, is refused for control."""
    worker = next(h for h in lab.hosts() if h.role == "worker")
    files = _node_cert_dir(Path(worker.data_root), workdir / "worker-cert")
    res = docker(managers["manager1"], files, workdir / "docker", "node", "ls")
    assert res.returncode != 0 and "worker certificate" in res.stderr, res.stderr


def _node_cert_dir(data_root: Path, out: Path) -> Path:
    from common.nodestate import NodeFiles
    ca, cert, key = NodeFiles(data_root).load_certs()
    out.mkdir()
    (out / "ca.pem").write_bytes(ca)
    (out / "cert.pem").write_bytes(cert)
    (out / "key.pem").write_bytes(key)
    return out


def _ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode == 0, res.stderr
    return res


def _refused(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert res.returncode != 0, res.stdout
    return res


def _python_get(addr: str, ca: Path, cert_key) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca))
    with socket.create_connection((addr, PORT), timeout=5) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = s.recv(1024)
            if not data:
                raise ConnectionError("closed without an answer")
            return data
