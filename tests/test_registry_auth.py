"""Registry credentials: docker's config.json read and written as docker does, and pulls from a
real registry (Debian's docker-registry) that demands basic auth over TLS from a test CA.

The password never reaches a file of the image store, a log line or an error message.
"""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from common import errors
from common.registryauth import (DOCKER_HUB_KEY, Credentials, DockerConfig,
                                 credentials_from_plain, registry_key)
from worker.images import ImageStore, registry

USER = "deployer"
PASSWORD = "s3cret-Pa55word-\u00e9"  # non-ASCII too: the bytes must be found nowhere


# ---- config.json ------------------------------------------------------------------------------
def test_login_entries_are_written_as_docker_writes_them_0600_keeping_the_rest(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {"other:5000": {"auth": "b3RoZXI6cHc="}},
                                "psFormat": "table {{.ID}}", "currentContext": "lab"}))
    config = DockerConfig(tmp_path)
    config.store("https://reg.test:5000/v2/", Credentials(USER, PASSWORD))
    doc = json.loads(path.read_text())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert doc["psFormat"] == "table {{.ID}}" and doc["currentContext"] == "lab"
    assert doc["auths"]["other:5000"] == {"auth": "b3RoZXI6cHc="}
    assert base64.b64decode(doc["auths"]["reg.test:5000"]["auth"]).decode() == \
        f"{USER}:{PASSWORD}"
    again = DockerConfig(tmp_path)
    assert again.credentials("reg.test:5000") == Credentials(USER, PASSWORD)
    assert again.credentials("other:5000") == Credentials("other", "pw")
    assert again.erase("reg.test:5000") is True and again.erase("reg.test:5000") is False
    assert DockerConfig(tmp_path).credentials("reg.test:5000") is None


def test_docker_written_shapes_are_read_and_helpers_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "auths": {"a:1": {"username": "u", "password": "p"}, "b:2": {},
                  DOCKER_HUB_KEY: {"auth": base64.b64encode(b"hub:pw").decode()}},
        "credHelpers": {"c:3": "ecr-login"}}))
    config = DockerConfig(tmp_path)
    assert config.credentials("a:1") == Credentials("u", "p")
    assert config.credentials("b:2") is None
    assert config.credentials("docker.io") == Credentials("hub", "pw")
    with pytest.raises(errors.FailedPrecondition, match="docker-credential-ecr-login"):
        config.credentials("c:3")
    assert "p" not in repr(Credentials("u", "pppp")).replace("password", "")


@pytest.mark.parametrize("text, words", [
    ("{not json", "not valid JSON"),
    ("[]", "top level must be an object"),
    ('{"auths": []}', '"auths" must map'),
    ('{"auths": {"r:1": {"auth": "!!!"}}}', "not base64 of USER:PASSWORD"),
    ('{"auths": {"r:1": {"auth": "bm9jb2xvbg=="}}}', "not base64 of USER:PASSWORD"),
])
def test_a_damaged_config_is_refused_naming_what_is_wrong(tmp_path, text, words):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(errors.ShoalError, match=words):
        DockerConfig(tmp_path).credentials("r:1")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) |
                     st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(_json, st.fixed_dictionaries({"auths": st.dictionaries(
    st.sampled_from(["r:1", "x"]), _json, max_size=3)})), raw=st.binary(max_size=64))
def test_any_config_file_gives_credentials_none_or_a_clear_error(tmp_path, doc, raw):
    for content in (json.dumps(doc).encode(), raw):
        (tmp_path / "config.json").write_bytes(content)
        try:
            creds = DockerConfig(tmp_path).credentials("r:1")
        except errors.ShoalError as exc:
            assert "config.json" in exc.message or "docker-credential" in exc.message
        else:
            assert creds is None or isinstance(creds, Credentials)


@settings(max_examples=200, deadline=None)
@given(st.one_of(_json, st.fixed_dictionaries({"username": _json, "password": _json})))
def test_credentials_in_an_api_body_are_checked_and_never_echoed(value):
    try:
        creds = credentials_from_plain(value, "auth")
    except errors.InvalidArgument as exc:
        assert exc.field == "auth"
        if isinstance(value, dict) and isinstance(value.get("password"), str) and \
                len(value["password"]) > 3:
            assert value["password"] not in exc.message
    else:
        assert creds is None or (creds.username and ":" not in creds.username)


