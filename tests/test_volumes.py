"""Node-local volumes (worker/volumes.py), as Docker's local driver, on the real file system with
real mounts: plain, tmpfs, bind and other mounts, legacy directories of older shoal, in-use
refusals read from a real executor's container records, prune; the node API with strict
decoding (and hypothesis: never a 500, never a mount outside the volumes directory); and
`shoal volume` against a real shoald.

Root only (mounts). Every mount a test makes lives under its tmp_path and is undone at teardown,
even when the test fails; the one daemon started here is stopped by its pid.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from common import errors, linux
from common.httpserver import CTX, error_middleware
from common.model import Mount, VolumeOptions
from shoal import workerapi
from shoal.cli import main as cli_main
from worker.volumes import ANONYMOUS_LABEL, LAYOUT, NAME_RE, VolumeStore, containers_using

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts)")
ROOT = Path(__file__).resolve().parent.parent


# ---- helpers ------------------------------------------------------------------------------------
def mounts_under(path: Path) -> list[linux.MountInfo]:
    base = os.path.realpath(path)
    return [m for m in linux.mountinfo()
            if m.mount_point == base or m.mount_point.startswith(base + "/")]


def mount_at(path: Path) -> linux.MountInfo | None:
    real = os.path.realpath(path)
    found = [m for m in linux.mountinfo() if m.mount_point == real]
    return found[-1] if found else None


def unmount_everything_under(path: Path) -> None:
    for _ in range(10):
        points = sorted({m.mount_point for m in mounts_under(path)},
                        key=lambda p: p.count("/"), reverse=True)
        if not points:
            return
        for p in points:
            with contextlib.suppress(OSError):
                linux.umount(p, linux.MNT_DETACH)


@pytest.fixture(autouse=True)
def no_mount_left(tmp_path):
    """Whatever a test mounted under its tmp_path goes, pass or fail."""
    yield
    unmount_everything_under(tmp_path)


class Users:
    """A stand-in for the executor's records: which containers mount which volume."""

    def __init__(self) -> None:
        self.by_volume: dict[str, list[str]] = {}

    def __call__(self, name: str) -> list[str]:
        return list(self.by_volume.get(name, []))


@pytest.fixture
def users() -> Users:
    return Users()


@pytest.fixture
def vdir(tmp_path) -> Path:
    return tmp_path / "volumes"


@pytest.fixture
def store(vdir, users) -> VolumeStore:
    return VolumeStore(vdir, users=users)


def refused(exc_type, fn, *words):
    with pytest.raises(exc_type) as exc:
        fn()
    for word in words:
        assert word in exc.value.message, exc.value.message
    return exc.value


def leftovers(vdir: Path) -> list[str]:
    return sorted(p.name for p in vdir.iterdir() if p.name != LAYOUT)


# ---- the store --------------------------------------------------------------------------------------
def test_a_plain_volume_is_a_data_dir_with_private_options(store, vdir):
    v = store.create("data", labels={"env": "prod", "bare": ""})
    assert v.mountpoint == vdir / "data" / "_data" and v.mountpoint.is_dir()
    opts = vdir / "data" / "opts.json"
    assert stat.S_IMODE(opts.stat().st_mode) == 0o600
    saved = json.loads(opts.read_text())
    assert saved["driver"] == "local" and saved["labels"] == {"env": "prod", "bare": ""}
    view = store.get("data").view()
    assert view == {"CreatedAt": saved["created_at"], "Driver": "local",
                    "Labels": {"env": "prod", "bare": ""}, "Mountpoint": str(v.mountpoint),
                    "Name": "data", "Options": {}, "Scope": "local"}
    assert time.strptime(view["CreatedAt"], "%Y-%m-%dT%H:%M:%SZ")
    # create and ensure of an existing volume give it as it is: its options win, as Docker's
    again = store.create("data", driver_opts={"type": "tmpfs"}, labels={"other": "1"})
    assert again.labels == {"env": "prod", "bare": ""} and again.options == {}
    assert store.ensure("data", VolumeOptions(driver_opts={"type": "tmpfs"})) == v.mountpoint
    assert mount_at(v.mountpoint) is None
    # ensure makes a missing one with the task's options
    path = store.ensure("cache", VolumeOptions(labels={"from": "task"}))
    assert path == vdir / "cache" / "_data" and store.get("cache").labels == {"from": "task"}
    assert store.ensure("plain") == vdir / "plain" / "_data"
    # the plain form a container's saved config holds, decoded strictly
    assert store.ensure("saved", {"labels": {"a": "1"}, "driver": "local"}) == \
        vdir / "saved" / "_data" and store.get("saved").labels == {"a": "1"}
    refused(errors.InvalidArgument, lambda: store.ensure("saved2", {"labls": {}}),
            "volume_options.labls", "unknown field")
    assert [x.name for x in store.list()] == ["cache", "data", "plain", "saved"]


