"""Images from files: an OCI image layout (a directory or a tar) or a `docker save` tarball."""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Optional

from common import errors
from common.imageref import parse_ref
from worker.images.manifests import (INDEX_TYPES, MAX_MANIFEST_BYTES, Image, _check_manifest,
                                     _hex, _parse_json, _sha256, pick_platform)
from worker.images.references import normalize_ref, normalize_ref_or_empty
from worker.images.trees import _run_helper, remove_tree

ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_CONTAINERD_NAME = "io.containerd.image.name"


async def import_archive(store, path: Path, ref: Optional[str] = None) -> Image:
    """ImageStore.import_archive (see there): a tar is extracted first, in the unpack child;
    every file read from the archive goes through `_inside`."""
    path = Path(path)
    norm = normalize_ref(ref) if ref else None
    if not path.exists():
        raise errors.InvalidArgument(f"image archive {path} does not exist", field="path")
    staging: Optional[Path] = None
    try:
        if path.is_dir():
            src = path
        else:
            staging = store.root / "tmp" / f"archive-{secrets.token_hex(6)}"
            await _run_helper("extract-archive", str(path), str(staging))
            src = staging
        what = str(path)
        if _inside(src, "index.json", what).is_file() and \
                _inside(src, "oci-layout", what).is_file():
            images = await _import_oci_layout(store, src, norm, what)
        elif _inside(src, "manifest.json", what).is_file():
            images = await _import_docker_save(store, src, norm, str(path))
        else:
            raise errors.InvalidArgument(
                f"{path} is neither an OCI image layout (oci-layout, index.json) nor a "
                "'docker save' archive (manifest.json)", field="path")
    finally:
        if staging is not None:
            await remove_tree(staging, store.root / "tmp")
    return images[0]


async def _import_oci_layout(store, src: Path, ref: Optional[str], what: str) -> list[Image]:
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
        manifest_bytes, manifest_digest = _layout_manifest(src, desc, label)
        manifest = _parse_json(manifest_bytes, f"image {label}: manifest")
        out.append(await _install_from_layout(store, src, manifest, manifest_digest,
                                              manifest_bytes, refs, label))
    return out


def _layout_manifest(src: Path, desc: dict, what: str) -> tuple[bytes, str]:
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


async def _install_from_layout(store, src: Path, manifest: dict, manifest_digest: str,
                               manifest_bytes: bytes, refs: list[str], what: str) -> Image:
    _check_manifest(manifest, what)
    config_digest = manifest["config"]["digest"]
    config_bytes = _layout_blob(src, config_digest, what, MAX_MANIFEST_BYTES)
    config, diff_ids = store._check_config(config_bytes, what)
    layers = manifest["layers"]
    if len(layers) != len(diff_ids):
        raise errors.InvalidArgument(f"image {what}: manifest lists {len(layers)} layers, "
                                     f"config {len(diff_ids)}")
    for desc, diff_id in zip(layers, diff_ids):
        blob = _layout_path(src, desc["digest"], what)

        async def fetch(blob: Path = blob) -> tuple[Path, bool]:
            return blob, False
        await store._ensure_layer(diff_id, what, fetch, desc["digest"])
    store._store_blob(config_bytes, config_digest)
    store._store_blob(manifest_bytes, manifest_digest)
    return store._record(config_digest, config, diff_ids, refs, manifest_digest)


async def _import_docker_save(store, src: Path, ref: Optional[str], what: str) -> list[Image]:
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
        config, diff_ids = store._check_config(config_bytes, label)
        paths = entry.get("Layers") or []
        if len(paths) != len(diff_ids):
            raise errors.InvalidArgument(f"image {label}: manifest.json lists {len(paths)} "
                                         f"layers, the config {len(diff_ids)}")
        for rel, diff_id in zip(paths, diff_ids):
            blob = _archive_file(src, rel, label)

            async def fetch(blob: Path = blob) -> tuple[Path, bool]:
                return blob, False
            # docker save layers are usually uncompressed: the diff id check covers them
            await store._ensure_layer(diff_id, label, fetch, None)
        store._store_blob(config_bytes, config_digest)
        out.append(store._record(config_digest, config, diff_ids, refs))
    return out


# ---- files of an extracted archive --------------------------------------------------------
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
