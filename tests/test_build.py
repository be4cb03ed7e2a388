"""`image build` for real: RUN steps in runc over overlayfs, layers with whiteouts in the store,
the step cache, COPY's refusals, errors naming the Dockerfile line, and the built image run by
the executor.

Root only; needs runc and busybox-static.
"""
from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from common import linux
from worker.executor import ContainerConfig, Executor
from worker.images import ImageStore
from worker.images.build.builder import BuildOptions, Builder
from worker.images.build.dockerfile import BuildError

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runc, mounts)"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)"),
    pytest.mark.skipif(not ib.busybox_available(), reason="needs busybox-static (/bin/busybox)"),
]

TWO_STAGE = """\
# syntax=docker/dockerfile:1
ARG BASE=busybox:1
FROM ${BASE} AS maker
RUN mkdir -p /out && echo "built by RUN" > /out/built.txt
COPY data.txt /out/
FROM ${BASE}
COPY --from=maker /out /app
RUN rm /etc/group && rm -rf /home && mkdir /home && touch /home/fresh
ENV GREETING="hello there" \\
    MORE=x
WORKDIR /app
USER nobody
HEALTHCHECK --interval=2s --retries=2 CMD test -f /app/built.txt
LABEL org.example.k=v
EXPOSE 8080
ENTRYPOINT ["sh", "-c"]
CMD ["cat /app/built.txt /app/data.txt; echo env=$GREETING; id -u; pwd; \\
ls /etc/group 2>&1; ls /home"]
"""


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    # /home in the base image holds a file, so that `rm -rf /home && mkdir /home` must
    # become an opaque directory in the layer
    return ib.busybox_store(tmp_path_factory.mktemp("images"),
                            extra_files={"home/old": b"old\n"})


def context(tmp_path: Path, dockerfile: str, files: dict[str, str]) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, text in files.items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)
    return ctx


async def build(store: ImageStore, root: Path, ctx: Path, **kw) -> tuple[str, list[dict]]:
    events: list[dict] = []
    image_id = await Builder(store, root).build(BuildOptions(ctx, **kw), events.append)
    return image_id, events


def steps(events: list[dict]) -> dict[str, str]:
    """step name -> CACHED | DONE"""
    names = {e["id"]: e["name"] for e in events if "name" in e}
    out = {}
    for e in events:
        if "cached" in e:
            out[names[e["id"]]] = "CACHED"
        elif "done" in e:
            out[names[e["id"]]] = "DONE"
    return out


async def run_image(ex_root: Path, store: ImageStore, image: str, cid: str) -> str:
    ex = Executor(ex_root, store)
    try:
        cfg = ContainerConfig(id=cid, name=f"svc.1.{cid}", image=image)
        await ex.create(cfg)
        await ex.start(cid)
        info = await ex.wait(cid)
        lines = [entry.line async for entry in ex.logs(cid)]
        await ex.remove(cid)
    finally:
        await ex.close()
    assert info.exit_code == 0, lines
    return "\n".join(lines)


def no_build_mounts(root: Path) -> None:
    assert not [m.mount_point for m in linux.mountinfo() if m.mount_point.startswith(str(root))]
    assert not list((root / "tmp").iterdir())