def test_an_unnamed_volume_is_anonymous_with_a_64_hex_name(store):
    v = store.create()
    assert len(v.name) == 64 and all(c in "0123456789abcdef" for c in v.name)
    assert v.anonymous and v.labels == {ANONYMOUS_LABEL: ""}
    assert not store.create("named").anonymous


def test_a_tmpfs_volume_is_mounted_at_create_again_on_demand_and_unmounted_by_rm(store, vdir):
    v = store.create("scratch", driver_opts={"type": "tmpfs", "o": "size=2m,uid=1000,mode=0750"})
    m = mount_at(v.mountpoint)
    assert m is not None and m.fs_type == "tmpfs", m
    assert {"size=2048k", "uid=1000", "mode=750"} <= set(m.super_options.split(",")), m
    assert v.view()["Options"] == {"type": "tmpfs", "o": "size=2m,uid=1000,mode=0750"}
    (v.mountpoint / "f").write_text("x")
    # a reboot takes the mount away; the next task start mounts it again
    linux.umount(v.mountpoint)
    assert mount_at(v.mountpoint) is None
    assert store.get("scratch").view() == v.view()   # inspect does not mount
    assert store.ensure("scratch") == v.mountpoint
    assert mount_at(v.mountpoint).fs_type == "tmpfs"
    assert store.ensure("scratch") == v.mountpoint and len(mounts_under(v.mountpoint)) == 1
    assert asyncio.run(store.remove("scratch"))
    assert mounts_under(vdir) == [] and leftovers(vdir) == []


def test_a_bind_volume_shows_its_device_and_rm_leaves_the_device_alone(store, vdir, tmp_path):
    host = tmp_path / "host"
    (host / "sub").mkdir(parents=True)
    (host / "sub" / "keep.txt").write_text("precious")
    v = store.create("shared", driver_opts={"type": "none", "o": "bind", "device": str(host)})
    assert (v.mountpoint / "sub" / "keep.txt").read_text() == "precious"
    (v.mountpoint / "new.txt").write_text("through the volume")
    assert (host / "new.txt").read_text() == "through the volume"
    ro = store.create("shared-ro", driver_opts={"type": "none", "o": "bind,ro,nosuid",
                                                "device": str(host)})
    assert {"ro", "nosuid"} <= set(mount_at(ro.mountpoint).options.split(","))
    with pytest.raises(OSError) as exc:
        (ro.mountpoint / "nope").write_text("x")
    assert exc.value.errno == errno.EROFS
    asyncio.run(store.remove("shared"))
    asyncio.run(store.remove("shared-ro"))
    # the volume went, the host directory and its files did not
    assert (host / "sub" / "keep.txt").read_text() == "precious"
    assert (host / "new.txt").exists() and leftovers(vdir) == [] and mounts_under(vdir) == []


def test_other_types_are_real_mounts_and_their_errors_are_clear(store, vdir):
    v = store.create("ram", driver_opts={"type": "ramfs", "device": "ramfs", "o": "noexec"})
    m = mount_at(v.mountpoint)
    assert m.fs_type == "ramfs" and "noexec" in m.options.split(","), m
    refused(errors.FailedPrecondition,
            lambda: store.create("disk", driver_opts={"type": "ext4",
                                                      "device": "/dev/shoal-no-such-disk"}),
            "volume 'disk'", "type=ext4 device=/dev/shoal-no-such-disk", "ENOENT")
    refused(errors.FailedPrecondition,
            lambda: store.create("odd", driver_opts={"type": "shoalnosuchfs", "device": "x"}),
            "ENODEV", "no such file system type")
    refused(errors.FailedPrecondition,
            lambda: store.create("tiny", driver_opts={"type": "tmpfs", "o": "size=lots"}),
            "EINVAL", "o=size=lots", "check o=")
    # a failed create leaves nothing: no volume, no half-made directory, no mount
    assert leftovers(vdir) == ["ram"] and [x.mount_point for x in mounts_under(vdir)] == \
        [str(v.mountpoint)]


