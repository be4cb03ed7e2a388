"""`shoal image push`: an image of the store to a registry (distribution API v2 uploads).

Each blob is asked for first (HEAD: one the registry has is not sent again), then uploaded:
in one PUT when small, otherwise streamed from its file in one PATCH (progress every
`chunk_size` bytes) and closed by a PUT with its digest. The layers go as the store
kept them (gzip stays gzip; a plain tar goes as a plain OCI layer), so their digests are the
ones the image came with; the manifest the image was pulled or loaded through is sent again
byte for byte when it still describes these blobs, so the pushed digest is the one already
known. Requests go through RegistryClient.send: the auth dance (basic, bearer with the push
scope the registry's challenge names) is registry.py's, with the caller's credentials.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Awaitable, Callable, Optional

from common import errors
from common.registryauth import Credentials
from worker.images.manifests import (MANIFEST_TYPES, MAX_MANIFEST_BYTES, MT_OCI_MANIFEST, Image,
                                     _hex, _sha256)
from worker.images.references import parse_ref
from worker.images.registry import DEFAULT_CERTS_DIR, RegistryClient, ssl_context_for
from worker.images.save import StoredLayer, config_blob, stored_layers

log = logging.getLogger("shoal.images")

MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {"": "application/vnd.oci.image.layer.v1.tar",
               "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}
CHUNK_SIZE = 16 << 20  # a blob up to this goes in one PUT; a bigger one is streamed
READ_SIZE = 1 << 20  # a streamed blob is read this much at a time (the loop never waits long)

Progress = Callable[[dict], Awaitable[None]]


async def push(store, ref: str, *, insecure_registries: frozenset[str] = frozenset(),
               credentials: Optional[Credentials] = None,
               certs_dir: Path = DEFAULT_CERTS_DIR, progress: Optional[Progress] = None,
               chunk_size: int = CHUNK_SIZE) -> dict:
    """Push the image `ref` names to the registry `ref` names. Returns {"tag", "digest",
    "size"} of the pushed manifest; `progress` gets docker-like records per layer."""
    r = parse_ref(ref)
    norm = str(r)
    if not r.host:
        raise errors.InvalidArgument(
            f"image {norm} names no registry: tag it with one first ('shoal image tag {norm} "
            f"HOST:PORT/{norm}'); shoal has no default registry", field="image")
    if r.digest:
        raise errors.InvalidArgument(f"cannot push {norm}: a digest reference names content "
                                     "already pushed; push a tag", field="image")
    image = store.get(norm)
    if image is None:
        raise errors.NotFound(f"image {norm} not found on this node: tag a local image with "
                              f"that name first ('shoal image tag IMAGE {norm}')", field="image")
    layers = stored_layers(store, image, norm)
    config_bytes = config_blob(store, image, norm)
    manifest_bytes, media_type = _manifest(store, image, layers, config_bytes)
    tag = r.tag or "latest"

    async def say(record: dict) -> None:
        if progress is not None:
            await progress(record)

    import aiohttp
    timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_connect=15, sock_read=300)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            reg = RegistryClient(session, r.host, r.repo, r.host in insecure_registries,
                                 credentials=credentials,
                                 ssl_context=ssl_context_for(r.host, certs_dir))
            await say({"status": f"The push refers to repository [{r.host}/{r.repo}]"})
            for layer in reversed(layers):  # docker lists the top layer first
                short = _hex(layer.blob)[:12]
                await say({"id": short, "status": "Preparing"})
                if await _exists(reg, layer.blob, norm):
                    await say({"id": short, "status": "Layer already exists"})
                    continue
                await _upload(reg, layer.path, layer.blob, layer.size, norm, chunk_size,
                              lambda done, short=short, total=layer.size: say(
                                  {"id": short, "status": "Pushing",
                                   "progress": {"current": done, "total": total}}))
                await say({"id": short, "status": "Pushed"})
            if not await _exists(reg, image.id, norm):
                await _upload_bytes(reg, config_bytes, image.id, norm)
            digest = await _put_manifest(reg, tag, manifest_bytes, media_type, norm)
    except errors.ShoalError as exc:
        raise _as_push_error(exc, norm, r.host, credentials) from None
    store._store_blob(manifest_bytes, digest)
    rec = store._index["images"].get(image.id)
    if rec is not None and digest not in rec.get("manifests", []):
        rec["manifests"] = sorted({*rec.get("manifests", []), digest})
        store._save()
    log.info("pushed %s (%s)", norm, digest[:19])
    result = {"tag": tag, "digest": digest, "size": len(manifest_bytes)}
    await say({"status": f"{tag}: digest: {digest} size: {len(manifest_bytes)}", "aux": result})
    return result


def _manifest(store, image: Image, layers: list[StoredLayer],
              config_bytes: bytes) -> tuple[bytes, str]:
    """The manifest the image came through when it names exactly these blobs (so the digest
    stays the one already known), else a new OCI manifest."""
    blobs = [layer.blob for layer in layers]
    for digest in store.manifest_digests(image.id):
        try:
            data = (store.root / "blobs" / "sha256" / _hex(digest)).read_bytes()
            doc = json.loads(data)
        except (OSError, ValueError, errors.ShoalError):
            continue
        if _sha256(data) != digest or not isinstance(doc, dict):
            continue
        media = doc.get("mediaType") or MT_OCI_MANIFEST
        try:
            same = (doc["config"]["digest"] == image.id
                    and [d["digest"] for d in doc["layers"]] == blobs)
        except (KeyError, TypeError):
            continue
        if same and media in MANIFEST_TYPES:
            return data, media
    doc = {"schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
           "config": {"mediaType": MT_OCI_CONFIG, "digest": image.id,
                      "size": len(config_bytes)},
           "layers": [{"mediaType": LAYER_TYPES[layer.compression], "digest": layer.blob,
                       "size": layer.size} for layer in layers]}
    return json.dumps(doc, separators=(",", ":")).encode(), MT_OCI_MANIFEST


# ---- the upload protocol -------------------------------------------------------------------
async def _exists(reg: RegistryClient, digest: str, what: str) -> bool:
    resp = await reg.send("HEAD", f"{reg.base}/v2/{reg.repo}/blobs/{digest}", what)
    try:
        if resp.status == 200:
            return True
        if resp.status == 404:
            return False
        await _failed(reg, resp, what, f"the check for blob {digest[:19]}")
    finally:
        resp.release()
    return False


async def _start(reg: RegistryClient, what: str) -> str:
    resp = await reg.send("POST", f"{reg.base}/v2/{reg.repo}/blobs/uploads/", what,
                          {"Content-Length": "0"})
    try:
        if resp.status != 202 or "Location" not in resp.headers:
            await _failed(reg, resp, what, "the start of an upload")
        return _absolute(reg, resp.headers["Location"], what)
    finally:
        resp.release()


def _absolute(reg: RegistryClient, location: str, what: str) -> str:
    """The upload URL a Location header gives, on the registry itself only: the request to it
    carries the registry's credentials, which another host must never see."""
    from yarl import URL
    base = URL(reg.base)
    try:
        url = URL(location)
        url = url if url.is_absolute() else base.join(url)
    except (ValueError, TypeError):
        url = None
    if url is None or (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
        raise errors.Unavailable(f"cannot push {what}: registry {reg.host} sent the upload "
                                 f"elsewhere ({location[:200]!r}); shoal uploads to the "
                                 "registry itself only", field="image")
    return str(url)


def _with_digest(location: str, digest: str) -> str:
    from yarl import URL
    return str(URL(location).update_query(digest=digest))


async def _upload_bytes(reg: RegistryClient, data: bytes, digest: str, what: str) -> None:
    location = await _start(reg, what)
    resp = await reg.send("PUT", _with_digest(location, digest), what,
                          {"Content-Type": "application/octet-stream"}, data=data)
    try:
        if resp.status != 201:
            await _failed(reg, resp, what, f"the upload of blob {digest[:19]}")
    finally:
        resp.release()


async def _upload(reg: RegistryClient, path: Path, digest: str, size: int, what: str,
                  chunk_size: int, progress: Callable[[int], Awaitable[None]]) -> None:
    if size <= chunk_size:
        await _upload_bytes(reg, path.read_bytes(), digest, what)
        await progress(size)
        return
    location = await _start(reg, what)

    def body():  # a fresh stream for each attempt (the auth dance may send it again)
        async def stream():
            sent = reported = 0
            with open(path, "rb") as f:
                while chunk := f.read(min(chunk_size, READ_SIZE)):
                    yield chunk
                    sent += len(chunk)
                    if sent - reported >= chunk_size or sent == size:
                        reported = sent
                        await progress(sent)
        return stream()
    # One PATCH streams the whole blob, as docker's push does: the registry writes while the
    # bytes come, where a PATCH per chunk waited for each chunk to land before the next.
    resp = await reg.send("PATCH", location, what,
                          {"Content-Type": "application/octet-stream",
                           "Content-Length": str(size)}, data=body)
    try:
        if resp.status != 202 or "Location" not in resp.headers:
            await _failed(reg, resp, what, f"the upload of blob {digest[:19]}")
        location = _absolute(reg, resp.headers["Location"], what)
    finally:
        resp.release()
    resp = await reg.send("PUT", _with_digest(location, digest), what, {"Content-Length": "0"})
    try:
        if resp.status != 201:
            await _failed(reg, resp, what, f"the end of the upload of blob {digest[:19]}")
    finally:
        resp.release()


async def _put_manifest(reg: RegistryClient, tag: str, data: bytes, media_type: str,
                        what: str) -> str:
    resp = await reg.send("PUT", f"{reg.base}/v2/{reg.repo}/manifests/{tag}", what,
                          {"Content-Type": media_type}, data=data)
    try:
        if resp.status != 201:
            await _failed(reg, resp, what, f"the manifest for tag {tag!r}")
        digest = _sha256(data)
        claimed = resp.headers.get("Docker-Content-Digest", "")
        if claimed and claimed != digest:
            raise errors.Unavailable(f"cannot push {what}: registry {reg.host} stored the "
                                     f"manifest as {claimed}, not {digest}", field="image")
        return digest
    finally:
        resp.release()


async def _failed(reg: RegistryClient, resp, what: str, thing: str) -> None:
    body = (await resp.content.read(MAX_MANIFEST_BYTES))[:2000] if resp.method != "HEAD" else b""
    detail = []
    try:
        detail = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                  for e in json.loads(body).get("errors", [])]
    except (ValueError, AttributeError, TypeError):
        pass
    if resp.status in (401, 403):
        raise errors.PermissionDenied(
            f"cannot push {what}: registry {reg.host} denied {thing} (HTTP {resp.status}"
            f"{', ' + '; '.join(detail) if detail else ''}): log in with an account that may "
            f"push to {reg.repo} ('shoal login {reg.host}')", field="image")
    raise errors.Unavailable(f"cannot push {what}: registry {reg.host} answered HTTP "
                             f"{resp.status} to {thing} ({'; '.join(detail) or 'no detail'})",
                             field="image")


def _as_push_error(exc: errors.ShoalError, what: str, host: str,
                   credentials: Optional[Credentials]) -> errors.ShoalError:
    """registry.py words its errors for pulls; a push says so, and gives its own fix."""
    if isinstance(exc, errors.PermissionDenied) and credentials is None:
        return errors.PermissionDenied(
            f"cannot push {what}: registry {host} requires authentication: run 'shoal login "
            f"{host}' first", field=exc.field)
    return type(exc)(exc.message.replace("cannot pull ", "cannot push ", 1), field=exc.field)
