"""The node's image store: content-addressed, layers unpacked once and shared.

Layout under the store's root (`<data-root>/images`):

    index.json               refs → image ids, image records, layer sizes (written atomically)
    blobs/sha256/<hex>       image configs and manifests, as fetched (verified by digest)
    layers/<hex>/            one unpacked layer per diff id (the digest of the uncompressed
                             tar), in overlayfs form: whiteouts are 0/0 character devices,
                             opaque directories carry trusted.overlay.opaque=y
    tmp/                     downloads and unpacks in progress (emptied at start)

An image's id is its config digest; its layers are its diff ids, lowest first. Compressed layer
blobs are not kept once unpacked: containers only need the unpacked form, and a diff id names
the same layer whatever its compression, so images pulled and imported share layers.

Unpacking (and extracting an imported archive) is in worker/unpack.py and runs in a child
process (`python -m worker.unpack`): it is CPU and disk bound and must not stall the daemon's
event loop, and the daemon runs no threads of its own. An extracted archive may hold symlinks
(`docker save` shares layer files with them), so every file read from it goes through
`_inside`, which resolves the path and refuses one that leaves the extraction directory.

Images come from `import_archive` (an OCI image layout, as a directory or a tar, or a `docker
save` tarball) or from `pull` (distribution API v2 over aiohttp, anonymous bearer tokens).
A reference without a registry host (`busybox:1`) only ever names an imported image: there is
no default registry (this daemon may have no internet, and a silent Docker Hub pull would make
what runs depend on what the internet serves that day).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import platform
import re
import secrets
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from common import errors
from common.imageref import parse_ref
from common.fsutil import read_json, write_json
from worker.unpack import main as unpack_main

log = logging.getLogger("shoal.images")

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_V1 = ("application/vnd.docker.distribution.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
ACCEPT = ", ".join((MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_DOCKER_LIST))

ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_CONTAINERD_NAME = "io.containerd.image.name"

MAX_MANIFEST_BYTES = 4 << 20

NOT_FOUND_HINT = ("import it with 'shoal image import FILE {ref}' or pull it from a registry "
                  "(name the registry in the reference: HOST:PORT/{ref})")


# ---- references: Docker's grammar, shared with the managers (common/imageref.py) -------------
def normalize_ref(ref: str) -> str:
    return str(parse_ref(ref))


# ---- image records ------------------------------------------------------------------------
@dataclass
class Image:
    ref: str                      # the reference it was asked for (or its first), "" if untagged
    id: str                       # config digest, "sha256:..."
    config: dict                  # the runtime part of the image config (Env, Cmd, ...)
    layers: list[str]             # diff ids, lowest first
    size: int                     # bytes of the unpacked layers' files
    created: str                  # from the image config (RFC 3339), "" if absent
    refs: list[str] = field(default_factory=list)  # every reference naming this image
    architecture: str = ""
    os: str = "linux"


def host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm",
            "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}.get(machine, machine)


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise errors.InvalidArgument(f"unsupported or malformed digest {digest!r} "
                                     "(only sha256 is supported)")
    return hexpart


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pick_platform(index: dict, what: str) -> dict:
    """The descriptor for linux/<host arch> in an image index / manifest list."""
    arch = host_arch()
    want_variant = {"arm64": "v8"}.get(arch, "")
    found = []
    best = None
    for desc in index.get("manifests", []):
        plat = desc.get("platform") or {}
        found.append(f"{plat.get('os', '?')}/{plat.get('architecture', '?')}"
                     + (f"/{plat['variant']}" if plat.get("variant") else ""))
        if plat.get("os") != "linux" or plat.get("architecture") != arch:
            continue
        if best is None or plat.get("variant", "") == want_variant:
            best = desc
    if best is None:
        raise errors.NotFound(f"image {what} has no linux/{arch} variant (it has: "
                              f"{', '.join(found) or 'none'})", field="image")
    return best


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
                del self._index["layers"][diff_id]
                doomed.append(self.root / "layers" / _hex(diff_id))
        for blob in [image_id, *rec.get("manifests", [])]:
            if blob not in used_blobs:
                doomed.append(self.root / "blobs" / "sha256" / _hex(blob))
        return doomed

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
                            blob_digest: Optional[str]) -> None:
        """Unpack one layer unless it is there already; `fetch` gives the blob's path and
        whether it is a temporary file to delete afterwards."""
        lock = self._layer_locks.setdefault(diff_id, asyncio.Lock())
        async with lock:
            final = self.root / "layers" / _hex(diff_id)
            if final.is_dir() and diff_id in self._index["layers"]:
                return
            blob, temporary = await fetch()
            staging = self.root / "tmp" / f"layer-{_hex(diff_id)[:12]}-{secrets.token_hex(4)}"
            try:
                result = await _run_helper("unpack-layer", str(blob), str(staging))
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
            finally:
                if staging.exists():
                    await remove_tree(staging, self.root / "tmp")
                if temporary:
                    blob.unlink(missing_ok=True)
            self._index["layers"][diff_id] = {"size": result["size"]}
            self._save()

    # -- import --
    async def import_archive(self, path: Path, ref: Optional[str] = None) -> Image:
        """Import an OCI image layout (directory or tar) or a `docker save` tarball.

        With `ref`, the archive's image of that name (or its only image) is tagged `ref`.
        Without, every image in the archive is imported under the names the archive gives
        (a layout's bare tag like "1" is no name: such an image is known by its id only);
        the first is returned.
        """
        path = Path(path)
        norm = normalize_ref(ref) if ref else None
        if not path.exists():
            raise errors.InvalidArgument(f"image archive {path} does not exist", field="path")
        staging: Optional[Path] = None
        try:
            if path.is_dir():
                src = path
            else:
                staging = self.root / "tmp" / f"archive-{secrets.token_hex(6)}"
                await _run_helper("extract-archive", str(path), str(staging))
                src = staging
            what = str(path)
            if _inside(src, "index.json", what).is_file() and \
                    _inside(src, "oci-layout", what).is_file():
                images = await self._import_oci_layout(src, norm, what)
            elif _inside(src, "manifest.json", what).is_file():
                images = await self._import_docker_save(src, norm, str(path))
            else:
                raise errors.InvalidArgument(
                    f"{path} is neither an OCI image layout (oci-layout, index.json) nor a "
                    "'docker save' archive (manifest.json)", field="path")
        finally:
            if staging is not None:
                await remove_tree(staging, self.root / "tmp")
        return images[0]

    async def _import_oci_layout(self, src: Path, ref: Optional[str], what: str) -> list[Image]:
        index = _read_json_file(_archive_file(src, "index.json", what), what)
        descs = index.get("manifests") or []
        if not descs:
            raise errors.InvalidArgument(f"OCI layout {what} holds no image", field="path")

        def names(desc: dict) -> list[str]:
            ann = desc.get("annotations") or {}
            return [n for n in (ann.get(ANN_CONTAINERD_NAME), ann.get(ANN_REF_NAME)) if n]

        chosen: list[tuple[dict, list[str]]] = []
        if ref is not None:
            r = parse_ref(ref)
            # a full name beats a bare tag ("busybox:1" over "1")
            match = [d for d in descs
                     if any(n == ref or normalize_ref_or_empty(n) == ref for n in names(d))]
            match = match or [d for d in descs if r.tag and r.tag in names(d)]
            if not match and len(descs) == 1:
                match = descs
            if not match:
                have = sorted({n for d in descs for n in names(d)})
                raise errors.InvalidArgument(
                    f"OCI layout {what} has no image named {ref} or tagged {r.tag!r} (it has: "
                    f"{', '.join(have) or 'only unnamed images'})", field="path")
            chosen = [(match[0], [ref])]
        else:
            for d in descs:
                refs = [normalize_ref_or_empty(n) for n in names(d) if ":" in n or "/" in n]
                chosen.append((d, sorted({r for r in refs if r})))
        out = []
        for desc, refs in chosen:
            label = refs[0] if refs else what
            manifest_bytes, manifest_digest = self._layout_manifest(src, desc, label)
            manifest = _parse_json(manifest_bytes, f"image {label}: manifest")
            out.append(await self._install_from_layout(src, manifest, manifest_digest,
                                                       manifest_bytes, refs, label))
        return out

    def _layout_manifest(self, src: Path, desc: dict, what: str) -> tuple[bytes, str]:
        """Follow a descriptor through nested indexes to one manifest (host platform)."""
        for _ in range(4):
            data = _layout_blob(src, desc["digest"], what, MAX_MANIFEST_BYTES)
            body = _parse_json(data, f"image {what}: manifest")
            media = body.get("mediaType") or desc.get("mediaType", "")
            if media in INDEX_TYPES or ("manifests" in body and "layers" not in body):
                desc = pick_platform(body, what)
                continue
            return data, desc["digest"]
        raise errors.InvalidArgument(f"image {what}: image indexes nested too deeply")

    async def _install_from_layout(self, src: Path, manifest: dict, manifest_digest: str,
                                   manifest_bytes: bytes, refs: list[str], what: str) -> Image:
        _check_manifest(manifest, what)
        config_digest = manifest["config"]["digest"]
        config_bytes = _layout_blob(src, config_digest, what, MAX_MANIFEST_BYTES)
        config, diff_ids = self._check_config(config_bytes, what)
        layers = manifest["layers"]
        if len(layers) != len(diff_ids):
            raise errors.InvalidArgument(f"image {what}: manifest lists {len(layers)} layers, "
                                         f"config {len(diff_ids)}")
        for desc, diff_id in zip(layers, diff_ids):
            blob = _layout_path(src, desc["digest"], what)

            async def fetch(blob: Path = blob) -> tuple[Path, bool]:
                return blob, False
            await self._ensure_layer(diff_id, what, fetch, desc["digest"])
        self._store_blob(config_bytes, config_digest)
        self._store_blob(manifest_bytes, manifest_digest)
        return self._record(config_digest, config, diff_ids, refs, manifest_digest)

    async def _import_docker_save(self, src: Path, ref: Optional[str], what: str) -> list[Image]:
        entries = _read_json_file(_archive_file(src, "manifest.json", what), what)
        if not isinstance(entries, list) or not entries:
            raise errors.InvalidArgument(f"{what}: manifest.json lists no image", field="path")
        if ref is not None:
            match = [e for e in entries
                     if ref in [normalize_ref_or_empty(t) for t in e.get("RepoTags") or []]]
            if not match and len(entries) == 1:
                match = entries
            if not match:
                have = sorted(t for e in entries for t in e.get("RepoTags") or [])
                raise errors.InvalidArgument(f"{what} has no image named {ref} (it has: "
                                             f"{', '.join(have) or 'only untagged images'})",
                                             field="path")
            chosen = [(match[0], [ref])]
        else:
            chosen = [(e, sorted({normalize_ref_or_empty(t) for t in e.get("RepoTags") or []}
                                 - {""})) for e in entries]
        out = []
        for entry, refs in chosen:
            label = refs[0] if refs else what
            config_bytes = _archive_file(src, entry.get("Config", ""), what).read_bytes()
            config_digest = _sha256(config_bytes)
            config, diff_ids = self._check_config(config_bytes, label)
            paths = entry.get("Layers") or []
            if len(paths) != len(diff_ids):
                raise errors.InvalidArgument(f"image {label}: manifest.json lists {len(paths)} "
                                             f"layers, the config {len(diff_ids)}")
            for rel, diff_id in zip(paths, diff_ids):
                blob = _archive_file(src, rel, label)

                async def fetch(blob: Path = blob) -> tuple[Path, bool]:
                    return blob, False
                # docker save layers are usually uncompressed: the diff id check covers them
                await self._ensure_layer(diff_id, label, fetch, None)
            self._store_blob(config_bytes, config_digest)
            out.append(self._record(config_digest, config, diff_ids, refs))
        return out

    # -- pull --
    async def pull(self, ref: str, *, insecure_registries: frozenset[str] = frozenset()) -> Image:
        r = parse_ref(ref)
        norm = str(r)
        if not r.host:
            raise errors.NotFound(
                f"image {norm} not found on this node, and its reference names no registry: "
                f"import it with 'shoal image import FILE {norm}', or pull it from a registry "
                f"by naming one (HOST:PORT/{norm}); shoal has no default registry",
                field="image")
        import aiohttp  # only pulls need it; the unpack helper process stays light
        timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_connect=15, sock_read=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            reg = RegistryClient(session, r.host, r.repo, r.host in insecure_registries)
            manifest_bytes, manifest_digest = await reg.manifest(r.digest or r.tag, norm)
            manifest = _parse_json(manifest_bytes, f"image {norm}: manifest")
            media = manifest.get("mediaType", "")
            if media in INDEX_TYPES or ("manifests" in manifest and "layers" not in manifest):
                desc = pick_platform(manifest, norm)
                manifest_bytes, manifest_digest = await reg.manifest(desc["digest"], norm)
                manifest = _parse_json(manifest_bytes, f"image {norm}: manifest")
            _check_manifest(manifest, norm)
            config_desc = manifest["config"]
            config_bytes = await reg.small_blob(config_desc["digest"], norm)
            config, diff_ids = self._check_config(config_bytes, norm)
            if len(manifest["layers"]) != len(diff_ids):
                raise errors.InvalidArgument(f"image {norm}: manifest lists "
                                             f"{len(manifest['layers'])} layers, config "
                                             f"{len(diff_ids)}")
            # Layers download in parallel (a few at a time), each unpacked as soon as it is in.
            gate = asyncio.Semaphore(3)

            async def one(desc: dict, diff_id: str) -> None:
                async def fetch() -> tuple[Path, bool]:
                    async with gate:
                        dest = self.root / "tmp" / f"dl-{_hex(desc['digest'])[:12]}-" \
                                                   f"{secrets.token_hex(4)}"
                        await reg.blob_to_file(desc, dest, norm)
                        return dest, True
                await self._ensure_layer(diff_id, norm, fetch, desc["digest"])

            await asyncio.gather(*(one(d, i) for d, i in zip(manifest["layers"], diff_ids)))
        self._store_blob(config_bytes, config_desc["digest"])
        self._store_blob(manifest_bytes, manifest_digest)
        log.info("pulled %s (%s)", norm, config_desc["digest"][:19])
        return self._record(config_desc["digest"], config, diff_ids, [norm], manifest_digest)


def normalize_ref_or_empty(ref: str) -> str:
    try:
        return normalize_ref(ref)
    except errors.InvalidArgument:
        return ""


def _check_manifest(manifest: dict, what: str) -> None:
    media = manifest.get("mediaType", "")
    if media in MT_DOCKER_V1 or manifest.get("schemaVersion") == 1:
        raise errors.InvalidArgument(f"image {what} uses Docker manifest schema 1, which shoal "
                                     "does not read: push it again with a current client")
    if media and media not in MANIFEST_TYPES:
        raise errors.InvalidArgument(f"image {what}: unsupported manifest type {media}")
    if not isinstance(manifest.get("config"), dict) or not isinstance(manifest.get("layers"), list):
        raise errors.InvalidArgument(f"image {what}: malformed manifest (no config or layers)")
    for layer in manifest["layers"]:
        if "foreign" in layer.get("mediaType", "") or "nondistributable" in layer.get(
                "mediaType", ""):
            raise errors.InvalidArgument(f"image {what} has a foreign layer ({layer['digest']}), "
                                         "which shoal does not fetch")


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise errors.InvalidArgument(f"{what} is not valid JSON ({exc})")


def _read_json_file(path: Path, what: str) -> Any:
    try:
        return _parse_json(path.read_bytes(), f"{what}: {path.name}")
    except OSError as exc:
        raise errors.InvalidArgument(f"{what}: cannot read {path.name} ({exc.strerror})")


def _inside(root: Path, rel: str, what: str) -> Path:
    """`root / rel` with every symlink resolved, refused unless it stays within `root`: an
    extracted archive keeps its relative symlinks, and a chain of them (`s -> .`,
    `t -> s/..`) can point out of it although each one alone stays inside."""
    if not isinstance(rel, str):
        raise errors.InvalidArgument(f"{what}: path {rel!r} is not a string")
    try:
        path = (root / rel).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: a symlink loop (3.11)
        raise errors.InvalidArgument(f"{what}: path {rel!r} cannot be resolved ({exc})")
    if not path.is_relative_to(root.resolve()):
        raise errors.InvalidArgument(f"{what}: path {rel!r} leaves the archive")
    return path


def _archive_file(root: Path, rel: str, what: str) -> Path:
    path = _inside(root, rel, what)
    if not path.is_file():
        raise errors.InvalidArgument(f"{what}: {rel!r} is missing from the archive")
    return path


def _layout_path(src: Path, digest: str, what: str) -> Path:
    return _archive_file(src, f"blobs/sha256/{_hex(digest)}", what)


def _layout_blob(src: Path, digest: str, what: str, limit: int) -> bytes:
    path = _layout_path(src, digest, what)
    if path.stat().st_size > limit:
        raise errors.InvalidArgument(f"image {what}: blob {digest} is implausibly large")
    data = path.read_bytes()
    if _sha256(data) != digest:
        raise errors.InvalidArgument(f"image {what}: blob {digest} is corrupt (content hashes to "
                                     f"{_sha256(data)})")
    return data


# ---- registry client ----------------------------------------------------------------------
_CHALLENGE_RE = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_www_authenticate(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://auth/token",service="reg",scope="repository:a/b:pull"` →
    ("bearer", {"realm": ..., "service": ..., "scope": ...})."""
    header = header.strip()
    scheme, _, rest = header.partition(" ")
    params = {}
    for m in _CHALLENGE_RE.finditer(rest):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return scheme.lower(), params


class RegistryClient:
    """One repository on one registry, for one pull: HTTPS unless the registry is listed as
    insecure (then plain HTTP), anonymous bearer tokens on demand."""

    def __init__(self, session, host: str, repo: str, insecure: bool) -> None:
        self.session = session
        self.host = host
        self.repo = repo
        self.insecure = insecure
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self.token: Optional[str] = None

    async def _request(self, url: str, what: str, headers: Optional[dict] = None):
        """GET with the bearer-token dance; returns an open response (caller releases it)."""
        import aiohttp
        headers = dict(headers or {})
        for attempt in range(2):
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            try:
                resp = await self.session.get(url, headers=headers)
            except aiohttp.ClientSSLError as exc:
                raise errors.Unavailable(
                    f"cannot pull {what}: registry {self.host} does not speak verifiable HTTPS "
                    f"({_reason(exc)}); if it is a plain-HTTP registry, allow it with "
                    f"--insecure-registry {self.host}", field="image")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                hint = "" if self.insecure else (
                    f" (if it is a plain-HTTP registry, allow it with --insecure-registry "
                    f"{self.host})" if _looks_like_tls_mismatch(exc) else "")
                raise errors.Unavailable(f"cannot pull {what}: registry {self.host} is "
                                         f"unreachable ({_reason(exc)}){hint}", field="image")
            if resp.status != 401 or attempt == 1:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.release()
            scheme, params = parse_www_authenticate(challenge)
            if scheme != "bearer" or "realm" not in params:
                raise errors.PermissionDenied(
                    f"cannot pull {what}: registry {self.host} asks for {scheme or 'unknown'} "
                    "authentication; shoal pulls anonymously (bearer tokens only)", field="image")
            self.token = await self._fetch_token(params, what)
        raise AssertionError("unreachable")

    async def _fetch_token(self, params: dict[str, str], what: str) -> str:
        import aiohttp
        query = {k: params[k] for k in ("service",) if params.get(k)}
        query["scope"] = params.get("scope") or f"repository:{self.repo}:pull"
        try:
            async with self.session.get(params["realm"], params=query) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise errors.PermissionDenied(
                        f"cannot pull {what}: the token service {params['realm']} refused "
                        f"anonymous access to {query['scope']} (HTTP {resp.status})",
                        field="image")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise errors.Unavailable(f"cannot pull {what}: token service {params['realm']} is "
                                     f"unreachable ({_reason(exc)})", field="image")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise errors.Unavailable(f"cannot pull {what}: the token service {params['realm']} "
                                     "answered without a token", field="image")
        return token

    async def _fail(self, resp, what: str, thing: str) -> None:
        body = (await resp.read())[:2000]
        codes = []
        try:
            codes = [e.get("code", "") for e in json.loads(body).get("errors", [])]
        except (ValueError, AttributeError):
            pass
        if resp.status == 404 or {"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"} & set(codes):
            raise errors.NotFound(f"{thing} not found on registry {self.host}", field="image")
        if resp.status == 401 or resp.status == 403:
            raise errors.PermissionDenied(
                f"cannot pull {what}: access denied by registry {self.host} (HTTP {resp.status}):"
                " the repository does not exist or needs credentials (shoal pulls anonymously)",
                field="image")
        raise errors.Unavailable(f"cannot pull {what}: registry {self.host} answered HTTP "
                                 f"{resp.status} for {thing} ({', '.join(codes) or 'no detail'})",
                                 field="image")

    async def manifest(self, reference: str, what: str) -> tuple[bytes, str]:
        url = f"{self.base}/v2/{self.repo}/manifests/{reference}"
        resp = await self._request(url, what, {"Accept": ACCEPT})
        try:
            if resp.status != 200:
                thing = (f"manifest {reference} of {self.host}/{self.repo}"
                         if reference.startswith("sha256:")
                         else f"tag {reference!r} of image {self.host}/{self.repo}")
                await self._fail(resp, what, thing)
            data = await resp.content.read(MAX_MANIFEST_BYTES + 1)
            if len(data) > MAX_MANIFEST_BYTES:
                raise errors.InvalidArgument(f"image {what}: manifest is implausibly large")
            digest = _sha256(data)
            claimed = resp.headers.get("Docker-Content-Digest", "")
            expected = reference if reference.startswith("sha256:") else claimed
            if expected.startswith("sha256:") and digest != expected:
                raise errors.InvalidArgument(f"image {what}: manifest from {self.host} does not "
                                             f"match its digest {expected} (got {digest})")
            return data, digest
        finally:
            resp.release()

    async def small_blob(self, digest: str, what: str) -> bytes:
        resp = await self._request(f"{self.base}/v2/{self.repo}/blobs/{digest}", what)
        try:
            if resp.status != 200:
                await self._fail(resp, what, f"blob {digest} of {self.host}/{self.repo}")
            data = await resp.content.read(MAX_MANIFEST_BYTES + 1)
        finally:
            resp.release()
        if _sha256(data) != digest:
            raise errors.InvalidArgument(f"image {what}: blob {digest} from {self.host} is "
                                         f"corrupt (content hashes to {_sha256(data)})")
        return data

    async def blob_to_file(self, desc: dict, dest: Path, what: str) -> None:
        import aiohttp
        digest = desc["digest"]
        resp = await self._request(f"{self.base}/v2/{self.repo}/blobs/{digest}", what)
        h = hashlib.sha256()
        size = 0
        try:
            if resp.status != 200:
                await self._fail(resp, what, f"layer {digest} of {self.host}/{self.repo}")
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            dest.unlink(missing_ok=True)
            raise errors.Unavailable(f"cannot pull {what}: download of layer {digest} from "
                                     f"{self.host} failed ({_reason(exc)})", field="image")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            resp.release()
        got = "sha256:" + h.hexdigest()
        if got != digest or (desc.get("size") and size != desc["size"]):
            dest.unlink(missing_ok=True)
            raise errors.InvalidArgument(f"image {what}: layer {digest} from {self.host} is "
                                         f"corrupt (got {size} bytes hashing to {got})")


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _looks_like_tls_mismatch(exc: BaseException) -> bool:
    """A plain-HTTP server hangs up on (or garbles) a TLS handshake."""
    if isinstance(exc, ConnectionResetError) or "ServerDisconnected" in type(exc).__name__:
        return True
    text = str(exc).lower()
    return "wrong version" in text or "record layer" in text or "reset by peer" in text


# ---- deleting trees -----------------------------------------------------------------------
def _rmtree_now(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


async def remove_tree(path: Path, trash_dir: Optional[Path] = None) -> None:
    """Delete a directory tree without stalling the event loop: rename it out of the way
    (instant, so nobody sees it half-deleted), then delete it here, yielding to the loop every
    few hundred entries. (No `rm -rf` child: a task cancelled while spawning one can hang
    forever on Python 3.11, CPython gh-105288.) Never crosses into another filesystem: a
    directory on another device (a mount still in place) fails the deletion instead."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    target = path
    if trash_dir is not None:
        target = Path(trash_dir) / f"trash-{secrets.token_hex(6)}"
        try:
            os.rename(path, target)
        except OSError:
            target = path
    st = os.lstat(target)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(target)
        return
    stack: list[tuple[str, bool]] = [(str(target), False)]
    done = 0
    while stack:
        current, emptied = stack.pop()
        if emptied:
            os.rmdir(current)
            continue
        stack.append((current, True))
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.stat(follow_symlinks=False).st_dev != st.st_dev:
                        raise errors.ShoalError(f"cannot delete {path}: {entry.path} is on "
                                                "another filesystem (still mounted?)")
                    stack.append((entry.path, False))
                else:
                    os.unlink(entry.path)
                done += 1
                if done % 500 == 0:
                    await asyncio.sleep(0)


async def finish_then_cancel(coro: Awaitable):
    """Await `coro` to its end even when the caller is cancelled meanwhile (the cancellation
    is re-raised afterwards). For child processes: cancelling a task inside
    asyncio.create_subprocess_exec can hang it forever (CPython gh-103847, gh-105288), and a
    runtime command cut short leaves half-made containers."""
    inner = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(inner)
            break
        except asyncio.CancelledError:
            if inner.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result


# ---- the helper process -------------------------------------------------------------------
async def _run_helper(*argv: str) -> dict:
    async def run() -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.unpack", *argv,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        return proc.returncode or 0, out, err

    proc_rc, out, err = await finish_then_cancel(run())
    if proc_rc != 0:
        msg = err.decode(errors="replace").strip().splitlines()
        raise errors.InvalidArgument(msg[-1] if msg else f"{argv[0]} failed (exit {proc_rc})")
    return json.loads(out or b"{}")


if __name__ == "__main__":
    # The helper used to live here: `python -m worker.images unpack-layer|extract-archive`
    # still works (an older daemon's child during an upgrade, scripts).
    sys.exit(unpack_main(sys.argv[1:]))
