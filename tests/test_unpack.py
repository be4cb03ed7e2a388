"""worker/images/unpack.py: unpacking an archive never touches anything outside its destination.

- Regression tests for the escapes an outside tester found: writing through a symlink the
  archive planted (`extract_archive`), creating directories outside before refusing an entry,
  and a `.wh...` whiteout deleting the directory above a layer. Each has canaries outside the
  destination, checked before and after (existence, content, mtime).
- The same attacks end to end, through the image store's child process: `import` and a pull
  from a real registry (Debian's docker-registry) go through the same unpack code.
- What layers legitimately hold keeps working: absolute and `..` symlinks as leaves, hard
  links, devices, xattrs, a file replacing a deep directory tree.
- A Hypothesis property test: thousands of hostile tars (links of every kind, whiteouts, long
  and `..` names, duplicates, devices, xattrs), each unpacked both as an image archive and as a
  layer in a scratch tree with canaries beside and above the destination; nothing outside the
  destination may be created, changed or removed, whether the unpack succeeds or is refused.

Runs as root (layers hold device nodes, ownership and trusted.* xattrs).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from common import errors
import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from worker.images.importers import _archive_file
from worker.images.store import ImageStore
from worker.images.unpack import UnpackError, extract_archive, unpack_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root (layers hold device nodes and owners)")
needs_registry = pytest.mark.skipif(not ib.LocalRegistry.available(),
                                    reason="needs Debian's docker-registry package")
REPO = Path(__file__).resolve().parent.parent


# ---- building tars ------------------------------------------------------------------------
@dataclass
class E:
    """One tar entry. kind: file, dir, sym, hard, chr, blk, fifo."""
    name: str
    kind: str = "file"
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_000_000
    xattrs: dict[str, str] = field(default_factory=dict)


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
          "hard": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def tar_bytes(entries: list[E]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _TYPES[e.kind]
            ti.mode, ti.uid, ti.gid, ti.mtime = e.mode, e.uid, e.gid, e.mtime
            ti.linkname = e.link
            if e.kind in ("chr", "blk"):
                ti.devmajor, ti.devminor = (1, 3) if e.kind == "chr" else (7, 250)
            if e.xattrs:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            data = e.data if e.kind == "file" else b""
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def write_tar(path: Path, entries: list[E], gz: bool = False) -> Path:
    data = tar_bytes(entries)
    path.write_bytes(ib.gzip_bytes(data) if gz else data)
    return path


# ---- canaries -----------------------------------------------------------------------------
def snapshot(root: Path, skip: set[Path], loose: set[Path] = frozenset()) -> dict:
    """Everything under `root` but the `skip` subtrees: type, mode, owner, size, link count,
    mtime and ctime (any chown, chmod, utime or setxattr moves it), xattrs, content hash or
    link target. `loose` directories (the destination's parent) only keep their existence,
    type and owner: creating the destination in them changes their times."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        filenames = [f for f in filenames if here / f not in skip]
        for p in [here] + [here / n for n in dirnames + filenames]:
            if p == here and p != root:
                continue  # recorded by its parent
            st = os.lstat(p)
            if p in loose:
                out[str(p)] = (stat.S_IFMT(st.st_mode), st.st_uid, st.st_gid)
                continue
            xattrs = sorted((k, os.getxattr(p, k, follow_symlinks=False))
                            for k in os.listxattr(p, follow_symlinks=False))
            if stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            else:
                extra = None
            out[str(p)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink,
                           st.st_rdev, st.st_mtime_ns, st.st_ctime_ns, xattrs, extra)
    return out


def changes(before: dict, after: dict) -> list[str]:
    return sorted(f"{p}: {'created' if p not in before else 'removed' if p not in after else 'changed'}"
                  for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def canaries(root: Path) -> None:
    """Files and directories around `root/work/dest`, with old mtimes (a utime would show)."""
    (root / "work" / "sibdir").mkdir(parents=True)
    (root / "outside").mkdir()
    (root / "tmp").mkdir()
    for p, data in ((root / "victim", b"original\n"), (root / "outside" / "f", b"f\n"),
                    (root / "work" / "sibling", b"sibling\n"),
                    (root / "work" / "sibdir" / "f", b"g\n")):
        p.write_bytes(data)
    for p in (root / "victim", root / "outside" / "f", root / "outside",
              root / "work" / "sibling", root / "work" / "sibdir" / "f", root / "work" / "sibdir",
              root / "tmp"):
        os.utime(p, (1_000_000, 1_000_000))


@pytest.fixture
def scene(tmp_path):
    """tmp_path/{victim, outside/f, tmp/, work/{sibling, sibdir/f}}, the destination is
    work/dest; returns (dest, check), check() asserting that nothing outside dest changed."""
    canaries(tmp_path)
    dest = tmp_path / "work" / "dest"
    skip = {dest}
    loose = {tmp_path / "work", tmp_path}  # tests write their archive, in.tar, in tmp_path
    before = snapshot(tmp_path, skip | {tmp_path / "in.tar"}, loose)

    def check() -> None:
        assert changes(before, snapshot(tmp_path, skip | {tmp_path / "in.tar"}, loose)) == []
        assert (tmp_path / "victim").read_bytes() == b"original\n"
        assert os.stat(tmp_path / "victim").st_mtime == 1_000_000
    return dest, check


def refusal(unpack, archive: Path, dest: Path) -> str:
    """Run an unpack that must be refused; its message (empty if it was not), for the caller
    to check after the canaries: a test must fail on what leaked, not on a wording."""
    try:
        unpack(archive, dest)
    except (ValueError, OSError, tarfile.TarError) as exc:
        return str(exc)
    return ""


def ups(dest: Path) -> str:
    """`../` enough times to climb from `dest` to `/` (like the tester's `../../../../../..`)."""
    return "../" * len(dest.parts[1:])


# ---- defect 1: extract_archive wrote through a symlink it had made -------------------------
def test_extract_archive_does_not_create_a_file_through_a_symlink(tmp_path, scene):
    dest, check = scene
    target = tmp_path / "pwned"
    for link in (ups(dest) + str(target)[1:], "../../pwned"):  # the tester's, and a short one
        archive = write_tar(tmp_path / "in.tar", [E("x", "sym", link=link), E("x", data=b"evil")])
        message = refusal(extract_archive, archive, dest)
        assert not target.exists() and not target.is_symlink()
        check()
        assert "archive entry 'x' is a symlink leaving the archive" in message
        shutil.rmtree(dest)


def test_extract_archive_does_not_overwrite_a_file_through_a_symlink(tmp_path, scene):
    dest, check = scene
    archive = write_tar(tmp_path / "in.tar", [E("x", "sym", link="../../victim"),
                                               E("x", data=b"evil")])
    message = refusal(extract_archive, archive, dest)
    check()  # the victim's content and mtime are unchanged
    assert "archive entry 'x' is a symlink leaving the archive" in message


def test_extract_archive_does_not_write_through_a_chain_of_symlinks(tmp_path, scene):
    """`t -> s/..` stays inside on paper (s/.. is the root), but `s -> .` makes it dest/..:
    only refusing to go through any symlink at all stops that."""
    dest, check = scene
    archive = write_tar(tmp_path / "in.tar", [
        E("s", "sym", link="."), E("t", "sym", link="s/.."), E("t/sibling", data=b"evil"),
        E("t/pwned", data=b"evil")])
    message = refusal(extract_archive, archive, dest)
    check()
    assert not (dest.parent / "pwned").exists()
    assert "archive entry 't/sibling' is under 't', which is a symlink" in message


def test_extract_archive_refuses_to_replace_a_symlink(tmp_path, scene):
    dest, check = scene
    archive = write_tar(tmp_path / "in.tar", [E("a"), E("x", "sym", link="a"),
                                               E("x", data=b"evil")])
    message = refusal(extract_archive, archive, dest)
    assert (dest / "a").read_bytes() == b""
    check()
    assert "archive entry 'x' would replace or write through the symlink 'x'" in message


# ---- defect 2: directories were created outside before the refusal ------------------------
def test_extract_archive_creates_no_directory_outside_before_refusing(tmp_path, scene):
    dest, check = scene
    tmp_like = tmp_path / "tmp"
    # the tester's archive (d -> ../../../../tmp), aimed at a directory of ours
    archive = write_tar(tmp_path / "in.tar", [E("d", "sym", link=ups(dest) + str(tmp_like)[1:]),
                                               E("d/pwned/sub/f", data=b"x")])
    message = refusal(extract_archive, archive, dest)
    assert list(tmp_like.iterdir()) == []
    check()
    assert "archive entry 'd' is a symlink leaving the archive" in message
    shutil.rmtree(dest)
    # a link that is not refused on its own: the entry under it is, before any mkdir
    archive = write_tar(tmp_path / "in.tar", [E("s", "sym", link="."), E("d", "sym", link="s/.."),
                                               E("d/pwned/sub/f", data=b"x")])
    message = refusal(extract_archive, archive, dest)
    assert not (dest.parent / "pwned").exists()
    check()
    assert "archive entry 'd/pwned/sub/f' is under 'd', which is a symlink" in message
    assert sorted(p.name for p in dest.iterdir()) == ["d", "s"]
    check()


def test_extract_archive_keeps_docker_save_layer_links(tmp_path):
    """`docker save` shares a layer between images: <id>/layer.tar -> ../<other>/layer.tar."""
    archive = write_tar(tmp_path / "in.tar", [
        E("aaa", "dir", mode=0o755), E("aaa/layer.tar", data=b"layer"),
        E("bbb/layer.tar", "sym", link="../aaa/layer.tar"), E("manifest.json", data=b"[]"),
        E("./dev", "chr"), E("hl", "hard", link="manifest.json")])  # ignored, as before
    assert extract_archive(archive, tmp_path / "x") == {"files": 2}
    x = tmp_path / "x"
    assert os.readlink(x / "bbb" / "layer.tar") == "../aaa/layer.tar"
    assert _archive_file(x, "bbb/layer.tar", "t").read_bytes() == b"layer"
    assert sorted(p.name for p in x.iterdir()) == ["aaa", "bbb", "manifest.json"]


def test_extract_archive_refuses_bad_names(tmp_path):
    for entries, message in (
            ([E("../x")], r"archive entry '../x' escapes the archive \(..\)"),
            ([E("a/" + "n" * 256)], "longer than 255 bytes"),
            ([E("/".join(["n" * 200] * 21))], "too long"),
            ([E("l", "sym", link="/etc")], "archive entry 'l' is an absolute symlink"),
            ([E("d", "dir"), E("d")], "'d' already exists as another kind of file")):
        dest = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        with pytest.raises(UnpackError, match=message):
            extract_archive(write_tar(tmp_path / "in.tar", entries), dest)


# ---- defect 3: a `..` whiteout deleted the directory above the layer ------------------------
@pytest.mark.parametrize("name", [".wh...", "a/.wh...", ".wh..", "a/b/.wh..", ".wh."])
def test_whiteouts_of_dot_names_are_refused(tmp_path, scene, name):
    dest, check = scene
    blob = write_tar(tmp_path / "in.tar", [E("a/b/keep", data=b"k"), E(name)])
    target = name.rpartition("/")[2][4:]
    message = refusal(unpack_layer, blob, dest)
    check()
    assert (dest / "a" / "b" / "keep").read_bytes() == b"k"
    assert f"layer entry '{name}' is a whiteout of '{target}', which is not a file name" \
        in message


def test_layer_whiteouts_and_opaque_dirs(tmp_path, scene):
    dest, check = scene
    blob = write_tar(tmp_path / "in.tar", [
        E("d", "dir", mode=0o755), E("d/sub/f", data=b"1"), E("d/.wh.sub"), E(".wh.gone"),
        E("o", "dir", mode=0o755), E("o/.wh..wh..opq"), E("o/.wh..wh.plnk")], gz=True)
    unpack_layer(blob, dest)
    for p in (dest / "d" / "sub", dest / "gone"):
        st = os.lstat(p)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(dest / "o", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(dest / "o")) == []
    check()


# ---- layers: links stay leaves --------------------------------------------------------------
def test_layer_keeps_absolute_and_dotdot_symlinks_as_leaves(tmp_path, scene):
    dest, check = scene
    outside = str(tmp_path / "outside")
    blob = write_tar(tmp_path / "in.tar", [
        E("bin/sh", "sym", link="/bin/busybox", uid=7, mtime=5),
        E("up", "sym", link="../../../.."), E("abs", "sym", link=outside)])
    unpack_layer(blob, dest)
    assert os.readlink(dest / "bin" / "sh") == "/bin/busybox"
    assert os.lstat(dest / "bin" / "sh").st_uid == 7
    assert os.lstat(dest / "bin" / "sh").st_mtime == 5
    assert os.readlink(dest / "up") == "../../../.." and os.readlink(dest / "abs") == outside
    check()


@pytest.mark.parametrize("entries, message", [
    # an entry under an absolute link planted by the layer
    ([E("abs", "sym", link="@OUT@"), E("abs/f", data=b"evil")],
     r"layer entry 'abs/f' is under 'abs', which is a symlink"),
    ([E("abs", "sym", link="@OUT@"), E("abs/new/sub/f", data=b"evil")],
     r"layer entry 'abs/new/sub/f' is under 'abs', which is a symlink"),
    # relative links, chained
    ([E("s", "sym", link="."), E("t", "sym", link="s/.."), E("t/sibling", data=b"evil")],
     r"layer entry 't/sibling' is under 't', which is a symlink"),
    # whiteouts and opaque markers through a link: would delete / mark outside
    ([E("abs", "sym", link="@OUT@"), E("abs/.wh.f")], "under 'abs', which is a symlink"),
    ([E("abs", "sym", link="@OUT@"), E("abs/.wh..wh..opq")], "under 'abs', which is a symlink"),
    # hard links to files outside: by `..`, through a link, to a link
    ([E("h", "hard", link="../../victim")], r"escapes the layer \(..\)"),
    ([E("abs", "sym", link="@OUT@"), E("h", "hard", link="abs/f")],
     r"layer entry 'h' is under 'abs', which is a symlink"),
    # a file entry where the layer put a link: the link is replaced, never written through
    ([E("x", "sym", link="@VICTIM@"), E("x", data=b"new")], None),
    ([E("x", "sym", link="@VICTIM@"), E("h", "hard", link="x"), E("h", data=b"new"),
      E("x", data=b"new")], None),
    # a directory over a link to an outside directory
    ([E("d", "sym", link="@OUT@"), E("d", "dir"), E("d/f", data=b"new")], None),
    # a file under a file
    ([E("f", data=b"1"), E("f/g", data=b"2")], r"under 'f', which is not a directory"),
])
def test_layer_never_goes_through_a_link(tmp_path, scene, entries, message):
    dest, check = scene
    subst = {"@OUT@": str(tmp_path / "outside"), "@VICTIM@": str(tmp_path / "victim")}
    entries = [dataclasses.replace(e, link=subst.get(e.link, e.link)) for e in entries]
    blob = write_tar(tmp_path / "in.tar", entries)
    if message is None:
        unpack_layer(blob, dest)
        check()
    else:
        got = refusal(unpack_layer, blob, dest)
        check()
        assert re.search(message, got), got


def test_layer_entries_keep_their_attributes(tmp_path):
    blob = write_tar(tmp_path / "in.tar", [
        E("etc", "dir", mode=0o700, uid=3, mtime=11),
        E("etc/f", data=b"data", mode=0o4755, uid=5, gid=6, mtime=12,
          xattrs={"user.k": "v", "trusted.t": "w"}),
        E("etc/h", "hard", link="/etc/f"), E("dev/null", "chr", mode=0o666, mtime=13),
        E("dev/loop", "blk", mode=0o600), E("run/p", "fifo", mode=0o620, uid=9),
        E("./", "dir", mode=0o755, mtime=14)])
    dest = tmp_path / "layer"
    result = unpack_layer(blob, dest)
    assert result["size"] == 4 and result["diff_id"] == result["blob_digest"]
    f = os.lstat(dest / "etc" / "f")
    assert (stat.S_IMODE(f.st_mode), f.st_uid, f.st_gid, f.st_mtime, f.st_nlink) == \
        (0o4755, 5, 6, 12, 2)
    assert os.getxattr(dest / "etc" / "f", "trusted.t") == b"w"
    assert os.lstat(dest / "etc" / "h").st_ino == f.st_ino
    d = os.lstat(dest / "etc")
    assert (stat.S_IMODE(d.st_mode), d.st_uid, d.st_mtime) == (0o700, 3, 11)
    assert os.lstat(dest / "dev" / "null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.lstat(dest / "dev" / "loop").st_mode)
    p = os.lstat(dest / "run" / "p")
    assert stat.S_ISFIFO(p.st_mode) and stat.S_IMODE(p.st_mode) == 0o620 and p.st_uid == 9
    assert os.lstat(dest).st_mtime == 14


def test_layer_replaces_a_deep_tree_and_refuses_long_names(tmp_path):
    """A file replacing a directory removes the whole tree, however deep (no recursion)."""
    deep = "/".join(["a"] * 1500)
    blob = write_tar(tmp_path / "in.tar", [E(f"t/{deep}/f", data=b"x"), E("t", data=b"file")])
    unpack_layer(blob, tmp_path / "l1")
    assert (tmp_path / "l1" / "t").read_bytes() == b"file"
    for name, message in (("a/" + "n" * 256, "longer than 255 bytes"),
                          ("/".join(["n" * 200] * 21), "too long"),
                          ("../x", r"escapes the layer")):
        dest = tmp_path / f"l{len(list(tmp_path.iterdir()))}"
        with pytest.raises(UnpackError, match=message):
            unpack_layer(write_tar(tmp_path / "in.tar", [E(name)]), dest)
        assert list(dest.iterdir()) == []  # refused before anything was created


# ---- end to end: the store's child process, for import and pull -----------------------------
def hostile_layout(dest: Path, layer: bytes) -> Path:
    """An OCI layout (tag "1") whose only layer is `layer` (gzip-compressed)."""
    def blob(data: bytes) -> dict:
        digest = ib.digest_of(data)
        path = dest / "blobs" / "sha256" / digest.split(":")[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return {"digest": digest, "size": len(data)}
    gz = ib.gzip_bytes(layer)
    config = json.dumps(ib.image_config([ib.digest_of(layer)], {})).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": ib.MT_OCI_MANIFEST,
        "config": dict(blob(config), mediaType=ib.MT_OCI_CONFIG),
        "layers": [dict(blob(gz), mediaType=ib.MT_OCI_LAYER_GZIP)]}).encode()
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dest / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [dict(
            blob(manifest), mediaType=ib.MT_OCI_MANIFEST,
            annotations={"org.opencontainers.image.ref.name": "1"})]}))
    return dest


