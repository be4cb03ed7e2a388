"""The node's image store: content-addressed, layers unpacked once and shared.

Layout under the store's root (`<data-root>/images`):

    index.json               refs → image ids, image records, layer sizes (written atomically)
    blobs/sha256/<hex>       image configs and manifests, as fetched (verified by digest),
                             and each layer's blob as it came (for save and push)
    layers/<hex>/            one unpacked layer per diff id (the digest of the uncompressed
                             tar), in overlayfs form: whiteouts are 0/0 character devices,
                             opaque directories carry trusted.overlay.opaque=y
    tmp/                     downloads and unpacks in progress (emptied at start)

An image's id is its config digest; its layers are its diff ids, lowest first, and a diff id
names the same layer whatever its compression, so images pulled and loaded share layers. Each
layer's blob is kept beside its unpacked form (hard-linked where it can be): a tar rebuilt from
the unpacked files would not hash to the layer's digest, and `image save` and `push` must keep
the image's digests.

Unpacking (and extracting an imported archive) is in unpack.py and runs in a child process
(`python -m worker.images.unpack`, started by trees.py): it is CPU and disk bound and must not
stall the daemon's event loop, and the daemon runs no threads of its own. An extracted archive
may hold symlinks (`docker save` shares layer files with them), so every file read from it goes
through `importers._inside`, which resolves the path and refuses one that leaves the extraction
directory.

Images come from `import_archive` (importers.py: an OCI image layout, as a directory or a tar,
or a `docker save` tarball), from `pull` (registry.py: distribution API v2 over aiohttp, basic
auth and bearer tokens with the caller's credentials or anonymous, certs.d CAs) or from a build
(build/: a Dockerfile's steps, RUN in runc over overlayfs, each step a layer, a step cache). A reference without a registry host (`busybox:1`) only ever names an
imported image: there is no default registry (this daemon may have no internet, and a silent
Docker Hub pull would make what runs depend on what the internet serves that day).

The modules: store (ImageStore: the index, records, layers, removal), importers, registry,
push (uploads), save (`docker save` tarballs), prune (unused images and layers, usage), build/,
manifests (the Image record, media types, digests, manifest checks), references, trees
(deleting trees, the unpack child), unpack (tar unpacking: whiteouts and path escapes).
"""
from __future__ import annotations

import importlib
from typing import Any

# What other modules import from `worker.images`, and the module that defines it. Loaded on
# first use rather than here: the unpack child (`python -m worker.images.unpack`) imports this
# package first, and should load the standard library only, as before, so that it starts fast.
_EXPORTS = {
    "Image": "manifests",
    "ImageStore": "store",
    "finish_then_cancel": "trees",
    "normalize_ref": "references",
    "parse_ref": "references",
    "parse_www_authenticate": "registry",
    "pick_platform": "manifests",
    "remove_tree": "trees",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
