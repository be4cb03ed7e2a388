"""Images from a registry: the distribution API v2 client (basic auth and bearer tokens, with
credentials or without; TLS trusting Docker's certs.d layout too), pull.

Credentials come with one pull and live in memory for it only: never written, never logged,
never part of an error.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import secrets
import ssl
from pathlib import Path
from typing import Optional

from common import errors
from common.registryauth import Credentials
from common.imageref import parse_ref
from worker.images.manifests import (ACCEPT, INDEX_TYPES, MAX_MANIFEST_BYTES, _check_manifest,
                                     Image, _hex, _parse_json, _sha256, pick_platform)

log = logging.getLogger("shoal.images")

# Docker's /etc/docker/certs.d, for shoal: HOST:PORT/ca.crt is a CA the registry at HOST:PORT
# may be signed by, trusted next to the system's.
DEFAULT_CERTS_DIR = Path("/etc/shoal/certs.d")


def ssl_context_for(host: str, certs_dir: Path) -> Optional[ssl.SSLContext]:
    """The TLS context for `host`: None (the default) unless certs_dir has a CA for it."""
    if "/" in host or host in (".", ".."):
        return None
    ca = Path(certs_dir) / host / "ca.crt"
    if not ca.is_file():
        return None
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise errors.FailedPrecondition(f"{ca} is not a PEM CA certificate ({exc}): fix or "
                                        "remove it", field="image") from None
    return ctx


def auth_hint(host: str) -> str:
    return (f"registry {host} requires authentication: run 'shoal login {host}' (and deploy "
            f"services with --with-registry-auth after shoal login {host})")


# ---- pull ---------------------------------------------------------------------------------
async def pull(store, ref: str, *, insecure_registries: frozenset[str] = frozenset(),
               credentials: Optional[Credentials] = None,
               certs_dir: Path = DEFAULT_CERTS_DIR) -> Image:
    r = parse_ref(ref)
    norm = str(r)
    if not r.host:
        raise errors.NotFound(
            f"image {norm} not found on this node, and its reference names no registry: "
            f"load it with 'shoal image load -i FILE', or pull it from a registry "
            f"by naming one (HOST:PORT/{norm}); shoal has no default registry",
            field="image")
    import aiohttp  # only pulls need it; the unpack helper process stays light
    timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_connect=15, sock_read=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        reg = RegistryClient(session, r.host, r.repo, r.host in insecure_registries,
                             credentials=credentials,
                             ssl_context=ssl_context_for(r.host, certs_dir))
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
        config, diff_ids = store._check_config(config_bytes, norm)
        if len(manifest["layers"]) != len(diff_ids):
            raise errors.InvalidArgument(f"image {norm}: manifest lists "
                                         f"{len(manifest['layers'])} layers, config "
                                         f"{len(diff_ids)}")
        # Layers download in parallel (a few at a time), each unpacked as soon as it is in.
        gate = asyncio.Semaphore(3)

        async def one(desc: dict, diff_id: str) -> None:
            async def fetch() -> tuple[Path, bool]:
                async with gate:
                    dest = store.root / "tmp" / f"dl-{_hex(desc['digest'])[:12]}-" \
                                                f"{secrets.token_hex(4)}"
                    await reg.blob_to_file(desc, dest, norm)
                    return dest, True
            await store._ensure_layer(diff_id, norm, fetch, desc["digest"])

        await asyncio.gather(*(one(d, i) for d, i in zip(manifest["layers"], diff_ids)))
    store._store_blob(config_bytes, config_desc["digest"])
    store._store_blob(manifest_bytes, manifest_digest)
    log.info("pulled %s (%s)", norm, config_desc["digest"][:19])
    return store._record(config_desc["digest"], config, diff_ids, [norm], manifest_digest)


async def check_login(host: str, credentials: Credentials, *, insecure: bool,
                      certs_dir: Path = DEFAULT_CERTS_DIR) -> None:
    """Prove `credentials` on the registry's /v2/ (as `docker login` does), or raise saying
    why: the registry is unreachable, refuses them, or needs no login at all is fine."""
    import aiohttp
    timeout = aiohttp.ClientTimeout(total=60, connect=15)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        reg = RegistryClient(session, host, "", insecure, credentials=credentials,
                             ssl_context=ssl_context_for(host, certs_dir))
        resp = await reg._request(f"{reg.base}/v2/", f"the login to {host}")
        try:
            if resp.status != 200:
                await reg._fail(resp, f"the login to {host}", f"the API root of {host}")
        finally:
            resp.release()


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
    insecure (then plain HTTP); basic auth or a bearer token when the registry asks for one,
    with the pull's credentials or anonymously."""

    def __init__(self, session, host: str, repo: str, insecure: bool, *,
                 credentials: Optional[Credentials] = None,
                 ssl_context: Optional[ssl.SSLContext] = None) -> None:
        self.session = session
        self.host = host
        self.repo = repo
        self.insecure = insecure
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self.credentials = credentials
        self.ssl = ssl_context if ssl_context is not None and not insecure else True
        self.authorization: Optional[str] = None  # the header that answered the challenge

    def _refused(self, what: str, status: int) -> errors.ShoalError:
        if self.credentials is None:
            return errors.PermissionDenied(f"cannot pull {what}: {auth_hint(self.host)}",
                                           field="image")
        return errors.PermissionDenied(
            f"cannot pull {what}: registry {self.host} refused the credentials of "
            f"{self.credentials.username} (HTTP {status}): check the password and run "
            f"'shoal login {self.host}' again", field="image")

    async def _request(self, url: str, what: str, headers: Optional[dict] = None, *,
                       method: str = "GET", data=None, redirects: bool = True):
        """A request with the auth dance (basic, or a bearer token fetched on demand); returns
        an open response (caller releases it). `data` is bytes, or a callable making a fresh
        body, since a 401 means sending it again."""
        import aiohttp
        headers = dict(headers or {})
        for attempt in range(2):
            if self.authorization:
                headers["Authorization"] = self.authorization
            try:
                resp = await self.session.request(
                    method, url, headers=headers, ssl=self.ssl,
                    data=data() if callable(data) else data, allow_redirects=redirects)
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
            if resp.status != 401:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.release()
            if attempt == 1:
                raise self._refused(what, 401)
            scheme, params = parse_www_authenticate(challenge)
            if scheme == "basic":
                if self.credentials is None:
                    raise self._refused(what, 401)
                self.authorization = self.credentials.basic()
            elif scheme == "bearer" and "realm" in params:
                self.authorization = "Bearer " + await self._fetch_token(params, what)
            else:
                raise errors.PermissionDenied(
                    f"cannot pull {what}: registry {self.host} asks for "
                    f"{scheme or 'an unknown'} authentication; shoal speaks basic and bearer",
                    field="image")
        raise AssertionError("unreachable")

    async def send(self, method: str, url: str, what: str, headers: Optional[dict] = None,
                   data=None):
        """Any verb (HEAD, POST, PATCH, PUT for a push) through `_request`'s one auth dance,
        following no redirect: the image's bytes go to the registry only. Returns an open
        response (caller releases it)."""
        return await self._request(url, what, headers, method=method, data=data,
                                   redirects=False)

    async def _fetch_token(self, params: dict[str, str], what: str) -> str:
        import aiohttp
        query = {k: params[k] for k in ("service",) if params.get(k)}
        scope = params.get("scope") or (f"repository:{self.repo}:pull" if self.repo else "")
        if scope:
            query["scope"] = scope
        headers = {}
        if self.credentials is not None:
            query["account"] = self.credentials.username
            headers["Authorization"] = self.credentials.basic()
        try:
            async with self.session.get(params["realm"], params=query, headers=headers,
                                        ssl=self.ssl) as resp:
                body = await resp.read()
                if resp.status in (401, 403):
                    raise self._refused(what, resp.status)
                if resp.status != 200:
                    raise errors.PermissionDenied(
                        f"cannot pull {what}: the token service {params['realm']} refused "
                        f"access to {scope or 'the registry'} (HTTP {resp.status})",
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
            if self.credentials is not None:
                raise self._refused(what, resp.status)
            raise errors.PermissionDenied(
                f"cannot pull {what}: access denied by registry {self.host} (HTTP {resp.status}):"
                f" the repository does not exist, or {auth_hint(self.host)}", field="image")
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
