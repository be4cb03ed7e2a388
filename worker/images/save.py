"""`shoal image save`: images of the store as a `docker save` tarball, and the stored blobs that
save and push hand out.

The tarball is the layout docker 25 writes, less its OCI index: `manifest.json` (Config,
RepoTags, Layers), `repositories`, and every blob under `blobs/sha256/<hex>`: the config as it
was stored (so the image id, its digest, is the same wherever it is loaded) and each layer as an
uncompressed tar whose digest is its diff id (what `docker load` and `skopeo inspect
docker-archive:` check it against). Writing runs in a child process (`python -m
worker.images.save PLAN`), since decompressing layers is CPU bound and the daemon's loop must
not stall; the child writes a temporary file beside the target and renames it, so a failure
leaves no half-written tarball.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from common import errors
from worker.images.manifests import Image, _hex, _sha256
from worker.images.references import parse_ref
from worker.images.trees import finish_then_cancel


# ---- what the store holds of an image ------------------------------------------------------
@dataclass
class StoredLayer:
    diff_id: str
    blob: str            # the digest of the kept blob (compressed or not)
    size: int            # the blob's bytes
    compression: str     # "" (a plain tar), "gzip" or "zstd"
    path: Path


def stored_layers(store, image: Image, what: str) -> list[StoredLayer]:
    """The kept blob of each layer, lowest first, or an error naming the first one missing:
    layers unpacked before shoal kept blobs (or from bzip2/xz blobs) cannot be handed out
    with their digests, since a tar made again from the files would not hash the same."""
    out = []
    for diff_id in image.layers:
        rec = store._index["layers"].get(diff_id, {})
        path = store.root / "blobs" / "sha256" / _hex(rec.get("blob") or diff_id)
        if not rec.get("blob") or not path.is_file():
            raise errors.FailedPrecondition(
                f"image {what}: layer {diff_id[:19]} was stored without its original blob "
                f"(unpacked before shoal kept layer blobs, or from a bzip2/xz archive), so it "
                f"cannot be handed out with its digest: remove the image and pull or load it "
                f"again", field="image")
        out.append(StoredLayer(diff_id, rec["blob"], rec.get("blob_size", path.stat().st_size),
                               rec.get("compression", ""), path))
    return out


def config_blob(store, image: Image, what: str) -> bytes:
    path = store.root / "blobs" / "sha256" / _hex(image.id)
    try:
        data = path.read_bytes()
    except OSError:
        raise errors.FailedPrecondition(f"image {what}: its config {image.id[:19]} is missing "
                                        "from the store: remove the image and pull or load it "
                                        "again", field="image") from None
    if _sha256(data) != image.id:
        raise errors.FailedPrecondition(f"image {what}: its stored config is corrupt: remove "
                                        "the image and pull or load it again", field="image")
    return data


# ---- save ----------------------------------------------------------------------------------
async def save(store, refs: list[str], dest: Path) -> dict:
    """Write the images `refs` name into `dest` as one `docker save` tarball. Returns what was
    written ({"images": [...], "size": bytes})."""
    dest = Path(dest)
    if not dest.is_absolute():
        raise errors.InvalidArgument(f"output {str(dest)!r} must be an absolute path",
                                     field="output")
    if not dest.parent.is_dir():
        raise errors.InvalidArgument(f"output {dest}: directory {dest.parent} does not exist",
                                     field="output")
    if dest.is_dir():
        raise errors.InvalidArgument(f"output {dest} is a directory", field="output")
    if not refs:
        raise errors.InvalidArgument("name at least one image to save", field="images")
    entries: dict[str, dict] = {}   # image id → entry, in the order first named
    for ref in refs:
        image = store.require(ref)
        entry = entries.setdefault(image.id, {
            "config": str(store.root / "blobs" / "sha256" / _hex(image.id)),
            "config_digest": image.id, "tags": [],
            "layers": [vars(layer) | {"path": str(layer.path)}
                       for layer in stored_layers(store, image, ref)]})
        config_blob(store, image, ref)  # checked now: the child trusts what it is given
        tag = _tag_of(ref, image)
        if tag and tag not in entry["tags"]:
            entry["tags"].append(tag)
    plan = {"dest": str(dest), "images": list(entries.values())}
    result = await _run_writer(plan)
    return {"images": [e["config_digest"] for e in entries.values()], "size": result["size"]}


def _tag_of(ref: str, image: Image) -> str:
    """The name a ref gives the saved image ("" when it was named by id), as docker's
    RepoTags write it: the familiar form, `busybox:1` rather than a normalized one."""
    if image.id.startswith(ref) or image.id[7:].startswith(ref):
        return ""
    try:
        return str(parse_ref(ref))
    except errors.InvalidArgument:
        return ""


async def _run_writer(plan: dict) -> dict:
    async def run() -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.images.save", stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate(json.dumps(plan).encode())
        return proc.returncode or 0, out, err

    rc, out, err = await finish_then_cancel(run())
    if rc != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise errors.FailedPrecondition(lines[-1] if lines else f"image save failed (exit {rc})",
                                        field="output")
    return json.loads(out)


# ---- the child: writing the tarball ---------------------------------------------------------
class _Hashing(io.RawIOBase):
    """Counts and hashes what passes through, for the diff id check."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.size, self.h = raw, 0, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.raw.read(len(buf))
        buf[:len(data)] = data
        self.size += len(data)
        self.h.update(data)
        return len(data)