def test_two_stage_build_runs_cached_and_rebuilds_from_the_changed_copy(tmp_path, store_root):
    ctx = context(tmp_path, TWO_STAGE, {"data.txt": "data v1\n"})
    broot = tmp_path / "build"

    async def go():
        store = ImageStore(store_root)
        first, events = await build(store, broot, ctx, tags=["app:1"])
        image = store.require("app:1")
        assert image.id == first
        cfg = image.config
        assert cfg["User"] == "nobody" and cfg["WorkingDir"] == "/app"
        assert "GREETING=hello there" in cfg["Env"] and "MORE=x" in cfg["Env"]
        assert cfg["Entrypoint"] == ["sh", "-c"] and cfg["Labels"] == {"org.example.k": "v"}
        assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "test -f /app/built.txt"],
                                      "Interval": 2 * 10**9, "Retries": 2}
        assert cfg["ExposedPorts"] == {"8080/tcp": {}}
        # base layer(s) + COPY --from + RUN (WORKDIR /app exists already: no layer)
        assert len(image.layers) == len(store.require("busybox:1").layers) + 2
        out = await run_image(tmp_path / "ex", store, "app:1", "built1")
        assert "built by RUN" in out and "data v1" in out and "env=hello there" in out
        assert "\n65534\n/app\n" in out                     # USER nobody, WORKDIR
        assert "No such file or directory" in out          # the whiteout hid /etc/group
        assert out.rstrip().endswith("fresh")              # the opaque /home hid home/old
        no_build_mounts(broot)

        # nothing changed: every step from the cache, the same image
        again, events = await build(store, broot, ctx, tags=["app:1"])
        assert again == first
        got = steps(events)
        assert {k: v for k, v in got.items() if " FROM " not in k and v != "CACHED"} == {}
        assert sum(v == "CACHED" for v in got.values()) == 12

        # one copied file changed: its COPY and what follows run again, nothing before
        (ctx / "data.txt").write_text("data v2\n")
        third, events = await build(store, broot, ctx, tags=["app:2"])
        got = steps(events)
        assert third != first
        assert got["[maker 2/3] RUN mkdir -p /out && echo \"built by RUN\" > /out/built.txt"] \
            == "CACHED"
        assert got["[maker 3/3] COPY data.txt /out/"] == "DONE"
        assert got["[stage-1 2/11] COPY --from=maker /out /app"] == "DONE"
        assert "data v2" in await run_image(tmp_path / "ex", store, "app:2", "built2")
        assert store.require("app:1").id == first

        # --no-cache runs everything again
        _, events = await build(store, broot, ctx, no_cache=True, target="maker")
        assert "CACHED" not in steps(events).values()
    asyncio.run(go())


def test_run_failure_names_the_line_and_tags_nothing(tmp_path, store_root):
    ctx = context(tmp_path, "FROM busybox:1\nENV A=1\n\nRUN echo before-fail && \\\n"
                            "    echo to-stderr >&2 && exit 3\nRUN true\n", {})

    async def go():
        store = ImageStore(store_root)
        with pytest.raises(BuildError) as info:
            await build(store, tmp_path / "build", ctx, tags=["broken:1"])
        assert str(info.value) == "Dockerfile:4: RUN exited with code 3"
        assert "before-fail" in info.value.output and "to-stderr" in info.value.output
        assert store.get("broken:1") is None
        no_build_mounts(tmp_path / "build")
    asyncio.run(go())


def test_run_has_no_network_and_uses_the_stage_config(tmp_path, store_root):
    ctx = context(tmp_path, "FROM busybox:1\nARG WHO=arg-default\nENV E=env-value\n"
                            "WORKDIR /made/by/workdir\nUSER nobody\n"
                            "RUN cat /proc/net/dev; echo who=$WHO e=$E; pwd; id -u\n", {})

    async def go():
        store = ImageStore(store_root)
        _, events = await build(store, tmp_path / "build", ctx, build_args={"WHO": "given",
                                                                              "UNUSED": "x"})
        log = "\n".join(e["log"] for e in events if "log" in e)
        interfaces = [ln.split(":")[0].strip() for ln in log.splitlines() if ":" in ln
                      and not ln.startswith(("Inter", " face", "who"))]
        assert interfaces == ["lo"], log
        assert "who=given e=env-value" in log and "/made/by/workdir\n65534" in log
        assert any("build-args [UNUSED] were not consumed" in e.get("warning", "")
                   for e in events)
    asyncio.run(go())