@pytest.mark.parametrize("name", ["-x", ".x", "_x", "a/b", "..", ".", "a b", "x" * 129, "é",
                                  "a\nb", "opts.json/x"])
def test_bad_names_are_refused(store, vdir, name):
    refused(errors.InvalidArgument, lambda: store.create(name), "invalid volume name")
    refused(errors.InvalidArgument, lambda: store.ensure(name), "invalid volume name")
    refused(errors.NotFound, lambda: store.get(name), "no such volume")
    assert leftovers(vdir) == []


def test_options_drivers_and_labels_are_checked_naming_what_is_wrong(store, vdir, tmp_path):
    def bad(opts, *words, **kw):
        refused(errors.InvalidArgument, lambda: store.create("v1", driver_opts=opts, **kw), *words)
    bad({"size": "1g"}, "invalid volume option 'size'", "type, device, o")
    bad({"o": "size=1m"}, "need type")
    bad({"device": "/dev/vdb"}, "need type")
    bad({"type": "ext4"}, "type=ext4 needs device")
    bad({"type": "none", "device": str(tmp_path)}, "type=none mounts nothing", "o=bind")
    bad({"type": "tmp fs"}, "invalid file system type")
    bad({"type": ""}, "must not be empty")
    bad({"type": "none", "o": "bind", "device": "relative/dir"}, "absolute")
    bad({"type": "none", "o": "bind", "device": "/tmp/../etc"}, "absolute", "'..'")
    bad({"type": "none", "o": "bind", "device": str(tmp_path / "missing")}, "not an existing dir")
    bad({"type": "none", "o": "bind,size=1m", "device": str(tmp_path)}, "mount flags only")
    for exposing in (vdir, vdir.parent, Path("/")):
        bad({"type": "none", "o": "bind", "device": str(exposing)}, "would expose the volumes")
    refused(errors.InvalidArgument, lambda: store.create("v1", driver="nfs"),
            "volume driver 'nfs'", "--driver local")
    refused(errors.InvalidArgument, lambda: store.create("v1", labels={"a=b": "c"}),
            "invalid label key")
    refused(errors.InvalidArgument, lambda: store.create("v1", labels={"": "c"}),
            "invalid label key")
    refused(errors.InvalidArgument,
            lambda: store.ensure("v1", VolumeOptions(driver_opts={"bogus": "1"})), "'bogus'")
    assert leftovers(vdir) == [] and mounts_under(vdir) == []


def test_a_volume_in_use_is_never_removed_and_missing_ones_only_with_force(store, users):
    store.create("db")
    users.by_volume["db"] = ["web.1.abc", "web.2.def"]
    for force in (False, True):
        refused(errors.FailedPrecondition, lambda: asyncio.run(store.remove("db", force=force)),
                "volume 'db' is in use by containers web.1.abc, web.2.def", "remove them first")
    assert store.get("db")
    refused(errors.NotFound, lambda: asyncio.run(store.remove("nothere")), "no such volume")
    assert asyncio.run(store.remove("nothere", force=True)) is False
    users.by_volume.clear()
    assert asyncio.run(store.remove("db")) is True
    refused(errors.NotFound, lambda: store.get("db"))