def _plain(layer: dict) -> BinaryIO:
    f = open(layer["path"], "rb")
    if layer["compression"] == "gzip":
        return gzip.GzipFile(fileobj=f)  # type: ignore[return-value]
    if layer["compression"] == "zstd":
        import zstandard  # type: ignore[import-not-found]
        return zstandard.ZstdDecompressor().stream_reader(f)  # type: ignore[no-any-return]
    if layer["compression"]:
        raise ValueError(f"layer {layer['diff_id']}: {layer['compression']} blobs cannot be saved")
    return f  # type: ignore[return-value]


def _plain_size(layer: dict) -> int:
    """The uncompressed tar's length (a tar header needs it before the data), checked against
    the diff id on the way."""
    if not layer["compression"]:
        return Path(layer["path"]).stat().st_size
    with _plain(layer) as src:
        counter = _Hashing(src)
        while counter.read(1 << 20):
            pass
    if "sha256:" + counter.h.hexdigest() != layer["diff_id"]:
        raise ValueError(f"layer {layer['diff_id']}: its stored blob does not uncompress to it")
    return counter.size


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


def write_tarball(plan: dict) -> dict:
    dest = Path(plan["dest"])
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.tmp"
    manifest, repositories, written = [], {}, set()
    try:
        with open(tmp, "xb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) \
                as tar:
            tar.addfile(_dir("blobs/"))
            tar.addfile(_dir("blobs/sha256/"))
            for image in plan["images"]:
                config_name = f"blobs/sha256/{_hex(image['config_digest'])}"
                if config_name not in written:
                    data = Path(image["config"]).read_bytes()
                    tar.addfile(_member(config_name, len(data)), io.BytesIO(data))
                    written.add(config_name)
                layer_names = []
                for layer in image["layers"]:
                    name = f"blobs/sha256/{_hex(layer['diff_id'])}"
                    layer_names.append(name)
                    if name in written:
                        continue
                    size = _plain_size(layer)
                    with _plain(layer) as src:
                        hashing = _Hashing(src)
                        tar.addfile(_member(name, size), io.BufferedReader(hashing, 1 << 20))
                    if "sha256:" + hashing.h.hexdigest() != layer["diff_id"]:
                        raise ValueError(f"layer {layer['diff_id']}: its stored blob is corrupt")
                    written.add(name)
                manifest.append({"Config": config_name, "RepoTags": image["tags"] or None,
                                 "Layers": layer_names})
                for tag in image["tags"]:
                    repo, _, name_tag = tag.rpartition(":")
                    repositories.setdefault(repo, {})[name_tag] = _hex(image["layers"][-1][
                        "diff_id"]) if image["layers"] else ""
            for name, obj in (("manifest.json", manifest), ("repositories", repositories)):
                data = json.dumps(obj, separators=(",", ":")).encode()
                tar.addfile(_member(name, len(data)), io.BytesIO(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return {"size": dest.stat().st_size}


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
    return info


def main() -> int:
    try:
        result = write_tarball(json.load(sys.stdin))
    except (OSError, ValueError, KeyError, tarfile.TarError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
        print(f"image save: {reason}{where}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
