"""--resolve-image: the CLI's pinning (shoal/cli/resolve.py) through the node's real
POST /images/resolve (shoal/resolveapi.py) against Debian's docker-registry, and the image
store's lookup of a pinned reference (worker/images/store.py) with a real ImageStore."""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import errors
from common.httpserver import CTX, error_middleware
from common.imageref import parse_ref
from common.registryauth import Credentials, DockerConfig
from shoal import resolveapi
from shoal.cli import resolve
from shoal.cli.client import Cli
from tests import imagebuild as ib
from worker.images import ImageStore

SETTINGS = settings(max_examples=80, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
needs_registry = pytest.mark.skipif(not ib.LocalRegistry.available(),
                                    reason="needs Debian's docker-registry package")


class Loop:
    """An event loop on a thread of its own, serving aiohttp apps for the synchronous CLI."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def serve(self, app: web.Application, *, path: str = "", port: int = 0) -> None:
        async def start() -> None:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.UnixSite(runner, path) if path else web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            self.runners.append(runner)
        self.run(start())

    def close(self) -> None:
        for runner in self.runners:
            self.run(runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop():
    lp = Loop()
    yield lp
    lp.close()


def node_api(loop: Loop, path: Path, insecure: frozenset[str]) -> Cli:
    """The node's own API as shoald serves it (error middleware, the resolve route), with a
    daemon that knows only its insecure registries; the real CLI client talks to it."""
    app = web.Application(middlewares=[error_middleware])
    app[CTX] = SimpleNamespace(insecure_registries=insecure)
    app.add_routes(resolveapi.routes())
    loop.serve(app, path=str(path))
    return Cli(str(path))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    v1 = ib.build_busybox_oci_layout(base / "v1", "1")
    v2 = ib.build_busybox_oci_layout(base / "v2", "1", extra_files={"etc/version": b"v2\n"})
    return v1, v2


@pytest.fixture(scope="module")
def cli(loop, registry, tmp_path_factory):
    return node_api(loop, tmp_path_factory.mktemp("sock") / "shoal.sock",
                    frozenset({registry.host}))


@pytest.fixture
def no_login(tmp_path) -> DockerConfig:
    return DockerConfig(tmp_path)


def push(registry, layout: Path, repo: str, tag: str) -> str:
    return asyncio.run(ib.push_layout(registry.url, layout, repo, tag))


# ---- the pin through the node's endpoint and a real registry --------------------------------
@needs_registry
def test_pin_follows_the_tag_and_repins_a_pinned_image(cli, registry, layouts, no_login):
    v1, v2 = layouts
    warnings: list[str] = []
    d1 = push(registry, v1, "team/app", "latest")
    lookup = resolve.cli_lookup(cli)
    image = f"{registry.host}/team/app"
    assert resolve.pin(lookup, image, warn=warnings.append, config=no_login) == \
        f"{registry.host}/team/app:latest@{d1}"
    assert resolve.pin(lookup, f"{image}:latest", warn=warnings.append, config=no_login) == \
        f"{registry.host}/team/app:latest@{d1}"
    d2 = push(registry, v2, "team/app", "latest")
    assert d2 != d1
    # a pinned image is looked up again by its tag: the re-push is what it pins now
    assert resolve.pin(lookup, f"{image}:latest@{d1}", warn=warnings.append,
                       config=no_login) == f"{registry.host}/team/app:latest@{d2}"
    assert warnings == []


@needs_registry
def test_a_digest_alone_is_kept_without_a_lookup(registry, no_login):
    d = "sha256:" + "c" * 64

    def lookup(body):
        raise AssertionError("no lookup for NAME@DIGEST")
    assert resolve.pin(lookup, f"{registry.host}/app@{d}", config=no_login) == \
        f"{registry.host}/app@{d}"


@needs_registry
def test_what_cannot_be_pinned_goes_on_unpinned_with_a_warning(cli, registry, layouts,
                                                               no_login):
    lookup = resolve.cli_lookup(cli)
    warnings: list[str] = []
    # a local image: no registry in the reference
    assert resolve.pin(lookup, "busybox:1", warn=warnings.append, config=no_login) == "busybox:1"
    assert "NOT pinned" in warnings[-1] and "names no registry" in warnings[-1]
    # a tag the registry does not have
    push(registry, layouts[0], "there", "1")
    missing = f"{registry.host}/there:nope"
    assert resolve.pin(lookup, missing, warn=warnings.append, config=no_login) == missing
    assert "NOT pinned" in warnings[-1] and "not found" in warnings[-1]
    # a registry nobody answers on
    gone = f"127.0.0.1:{ib.free_port()}/app:latest"
    assert resolve.pin(lookup, gone, warn=warnings.append, config=no_login) == gone
    assert "NOT pinned" in warnings[-1] and "unreachable" in warnings[-1]
    # ... where the service was pinned to that tag already, it keeps its digest
    current = f"127.0.0.1:{gone.split(':')[1].split('/')[0]}/app:latest@sha256:" + "d" * 64
    assert resolve.pin(lookup, gone, current=current, warn=warnings.append,
                       config=no_login) == current
    assert "keeps the digest" in warnings[-1]
    # a pin of another tag is not kept
    other = current.replace(":latest@", ":2@")
    assert resolve.pin(lookup, gone, current=other, warn=warnings.append,
                       config=no_login) == gone


@needs_registry
def test_auth_needed_warns_and_fails_with_registry_auth(loop, layouts, tmp_path):
    (tmp_path / "htpasswd").write_text(ib.htpasswd_line("alice", "s3cret-pw"))
    with ib.LocalRegistry(tmp_path / "open") as reg:
        digest = push(reg, layouts[0], "private/app", "1")
    locked = ib.LocalRegistry(tmp_path / "open", htpasswd=tmp_path / "htpasswd", port=reg.port)
    with locked:
        cli = node_api(loop, tmp_path / "auth.sock", frozenset({locked.host}))
        lookup = resolve.cli_lookup(cli)
        image = f"{locked.host}/private/app:1"
        warnings: list[str] = []
        anonymous = DockerConfig(tmp_path / "anon")
        assert resolve.pin(lookup, image, warn=warnings.append, config=anonymous) == image
        assert "NOT pinned" in warnings[-1] and "requires authentication" in warnings[-1]
        with pytest.raises(errors.PermissionDenied) as caught:
            resolve.pin(lookup, image, with_registry_auth=True, config=anonymous)
        assert "cannot pin" in caught.value.message and locked.host in caught.value.message
        # with the caller's login the lookup succeeds; a wrong password is an error
        good = DockerConfig(tmp_path / "good")
        good.store(locked.host, Credentials("alice", "s3cret-pw"))
        assert resolve.pin(lookup, image, with_registry_auth=True, config=good) == \
            f"{image}@{digest}"
        bad = DockerConfig(tmp_path / "bad")
        bad.store(locked.host, Credentials("alice", "wrong"))
        with pytest.raises(errors.PermissionDenied) as caught:
            resolve.pin(lookup, image, with_registry_auth=True, config=bad)
        assert "refused the credentials of alice" in caught.value.message
        assert "wrong" not in caught.value.message


# ---- the modes -----------------------------------------------------------------------------
def test_should_resolve_as_docker():
    assert resolve.should_resolve("always", False) and resolve.should_resolve("always", True)
    assert resolve.should_resolve("changed", True) and not resolve.should_resolve("changed", False)
    assert not resolve.should_resolve("never", True)
    with pytest.raises(errors.InvalidArgument):
        resolve.should_resolve("sometimes", True)


def test_stack_image_modes(no_login):
    d_old, d_new = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    asked: list[dict] = []

    def lookup(body):
        asked.append(body)
        return {"resolved": True, "digest": d_new, "image": f"{body['ref']}@{d_new}"}
    current = f"reg.example:5000/app:latest@{d_old}"
    pin = dict(warn=lambda _: None)
    # changed: the same tag keeps the service's pin, without a lookup (the stack is unchanged)
    assert resolve.stack_image(lookup, "reg.example:5000/app", current, mode="changed",
                               **pin) == current
    assert asked == []
    assert resolve.stack_image(lookup, "reg.example:5000/app:2", current, mode="changed",
                               **pin) == f"reg.example:5000/app:2@{d_new}"
    assert resolve.stack_image(lookup, "reg.example:5000/app", None, mode="changed",
                               **pin) == f"reg.example:5000/app:latest@{d_new}"
    # always: the tag's digest now; never: the file's image as written
    assert resolve.stack_image(lookup, "reg.example:5000/app", current, mode="always",
                               **pin) == f"reg.example:5000/app:latest@{d_new}"
    assert resolve.stack_image(lookup, "reg.example:5000/app", current, mode="never",
                               **pin) == "reg.example:5000/app"


def test_stack_redeploy_compares_pins(no_login):
    """A pinned image with the same digest compares equal (nothing is touched); a re-pushed
    tag makes the service update."""
    from shoal.stack.deploy import comparable
    d1, d2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    stored = {"name": "s_web", "task_template": {"container": {"image": f"r:5/app:latest@{d1}"}}}

    def body(digest):
        image = resolve.stack_image(
            lambda b: {"resolved": True, "image": f"{b['ref']}@{digest}"}, "r:5/app",
            stored["task_template"]["container"]["image"], mode="always")
        return {"name": "s_web", "task_template": {"container": {"image": image}}}
    assert comparable(stored, {}) == comparable(body(d1), {})
    assert comparable(stored, {}) != comparable(body(d2), {})


# ---- hostile input -------------------------------------------------------------------------
_REF_CHARS = st.sampled_from(list("abcz019._-/:@") + ["sha256:", "localhost", ":5000",
                                                     "a" * 64, "1" * 64, "UP", " ", "é"])
_REFS = st.lists(_REF_CHARS, max_size=14).map("".join)


@given(text=_REFS)
@SETTINGS
def test_pin_on_any_reference_text(text, tmp_path):
    """Whatever the user typed: a refusal naming the image, or a lookup of NAME:TAG with no
    digest, and the answer's image or the text itself back."""
    sent: list[dict] = []

    def lookup(body):
        sent.append(body)
        return {"resolved": False, "reason": "unreachable", "message": "down"}
    try:
        ref = parse_ref(text)
    except errors.InvalidArgument:
        with pytest.raises(errors.InvalidArgument) as caught:
            resolve.pin(lookup, text, warn=lambda _: None, config=DockerConfig(tmp_path))
        assert caught.value.field == "image" and caught.value.message.startswith("image: ")
        return
    out = resolve.pin(lookup, text, warn=lambda _: None, config=DockerConfig(tmp_path))
    assert out == text
    if ref.tag and ref.host:
        assert sent == [{"ref": f"{ref.name}:{ref.tag}"}]
        assert "@" not in sent[0]["ref"] and parse_ref(sent[0]["ref"]).tag == ref.tag
    else:
        assert sent == []


_JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                        lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                        max_leaves=8)


