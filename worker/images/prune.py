"""`shoal image prune` and the image line of `shoal system df`: which images nothing needs,
removing them, and the layers and blobs no image uses any more.

Sizes are what the store holds on disk for a layer: its unpacked files plus its kept blob.
A layer shared by a kept and a removed image is not reclaimed, so it does not count.
"""
from __future__ import annotations

import os
from pathlib import Path

from common import errors
from worker.images.manifests import Image, _hex
from worker.images.trees import remove_tree


def _layer_bytes(store, diff_id: str) -> int:
    rec = store._index["layers"].get(diff_id, {})
    return int(rec.get("size", 0)) + int(rec.get("blob_size", 0))


def _in_use(store, image: Image) -> bool:
    return store.in_use is not None and bool(store.in_use(image.id))


def unused_images(store, all_unused: bool) -> list[Image]:
    """Dangling images (no tag left) no container uses, or with `all_unused` every image no
    container uses (docker's `image prune [-a]`)."""
    return [im for im in store.list()
            if (all_unused or not im.refs) and not _in_use(store, im)]


def usage(store) -> dict:
    """Images for `system df`: count, in use, bytes on disk (shared layers once), and bytes
    `image prune -a` would free."""
    images = store.list()
    kept = {d for im in images if _in_use(store, im) for d in im.layers}
    layers = set(store._index["layers"])
    size = sum(_layer_bytes(store, d) for d in layers)
    return {"count": len(images), "active": sum(1 for im in images if _in_use(store, im)),
            "size": size + _small_blobs_bytes(store),
            "reclaimable": sum(_layer_bytes(store, d) for d in layers - kept)}


def _small_blobs_bytes(store) -> int:
    """Configs and manifests (and nothing else kept in blobs/ but layer blobs)."""
    layer_blobs = {_hex(r["blob"]) for r in store._index["layers"].values() if r.get("blob")}
    total = 0
    for entry in os.scandir(store.root / "blobs" / "sha256"):
        if entry.name not in layer_blobs:
            try:
                total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                pass
    return total


async def prune(store, all_unused: bool = False) -> dict:
    """Remove the images `unused_images` names, then the layers and blobs no image uses.
    Returns {"deleted": ["untagged REF", "deleted ID", ...], "reclaimed": bytes}."""
    layers_before = {d: _layer_bytes(store, d) for d in store._index["layers"]}
    layer_blobs = {_hex(r["blob"]) for r in store._index["layers"].values() if r.get("blob")}
    blobs_before = _blob_sizes(store)
    done: list[str] = []
    for image in unused_images(store, all_unused):
        try:
            done += store.remove(image.id)
        except (errors.Conflict, errors.NotFound):
            continue  # taken into use, or removed, since the listing: keep going
    freed_dirs = await _sweep_orphans(store)
    after = _blob_sizes(store)
    reclaimed = freed_dirs + sum(size for d, size in layers_before.items()
                                 if d not in store._index["layers"])
    # configs, manifests and orphan blobs; a dropped layer's blob is in its size above
    reclaimed += sum(size for name, size in blobs_before.items()
                     if name not in after and name not in layer_blobs)
    return {"deleted": done, "reclaimed": reclaimed}


def _blob_sizes(store) -> dict[str, int]:
    out = {}
    for entry in os.scandir(store.root / "blobs" / "sha256"):
        try:
            out[entry.name] = entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    return out


async def _sweep_orphans(store) -> int:
    """Layer directories and blobs nothing in the index names (a failed pull's, an old
    layer dropped at start). Skipped while a layer is being installed: its directory and blob
    are on disk a moment before the index names them."""
    if any(lock.locked() for lock in store._layer_locks.values()):
        return 0
    index = store._index
    used_layers = {_hex(d) for rec in index["images"].values() for d in rec["layers"]}
    indexed = {_hex(d) for d in index["layers"]}  # their bytes the caller counts
    for diff_id in [d for d in index["layers"] if _hex(d) not in used_layers]:
        del index["layers"][diff_id]  # a record of a layer no image uses (crash, old prune)
    keep_blobs = {_hex(b) for i, rec in index["images"].items()
                  for b in [i, *rec.get("manifests", [])]}
    keep_blobs |= {_hex(r["blob"]) for r in index["layers"].values() if r.get("blob")}
    store._save()
    freed = 0
    doomed: list[Path] = []
    for entry in os.scandir(store.root / "layers"):
        if entry.name not in used_layers:
            if entry.name not in indexed:
                freed += await _tree_bytes(Path(entry.path))
            doomed.append(Path(entry.path))
    for entry in os.scandir(store.root / "blobs" / "sha256"):
        if entry.name not in keep_blobs:
            doomed.append(Path(entry.path))  # counted by the caller, from the blob listing
    for path in doomed:
        await remove_tree(path, store.root / "tmp")
    return freed


async def _tree_bytes(path: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def remove_image(store, ref: str, force: bool = False) -> list[str]:
    """docker's `image rm [-f]`: untag, and delete the image once no tag is left. An image a
    container on this node uses is refused; with `force` its tags go and the image stays,
    dangling, until no container uses it (its layers are under that container's root)."""
    try:
        return store.remove(ref)
    except errors.Conflict:
        if not force:
            raise
    image = store.require(ref)
    untag = list(image.refs)  # refused only when these were the last tags
    for r in untag:
        del store._index["refs"][r]
    store._save()
    return [f"untagged {r}" for r in untag]
