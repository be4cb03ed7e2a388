"""Image commands as docker's (issue 17): push (monolithic and chunked, to an open registry and
to one with basic auth over TLS from a test CA), tag, inspect, history, rm [-f], prune [-a],
save (read back by skopeo and by our own load) and load of hostile archives.

Real parts: the ImageStore, Debian's docker-registry, skopeo, runc's executor for "in use".
Runs as root (layers hold device nodes); needs busybox-static.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from common import errors
from common.registryauth import Credentials
from worker.images import prune as image_prune
from worker.images import push as image_push
from worker.images import save as image_save
from worker.images.store import ImageStore

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (layers hold device nodes)"),
    pytest.mark.skipif(not ib.busybox_available(), reason="needs busybox-static (/bin/busybox)"),
]
needs_registry = pytest.mark.skipif(not ib.LocalRegistry.available(),
                                    reason="needs Debian's docker-registry package")
USER, PASSWORD = "pusher", "pu5h-Pa55word-\u00e9"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def locked_registry(tmp_path_factory):
    """docker-registry with TLS from a test CA and an htpasswd file: (registry, certs.d)."""
    if not ib.LocalRegistry.available():
        pytest.skip("needs Debian's docker-registry package")
    base = tmp_path_factory.mktemp("locked")
    port = ib.free_port()
    ca, cert, key = ib.registry_tls_files(base / "tls", "127.0.0.1")
    (base / "htpasswd").write_text(ib.htpasswd_line(USER, PASSWORD))
    certs_dir = base / "certs.d"
    (certs_dir / f"127.0.0.1:{port}").mkdir(parents=True)
    shutil.copy(ca, certs_dir / f"127.0.0.1:{port}" / "ca.crt")
    reg = ib.LocalRegistry(base / "reg", tls=(cert, key), htpasswd=base / "htpasswd",
                           port=port).start()
    yield reg, certs_dir
    reg.stop()


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    # a second layer of incompressible bytes, so a small chunk size means many chunks
    return ib.build_busybox_oci_layout(tmp_path_factory.mktemp("layout") / "oci", "1",
                                       {"data/noise": os.urandom(300_000)},
                                       {"Cmd": ["sh", "-c", "echo hi"]})


def _files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# ---- push ------------------------------------------------------------------------------------
@needs_registry
@pytest.mark.parametrize("chunk_size", [image_push.CHUNK_SIZE, 64 * 1024])
def test_push_then_pull_gives_the_same_image_and_manifest_digest(tmp_path, registry, layout,
                                                                  chunk_size):
    expect = ib.layout_image(layout, "1")
    name = f"{registry.host}/push/app{chunk_size}:v1"

    async def scenario():
        store = ImageStore(tmp_path / "a")
        image = await store.import_archive(layout, "busybox:1")
        store.tag("busybox:1", name)
        records: list[dict] = []

        async def progress(record: dict) -> None:
            records.append(record)
        result = await image_push.push(store, name, insecure_registries=frozenset(
            {registry.host}), progress=progress, chunk_size=chunk_size)
        # the manifest the image came with names the kept blobs: sent again byte for byte
        assert result == {"tag": "v1", "digest": expect["manifest_digest"],
                          "size": ib.manifest_size(layout)}
        assert records[-1]["status"] == \
            f"v1: digest: {result['digest']} size: {result['size']}"
        pushed = {r["id"] for r in records if r.get("status") == "Pushed"}
        assert pushed == {d[7:19] for d in expect["layer_digests"]}
        if chunk_size < 300_000:
            assert sum(1 for r in records if r.get("status") == "Pushing") > 3
        # again: every layer is there already
        records.clear()
        again = await image_push.push(store, name, insecure_registries=frozenset(
            {registry.host}), progress=progress)
        assert again == result
        assert {r["status"] for r in records if "id" in r} == {"Preparing",
                                                               "Layer already exists"}
        other = ImageStore(tmp_path / "b")
        pulled = await other.pull(name, insecure_registries=frozenset({registry.host}))
        assert pulled.id == image.id == expect["config_digest"]
        assert other.manifest_digests(pulled.id) == [result["digest"]]
        assert store.manifest_digests(image.id) == [result["digest"]]
    run(scenario())


@needs_registry
def test_a_pushed_docker_save_image_gets_an_oci_manifest_that_pulls_back(tmp_path, registry):
    """A `docker save` archive brings no manifest: push makes one for its plain-tar layers."""
    archive = ib.build_docker_save_tar(tmp_path / "save.tar", "plain:1",
                                       extra_files={"etc/motd": b"plain\n"})
    name = f"{registry.host}/push/plain:1"

    async def scenario():
        store = ImageStore(tmp_path / "a")
        image = await store.import_archive(archive)
        store.tag("plain:1", name)
        result = await image_push.push(store, name,
                                       insecure_registries=frozenset({registry.host}))
        other = ImageStore(tmp_path / "b")
        pulled = await other.pull(name, insecure_registries=frozenset({registry.host}))
        assert pulled.id == image.id and pulled.layers == image.layers
        assert other.manifest_digests(pulled.id) == [result["digest"]]
    run(scenario())


def test_push_refuses_what_it_cannot_push_by_name(tmp_path, layout):
    async def scenario():
        store = ImageStore(tmp_path / "a")
        await store.import_archive(layout, "busybox:1")
        with pytest.raises(errors.InvalidArgument, match="names no registry.*image tag"):
            await image_push.push(store, "busybox:1")
        with pytest.raises(errors.NotFound, match="127.0.0.1:9/x:1 not found on this node"):
            await image_push.push(store, "127.0.0.1:9/x:1")
        store.tag("busybox:1", "127.0.0.1:9/x:1")
        with pytest.raises(errors.Unavailable, match="cannot push 127.0.0.1:9/x:1: registry "
                                                     "127.0.0.1:9 is unreachable"):
            await image_push.push(store, "127.0.0.1:9/x:1",
                                  insecure_registries=frozenset({"127.0.0.1:9"}))
    run(scenario())


@needs_registry
def test_push_to_a_registry_with_basic_auth_over_tls(tmp_path, locked_registry, layout):
    reg, certs_dir = locked_registry
    name = f"{reg.host}/private/app:1"

    async def scenario():
        store = ImageStore(tmp_path / "a")
        image = await store.import_archive(layout, "busybox:1")
        store.tag("busybox:1", name)
        with pytest.raises(errors.PermissionDenied) as anon:
            await image_push.push(store, name, certs_dir=certs_dir)
        assert anon.value.message == (f"cannot push {name}: registry {reg.host} requires "
                                      f"authentication: run 'shoal login {reg.host}' first")
        with pytest.raises(errors.PermissionDenied, match=f"refused the credentials of {USER}")\
                as wrong:
            await image_push.push(store, name, certs_dir=certs_dir,
                                  credentials=Credentials(USER, "not-it"))
        assert "not-it" not in wrong.value.message
        with pytest.raises(errors.Unavailable, match="verifiable HTTPS"):
            await image_push.push(store, name, credentials=Credentials(USER, PASSWORD),
                                  certs_dir=tmp_path / "no-certs")
        result = await image_push.push(store, name, certs_dir=certs_dir,
                                       credentials=Credentials(USER, PASSWORD),
                                       chunk_size=100_000)
        other = ImageStore(tmp_path / "b")
        pulled = await other.pull(name, certs_dir=certs_dir,
                                  credentials=Credentials(USER, PASSWORD))
        assert pulled.id == image.id
        assert other.manifest_digests(pulled.id) == [result["digest"]]
    run(scenario())
    for root in (tmp_path / "a", tmp_path / "b"):
        for path in root.rglob("*"):
            if path.is_file():
                assert PASSWORD.encode() not in path.read_bytes(), path


STATUSES = st.sampled_from([200, 201, 202, 204, 307, 400, 401, 403, 404, 416, 500])
LOCATIONS = st.sampled_from(["good", "absolute", "elsewhere", "garbage", "none"])
CHALLENGES = st.sampled_from(['Basic realm="r"', "Bearer", 'Negotiate x', "", None])


@st.composite
def hostile_answers(draw):
    """How a hostile registry answers each kind of request of a push."""
    kinds = ["HEAD", "POST", "PATCH", "PUT", "MANIFEST"]
    return {k: (draw(STATUSES), draw(LOCATIONS), draw(CHALLENGES),
                draw(st.sampled_from(["right", "wrong", "none"])),
                draw(st.sampled_from([b"", b"{", b'{"errors":[{"code":"DENIED","message":"no"}]}',
                                      b"\xff" * 3000])))
            for k in kinds}


@pytest.fixture(scope="module")
def pushable_store(tmp_path_factory, layout):
    store = ImageStore(tmp_path_factory.mktemp("pushable") / "store")
    run(store.import_archive(layout, "127.0.0.1:1/h/app:1"))
    return store


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answers=hostile_answers())
@example(answers={"HEAD": (404, "none", None, "none", b""),
                  "POST": (202, "good", None, "none", b""),
                  "PATCH": (202, "absolute", None, "none", b""),
                  "PUT": (201, "none", None, "right", b""),
                  "MANIFEST": (201, "none", None, "right", b"")})
def test_a_hostile_registry_gets_a_clean_error_and_never_redirects_the_upload(pushable_store,
                                                                            answers):
    from aiohttp import web
    from aiohttp.test_utils import TestServer
    store = pushable_store
    index_before = json.dumps(store._index, sort_keys=True)
    elsewhere_hits: list[str] = []
    received: dict[str, bytes] = {}

    async def sentinel(request: web.Request) -> web.Response:
        elsewhere_hits.append(f"{request.method} {request.path_qs}")
        return web.Response(status=201)

    async def registry(request: web.Request) -> web.Response:
        body = await request.read()
        kind = {"HEAD": "HEAD", "POST": "POST", "PATCH": "PATCH"}.get(request.method, "PUT")
        if "/manifests/" in request.path:
            kind = "MANIFEST"
            received["manifest"] = body
        status, location, challenge, digest, text = answers[kind]
        headers = {}
        if challenge is not None and status == 401:
            headers["WWW-Authenticate"] = challenge
        where = {"good": "/v2/h/app/blobs/uploads/u1?_state=a%3D",
                 "absolute": f"http://{request.host}/v2/h/app/blobs/uploads/u2",
                 "elsewhere": f"http://{other.host}:{other.port}/steal",
                 "garbage": "http://[::1", "none": None}[location]
        if where is not None:
            headers["Location"] = where
        if digest != "none":
            headers["Docker-Content-Digest"] = (ib.digest_of(body) if digest == "right"
                                                else "sha256:" + "0" * 64)
        return web.Response(status=status, headers=headers,
                            body=None if request.method == "HEAD" else text)

    async def scenario():
        nonlocal other
        other_app = web.Application()
        other_app.router.add_route("*", "/{tail:.*}", sentinel)
        reg_app = web.Application()
        reg_app.router.add_route("*", "/{tail:.*}", registry)
        async with TestServer(other_app) as other_srv, TestServer(reg_app) as reg_srv:
            other = other_srv
            name = f"127.0.0.1:{reg_srv.port}/h/app:1"
            store.tag("127.0.0.1:1/h/app:1", name)
            try:
                return await image_push.push(store, name, chunk_size=100_000,
                                             insecure_registries=frozenset(
                                                 {f"127.0.0.1:{reg_srv.port}"}))
            except errors.ShoalError as exc:
                event(f"refused: {exc.message.split(': ', 1)[-1][:50]}")
                assert exc.message.startswith(f"cannot push {name}"), exc.message
                assert "\n" not in exc.message and len(exc.message) < 1500
                return None
            finally:
                store.remove(name)
    other = None
    result = run(scenario())
    assert elsewhere_hits == [], "the upload went to another host"
    if result is not None:
        event("pushed")
        assert result["digest"] == ib.digest_of(received["manifest"])
    else:
        assert json.dumps(store._index, sort_keys=True) == index_before


# ---- tag, inspect, history -------------------------------------------------------------------
def test_tag_inspect_and_history(tmp_path, layout):
    from shoal.imageapi import inspect_view
    expect = ib.layout_image(layout, "1")

    async def scenario():
        store = ImageStore(tmp_path / "a")
        image = await store.import_archive(layout, "busybox:1")
        tagged = store.tag("busybox:1", "reg.test:5000/team/app:2")
        assert tagged.id == image.id
        with pytest.raises(errors.InvalidArgument):
            store.tag("busybox:1", "Bad Name")
        with pytest.raises(errors.NotFound):
            store.tag("nope:1", "x:1")
        view = inspect_view(store, store.require("busybox:1"))
        assert view["Id"] == image.id
        assert view["RepoTags"] == ["busybox:1", "reg.test:5000/team/app:2"]
        assert view["RepoDigests"] == [f"reg.test:5000/team/app@{expect['manifest_digest']}"]
        assert view["RootFS"] == {"Type": "layers", "Layers": expect["diff_ids"]}
        assert view["Config"]["Cmd"] == ["sh", "-c", "echo hi"]
        assert view["Size"] == image.size > 0 and view["Created"] == "1970-01-01T00:00:00Z"
        assert view["ManifestDigests"] == [expect["manifest_digest"]]
        # a tag moved off an image leaves it dangling, as docker's
        other = await store.import_archive(ib.build_docker_save_tar(tmp_path / "o.tar",
                                                                    "other:1"))
        store.tag("other:1", "busybox:1")
        assert store.require("busybox:1").id == other.id
        assert store.require(image.id).refs == ["reg.test:5000/team/app:2"]
    run(scenario())


def test_history_rows_come_from_the_config_newest_first(tmp_path, layout):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from common.httpserver import CTX, error_middleware
    from shoal import imageapi

    class Node:  # what the handlers read of the daemon: its image store
        def __init__(self, images):
            self.images = images

    async def scenario():
        store = ImageStore(tmp_path / "a")
        image = await store.import_archive(layout, "busybox:1")
        app = web.Application(middlewares=[error_middleware])
        app[CTX] = Node(store)
        app.add_routes(imageapi.routes())
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/images/history", json={"ref": "busybox:1"})
            rows = await resp.json()
            assert resp.status == 200, rows
            resp = await client.post("/images/inspect", json={"refs": ["nope:1"]})
            assert resp.status == 404
        assert [r["created_by"] for r in rows] == ["tests/imagebuild.py"] * 2
        assert rows[0]["id"] == image.id and rows[1]["id"] == "<missing>"
        assert rows[0]["size"] >= 300_000  # the noise layer is the newest
    run(scenario())


# ---- rm, prune -------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")
def test_rm_and_prune_keep_what_a_container_uses(tmp_path, layout):
    from worker.executor import ContainerConfig, Executor

    async def scenario():
        store = ImageStore(tmp_path / "images")
        used = await store.import_archive(layout, "busybox:1")
        other = await store.import_archive(
            ib.build_docker_save_tar(tmp_path / "o.tar", "other:1",
                                     extra_files={"etc/other": b"x" * 50_000}))
        dangling = await store.import_archive(
            ib.build_docker_save_tar(tmp_path / "d.tar", "dangling:1",
                                     extra_files={"etc/dangling": b"y" * 40_000}))
        assert image_prune.remove_image(store, "dangling:1") == \
            ["untagged dangling:1", f"deleted {dangling.id}"]  # its last tag: the image goes
        dangling = await store.import_archive(tmp_path / "d.tar")
        store.tag("busybox:1", "dangling:1")  # the tag moves: the image is left dangling
        ex = Executor(tmp_path / "ex", store)
        await ex.create(ContainerConfig(id="c1", image="busybox:1", command=["true"]))
        try:
            # one of two tags goes as a tag does, in use or not
            assert image_prune.remove_image(store, "dangling:1") == ["untagged dangling:1"]
            with pytest.raises(errors.Conflict, match="used by a container"):
                image_prune.remove_image(store, "busybox:1")
            assert image_prune.remove_image(store, "busybox:1", force=True) == \
                ["untagged busybox:1"]
            assert store.get(used.id) is not None  # untagged, kept for its container
            # dangling only: the untagged image a container uses stays
            result = await image_prune.prune(store)
            assert result["deleted"] == [f"deleted {dangling.id}"]
            etc_dangling = 40_000
            assert result["reclaimed"] >= etc_dangling
            assert {im.id for im in store.list()} == {used.id, other.id}
            usage = image_prune.usage(store)
            assert usage["count"] == 2 and usage["active"] == 1
            assert 0 < usage["reclaimable"] < usage["size"]
            result = await image_prune.prune(store, all_unused=True)
            assert result["deleted"] == ["untagged other:1", f"deleted {other.id}"]
            assert result["reclaimed"] >= 50_000
            assert [im.id for im in store.list()] == [used.id]
        finally:
            await ex.remove("c1")
        result = await image_prune.prune(store, all_unused=True)
        assert result["deleted"] == [f"deleted {used.id}"]
        assert result["reclaimed"] >= used.size
        assert store.list() == []
        await asyncio.sleep(0.2)  # the background deletions
        assert not any((tmp_path / "images" / "layers").iterdir())
        assert not any((tmp_path / "images" / "blobs" / "sha256").iterdir())
        assert (await image_prune.prune(store, all_unused=True)) == {"deleted": [],
                                                                      "reclaimed": 0}
    run(scenario())


def test_prune_sweeps_orphan_layers_and_blobs(tmp_path, layout):
    async def scenario():
        store = ImageStore(tmp_path / "a")
        await store.import_archive(layout, "busybox:1")
        # a failed pull leaves a layer and a blob nobody names
        (store.root / "layers" / ("e" * 64)).mkdir()
        (store.root / "layers" / ("e" * 64) / "f").write_bytes(b"z" * 1000)
        (store.root / "blobs" / "sha256" / ("d" * 64)).write_bytes(b"q" * 500)
        result = await image_prune.prune(store)
        assert result == {"deleted": [], "reclaimed": 1500}
        assert not (store.root / "layers" / ("e" * 64)).exists()
        assert store.require("busybox:1")
    run(scenario())


# ---- save ------------------------------------------------------------------------------------
def test_save_is_read_by_skopeo_with_the_same_digests(tmp_path, layout):
    if shutil.which("skopeo") is None:
        pytest.skip("needs skopeo (scripts/setup.sh installs it)")
    expect = ib.layout_image(layout, "1")

    async def scenario():
        store = ImageStore(tmp_path / "a")
        await store.import_archive(layout, "busybox:1")
        return await image_save.save(store, ["busybox:1"], tmp_path / "out.tar")
    written = run(scenario())
    assert written["images"] == [expect["config_digest"]]
    out = tmp_path / "out.tar"
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"docker-archive:{out}"],
                         check=True, capture_output=True, text=True).stdout
    manifest = json.loads(raw)
    assert manifest["config"]["digest"] == expect["config_digest"]
    assert [layer["digest"] for layer in manifest["layers"]] == expect["diff_ids"]
    config = subprocess.run(["skopeo", "inspect", "--config", "--raw",
                             f"docker-archive:{out}"], check=True, capture_output=True).stdout
    assert ib.digest_of(config) == expect["config_digest"]
    info = json.loads(subprocess.run(["skopeo", "inspect", f"docker-archive:{out}"], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["Layers"] == expect["diff_ids"]
    # and skopeo copies it whole into an OCI layout (every blob checked against its digest)
    subprocess.run(["skopeo", "copy", f"docker-archive:{out}", f"oci:{tmp_path / 'copy'}:x"],
                   check=True, capture_output=True)


def test_save_then_load_round_trip(tmp_path, layout):
    async def scenario():
        store = ImageStore(tmp_path / "a")
        one = await store.import_archive(layout, "busybox:1")
        store.tag("busybox:1", "busybox:also")
        two = await store.import_archive(ib.build_docker_save_tar(tmp_path / "o.tar", "other:1"))
        await image_save.save(store, ["busybox:1", "busybox:also", "other:1", one.id],
                              tmp_path / "both.tar")
        with tarfile.open(tmp_path / "both.tar") as tar:
            entries = json.load(tar.extractfile("manifest.json"))
            repositories = json.load(tar.extractfile("repositories"))
        assert [e["RepoTags"] for e in entries] == [["busybox:1", "busybox:also"], ["other:1"]]
        assert set(repositories) == {"busybox", "other"}
        fresh = ImageStore(tmp_path / "b")
        await fresh.import_archive(tmp_path / "both.tar")
        assert fresh.require("busybox:also").id == one.id
        assert fresh.require("other:1").id == two.id
        assert fresh.require("busybox:1").layers == one.layers
        # and what was loaded from a save saves again to the same bytes
        await image_save.save(fresh, ["busybox:1", "busybox:also", "other:1"],
                              tmp_path / "again.tar")
        assert (tmp_path / "again.tar").read_bytes() == (tmp_path / "both.tar").read_bytes()
    run(scenario())


def test_save_refuses_cleanly_and_leaves_no_file(tmp_path, layout):
    async def scenario():
        store = ImageStore(tmp_path / "a")
        image = await store.import_archive(layout, "busybox:1")
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(errors.NotFound, match="image nope:1 not found"):
            await image_save.save(store, ["busybox:1", "nope:1"], out / "x.tar")
        with pytest.raises(errors.InvalidArgument, match="directory .*/missing does not exist"):
            await image_save.save(store, ["busybox:1"], tmp_path / "missing" / "x.tar")
        # a kept blob damaged on disk: found while writing, the tarball never appears
        blob = store._index["layers"][image.layers[-1]]["blob"]
        path = store.root / "blobs" / "sha256" / blob[7:]
        good = path.read_bytes()
        path.write_bytes(ib.gzip_bytes(b"something else"))
        with pytest.raises(errors.FailedPrecondition, match="does not uncompress to it"):
            await image_save.save(store, ["busybox:1"], out / "x.tar")
        path.write_bytes(good)
        # a layer unpacked before shoal kept blobs cannot be handed out: said, not guessed
        del store._index["layers"][image.layers[0]]["blob"]
        with pytest.raises(errors.FailedPrecondition, match="pull or load it again"):
            await image_save.save(store, ["busybox:1"], out / "x.tar")
        assert list(out.iterdir()) == []
    run(scenario())


# ---- load: hostile archives ------------------------------------------------------------------
def _valid_members(tmp_path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    src = ib.build_docker_save_tar(tmp_path / "valid.tar", "ok:1")
    out = []
    with tarfile.open(src) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isfile() else b""
            out.append((m, data))
    return out


def _member(name: str, kind: str, data: bytes = b"", link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                 "hard": tarfile.LNKTYPE}[kind]
    info.size = len(data) if kind == "file" else 0
    info.linkname = link
    info.mode = 0o755 if kind == "dir" else 0o644
    return info, data


NAMES = st.sampled_from(["manifest.json", "repositories", "x.json", "l/layer.tar",
                         "../outside/evil", "../../../outside/evil", "/abs/evil", "a/../../b",
                         "link", "link/evil", "s", "t/../s", "blobs/sha256/aa", ".",
                         "deep/" * 30 + "f"])
LINKS = st.sampled_from(["..", "../..", "../../../outside", "/", "OUTSIDE", ".", "link",
                         "manifest.json", "x.json"])


@st.composite
def hostile_archives(draw):
    """A valid `docker save` archive with a few of its members changed, entries added, or a
    manifest.json of the attacker's choosing pointing anywhere."""
    ops = draw(st.lists(st.tuples(
        st.sampled_from(["drop", "add_file", "add_sym", "add_hard", "add_dir", "manifest",
                         "truncate"]),
        NAMES, LINKS, st.binary(max_size=64),
        st.lists(st.sampled_from(["x.json", "link", "../outside/evil", "/etc/passwd",
                                  "s/../x.json", "l/layer.tar", "manifest.json"]),
                 max_size=3)), min_size=1, max_size=5))
    return ops


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(ops=hostile_archives())
def test_hostile_load_archives_are_refused_cleanly_or_loaded(tmp_path_factory, ops):
    base = tmp_path_factory.mktemp("hostile")
    outside = base / "outside"
    outside.mkdir()
    members = _valid_members(base)
    for op, name, link, data, paths in ops:
        link = str(outside) if link == "OUTSIDE" else link
        if op == "drop" and members:
            members.pop(hash(name) % len(members))
        elif op == "add_file":
            members.append(_member(name, "file", data))
        elif op == "add_sym":
            members.append(_member(name, "sym", link=link))
        elif op == "add_hard":
            members.append(_member(name, "hard", link=link))
        elif op == "add_dir":
            members.append(_member(name, "dir"))
        elif op == "manifest":
            doc = json.dumps([{"Config": paths[0] if paths else "x.json",
                               "RepoTags": ["hostile:1"], "Layers": paths[1:]}]).encode()
            members = [m for m in members if m[0].name != "manifest.json"]
            members.append(_member("manifest.json", "file", doc))
        elif op == "truncate" and members:
            info, body = members[-1]
            members[-1] = (info, body[:len(body) // 2])
    archive = base / "hostile.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, body in members:
            if info.isfile():
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if info.isfile() else None)
    archive.write_bytes(buf.getvalue())
    store_root = base / "store"
    before = _files_under(base)

    async def scenario():
        store = ImageStore(store_root)
        try:
            image = await store.import_archive(archive)
        except errors.ShoalError as exc:
            event(f"refused: {type(exc).__name__}")
            assert exc.message and "\n" not in exc.message.strip()
            assert store._index["refs"] == {}, "a refused archive tagged an image"
            assert store._index["images"] == {}
            return None
        # loaded: whole, with every layer unpacked and checked against the config
        assert store.layer_dirs(image)
        event("loaded")
        return image
    run(scenario())
    assert list(outside.iterdir()) == [], "a file was written outside the store"
    assert not Path("/abs/evil").exists()
    new = {p for p in _files_under(base) - before if not p.startswith("store")}
    assert new == set(), new
    assert list((store_root / "tmp").iterdir()) == [], "the extraction was left behind"
    shutil.rmtree(base, ignore_errors=True)