@given(body=st.dictionaries(st.sampled_from(["ref", "auth", "other"]),
                            _JSONISH | _REFS, max_size=3))
@SETTINGS
def test_endpoint_on_any_body(loop, tmp_path_factory, body):
    """Any body: 400 naming a field, or an answer that says resolved or why not; never a 500.
    (Hosts here are never resolvable names, so nothing leaves this machine.)"""
    cli = _hostile_cli(loop, tmp_path_factory)
    if isinstance(body.get("ref"), str) and "." in body["ref"].split("/")[0]:
        body["ref"] = "x" + body["ref"].replace(".", "")
    try:
        answer = cli.call("POST", "/images/resolve", body, timeout=60)
    except errors.InvalidArgument as exc:
        assert exc.field in ("ref", "auth", "other") or "ref" in exc.message
        return
    assert set(answer) in ({"resolved", "digest", "image"}, {"resolved", "reason", "message"})
    if not answer["resolved"]:
        assert answer["reason"] in ("no_registry", "unreachable", "not_found", "auth")


_HOSTILE: dict = {}


def _hostile_cli(loop: Loop, tmp_path_factory) -> Cli:
    if "cli" not in _HOSTILE:
        _HOSTILE["cli"] = node_api(loop, tmp_path_factory.mktemp("hsock") / "s.sock",
                                   frozenset())
    return _HOSTILE["cli"]


