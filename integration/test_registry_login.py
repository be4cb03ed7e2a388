"""Private registries, in a lab of 1 manager + 2 workers: a real registry (Debian's
docker-registry) with basic auth and TLS from a test CA, the CA trusted through
/etc/shoal/certs.d/HOST:PORT/ca.crt as Docker's certs.d.

- `shoal login`, `shoal image pull` and `shoal logout`: the credentials land in docker's
  config.json (0600) and nowhere under the node's data root or in its log.
- a service of a private image: refused with the auth message without --with-registry-auth,
  running on both workers with it; the password is in no file under any data root (raft files
  included), no log, and no API answer.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from integration.helpers import needs_root, unique_lab_name, wait_until
from shoal.lab.netlab import Lab
from tests import imagebuild as ib

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(not ib.LocalRegistry.available() or not ib.busybox_available(),
                                 reason="needs Debian's docker-registry and busybox-static")]

CERTS_D = Path("/etc/shoal/certs.d")
USER = "deployer"
PASSWORD = "s3cret-Pa55word-\u00e9"
PROBE = ("import ssl, sys, urllib.request, urllib.error\n"
         "try:\n"
         "    urllib.request.urlopen(sys.argv[1], timeout=1, context=ssl._create_unverified_context())\n"
         "except urllib.error.HTTPError as e:\n"
         "    sys.exit(0 if e.code == 401 else 1)\n")


@pytest.fixture(scope="module")
def setup():
    base = Path(tempfile.mkdtemp(prefix="shoal-login-"))
    lab = Lab(unique_lab_name("lgn"))
    proc = None
    ca_dir = None
    try:
        lab.up(managers=1, workers=2)
        lab.cli("manager1", "swarm", "update", "--dispatcher-heartbeat", "1s")
        host = lab.hosts()[0]
        ip = host.address
        # images go in through an open registry on loopback; the locked one serves the storage
        layout = ib.build_busybox_oci_layout(base / "oci", "1")
        import asyncio
        with ib.LocalRegistry(base / "reg") as open_reg:
            asyncio.run(ib.push_layout(open_reg.url, layout, "team/app", "1"))
        port = ib.free_port()
        ca, cert, key = ib.registry_tls_files(base / "tls", ip)
        (base / "htpasswd").write_text(ib.htpasswd_line(USER, PASSWORD))
        (base / "config.yml").write_text(
            "version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {base / 'reg' / 'data'}}}}}\n"
            f"http: {{addr: '{ip}:{port}', tls: {{certificate: {cert}, key: {key}}}}}\n"
            f"auth: {{htpasswd: {{realm: shoal-test, path: {base / 'htpasswd'}}}}}\n")
        registry = f"{ip}:{port}"
        ca_dir = CERTS_D / registry
        ca_dir.mkdir(parents=True)
        shutil.copy(ca, ca_dir / "ca.crt")
        cmd, env = lab.command(host.name, [ib.REGISTRY_BIN, "serve", str(base / "config.yml")])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: lab.exec(host.name, [sys.executable, "-c", PROBE,
                                                f"https://{registry}/v2/"]).returncode == 0,
                   timeout=20, what="the locked registry")
        yield lab, host, registry, base
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        if ca_dir is not None:
            shutil.rmtree(ca_dir, ignore_errors=True)
        lab.down()
        shutil.rmtree(base, ignore_errors=True)


def shoal(lab, host, config_dir: Path, *args: str, stdin: str | None = None):
    cmd, env = lab.command(host.name, ["shoal", *args])
    return subprocess.run(cmd, env={**env, "DOCKER_CONFIG": str(config_dir)}, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_login_pull_and_logout_with_docker_s_config_file(setup, tmp_path):
    lab, host, registry, _ = setup
    config_dir = tmp_path / "docker"
    ref = f"{registry}/team/app:1"

    refused = shoal(lab, host, config_dir, "image", "pull", ref)
    assert refused.returncode != 0
    assert f"requires authentication: run 'shoal login {registry}'" in refused.stderr, refused.stderr

    wrong = shoal(lab, host, config_dir, "login", "-u", USER, "--password-stdin", registry,
                  stdin="wrong\n")
    assert wrong.returncode != 0 and f"refused the credentials of {USER}" in wrong.stderr
    assert not (config_dir / "config.json").exists()  # nothing written for a failed login

    ok = shoal(lab, host, config_dir, "login", "-u", USER, "--password-stdin", registry,
               stdin=PASSWORD + "\n")
    assert ok.returncode == 0 and "Login Succeeded" in ok.stdout, ok.stderr
    path = config_dir / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = json.loads(path.read_text())["auths"][registry]
    assert base64.b64decode(entry["auth"]).decode() == f"{USER}:{PASSWORD}"

    pulled = shoal(lab, host, config_dir, "image", "pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    images = json.loads(shoal(lab, host, config_dir, "image", "ls", "--format", "json").stdout)
    assert ref in {i["ref"] for i in images}

    # the password's bytes: in no file under the node's data root, and not in its log
    secret = PASSWORD.encode()
    for p in Path(host.data_root).rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert secret not in p.read_bytes(), p
    assert host.log and secret not in Path(host.log).read_bytes()

    out = shoal(lab, host, config_dir, "logout", registry)
    assert out.returncode == 0 and f"Removing login credentials for {registry}" in out.stdout
    assert registry not in json.loads(path.read_text())["auths"]


def unix_get(socket_path: str, path: str) -> str:
    """GET on a Unix socket (the sockets are files: reachable from outside the namespace)."""
    import http.client
    import socket

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(socket_path)

    conn = Conn("localhost", timeout=10)
    conn.request("GET", path)
    body = conn.getresponse().read().decode()
    conn.close()
    assert body, path
    return body


def password_is_nowhere(lab) -> None:
    secret = PASSWORD.encode()
    for h in lab.hosts():
        for p in Path(h.data_root).rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert secret not in p.read_bytes(), p
        assert secret not in Path(h.log).read_bytes(), h.log


def test_a_private_image_runs_as_a_service_only_with_registry_auth(setup, tmp_path):
    lab, host, registry, _ = setup
    config_dir = tmp_path / "docker"
    ref = f"{registry}/team/app:1"
    login = shoal(lab, host, config_dir, "login", "-u", USER, "--password-stdin", registry,
                  stdin=PASSWORD)
    assert login.returncode == 0, login.stderr

    # without the credentials: every attempt is rejected, and the wait ends saying why
    refused = shoal(lab, host, config_dir, "service", "create", "--name", "private",
                    "--replicas", "2", "--constraint", "node.role==worker", ref, "sleep", "1000")
    assert refused.returncode != 0
    assert f"registry {registry} requires authentication" in refused.stderr, refused.stderr
    shoal(lab, host, config_dir, "service", "rm", "private")

    created = shoal(lab, host, config_dir, "service", "create", "--name", "private",
                    "--replicas", "2", "--constraint", "node.role==worker",
                    "--with-registry-auth", ref, "sleep", "1000")
    assert created.returncode == 0, created.stdout + created.stderr
    tasks = json.loads(shoal(lab, host, config_dir, "service", "ps", "private", "--format",
                             "json").stdout)
    running = {t["node_hostname"] for t in tasks if t["status"]["state"] == "running"}
    assert running == {"worker1", "worker2"}

    # no API answer carries the password: the service, its tasks, the Docker API's view
    answers = [shoal(lab, host, config_dir, "service", "inspect", "private").stdout,
               shoal(lab, host, config_dir, "service", "ps", "private", "--format", "json").stdout,
               unix_get(host.docker_socket, "/services/private")]
    assert all(PASSWORD not in a for a in answers)
    shoal(lab, host, config_dir, "service", "rm", "private")

    # the unchanged docker CLI reads the same config.json and sends X-Registry-Auth
    docker_cli = "/opt/shoal-test/docker-cli/usr/bin/docker"
    if os.access(docker_cli, os.X_OK):
        cmd, env = lab.command(host.name, [docker_cli, "service", "create", "-d", "--name",
                                           "private2", "--replicas", "2", "--constraint",
                                           "node.role==worker", "--with-registry-auth", ref,
                                           "sleep", "1000"])
        res = subprocess.run(cmd, env={**env, "DOCKER_CONFIG": str(config_dir)},
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        wait_until(lambda: {t["node_hostname"] for t in json.loads(shoal(
            lab, host, config_dir, "service", "ps", "private2", "--format", "json").stdout)
            if t["status"]["state"] == "running"} == {"worker1", "worker2"},
            timeout=60, what="private2 running on both workers")
        assert PASSWORD not in unix_get(host.docker_socket, "/services/private2")
        shoal(lab, host, config_dir, "service", "rm", "private2")
    password_is_nowhere(lab)
