"""Image metadata: the Image record, media types, digests, manifest checks, the platform pick."""
from __future__ import annotations

import hashlib
import json
import platform
import re
from dataclasses import dataclass, field
from typing import Any

from common import errors

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_V1 = ("application/vnd.docker.distribution.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
ACCEPT = ", ".join((MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_DOCKER_LIST))

MAX_MANIFEST_BYTES = 4 << 20


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


# ---- digests, manifests, platforms --------------------------------------------------------
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