@pytest.fixture(scope="module")
def hostile_registry(loop):
    """A registry whose manifest answers are whatever the test sets."""
    answer: dict = {}

    async def manifest(request: web.Request) -> web.StreamResponse:
        return web.Response(status=answer["status"], body=answer["body"],
                            headers=answer["headers"])
    app = web.Application()
    app.router.add_get("/v2/{repo:.+}/manifests/{ref}", manifest)
    port = ib.free_port()
    loop.serve(app, port=port)
    return f"127.0.0.1:{port}", answer


_HEADER_VALUE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


@given(status=st.sampled_from([200, 200, 200, 201, 301, 400, 401, 403, 404, 429, 500, 503]),
       body=st.binary(max_size=300) | _JSONISH.map(lambda v: json.dumps(v).encode()),
       digest_header=st.none() | _HEADER_VALUE | st.just("sha256:" + "0" * 64),
       auth_header=st.none() | _HEADER_VALUE)
@SETTINGS
def test_lookup_on_hostile_registry_answers(hostile_registry, status, body, digest_header,
                                            auth_header):
    """A registry's answer is outside input: the lookup pins only the digest of the bytes it
    got (never a digest the registry merely claims), or says why not; it never raises."""
    host, answer = hostile_registry
    headers = {}
    if digest_header is not None:
        headers["Docker-Content-Digest"] = digest_header
    if auth_header is not None:
        headers["WWW-Authenticate"] = auth_header
    answer.update(status=status, body=body, headers=headers)
    got = asyncio.run(resolveapi.lookup(parse_ref(f"{host}/app:1"), True, None))
    if got["resolved"]:
        real = "sha256:" + hashlib.sha256(body).hexdigest()
        assert status == 200 and got["digest"] == real
        assert got["image"] == f"{host}/app:1@{real}"
        assert digest_header in (None, real) or not digest_header.startswith("sha256:")
    else:
        assert got["reason"] in ("unreachable", "not_found", "auth") and got["message"]


