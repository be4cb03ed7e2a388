"""The image store: imports (OCI layout dir/tar, docker save), shared layers, whiteouts, pulls
from a real registry (Debian's docker-registry) with and without bearer tokens, removal.

Runs as root (layers hold device nodes and trusted.* xattrs); needs busybox-static. Registry
tests need the docker-registry package; the container check needs runc.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat

import pytest

from common import errors
import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from worker.images.manifests import pick_platform
from worker.images.references import normalize_ref, parse_ref
from worker.images.registry import parse_www_authenticate
from worker.images.store import ImageStore

# Everything but the pure parsing tests: layers hold device nodes and trusted.* xattrs.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (layers hold device nodes)")
needs_busybox = pytest.mark.skipif(not ib.busybox_available(),
                                   reason="needs busybox-static (/bin/busybox)")
needs_registry = pytest.mark.skipif(not ib.LocalRegistry.available(),
                                    reason="needs Debian's docker-registry package")


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return ib.build_busybox_oci_layout(tmp_path_factory.mktemp("layout") / "oci", "1")


# ---- references -----------------------------------------------------------------------------
def test_parse_ref():
    assert parse_ref("busybox") == parse_ref("busybox:latest")
    r = parse_ref("127.0.0.1:5000/team/app:2.1")
    assert (r.host, r.repo, r.tag) == ("127.0.0.1:5000", "team/app", "2.1")
    assert parse_ref("localhost/app").host == "localhost"
    assert parse_ref("team/app:1").host == ""
    d = "sha256:" + "a" * 64
    assert parse_ref(f"reg.example:443/app@{d}").digest == d
    assert normalize_ref("busybox") == "busybox:latest"
    for bad in ("", "UPPER:1", "app:bad tag", "app@sha256:xyz"):
        with pytest.raises(errors.InvalidArgument):
            parse_ref(bad)


def test_parse_www_authenticate():
    scheme, p = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:team/app:pull,push"')
    assert scheme == "bearer"
    assert p == {"realm": "https://auth.example/token", "service": "registry.example",
                 "scope": "repository:team/app:pull,push"}
    assert parse_www_authenticate('Basic realm="x"') == ("basic", {"realm": "x"})


def test_pick_platform():
    arch = ib.host_arch()
    index = {"manifests": [
        {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "s390x"}},
        {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": arch}}]}
    assert pick_platform(index, "x")["digest"].endswith("2" * 64)
    with pytest.raises(errors.NotFound, match="linux/s390x"):
        pick_platform({"manifests": index["manifests"][:1]}, "x")


# ---- imports --------------------------------------------------------------------------------
@needs_root
@needs_busybox
def test_import_oci_layout_dir_tar_and_docker_save(tmp_path, layout):
    expect = ib.layout_image(layout, "1")
    ib.build_busybox_oci_tar(tmp_path / "oci.tar", "7")
    save = ib.build_docker_save_tar(tmp_path / "save.tar", "saved/busybox:3",
                                    {"hello.txt": b"hello\n"})

    async def scenario():
        store = ImageStore(tmp_path / "images")
        a = await store.import_archive(layout, "busybox:1")
        assert a.id == expect["config_digest"] and a.layers == expect["diff_ids"]
        assert a.ref == "busybox:1" and a.config["Cmd"] == ["sh"]
        assert a.size > 1_000_000  # busybox itself
        b = await store.import_archive(tmp_path / "oci.tar", "other/busybox:7")
        assert b.id == a.id  # same inputs, same image: a second name for it
        c = await store.import_archive(save, None)  # named by the archive's RepoTags
        assert c.ref == "saved/busybox:3" and len(c.layers) == 2
        assert c.layers[0] == a.layers[0]
        top = store.layer_dirs(c)[-1]
        assert (top / "hello.txt").read_bytes() == b"hello\n"
        assert (store.layer_dirs(a)[0] / "bin" / "busybox").is_file()
        assert os.readlink(store.layer_dirs(a)[0] / "bin" / "sh") == "busybox"
        # lookups: by ref, implicit :latest, id, id prefix
        assert store.get("busybox:1").id == a.id
        assert store.get(a.id).id == a.id and store.get(a.id[7:19]).id == a.id
        assert store.get("busybox") is None
        assert sorted(store.get(a.id).refs) == ["busybox:1", "other/busybox:7"]
        # a restarted store sees the same
        again = ImageStore(tmp_path / "images")
        assert {i.id for i in again.list()} == {a.id, c.id}
        assert not list((tmp_path / "images" / "tmp").iterdir())
    run(scenario())


@needs_root
@needs_busybox
def test_layers_are_unpacked_once_and_shared(tmp_path):
    lay_a = ib.build_busybox_oci_layout(tmp_path / "a", "1")
    lay_b = ib.build_busybox_oci_layout(tmp_path / "b", "1", {"etc/motd": b"b\n"})

    async def scenario():
        store = ImageStore(tmp_path / "images")
        a = await store.import_archive(lay_a, "a:1")
        b = await store.import_archive(lay_b, "b:1")
        assert a.layers[0] == b.layers[0] and len(b.layers) == 2
        assert store.layer_dirs(a)[0] == store.layer_dirs(b)[0]
        assert len(list((tmp_path / "images" / "layers").iterdir())) == 2
        # removing one image keeps the shared layer; removing the other frees it
        store.remove("b:1")
        assert store.get("b:1") is None
        assert [p.name for p in (tmp_path / "images" / "layers").iterdir()] == \
            [a.layers[0].split(":")[1]]
        store.remove("a:1")
        assert list((tmp_path / "images" / "layers").iterdir()) == []
        assert store.list() == []
        for _ in range(100):  # the files themselves go in the background
            if not list((tmp_path / "images" / "tmp").iterdir()):
                break
            await asyncio.sleep(0.02)
        assert list((tmp_path / "images" / "tmp").iterdir()) == []
    run(scenario())


@needs_root
@needs_busybox
def test_whiteouts_and_opaque_dirs_in_overlay_form(tmp_path):
    lay = ib.build_busybox_oci_layout(
        tmp_path / "oci", "1", {"data/keep": b"1", "data/old": b"2", "data/sub/x": b"3"},
        extra_layers=[{"etc/group": None, "data": ib.OPAQUE, "data/new": b"4"}])

    async def scenario():
        store = ImageStore(tmp_path / "images")
        image = await store.import_archive(lay, "wh:1")
        top = store.layer_dirs(image)[-1]
        st = os.lstat(top / "etc" / "group")
        assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 0 \
            and os.minor(st.st_rdev) == 0
        assert not (top / "etc" / ".wh.group").exists()
        assert os.getxattr(top / "data", "trusted.overlay.opaque") == b"y"
        assert not (top / "data" / ".wh..wh..opq").exists()
        assert (top / "data" / "new").read_bytes() == b"4"
    run(scenario())


@needs_root
@needs_busybox
@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")
def test_whiteouts_hide_files_in_a_running_container(tmp_path):
    from worker.executor import ContainerConfig, Executor
    lay = ib.build_busybox_oci_layout(
        tmp_path / "oci", "1", {"data/keep": b"1", "data/old": b"2"},
        extra_layers=[{"etc/group": None}, {"data": ib.OPAQUE, "data/new": b"4"}])

    async def scenario():
        store = ImageStore(tmp_path / "images")
        await store.import_archive(lay, "wh:1")
        ex = Executor(tmp_path / "ex", store)
        await ex.create(ContainerConfig(id="wh", image="wh:1", command=[
            "sh", "-c", "ls /data; test -e /etc/group && echo group-present || echo group-gone;"
                        "test -e /etc/passwd && echo passwd-present"]))
        await ex.start("wh")
        info = await ex.wait("wh")
        lines = [entry.line async for entry in ex.logs("wh")]
        await ex.remove("wh")
        assert info.exit_code == 0, lines
        assert lines == ["new", "group-gone", "passwd-present"]
    run(scenario())


@needs_root
@needs_busybox
def test_bad_archives_and_corrupt_blobs(tmp_path, layout):
    broken = tmp_path / "broken"
    shutil.copytree(layout, broken)
    info = ib.layout_image(broken, "1")
    blob = broken / "blobs" / "sha256" / info["layer_digests"][0].split(":")[1]
    blob.write_bytes(ib.gzip_bytes(b"not the layer"))
    (tmp_path / "empty").mkdir()

    async def scenario():
        store = ImageStore(tmp_path / "images")
        with pytest.raises(errors.InvalidArgument, match="corrupt"):
            await store.import_archive(broken, "broken:1")
        with pytest.raises(errors.InvalidArgument, match="neither an OCI image layout"):
            await store.import_archive(tmp_path / "empty", "x:1")
        with pytest.raises(errors.InvalidArgument, match="does not exist"):
            await store.import_archive(tmp_path / "nope.tar", "x:1")
        with pytest.raises(errors.InvalidArgument, match="no image named"):
            two = ib.build_busybox_oci_layout(tmp_path / "two", "a")
            ib.build_busybox_oci_layout(two, "b", {"f": b"b"})
            await store.import_archive(two, "x:c")
        assert store.list() == []
        assert list((tmp_path / "images" / "layers").iterdir()) == []
        assert list((tmp_path / "images" / "tmp").iterdir()) == []
        with pytest.raises(errors.NotFound, match="shoal image load -i FILE"):
            store.require("busybox:1")
    run(scenario())


@needs_root
@needs_busybox
def test_remove_refuses_images_in_use(tmp_path, layout):
    async def scenario():
        store = ImageStore(tmp_path / "images")
        image = await store.import_archive(layout, "busybox:1")
        await store.import_archive(layout, "busybox:also")
        used = {image.id}
        store.in_use = lambda image_id: image_id in used
        assert store.remove("busybox:also") == ["untagged busybox:also"]  # a tag: fine
        with pytest.raises(errors.Conflict, match="used by a container"):
            store.remove("busybox:1")
        used.clear()
        done = store.remove(image.id[7:19])
        assert done == ["untagged busybox:1", f"deleted {image.id}"]
        with pytest.raises(errors.NotFound):
            store.remove("busybox:1")
        assert not any((tmp_path / "images" / "blobs" / "sha256").iterdir())
    run(scenario())


# ---- pulls ----------------------------------------------------------------------------------
@needs_root
@needs_busybox
@needs_registry
def test_pull_oci_and_docker_manifests_and_index(tmp_path, registry, layout):
    expect = ib.layout_image(layout, "1")
    foreign = ib.build_busybox_oci_layout(tmp_path / "foreign", "1", {"arch": b"s390x"},
                                          arch="s390x")
    host = registry.host

    async def scenario():
        await ib.push_layout(registry.url, layout, "pull/oci", "1")
        await ib.push_layout(registry.url, layout, "pull/docker", "1", docker_types=True)
        # a multi-arch image: an index with a foreign variant first
        d_native = await ib.push_layout(registry.url, layout, "pull/multi", "x", push_tag=False)
        d_foreign = await ib.push_layout(registry.url, foreign, "pull/multi", "x",
                                         push_tag=False)
        await ib.push_index(registry.url, "pull/multi", "1", [
            ("s390x", d_foreign, ib.manifest_size(foreign)),
            (ib.host_arch(), d_native, ib.manifest_size(layout))])
        store = ImageStore(tmp_path / "images")
        insecure = frozenset({host})
        for repo in ("pull/oci", "pull/docker", "pull/multi"):
            image = await store.pull(f"{host}/{repo}:1", insecure_registries=insecure)
            assert image.id == expect["config_digest"], repo
            assert image.layers == expect["diff_ids"]
            assert image.ref == f"{host}/{repo}:1"
            assert (store.layer_dirs(image)[0] / "bin" / "busybox").is_file()
        assert len(list((tmp_path / "images" / "layers").iterdir())) == 1  # shared
        by_digest = await store.pull(f"{host}/pull/oci@{expect['manifest_digest']}",
                                     insecure_registries=insecure)
        assert by_digest.id == expect["config_digest"]
        assert list((tmp_path / "images" / "tmp").iterdir()) == []
    run(scenario())


@needs_root
@needs_busybox
@needs_registry
def test_pull_errors(tmp_path, registry, layout):
    host = registry.host

    async def scenario():
        await ib.push_layout(registry.url, layout, "errs/busybox", "1")
        store = ImageStore(tmp_path / "images")
        insecure = frozenset({host})
        with pytest.raises(errors.NotFound, match="tag 'nope'"):
            await store.pull(f"{host}/errs/busybox:nope", insecure_registries=insecure)
        with pytest.raises(errors.NotFound, match="not found on registry"):
            await store.pull(f"{host}/errs/nothing:1", insecure_registries=insecure)
        with pytest.raises(errors.Unavailable, match=f"--insecure-registry {host}"):
            await store.pull(f"{host}/errs/busybox:1")  # HTTPS by default
        with pytest.raises(errors.NotFound, match="shoal image load -i FILE"):
            await store.pull("busybox:1", insecure_registries=insecure)
        port = ib.free_port()
        with pytest.raises(errors.Unavailable, match="unreachable"):
            await store.pull(f"127.0.0.1:{port}/x:1",
                             insecure_registries=frozenset({f"127.0.0.1:{port}"}))
        assert store.list() == []
    run(scenario())


@needs_root
@needs_busybox
@needs_registry
@pytest.mark.parametrize("login", [None, ("deployer", "t0ken-pa55")],
                         ids=["anonymous", "with-credentials"])
def test_pull_with_bearer_token(tmp_path, registry, layout, login):
    """A registry front that demands a bearer token (WWW-Authenticate challenge), as Docker
    Hub and most registries do, proxying to the real registry once the token is shown. With a
    login, the token service wants the credentials (basic auth, the user as `account`), as a
    private registry's does; a wrong password is refused without being shown."""
    import base64

    from aiohttp import ClientSession, web

    from common.registryauth import Credentials
    expect = ib.layout_image(layout, "1")
    token_requests: list[dict] = []
    wanted = ("Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
              if login else None)

    async def scenario():
        await ib.push_layout(registry.url, layout, "auth/busybox", "1")
        port = ib.free_port()
        front = f"127.0.0.1:{port}"
        challenge = (f'Bearer realm="http://{front}/token",service="shoal-test",'
                     f'scope="repository:auth/busybox:pull"')

        async def token(request):
            token_requests.append(dict(request.query))
            if wanted and request.headers.get("Authorization") != wanted:
                return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
            return web.json_response({"token": "t0k3n", "expires_in": 300})

        async def proxy(request):
            if request.headers.get("Authorization") != "Bearer t0k3n":
                return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401,
                                         headers={"WWW-Authenticate": challenge})
            async with ClientSession() as s:
                async with s.get(f"{registry.url}{request.path}",
                                 headers={"Accept": request.headers.get("Accept", "*/*")}) as r:
                    body = await r.read()
                    headers = {k: v for k, v in r.headers.items()
                               if k in ("Content-Type", "Docker-Content-Digest")}
                    return web.Response(status=r.status, body=body, headers=headers)

        app = web.Application()
        app.router.add_get("/token", token)
        app.router.add_get("/v2/{tail:.*}", proxy)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            store = ImageStore(tmp_path / "images")
            ref, insecure = f"{front}/auth/busybox:1", frozenset({front})
            if login:
                with pytest.raises(errors.PermissionDenied) as refused:
                    await store.pull(ref, insecure_registries=insecure,
                                     credentials=Credentials(login[0], "wrong-one"))
                assert f"refused the credentials of {login[0]}" in refused.value.message
                assert "wrong-one" not in refused.value.message
                token_requests.clear()
            image = await store.pull(ref, insecure_registries=insecure,
                                     credentials=Credentials(*login) if login else None)
            assert image.id == expect["config_digest"]
        finally:
            await runner.cleanup()
    run(scenario())
    asked = {"service": "shoal-test", "scope": "repository:auth/busybox:pull"}
    assert token_requests and token_requests[0] == (
        {**asked, "account": login[0]} if login else asked)
    assert len(token_requests) == 1  # the token is reused for the blobs


@needs_root
@needs_busybox
def test_index_is_json_and_refs_survive(tmp_path, layout):
    async def scenario():
        store = ImageStore(tmp_path / "images")
        await store.import_archive(layout, "busybox:1")
    run(scenario())
    index = json.loads((tmp_path / "images" / "index.json").read_text())
    assert index["refs"] == {"busybox:1": ib.layout_image(layout, "1")["config_digest"]}