def test_directories_of_older_shoal_are_legacy_volumes_whatever_they_hold(vdir, users, tmp_path):
    """A container wrote into its legacy volume: an opts.json asking for a bind of / must
    never be mounted."""
    hostile = json.dumps({"driver": "local", "labels": {}, "created_at": "x",
                          "options": {"type": "none", "o": "bind", "device": "/"}})
    (vdir / "old" / "_data").mkdir(parents=True)
    (vdir / "old" / "opts.json").write_text(hostile)
    (vdir / "old" / "file").write_text("kept")
    store = VolumeStore(vdir, users=users)
    old = store.get("old")
    assert old.legacy and old.mountpoint == vdir / "old" and old.view()["Options"] == {}
    assert store.ensure("old") == vdir / "old" and mounts_under(vdir) == []
    # a bare directory made later by the old mkdir, then given an opts.json by its container
    (vdir / "late").mkdir()
    assert store.ensure("late") == vdir / "late"
    (vdir / "late" / "opts.json").write_text(hostile)
    again = VolumeStore(vdir, users=users)    # a daemon restart
    assert again.get("late").legacy and again.ensure("late") == vdir / "late"
    assert mounts_under(vdir) == []
    assert {"old", "late"} == set(json.loads((vdir / LAYOUT).read_text())["legacy"])
    assert stat.S_IMODE((vdir / LAYOUT).stat().st_mode) == 0o600
    # a store opened earlier (the daemon's, beside the executor's) reads the list afresh
    assert store.get("late").legacy and store.ensure("late") == vdir / "late"
    (vdir / "later").mkdir()
    assert again.get("later").legacy
    (vdir / "later" / "opts.json").write_text(hostile)
    assert store.get("later").legacy and mounts_under(vdir) == []
    # new volumes next to them are new-layout ones
    assert not again.create("fresh").legacy
    users.by_volume["old"] = ["legacy.1.x"]
    refused(errors.FailedPrecondition, lambda: asyncio.run(again.remove("old")), "legacy.1.x")
    users.by_volume.clear()
    asyncio.run(again.remove("old"))
    assert not (vdir / "old").exists()
    assert json.loads((vdir / LAYOUT).read_text())["legacy"] == ["late", "later"]
    # a legacy directory deleted behind the store's back: its name makes a new-layout volume
    shutil.rmtree(vdir / "later")
    assert not again.create("later").legacy and again.ensure("later") == vdir / "later" / "_data"


def test_a_volume_whose_opts_json_is_damaged_says_so_and_can_still_be_removed(store, vdir):
    store.create("good")
    v = store.create("bad", driver_opts={"type": "tmpfs", "o": "size=1m"})
    (vdir / "bad" / "opts.json").write_text("{not json")
    assert [x.name for x in store.list()] == ["good"]
    refused(errors.FailedPrecondition, lambda: store.get("bad"), "volume 'bad'",
            "opts.json is unreadable", "shoal volume rm bad")
    refused(errors.FailedPrecondition, lambda: store.ensure("bad"), "unreadable")
    assert asyncio.run(store.remove("bad"))
    assert mount_at(v.mountpoint) is None and leftovers(vdir) == ["good"]


def test_leftovers_of_a_crash_are_cleaned_at_open(vdir, users):
    store = VolumeStore(vdir, users=users)
    half = vdir / ".creating-abc"
    (half / "_data").mkdir(parents=True)
    linux.mount("tmpfs", half / "_data", "tmpfs", 0, "size=1m")
    (vdir / ".trash-def" / "x").mkdir(parents=True)
    VolumeStore(vdir, users=users)
    assert leftovers(vdir) == [] and mounts_under(vdir) == []
    assert store.list() == []


def test_ls_filters(store, users):
    store.create("web-data", labels={"app": "web", "tier": "front"})
    store.create("db-data", labels={"app": "db"})
    anon = store.create().name
    users.by_volume["db-data"] = ["db.1.x"]

    def names(**filters):
        return [v.name for v in store.list(filters)]
    assert names() == sorted(["web-data", "db-data", anon])
    assert names(name=["data"]) == ["db-data", "web-data"]
    assert names(name=["web-", "db-"]) == ["db-data", "web-data"]     # names: any of them
    assert names(label=["app"]) == ["db-data", "web-data"]
    assert names(label=["app=web"]) == ["web-data"]
    assert names(label=["app", "tier=front"]) == ["web-data"]         # labels: all of them
    assert names(dangling=["true"]) == sorted([anon, "web-data"])
    assert names(dangling=["0"]) == ["db-data"]
    assert names(driver=["local"]) == names()
    refused(errors.InvalidArgument, lambda: names(colour=["red"]), "invalid filter 'colour'",
            "name, label, dangling, driver")
    refused(errors.InvalidArgument, lambda: names(dangling=["maybe"]), "dangling=true")
    refused(errors.InvalidArgument, lambda: names(dangling=["true", "false"]), "exclude")
    refused(errors.InvalidArgument, lambda: names(label=["=x"]), "give a label key")


