"""The store itself: image records, the index, shared layers, removal."""
from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Awaitable, Callable, Optional

from common import errors
from common.fsutil import read_json, write_json
from worker.images import importers, registry
from worker.images.manifests import Image, _hex
from worker.images.references import normalize_ref, normalize_ref_or_empty
from worker.images.trees import _rmtree_now, _run_helper, remove_tree

NOT_FOUND_HINT = ("load it with 'shoal image load -i FILE' or pull it from a registry "
                  "(name the registry in the reference: HOST:PORT/{ref})")


# ---- the store ----------------------------------------------------------------------------
class ImageStore:
    def __init__(self, root: Path, in_use: Optional[Callable[[str], bool]] = None) -> None:
        self.root = Path(root)
        # Says whether a container uses the image id; set by whoever runs containers (the
        # executor registers itself), so `remove` can refuse.
        self.in_use = in_use
        for d in ("blobs/sha256", "layers", "tmp"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        # A crash leaves half-written downloads and unpacks behind: nothing in tmp is referenced.
        for leftover in (self.root / "tmp").iterdir():
            _rmtree_now(leftover)
        self._index = read_json(self.root / "index.json", None) or {}
        self._index.setdefault("refs", {})
        self._index.setdefault("images", {})
        self._index.setdefault("layers", {})
        self._layer_locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task] = set()
        # Told of every pull (seconds taken, whether it succeeded): worker/metrics.py.
        self.pull_observers: list[Callable[[float, bool], None]] = []
        self._prune_layers()

    def _prune_layers(self) -> None:
        """Layers no image uses: left by a failed pull or import (kept until now so that a
        retry could reuse them), or unpacked just before a crash."""
        used = {_hex(d) for rec in self._index["images"].values() for d in rec["layers"]}
        for diff_id in [d for d in self._index["layers"] if _hex(d) not in used]:
            del self._index["layers"][diff_id]
        for path in (self.root / "layers").iterdir():
            if path.name not in used:
                _rmtree_now(path)
        self._save()

    # -- queries --
    def get(self, ref: str) -> Optional[Image]:
        """By reference (`busybox` means `busybox:latest`) or by id / unique id prefix."""
        ref = ref.strip()
        try:
            norm = normalize_ref(ref)
        except errors.InvalidArgument:
            norm = ""
        image_id = self._index["refs"].get(norm)
        if image_id is None and "@" in norm:
            # A pinned reference is exactly that manifest, whichever pull or import brought it;
            # a tag never stands in for a digest (the node's copy may be an older push).
            digest = norm.rpartition("@")[2]
            image_id = next((i for i, rec in self._index["images"].items()
                             if digest in rec.get("manifests", ())), None)
        if image_id is None:
            image_id = self._resolve_id(ref)
        if image_id is None:
            return None
        return self._image(image_id, norm if norm in self._index["refs"] else "")

    def require(self, ref: str) -> Image:
        image = self.get(ref)
        if image is None:
            raise errors.NotFound(f"image {ref} not found: " + NOT_FOUND_HINT.format(ref=ref),
                                  field="image")
        return image

    def list(self) -> list[Image]:
        return sorted((self._image(i) for i in self._index["images"]),
                      key=lambda im: (im.ref or "~", im.id))

    def manifest_digests(self, image_id: str) -> list[str]:
        """The digests of the manifests the image came through (pulled or imported), for
        Docker's RepoDigests; [] for an unknown image or a `docker save` archive."""
        return list(self._index["images"].get(image_id, {}).get("manifests", []))

    def layer_dirs(self, image: Image) -> list[Path]:
        dirs = [self.root / "layers" / _hex(d) for d in image.layers]
        for d, diff_id in zip(dirs, image.layers):
            if not d.is_dir():
                raise errors.NotFound(f"layer {diff_id} of image {image.ref or image.id} is "
                                      "missing from the store: remove the image and import or "
                                      "pull it again", field="image")
        return dirs

    def _resolve_id(self, text: str) -> Optional[str]:
        prefix = text[7:] if text.startswith("sha256:") else text
        if not re.fullmatch(r"[0-9a-f]{4,64}", prefix):
            return None
        hits = [i for i in self._index["images"] if i[7:].startswith(prefix)]
        if len(hits) > 1:
            raise errors.InvalidArgument(f"image id prefix {text} is ambiguous: it matches "
                                         f"{len(hits)} images", field="image")
        return hits[0] if hits else None

    def _image(self, image_id: str, ref: str = "") -> Image:
        rec = self._index["images"][image_id]
        refs = sorted(r for r, i in self._index["refs"].items() if i == image_id)
        return Image(ref=ref or (refs[0] if refs else ""), id=image_id, config=rec["config"],
                     layers=list(rec["layers"]), size=rec["size"], created=rec["created"],
                     refs=refs, architecture=rec.get("architecture", ""),
                     os=rec.get("os", "linux"))

    # -- removal --
    def remove(self, ref: str) -> list[str]:
        """Untag `ref`; the image goes once no reference is left (by id: with all its tags).
        Refuses while a container uses the image. Returns what was untagged and deleted.

        The index changes at once; the files are moved into tmp/ at once and deleted in the
        background (or at the next start), so a big image never stalls the event loop."""
        image = self.get(ref)
        if image is None:
            raise errors.NotFound(f"image {ref} not found", field="image")
        norm = normalize_ref_or_empty(ref)
        untag = [norm] if norm in self._index["refs"] else list(image.refs)
        last = set(untag) >= set(image.refs)
        if last and self.in_use is not None and self.in_use(image.id):
            raise errors.Conflict(f"image {ref} ({image.id[:19]}) is used by a container on "
                                  "this node: remove the service or task using it first",
                                  field="image")
        done = [f"untagged {r}" for r in untag]
        for r in untag:
            del self._index["refs"][r]
        doomed: list[Path] = []
        if last:
            rec = self._index["images"].pop(image.id)
            done.append(f"deleted {image.id}")
            doomed = self._collect_garbage(image.id, rec)
        self._save()
        for path in doomed:
            trash = self.root / "tmp" / f"trash-{secrets.token_hex(6)}"
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                continue
            self._delete_later(trash)
        return done

    def _delete_later(self, path: Path) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _rmtree_now(path)
            return
        job = loop.create_task(remove_tree(path))
        self._background.add(job)  # keep a reference until done (tasks are weakly held)
        job.add_done_callback(self._background.discard)

    def _collect_garbage(self, image_id: str, rec: dict) -> list[Path]:
        """Layers and blobs only the removed image used: dropped from the index here, the
        caller deletes the files (after saving the index, so a crash leaks, never dangles)."""
        used_layers = {d for r in self._index["images"].values() for d in r["layers"]}
        used_blobs = {b for i, r in self._index["images"].items()
                      for b in [i, *r.get("manifests", [])]}
        doomed = []
        for diff_id in rec["layers"]:
            if diff_id not in used_layers and diff_id in self._index["layers"]:
                doomed.extend(self._layer_blob_paths(diff_id))
                del self._index["layers"][diff_id]
                doomed.append(self.root / "layers" / _hex(diff_id))
        for blob in [image_id, *rec.get("manifests", [])]:
            if blob not in used_blobs:
                doomed.append(self.root / "blobs" / "sha256" / _hex(blob))
        return doomed

    def _layer_blob_paths(self, diff_id: str) -> list[Path]:
        blob = self._index["layers"].get(diff_id, {}).get("blob")
        return [self.root / "blobs" / "sha256" / _hex(blob)] if blob else []

    async def _keep_layer_blob(self, blob: Path, ours: bool, digest: str) -> dict:
        """Keep the layer's blob as it came (compressed or not) beside its unpacked form:
        `image save` and `image push` must hand out layers whose digests match the config's
        diff ids and the manifest, and a tar made again from the unpacked files would not
        hash the same. A file of ours (a download, an extracted archive) is hard-linked; a
        file of the caller's is copied and checked, since they may change it meanwhile.
        Returns the layer record's blob fields ({} when it cannot be kept: save and push of
        that image then say so)."""
        import hashlib
        dest = self.root / "blobs" / "sha256" / _hex(digest)
        with open(blob, "rb") as f:
            head = f.read(4)
        info = {"blob": digest, "blob_size": blob.stat().st_size,
                "compression": ("gzip" if head[:2] == b"\x1f\x8b" else
                                "zstd" if head == b"\x28\xb5\x2f\xfd" else
                                "" if len(head) < 3 or head[:3] not in (b"BZh", b"\xfd7z")
                                else "other")}
        if info["compression"] == "other":
            return {}  # bzip2/xz: no registry or docker load takes those back
        if dest.exists():
            return info
        tmp = self.root / "tmp" / f"keep-{secrets.token_hex(6)}"
        try:
            if ours:
                os.link(blob, tmp)
            else:
                h = hashlib.sha256()
                with open(blob, "rb") as src, open(tmp, "wb") as out:
                    while chunk := src.read(1 << 20):
                        h.update(chunk)
                        out.write(chunk)
                        await asyncio.sleep(0)  # a big layer must not stall the loop
                if "sha256:" + h.hexdigest() != digest:
                    return {}
            os.replace(tmp, dest)
        except OSError:
            return {}
        finally:
            tmp.unlink(missing_ok=True)
        return info

    def tag(self, source: str, target: str) -> Image:
        """`target` names the image `source` names (a tag moved off another image leaves
        that one dangling, as docker's)."""
        image = self.require(source)
        norm = normalize_ref(target)
        self._index["refs"][norm] = image.id
        self._save()
        return self._image(image.id, norm)

    def _save(self) -> None:
        write_json(self.root / "index.json", self._index)

    # -- adding images --
    def _record(self, image_id: str, config: dict, layers: list[str], refs: list[str],
                manifest_digest: str = "") -> Image:
        layer_info = self._index["layers"]
        # the same image can come through several manifests (OCI, Docker, other registries)
        manifests = set(self._index["images"].get(image_id, {}).get("manifests", []))
        manifests |= {manifest_digest} if manifest_digest else set()
        self._index["images"][image_id] = {
            "config": config.get("config") or {},
            "layers": layers,
            "size": sum(layer_info.get(d, {}).get("size", 0) for d in layers),
            "created": config.get("created", "") or "",
            "architecture": config.get("architecture", ""),
            "os": config.get("os", "linux"),
            "manifests": sorted(manifests),
        }
        for r in refs:
            self._index["refs"][r] = image_id
        self._save()
        return self._image(image_id, refs[0] if refs else "")

    def _store_blob(self, data: bytes, digest: str) -> None:
        path = self.root / "blobs" / "sha256" / _hex(digest)
        if not path.exists():
            tmp = self.root / "tmp" / f"blob-{secrets.token_hex(6)}"
            tmp.write_bytes(data)
            os.replace(tmp, path)

    @staticmethod
    def _check_config(config_bytes: bytes, what: str) -> tuple[dict, list[str]]:
        try:
            config = json.loads(config_bytes)
            diff_ids = list(config["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.InvalidArgument(f"image {what}: malformed image config ({exc})")
        for d in diff_ids:
            _hex(d)
        return config, diff_ids

    async def _ensure_layer(self, diff_id: str, what: str,
                            fetch: Callable[[], Awaitable[tuple[Path, bool]]],
                            blob_digest: Optional[str],
                            unpack: Optional[Callable[[Path, Path], Awaitable[dict]]] = None
                            ) -> None:
        """Unpack one layer unless it is there already; `fetch` gives the blob's path and
        whether it is a temporary file to delete afterwards. `unpack` (blob, staging) stands
        in for the unpack child: a build moves its settled step dir there (or unpacks in its
        own helper); what it returns is checked all the same."""
        lock = self._layer_locks.setdefault(diff_id, asyncio.Lock())
        async with lock:
            final = self.root / "layers" / _hex(diff_id)
            if final.is_dir() and diff_id in self._index["layers"]:
                return
            blob, temporary = await fetch()
            staging = self.root / "tmp" / f"layer-{_hex(diff_id)[:12]}-{secrets.token_hex(4)}"
            try:
                result = await (unpack(blob, staging) if unpack is not None else
                                _run_helper("unpack-layer", str(blob), str(staging)))
                if blob_digest and result["blob_digest"] != blob_digest:
                    raise errors.InvalidArgument(
                        f"image {what}: layer blob {blob_digest} is corrupt (its content "
                        f"hashes to {result['blob_digest']})")
                if result["diff_id"] != diff_id:
                    raise errors.InvalidArgument(
                        f"image {what}: layer {diff_id} does not match the image config (its "
                        f"uncompressed content hashes to {result['diff_id']})")
                if final.exists():  # unpacked before, but the index lost it (crash)
                    await remove_tree(final, self.root / "tmp")
                os.rename(staging, final)
                kept = await self._keep_layer_blob(
                    blob, temporary or blob.resolve().is_relative_to((self.root / "tmp").resolve()),
                    result["blob_digest"])
            finally:
                if staging.exists():
                    await remove_tree(staging, self.root / "tmp")
                if temporary:
                    blob.unlink(missing_ok=True)
            self._index["layers"][diff_id] = {"size": result["size"]}
            self._index["layers"][diff_id].update(kept)
            self._save()

    # -- import --
    async def import_archive(self, path: Path, ref: Optional[str] = None) -> Image:
        """Import an OCI image layout (directory or tar) or a `docker save` tarball
        (worker/images/importers.py).

        With `ref`, the archive's image of that name (or its only image) is tagged `ref`.
        Without, every image in the archive is imported under the names the archive gives
        (a layout's bare tag like "1" is no name: such an image is known by its id only);
        the first is returned.
        """
        return await importers.import_archive(self, path, ref)

    # -- pull --
    async def pull(self, ref: str, **options) -> Image:
        """Pull from the registry `ref` names (worker/images/registry.py: insecure registries,
        credentials, the certs.d directory)."""
        started, ok = time.monotonic(), False
        try:
            image = await registry.pull(self, ref, **options)
            ok = True
            return image
        finally:
            for observe in self.pull_observers:
                observe(time.monotonic() - started, ok)