def store_with_canaries(root: Path) -> tuple[ImageStore, Path, dict]:
    """A store whose tmp/ holds another download in progress (the `..` whiteout deleted it)."""
    store = ImageStore(root)
    other = root / "tmp" / "dl-other"
    other.write_bytes(b"half a layer")
    (root / "tmp" / "layer-other").mkdir()
    (root / "tmp" / "layer-other" / "f").write_bytes(b"f")
    return store, other, tmp_snapshot(root)


def tmp_snapshot(root: Path) -> dict:
    # tmp/ itself is loose: the store's own staging comes and goes in it
    return snapshot(root / "tmp", set(), {root / "tmp"})


async def store_refusal(job) -> str:
    """The store's error for a refused import or pull ("" if it went through)."""
    try:
        await job
    except errors.InvalidArgument as exc:
        return str(exc)
    return ""


HOSTILE_LAYERS = {
    "dotdot-whiteout": ([E("a/keep", data=b"1"), E(".wh...")], "is a whiteout of '..'"),
    "write-through-link": ([E("x", "sym", link="../../.."), E("x/dl-other", data=b"evil")],
                           "under 'x', which is a symlink"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LAYERS))
def test_import_refuses_hostile_layers(tmp_path, case):
    entries, message = HOSTILE_LAYERS[case]
    layout = hostile_layout(tmp_path / "oci", tar_bytes(entries))
    ib.tar_directory(layout, tmp_path / "oci.tar")

    async def scenario():
        store, other, before = store_with_canaries(tmp_path / "images")
        for src in (layout, tmp_path / "oci.tar"):
            got = await store_refusal(store.import_archive(src, "evil:1"))
            assert changes(before, tmp_snapshot(tmp_path / "images")) == []
            assert message in got
        assert other.read_bytes() == b"half a layer" and store.list() == []
    asyncio.run(scenario())