def test_prune_removes_unused_anonymous_volumes_or_all_with_all(store, users, vdir):
    anon_busy, anon_free = store.create().name, store.create(labels={"keep": "yes"}).name
    anon_sized = store.create().name
    (vdir / anon_sized / "_data" / "blob").write_bytes(b"x" * 10_000)
    store.create("named")
    store.create("named-tmp", driver_opts={"type": "tmpfs", "o": "size=1m"},
                 labels={"tier": "cache"})
    users.by_volume[anon_busy] = ["c.1.x"]
    removed, freed = asyncio.run(store.prune(filters={"label!": ["keep"]}))
    assert removed == [anon_sized] and freed == 10_000
    removed, freed = asyncio.run(store.prune())
    assert removed == [anon_free]
    removed, _ = asyncio.run(store.prune(all=True, filters={"label": ["tier=cache"]}))
    assert removed == ["named-tmp"] and mounts_under(vdir) == []
    removed, _ = asyncio.run(store.prune(all=True))
    assert removed == ["named"]
    assert [v.name for v in store.list()] == [anon_busy]
    refused(errors.InvalidArgument, lambda: asyncio.run(store.prune(filters={"name": ["x"]})),
            "invalid filter 'name'", "label, label!")


# ---- in use, read from a real executor's records ------------------------------------------------
@pytest.fixture(scope="module")
def images_root(tmp_path_factory) -> Path:
    if not ib.busybox_available():
        pytest.skip("needs busybox-static (/bin/busybox)")
    return ib.busybox_store(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module", autouse=True)
def _no_subreaper_afterwards():
    """The executor (and shoald) make this process a child subreaper; later modules of this
    pytest process should not inherit that."""
    yield
    linux.become_subreaper(False)


@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")
def test_containers_using_reads_the_executor_s_records(images_root, ex_root):
    from worker.executor import ContainerConfig, Executor
    from worker.images import ImageStore

    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        store = VolumeStore(ex.volumes_dir, users=containers_using(ex))
        store.create("data")
        store.create("other")
        cfg = ContainerConfig(id="vc1", name="svc.1.vc1", image="busybox:1",
                              command=["sleep", "30"], labels={"shoal.task.name": "svc.1.vc1"},
                              mounts=[Mount(type="volume", source="data", target="/data"),
                                      Mount(type="tmpfs", target="/data2")])
        await ex.create(cfg)            # created, never started: it still holds the volume
        try:
            assert store.users("data") == ["svc.1.vc1"] and store.users("other") == []
            with pytest.raises(errors.FailedPrecondition) as exc:
                await store.remove("data", force=True)
            assert "in use by container svc.1.vc1" in exc.value.message
            assert [v.name for v in store.list({"dangling": ["true"]})] == ["other"]
            assert (await store.prune(all=True))[0] == ["other"]
        finally:
            await ex.remove("vc1")
        assert store.users("data") == [] and await store.remove("data")
        await ex.close()
    asyncio.run(scenario())


# ---- the node API ---------------------------------------------------------------------------------
class _NodeCtx:
    def __init__(self, store: VolumeStore) -> None:
        self.volumes = store
        self.locked = False


@contextlib.contextmanager
def api(store: VolumeStore):
    """(loop, client) on the node API's routes, served by the real store."""
    loop = asyncio.new_event_loop()

    async def start() -> TestClient:
        app = web.Application(middlewares=[error_middleware])
        app[CTX] = _NodeCtx(store)
        app.add_routes(workerapi.local_routes())
        client = TestClient(TestServer(app))
        await client.start_server()
        return client
    client = loop.run_until_complete(start())
    try:
        yield loop, client
    finally:
        loop.run_until_complete(client.close())
        loop.close()


def call(loop, client, method: str, path: str, **kw) -> tuple[int, object]:
    async def go():
        r = await client.request(method, path, **kw)
        return r.status, await r.json()
    return loop.run_until_complete(go())


def test_the_node_api_creates_lists_inspects_removes_and_prunes(store, users, vdir):
    with api(store) as (loop, client):
        status, v = call(loop, client, "POST", "/volumes/create",
                         json={"name": "web", "driver_opts": {"type": "tmpfs", "o": "size=1m"},
                               "labels": {"app": "web"}})
        assert status == 200 and v["Name"] == "web" and v["Scope"] == "local", v
        assert mount_at(vdir / "web" / "_data").fs_type == "tmpfs"
        status, anon = call(loop, client, "POST", "/volumes/create")
        assert status == 200 and anon["Labels"] == {ANONYMOUS_LABEL: ""}
        status, items = call(loop, client, "GET", "/volumes",
                             params={"filters": json.dumps({"label": ["app=web"]})})
        assert status == 200 and [i["Name"] for i in items] == ["web"]
        status, got = call(loop, client, "GET", "/volumes/web")
        assert (status, got) == (200, v)
        users.by_volume["web"] = ["web.1.x"]
        status, err = call(loop, client, "DELETE", "/volumes/web", params={"force": "true"})
        assert status == 412 and "in use by container web.1.x" in err["message"], err
        users.by_volume.clear()
        status, err = call(loop, client, "GET", "/volumes/nope")
        assert status == 404 and "no such volume: 'nope'" in err["message"]
        status, err = call(loop, client, "GET", "/volumes/..")
        assert status in (404, 400), err
        assert call(loop, client, "DELETE", "/volumes/nope", params={"force": "1"}) == \
            (200, {"removed": None})
        status, pruned = call(loop, client, "POST", "/volumes/prune", json={})
        assert status == 200 and pruned["deleted"] == [anon["Name"]]
        status, pruned = call(loop, client, "POST", "/volumes/prune", json={"all": True})
        assert pruned["deleted"] == ["web"] and mounts_under(vdir) == []
        # strict decoding, each refusal naming its field
        for body, words in (({"nmae": "x"}, ["nmae", "unknown field"]),
                            ({"name": 5}, ["name", "must be a string"]),
                            ({"driver_opts": {"type": 1}}, ["driver_opts.type"]),
                            ({"labels": ["a=b"]}, ["labels", "must be an object"]),
                            ({"name": "x", "driver_opts": {"device": "/dev/x"}}, ["need type"])):
            status, err = call(loop, client, "POST", "/volumes/create", json=body)
            assert status == 400 and all(w in err["message"] for w in words), (body, err)
        status, err = call(loop, client, "POST", "/volumes/prune", json={"all": "yes"})
        assert status == 400 and "all" in err["message"]
        status, err = call(loop, client, "GET", "/volumes", params={"filters": "{bad json"})
        assert status == 400 and "filters is not valid JSON" in err["message"]
        status, err = call(loop, client, "GET", "/volumes",
                           params={"filters": json.dumps({"label": "app"})})
        assert status == 400 and "filters.label" in err["message"], err
        assert leftovers(vdir) == []


# ---- hypothesis: hostile create requests ------------------------------------------------------------
_NAMES = st.one_of(st.from_regex(NAME_RE, fullmatch=True), st.from_regex(NAME_RE, fullmatch=True),
                   st.text(max_size=12),
                   st.sampled_from(["", ".", "..", "a/b", "../x", "x" * 200, "_data", ".layout.json"]))
_WORDS = st.sampled_from(["size=1m", "size=zz", "mode=0700", "uid=1000", "nr_inodes=9", "ro", "rw",
                          "bind", "rbind", "nosuid", "noexec", "remount", "junk", "", "x" * 5000])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                     st.text(max_size=8), st.lists(st.text(max_size=3), max_size=2))