@pytest.mark.parametrize("bad", ["", " ", "-x", "a b:1", ".hidden"])
def test_a_registry_address_must_be_one(bad):
    with pytest.raises(errors.InvalidArgument, match="not a registry address"):
        registry_key(bad)


# ---- a registry behind basic auth and TLS from a test CA --------------------------------------
@pytest.fixture(scope="module")
def locked_registry(tmp_path_factory):
    """busybox:1 pushed as app:1 into an open registry, which then restarts on the same
    storage with TLS from a test CA and an htpasswd file: (registry, certs.d dir)."""
    if not ib.LocalRegistry.available() or not ib.busybox_available():
        pytest.skip("needs Debian's docker-registry and busybox-static packages")
    base = tmp_path_factory.mktemp("locked")
    layout = ib.build_busybox_oci_layout(base / "oci", "1")
    with ib.LocalRegistry(base / "reg") as reg:
        asyncio.run(ib.push_layout(reg.url, layout, "team/app", "1"))
        port = reg.port
    ca, cert, key = ib.registry_tls_files(base / "tls", "127.0.0.1")
    htpasswd = base / "htpasswd"
    htpasswd.write_text(ib.htpasswd_line(USER, PASSWORD))
    certs_dir = base / "certs.d"
    (certs_dir / f"127.0.0.1:{port}").mkdir(parents=True)
    (certs_dir / f"127.0.0.1:{port}" / "ca.crt").write_bytes(ca.read_bytes())
    locked = ib.LocalRegistry(base / "reg", tls=(cert, key), htpasswd=htpasswd, port=port)
    locked.start()
    yield locked, certs_dir
    locked.stop()


def _pull(tmp_path: Path, reg, certs_dir: Path, creds=None):
    store = ImageStore(tmp_path / "store")
    return store, asyncio.run(store.pull(f"{reg.host}/team/app:1", credentials=creds,
                                         certs_dir=certs_dir))


def test_a_pull_with_the_right_credentials_and_the_certs_d_ca_works(tmp_path, locked_registry,
                                                                    caplog):
    reg, certs_dir = locked_registry
    caplog.set_level(logging.DEBUG)
    store, image = _pull(tmp_path, reg, certs_dir, Credentials(USER, PASSWORD))
    assert image.ref == f"{reg.host}/team/app:1"
    secret = PASSWORD.encode()
    for path in (tmp_path / "store").rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
    assert PASSWORD not in caplog.text


def test_without_credentials_the_error_says_the_registry_wants_a_login(tmp_path, locked_registry):
    reg, certs_dir = locked_registry
    with pytest.raises(errors.PermissionDenied) as refused:
        _pull(tmp_path, reg, certs_dir)
    assert f"registry {reg.host} requires authentication: run 'shoal login {reg.host}'" in \
        refused.value.message


def test_a_wrong_password_is_refused_by_name_without_showing_it(tmp_path, locked_registry):
    reg, certs_dir = locked_registry
    with pytest.raises(errors.PermissionDenied) as refused:
        _pull(tmp_path, reg, certs_dir, Credentials(USER, "not-the-password"))
    assert f"refused the credentials of {USER}" in refused.value.message
    assert "not-the-password" not in refused.value.message
    assert not list((tmp_path / "store").glob("images/*")) or \
        not ImageStore(tmp_path / "store").list()


def test_without_the_ca_in_certs_d_tls_is_not_trusted(tmp_path, locked_registry):
    reg, _ = locked_registry
    with pytest.raises(errors.Unavailable, match="does not speak verifiable HTTPS"):
        _pull(tmp_path, reg, tmp_path / "empty-certs.d", Credentials(USER, PASSWORD))


def test_a_login_check_passes_with_the_password_and_fails_without_it(locked_registry):
    reg, certs_dir = locked_registry
    asyncio.run(registry.check_login(reg.host, Credentials(USER, PASSWORD), insecure=False,
                                     certs_dir=certs_dir))
    with pytest.raises(errors.PermissionDenied, match=f"refused the credentials of {USER}"):
        asyncio.run(registry.check_login(reg.host, Credentials(USER, "wrong"), insecure=False,
                                         certs_dir=certs_dir))