# ---- the store: a pinned reference is exactly that manifest ----------------------------------
@needs_registry
def test_store_lookup_by_digest_and_pull_once(registry, layouts, tmp_path):
    v1, v2 = layouts
    d1 = push(registry, v1, "store/app", "latest")
    name = f"{registry.host}/store/app"

    async def scenario() -> None:
        store = ImageStore(tmp_path / "store")
        old = await store.pull(f"{name}:latest", insecure_registries=frozenset({registry.host}))
        d2 = await ib.push_layout(registry.url, v2, "store/app", "latest")
        # the node's app:latest is the older push: it must not stand in for the new digest
        assert store.get(f"{name}:latest@{d2}") is None
        assert store.get(f"{name}@{d2}") is None
        # ... while the digest it was pulled through finds it, by any tag of that name
        assert store.get(f"{name}:latest@{d1}").id == old.id
        assert store.get(f"{name}:other@{d1}").id == old.id
        new = await store.pull(f"{name}:latest@{d2}",
                               insecure_registries=frozenset({registry.host}))
        assert new.id != old.id
        assert store.get(f"{name}:latest@{d2}").id == new.id
        # still found after a restart of the store (a new task pulls nothing)
        again = ImageStore(tmp_path / "store")
        assert again.get(f"{name}:latest@{d2}").id == new.id
        assert again.get(f"{name}:latest").id == old.id  # the tag itself is left alone
    asyncio.run(scenario())


def test_store_lookup_of_an_imported_image_by_its_manifest_digest(layouts, tmp_path):
    v1, v2 = layouts

    async def scenario() -> None:
        store = ImageStore(tmp_path / "store")
        img = await store.import_archive(v1, "reg.example:5000/app:latest")
        d1 = ib.layout_image(v1)["manifest_digest"]
        d2 = ib.layout_image(v2)["manifest_digest"]
        assert store.get(f"reg.example:5000/app:latest@{d1}").id == img.id
        assert store.get(f"reg.example:5000/app:latest@{d2}") is None
        assert store.get("reg.example:5000/app:latest").id == img.id
    asyncio.run(scenario())


@given(image=st.none() | st.integers() | _REFS)
@SETTINGS
def test_a_node_answer_that_pins_something_else_is_refused(image, tmp_path):
    asked = "reg.example:5000/app:1"
    answer = {"resolved": True, "image": image}
    try:
        out = resolve.pin(lambda body: answer, asked, config=DockerConfig(tmp_path))
    except errors.Unavailable as exc:
        assert "pins something else" in exc.message
        return
    ref = parse_ref(out)
    assert out == image and ref.digest and (ref.name, ref.tag) == ("reg.example:5000/app", "1")