def _options(devices: list[str]):
    """Mostly the local driver's keys with values near the valid ones; sometimes junk."""
    near = st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["tmpfs", "none", "ramfs", "ext4", "shoalnofs", "", "a b"])
        | st.text(max_size=6),
        "device": st.sampled_from(devices) | st.text(max_size=10),
        "o": st.lists(_WORDS, max_size=4).map(",".join)})
    junk = st.dictionaries(st.sampled_from(["type", "device", "o", "size", "Type", "o "])
                           | st.text(max_size=4), _SCALARS, max_size=3)
    words = st.lists(_WORDS, max_size=3).map(",".join)
    shaped = st.one_of(
        st.fixed_dictionaries({"type": st.just("tmpfs"), "o": words}),
        st.fixed_dictionaries({"type": st.sampled_from(["none", "none", "tmpfs", "ext4"]),
                               "device": st.sampled_from(devices),
                               "o": st.sampled_from(["bind", "rbind", "bind,ro", "ro,rbind,nosuid",
                                                     "bind,size=1m"])}),
        st.fixed_dictionaries({"type": st.sampled_from(["ramfs", "ext4", "xfs"]),
                               "device": st.sampled_from(devices), "o": words}))
    return st.one_of(shaped, shaped, near, junk, _SCALARS)