@pytest.mark.parametrize("dockerfile,setup,message", [
    ("FROM busybox:1\nCOPY missing.txt /x\n", None,
     "Dockerfile:2: COPY: missing.txt: not found in the build context"),
    ("FROM busybox:1\nCOPY link /x\n", lambda c: os.symlink("/etc/shadow", c / "link"),
     "Dockerfile:2: COPY: link: symlink link -> /etc/shadow points outside the build context"),
    ("FROM busybox:1\nCOPY dir/up /x\n",
     lambda c: ((c / "dir").mkdir(), os.symlink("../../outside", c / "dir" / "up")),
     "Dockerfile:2: COPY: dir/up: a symlink points outside the build context"),
    ("FROM busybox:1\nCOPY ../secret /x\n", None,
     "Dockerfile:2: COPY: ../secret: forbidden path outside the build context"),
    ("FROM busybox:1\nCOPY ignored.txt /x\n", lambda c: ((c / "ignored.txt").write_text("i"),
                                                         (c / ".dockerignore").write_text(
                                                             "ignored.*\n")),
     "Dockerfile:2: COPY: ignored.txt: not found in the build context (.dockerignore"),
    ("FROM nothere:1\nRUN true\n", None, "Dockerfile:1: FROM nothere:1: image not found"),
    ("FROM busybox:1\nBOGUS x\n", None, "Dockerfile:2: unknown instruction: BOGUS"),
    ("FROM busybox:1\nADD http://example.com/x /x\n", None,
     "Dockerfile:2: ADD: http://example.com/x: sources from URLs are not supported"),
    ("FROM busybox:1\nADD a.tar.gz /x\n", None, "Dockerfile:2: ADD: a.tar.gz: ADD would unpack"),
])
def test_bad_input_is_refused_naming_the_line(tmp_path, store_root, dockerfile, setup, message):
    ctx = context(tmp_path, dockerfile, {})
    (tmp_path / "outside").write_text("secret")
    if setup:
        setup(ctx)

    async def go():
        store = ImageStore(store_root)
        with pytest.raises(BuildError) as info:
            await build(store, tmp_path / "build", ctx, tags=["bad:1"])
        assert str(info.value).startswith(message), str(info.value)
        assert "\n" not in str(info.value)
        assert store.get("bad:1") is None
    asyncio.run(go())


def test_copy_keeps_links_as_links_and_writes_only_inside_the_image(tmp_path, store_root):
    """A context symlink inside a copied directory is copied as a link (it points into the
    image at run time), and a COPY destination through an image's absolute symlink lands in
    the image, not on the host."""
    dockerfile = ("FROM busybox:1\nRUN ln -s /tmp /escape\n"
                  "COPY --chown=nobody tree/ /escape/target/\n"
                  "RUN ls -l /tmp/target; cat /tmp/target/f; stat -c %u:%g /tmp/target/f\n")
    ctx = context(tmp_path, dockerfile, {"tree/f": "in tree\n"})
    os.symlink("/etc/passwd", ctx / "tree" / "link")

    async def go():
        store = ImageStore(store_root)
        _, events = await build(store, tmp_path / "build", ctx)
        log = "\n".join(e["log"] for e in events if "log" in e)
        assert "link -> /etc/passwd" in log and "in tree" in log and "65534:65534" in log
        assert not Path("/tmp/target").exists() and not Path("/escape").exists()
    asyncio.run(go())


def test_from_scratch(tmp_path, store_root):
    ctx = context(tmp_path, "FROM busybox:1 AS tools\nFROM scratch\n"
                            "COPY --from=tools /bin/busybox /busybox\nCMD [\"/busybox\", \"echo\","
                            " \"from-scratch\"]\n", {})

    async def go():
        store = ImageStore(store_root)
        await build(store, tmp_path / "build", ctx, tags=["tiny:1"])
        assert len(store.require("tiny:1").layers) == 1
        assert "from-scratch" in await run_image(tmp_path / "ex", store, "tiny:1", "tiny1")
    asyncio.run(go())


def test_layer_tar_has_oci_whiteouts(tmp_path):
    """overlayfs marks (a 0/0 char device, the opaque xattr) become OCI's .wh. entries."""
    import gzip
    import tarfile

    from worker.images.build.difftar import write_layer
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc" / "group", 0o20600, os.makedev(0, 0))
    (upper / "home").mkdir()
    os.setxattr(upper / "home", "trusted.overlay.opaque", b"y")
    (upper / "home" / "fresh").write_text("x")
    result = write_layer(upper, tmp_path / "layer.tar.gz")
    with gzip.open(tmp_path / "layer.tar.gz") as f:
        data = f.read()
    assert result["diff_id"] == ib.digest_of(data)
    with tarfile.open(fileobj=__import__("io").BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"etc", "etc/.wh.group", "home", "home/.wh..wh..opq", "home/fresh"}
    assert members["etc/.wh.group"].isreg() and members["home/.wh..wh..opq"].isreg()