@needs_registry
@pytest.mark.parametrize("case", sorted(HOSTILE_LAYERS))
def test_pull_refuses_hostile_layers(tmp_path, case):
    entries, message = HOSTILE_LAYERS[case]
    layout = hostile_layout(tmp_path / "oci", tar_bytes(entries))
    reg = ib.LocalRegistry(tmp_path / "registry").start()
    try:
        async def scenario():
            await ib.push_layout(reg.url, layout, "evil/layer", "1")
            store, other, before = store_with_canaries(tmp_path / "images")
            got = await store_refusal(store.pull(f"{reg.host}/evil/layer:1",
                                                 insecure_registries=frozenset({reg.host})))
            assert changes(before, tmp_snapshot(tmp_path / "images")) == []
            assert message in got
            assert other.read_bytes() == b"half a layer" and store.list() == []
        asyncio.run(scenario())
    finally:
        reg.stop()


def test_import_reads_no_file_outside_the_archive(tmp_path):
    """Each link alone stays inside; the chain leads to the store's tmp/, where a manifest.json
    of someone else's is. The store must resolve paths within the extracted archive."""
    bait = json.dumps([{"Config": "c.json", "RepoTags": ["bait:1"], "Layers": []}]).encode()

    async def scenario():
        store = ImageStore(tmp_path / "images")
        (tmp_path / "images" / "tmp" / "bait.json").write_bytes(bait)
        for entries, message in (
                ([E("s", "sym", link="."), E("t", "sym", link="s/.."),
                  E("manifest.json", "sym", link="t/bait.json")], "leaves the archive"),
                ([E("manifest.json", "sym", link="manifest.json")], "cannot be resolved")):
            archive = write_tar(tmp_path / "in.tar", entries)
            with pytest.raises(errors.InvalidArgument, match=message):
                await store.import_archive(archive, "x:1")
        assert store.list() == []
    asyncio.run(scenario())