def test_hostile_create_requests_never_answer_500_nor_mount_outside_the_volumes_dir(
        store, vdir, tmp_path, monkeypatch):
    host = tmp_path / "host"
    host.mkdir()
    (host / "canary").write_text("alive")
    devices = [str(host), "/", str(vdir), str(vdir.parent), "relative", "/nonexistent",
               "/tmp/../etc", "tmpfs", "/dev/null", str(vdir / "x" / "_data")]
    # Every mount(2) the store makes, seen on its way to the kernel (other test runs on this
    # machine mount things too, so the system's mount table alone cannot say whose a mount is).
    targets: list[str] = []
    real_mount = linux.mount

    def spy(source, target, fstype, flags=0, data=None):
        targets.append(os.fsdecode(target))
        return real_mount(source, target, fstype, flags, data)
    monkeypatch.setattr(linux, "mount", spy)
    statuses: dict[int, int] = {}
    kinds: dict[str, int] = {}    # what was made: plain, tmpfs, none (a bind), ramfs, ...
    with api(store) as (loop, client):
        def check(body: dict) -> None:
            status, answer = call(loop, client, "POST", "/volumes/create", json=body)
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500, (body, answer)
            allowed = set()
            if status == 200:
                kind = answer["Options"].get("type", "plain")
                kinds[kind] = kinds.get(kind, 0) + 1
                assert answer["Mountpoint"] == str(vdir / answer["Name"] / "_data"), answer
                allowed = {answer["Mountpoint"]}
            # a mount tried (even one the kernel refused) is the asked volume's _data, no other
            for target in targets:
                name = os.path.relpath(target, vdir).split("/")[0]
                assert target == str(vdir / name / "_data") and NAME_RE.match(name) and \
                    name == (body["name"] or name), (targets, body, answer)
                assert len(name) == 64 or name == body["name"]
            assert {m.mount_point for m in mounts_under(tmp_path)} <= allowed, body
            status, _ = call(loop, client, "POST", "/volumes/prune", json={"all": True})
            assert status == 200
            assert mounts_under(tmp_path) == [] and leftovers(vdir) == [], body
            assert (host / "canary").read_text() == "alive"

        @settings(max_examples=300, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(name=_NAMES, opts=_options(devices),
               labels=st.dictionaries(st.text(max_size=5), st.text(max_size=5) | _SCALARS,
                                      max_size=2),
               extra=st.sampled_from([{}, {"driver": "local"}, {"driver": "nfs"}, {"x": 1}]))
        def one(name, opts, labels, extra):
            targets.clear()
            try:
                check({"name": name, "driver_opts": opts, "labels": labels, **extra})
            finally:  # each example starts clean, whatever the last one left
                unmount_everything_under(vdir)
                for entry in vdir.iterdir():
                    if entry.name != LAYOUT:
                        shutil.rmtree(entry)
        one()
    assert statuses.get(200, 0) >= 10 and statuses.get(400, 0) >= 10, statuses
    assert {"plain", "tmpfs", "none", "ramfs"} <= set(kinds), kinds
    print(f"volume create fuzz: answers by status {sorted(statuses.items())}, made {kinds}")


# ---- the CLI against a real shoald ------------------------------------------------------------------
@pytest.fixture
def shoald(tmp_path):
    """A real shoald outside any swarm: (socket path, data root). Stopped by its pid."""
    sock, data = tmp_path / "shoal.sock", tmp_path / "data"
    log = open(tmp_path / "shoald.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.daemon", "--data-root", str(data), "--socket", str(sock),
         "--docker-socket", str(tmp_path / "docker.sock"), "--hostname", "voltest"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"shoald exited: {(tmp_path / 'shoald.log').read_text()[-2000:]}")
            if sock.exists() and CliRunner().invoke(cli_main, ["--socket", str(sock),
                                                               "version"]).output.count("Version") == 2:
                break
            if time.monotonic() > deadline:
                pytest.fail("shoald did not answer within 60 s")
            time.sleep(0.1)
        yield sock, data
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_the_cli_against_a_real_daemon(shoald, tmp_path):
    sock, data = shoald
    vdir = data / "executor" / "volumes"

    def shoal(*args: str, input: str | None = None, code: int = 0):
        result = CliRunner().invoke(cli_main, ["--socket", str(sock), *args], input=input)
        assert result.exit_code == code, (args, result.output, result.exception)
        return result
    assert shoal("volume", "create", "-o", "type=tmpfs", "-o", "o=size=1m", "--label", "app=web",
                 "scratch").output == "scratch\n"
    m = mount_at(vdir / "scratch" / "_data")
    assert m is not None and m.fs_type == "tmpfs"
    anon = shoal("volume", "create").output.strip()
    assert len(anon) == 64
    shoal("volume", "create", "--label", "keep", "plain")
    table = shoal("volume", "ls").output.splitlines()
    assert table[0].split() == ["DRIVER", "VOLUME", "NAME"]
    assert sorted(line.split() for line in table[1:]) == sorted(
        [["local", anon], ["local", "plain"], ["local", "scratch"]])
    assert shoal("volume", "ls", "-q", "-f", "label=app=web").output == "scratch\n"
    assert shoal("volume", "ls", "-q", "-f", "name=pla", "-f", "dangling=true").output == "plain\n"
    listed = json.loads(shoal("volume", "ls", "--format", "json").output)
    assert {v["Name"] for v in listed} == {anon, "plain", "scratch"}
    inspected = json.loads(shoal("volume", "inspect", "scratch", "plain").output)
    assert [v["Name"] for v in inspected] == ["scratch", "plain"]
    assert inspected[0]["Options"] == {"type": "tmpfs", "o": "size=1m"}
    assert inspected[0]["Mountpoint"] == str(vdir / "scratch" / "_data")
    assert inspected[1]["Labels"] == {"keep": ""}
    # refusals: one line each, exit 1 (refused) or 2 (bad flag)
    out = shoal("volume", "inspect", "plain", "ghost", code=1).output
    assert "no such volume: 'ghost'" in out and json.loads(out[:out.index("Error")])[0]["Name"] == "plain"
    assert "invalid volume option 'size'" in shoal("volume", "create", "-o", "size=1g", "x1",
                                                   code=1).output
    assert "type, device, o" in shoal("volume", "create", "-o", "size=1g", code=1).output
    assert "--driver" in shoal("volume", "create", "-d", "nfs", "x1", code=2).output
    assert "KEY=VALUE" in shoal("volume", "create", "-o", "type", "x1", code=2).output
    assert "invalid volume name '-bad'" in shoal("volume", "create", "--", "-bad", code=1).output
    assert "invalid filter 'colour'" in shoal("volume", "ls", "-f", "colour=red", code=1).output
    rm = shoal("volume", "rm", "scratch", "ghost", code=1).output
    assert "scratch\n" in rm and "no such volume: 'ghost'" in rm
    assert mount_at(vdir / "scratch" / "_data") is None
    assert shoal("volume", "rm", "-f", "ghost").output == "ghost\n"   # as docker
    # prune asks first; without -a only the anonymous volume goes
    assert "Total reclaimed" not in shoal("volume", "prune", input="n\n").output
    out = shoal("volume", "prune", input="y\n").output
    assert "anonymous local volumes" in out and f"Deleted Volumes:\n{anon}\n" in out
    assert "Total reclaimed space: 0B" in out
    out = shoal("volume", "prune", "-f", "-a", "--filter", "label!=keep").output
    assert out == "Total reclaimed space: 0B\n"
    assert shoal("volume", "prune", "-a", "-f").output.startswith("Deleted Volumes:\nplain\n")
    assert shoal("volume", "ls", "-q").output == ""
    assert mounts_under(vdir) == []