def _cli_build(store_root: Path, data_root: Path, args: list[str]):
    """`shoal image build ARGS` against POST /images/build served from a real store on a
    temporary socket (the daemon's part is buildapi with the real builder)."""
    import tempfile
    from types import SimpleNamespace

    from aiohttp import web
    from click.testing import CliRunner

    from common.httpserver import CTX, error_middleware
    from shoal import buildapi
    from shoal.cli import main

    async def main_():
        app = web.Application(middlewares=[error_middleware])
        app[CTX] = SimpleNamespace(images=ImageStore(store_root),
                                   files=SimpleNamespace(root=data_root),
                                   executor=SimpleNamespace(runtime="runc"))
        app.add_routes(buildapi.routes())
        runner = web.AppRunner(app)
        await runner.setup()
        with tempfile.TemporaryDirectory() as tmp:
            sock = str(Path(tmp) / "shoal.sock")
            await web.UnixSite(runner, sock).start()
            try:
                return await asyncio.to_thread(CliRunner().invoke, main,
                                               ["--socket", sock, "image", "build", *args])
            finally:
                await runner.cleanup()
    return asyncio.run(main_())


def test_cli_prints_plain_progress_and_fails_naming_the_line(tmp_path, store_root):
    ctx = context(tmp_path, "FROM busybox:1\nARG MSG\nRUN echo say-$MSG\n", {})
    (ctx / "Dockerfile.bad").write_text("FROM busybox:1\n\nRUN echo doomed; exit 2\n")
    first = _cli_build(store_root, tmp_path / "data", ["-t", "cli:1", "--build-arg",
                                                       "MSG=hello", str(ctx)])
    assert first.exit_code == 0, first.output
    lines = first.output.splitlines()
    assert "#1 [stage-0 1/3] FROM busybox:1" in lines
    assert "#3 [stage-0 3/3] RUN echo say-$MSG" in lines
    assert any(ln.startswith("#3 ") and ln.endswith(" say-hello") for ln in lines)
    assert "#3 DONE" in first.output and "naming to cli:1 done" in lines
    again = _cli_build(store_root, tmp_path / "data", ["-t", "cli:1", "--build-arg",
                                                       "MSG=hello", str(ctx)])
    assert again.exit_code == 0 and "#3 CACHED" in again.output.splitlines()
    bad = _cli_build(store_root, tmp_path / "data", ["-t", "cli:2", "-f",
                                                     str(ctx / "Dockerfile.bad"), str(ctx)])
    assert bad.exit_code == 1
    assert " > doomed" in bad.output
    assert bad.output.rstrip().splitlines()[-1].endswith(
        "Dockerfile.bad:3: RUN exited with code 2")
    assert ImageStore(store_root).get("cli:2") is None


@pytest.mark.skipif(not ib.LocalRegistry.available(),
                    reason="needs Debian's docker-registry package")
def test_built_image_pushes_and_pulls_back_the_same(tmp_path, store_root):
    """What `build --push` relies on: a built image's layers keep their blobs, so it pushes,
    and another store pulls the same image id."""
    from worker.images import push as image_push
    reg = ib.LocalRegistry(tmp_path / "registry").start()
    try:
        ctx = context(tmp_path, "FROM busybox:1\nRUN echo pushed > /p\nCMD [\"cat\", \"/p\"]\n",
                      {})
        name = f"{reg.host}/built/app:1"

        async def go():
            store = ImageStore(store_root)
            image_id, _ = await build(store, tmp_path / "build", ctx, tags=[name])
            insecure = frozenset({reg.host})
            await image_push.push(store, name, insecure_registries=insecure)
            other = ImageStore(tmp_path / "other")
            pulled = await other.pull(name, insecure_registries=insecure)
            assert pulled.id == image_id
            assert "pushed" in await run_image(tmp_path / "ex", other, name, "pulled1")
        asyncio.run(go())
    finally:
        reg.stop()


def test_copy_dot_honours_dockerignore_and_add_copies_local_files(tmp_path, store_root):
    ctx = context(tmp_path, "FROM busybox:1 AS first\nRUN echo first-stage\n"
                            "FROM busybox:1 AS second\nCOPY . /app\nADD a.txt /added/\n"
                            "RUN cd /app && find . | sort\nFROM second\nRUN echo never\n",
                  {"a.txt": "a", "b.log": "b", "keep.log": "k", "secret/x": "s",
                   "sub/c.txt": "c", ".dockerignore": "*.log\n!keep.log\nsecret\nDockerfile\n"})

    async def go():
        store = ImageStore(store_root)
        _, events = await build(store, tmp_path / "build", ctx, target="second")
        log = [e["log"] for e in events if "log" in e]
        assert log == ["first-stage", ".", "./.dockerignore", "./a.txt", "./keep.log", "./sub",
                       "./sub/c.txt"], log
        assert not any("never" in e.get("name", "") for e in events)  # --target stops there
    asyncio.run(go())