def test_child_process_entry_points(tmp_path):
    ok = write_tar(tmp_path / "ok.tar", [E("a/b", data=b"hi")])
    bad = write_tar(tmp_path / "bad.tar", [E(".wh...")])
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "worker.images.unpack", *argv],
                              capture_output=True, text=True, env=env, cwd=tmp_path)
    r = run("unpack-layer", str(ok), str(tmp_path / "l"))
    assert r.returncode == 0 and json.loads(r.stdout)["size"] == 2
    r = run("extract-archive", str(ok), str(tmp_path / "x"))
    assert r.returncode == 0 and json.loads(r.stdout) == {"files": 1}
    r = run("unpack-layer", str(bad), str(tmp_path / "l2"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].endswith(
        "layer entry '.wh...' is a whiteout of '..', which is not a file name")



def test_the_unpack_child_loads_no_more_than_it_needs():
    """The child starts once per layer: importing worker.images (its package) loads no store,
    no asyncio, no aiohttp, only the unpacker and the standard library."""
    code = ("import sys, worker.images.unpack; print(' '.join(sorted(m for m in sys.modules "
            "if m.partition('.')[0] in ('worker', 'common', 'asyncio', 'aiohttp'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)
    assert r.stdout.split() == ["worker", "worker.images", "worker.images.unpack"]

# ---- property: nothing outside the destination changes ------------------------------------
# The scratch tree for one example (dest and dest2 are the two destinations):
#   SCRATCH/in.tar                                the archive, four levels above dest
#   SCRATCH/root/c0  SCRATCH/root/o0/f            three levels up
#   SCRATCH/root/a/c1  SCRATCH/root/a/o1/f        two levels up
#   SCRATCH/root/a/work/{sibling, sibdir/f}       beside dest
#   SCRATCH/root/a/work/{dest, dest2}
# Link targets climb at most 4 levels, so the first write out of dest lands in SCRATCH, which
# is all watched; a broken unpacker that chains links further still writes within the 64
# levels of `nest` in pytest's tmp rather than elsewhere on the host.
LEVELS = ["", "a/", "a/work/"]
CANARY_FILES = ["c0", "o0/f", "a/c1", "a/o1/f", "a/work/sibling", "a/work/sibdir/f"]
CANARY_DIRS = ["o0", "a/o1", "a/work/sibdir"]

# Names are mostly ones a layer could hold (duplicates and clashes come from the small pool),
# with whiteouts of every sort; one in eight is plainly hostile (`..`, too long), as a single
# such entry gets the whole archive refused early.
BENIGN = ["a", "b", "x", "d", "link", "f", "c0", "o0", "sibling"] * 2 + [
    ".", "", ".wh.a", ".wh.x", ".wh.link", ".wh..wh..opq", ".wh..wh.plnk", "L" * 255]
ODD_WHITEOUTS = [".wh..", ".wh...", ".wh."]
plain_names = st.builds(
    lambda prefix, parts, last: prefix + ("/".join(parts + last) or "a"),
    st.sampled_from(["", "", "", "/", "./"]),
    st.lists(st.sampled_from(BENIGN), max_size=3),
    st.sampled_from([[]] * 30 + [[w] for w in ODD_WHITEOUTS]))
hostile_names = st.one_of(
    st.builds(lambda prefix, parts: prefix + "/".join(parts),
              st.sampled_from(["../", "../../", "/../", "", "a/"]),
              st.lists(st.sampled_from(BENIGN + ["..", "M" * 256]), min_size=1, max_size=4)),
    st.builds(lambda head, size, count: head + "/".join(["n" * size] * count),
              st.sampled_from(["", "link/", "a/"]), st.sampled_from([100, 200, 255]),
              st.integers(1, 45)))
# (not one_of(plain, plain, ..., hostile): Hypothesis would merge the copies)
names = st.integers(0, 7).flatmap(lambda i: hostile_names if i == 0 else plain_names)

TAILS = ["", "c0", "o0", "o0/f", "a", "a/c1", "a/o1", "sibling", "sibdir", "sibdir/f", "new",
         "x", "link", "dest2", "dest"]
link_targets = st.one_of(
    st.builds(lambda n, tail: ("../" * n + tail) or ".", st.integers(0, 4),
              st.sampled_from(TAILS)),
    st.builds(lambda tail: "@ROOT@/" + tail, st.sampled_from(TAILS + ["a/work", "nope"])),
    st.builds(lambda name, n: name + "/.." * n, st.sampled_from(["link", "x", "a/b", "d"]),
              st.integers(0, 3)),
    st.sampled_from([".", "..", "", "/"]))
hard_targets = st.one_of(names, st.sampled_from(["../c0", "../../a/c1", "@ROOT@/c0", "link/f",
                                                 "x", "link"]))
xattrs = st.dictionaries(st.sampled_from(["user.t", "trusted.overlay.opaque", "trusted.t",
                                          "security.t"]), st.sampled_from(["y", "v"]),
                         max_size=2)


@st.composite
def entries(draw, name_strategy=names) -> E:
    kind = draw(st.sampled_from(["file", "file", "dir", "dir", "sym", "sym", "sym", "hard",
                                 "chr", "blk", "fifo"]))
    e = E(draw(name_strategy), kind, mode=draw(st.sampled_from([0o644, 0o755, 0o4755, 0o0,
                                                               0o777])),
          uid=draw(st.sampled_from([0, 1000])), mtime=draw(st.sampled_from([0, 1_500_000_000])))
    if kind == "file":
        e.data = draw(st.binary(max_size=16))
    elif kind == "sym":
        e.link = draw(link_targets)
    elif kind == "hard":
        e.link = draw(hard_targets)
    if draw(st.integers(0, 4)) == 0:
        e.xattrs = draw(xattrs)
    return e


@st.composite
def attacks(draw) -> list[E]:
    """A link, then entries under it or replacing it (the shape every escape has), amid other
    entries."""
    before = draw(st.lists(entries(), max_size=3))
    at = draw(st.sampled_from(["link", "a/link", "x", "a/b/x"]))
    kind = draw(st.sampled_from(["sym", "sym", "sym", "hard"]))
    link = E(at, kind, link=draw(link_targets if kind == "sym" else hard_targets))
    under = st.builds(lambda tail: at + tail, st.sampled_from(
        ["", "/f", "/new/sub/f", "/.wh.f", "/.wh...", "/.wh..", "/.wh..wh..opq", "/c0",
         "/sibling", "/o0/f", "/sibdir", "/..", "/x"]))
    after = draw(st.lists(entries(under), min_size=1, max_size=4))
    rest = draw(st.lists(entries(), max_size=2))
    return before + [link] + after + rest


ALLOWED_FAILURES = (UnpackError, tarfile.TarError)


@pytest.fixture(scope="module")
def nest(tmp_path_factory) -> Path:
    deep = tmp_path_factory.mktemp("nest")
    for i in range(64):
        deep = deep / "n"
    deep.mkdir(parents=True)
    return deep


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def check_archive(nest: Path, archive: list[E], gz: bool) -> None:
    scratch = Path(tempfile.mkdtemp(dir=nest))
    try:
        _check_archive_in(scratch, archive, gz)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(scratch)], check=True)


def _gist(message: str) -> str:
    """The kind of refusal, for Hypothesis' statistics (-hypothesis-show-statistics)."""
    for words in ("which is a symlink", "not a directory", "whiteout of", "escapes", "leaving",
                  "absolute symlink", "would replace", "already exists", "longer than",
                  "too long", "does not exist", "hard link to nothing", "symlink to nothing"):
        if words in message:
            return words
    return message.split(":")[-1].strip()[:40]


def _check_archive_in(scratch: Path, archive: list[E], gz: bool) -> None:
    root = scratch / "root"
    for d in CANARY_DIRS:
        (root / d).mkdir(parents=True)
    for f in CANARY_FILES:
        (root / f).write_bytes(f.encode())
    work = root / "a" / "work"
    archive = [dataclasses.replace(e, link=e.link.replace("@ROOT@", str(root)))
               for e in archive]
    blob = write_tar(scratch / "in.tar", archive, gz)
    for p in [root / p for p in CANARY_FILES + CANARY_DIRS] + [root, root / "a", scratch]:
        os.utime(p, (1_000_000, 1_000_000))
    fds = open_fds()
    for unpack, dest in ((extract_archive, work / "dest"), (unpack_layer, work / "dest2")):
        # scratch/ holds the archive and is four `..` up from dest: in the snapshot too
        before = snapshot(scratch, {dest}, {work})
        try:
            unpack(blob, dest)
            event(f"{unpack.__name__}: done")
        except ALLOWED_FAILURES as exc:
            event(f"{unpack.__name__}: refused ({_gist(str(exc))})")
        assert changes(before, snapshot(scratch, {dest}, {work})) == [], unpack.__name__
        assert open_fds() == fds, f"{unpack.__name__} leaked fds"
    assert sorted(os.listdir(work)) == ["dest", "dest2", "sibdir", "sibling"]
    for dirpath, dirnames, filenames in os.walk(work / "dest"):
        for n in filenames:  # an image archive gives files and links that stay leaves
            p = Path(dirpath) / n
            if p.is_symlink():
                assert not os.readlink(p).startswith("/"), p
            else:
                assert stat.S_ISREG(os.lstat(p).st_mode), p


PROPERTY = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(archive=st.lists(entries(), min_size=1, max_size=12), gz=st.booleans())
def test_property_random_hostile_archives_stay_inside(nest, archive, gz):
    check_archive(nest, archive, gz)


@PROPERTY
@given(archive=attacks(), gz=st.booleans())
def test_property_links_then_entries_through_them_stay_inside(nest, archive, gz):
    check_archive(nest, archive, gz)
