"""POST /images/resolve: a tag's manifest digest as its registry answers now, for the CLI to
pin a service's image (`NAME:TAG@sha256:...`) the way the docker CLI does through
DistributionInspect.

The node asks the registry itself (its --insecure-registry list, the certs.d CAs), with the
caller's credentials for this one lookup, so the CLI needs no network path of its own to the
registry. A registry that cannot answer is not an API error: the answer says why the tag could
not be pinned (`reason`), and the CLI decides whether that is a warning or a failure.
"""
from __future__ import annotations

import asyncio
from typing import Optional

from aiohttp import web

from common import errors, registryauth
from common.httpserver import CTX, body_json, field, reply
from common.imageref import Reference, parse_ref
from worker.images.registry import DEFAULT_CERTS_DIR, RegistryClient, ssl_context_for

# Why a tag was not pinned; the CLI's wording and its exit depend on it.
NO_REGISTRY = "no_registry"
UNREACHABLE = "unreachable"
NOT_FOUND = "not_found"
AUTH = "auth"

# A lookup must not hold `service create` for minutes: the CLI goes on unpinned instead.
_TIMEOUT_S = 30


def pinned(ref: Reference, digest: str) -> str:
    """`NAME:TAG@DIGEST`: the tag stays for people to read, the digest is what nodes pull."""
    return f"{ref.name}:{ref.tag or 'latest'}@{digest}"


def _problem(reason: str, message: str) -> dict:
    return {"resolved": False, "reason": reason, "message": message}


async def lookup(ref: Reference, insecure: bool, credentials: Optional[registryauth.Credentials],
                 certs_dir=DEFAULT_CERTS_DIR) -> dict:
    """The answer for one reference: {"resolved": True, "digest", "image"} or a problem."""
    if not ref.host:
        return _problem(NO_REGISTRY, f"image {ref.name}:{ref.tag} names no registry, so it can "
                        "only be a local image of the nodes (shoal has no default registry)")
    import aiohttp
    timeout = aiohttp.ClientTimeout(total=_TIMEOUT_S, connect=10, sock_connect=10, sock_read=20)
    # A pinned reference is looked up again by its tag: the tag's digest now is the point.
    what = f"{ref.name}:{ref.tag}"
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            client = RegistryClient(session, ref.host, ref.repo, insecure,
                                    credentials=credentials,
                                    ssl_context=ssl_context_for(ref.host, certs_dir))
            _, digest = await client.manifest(ref.tag, what)
    except errors.PermissionDenied as exc:
        return _problem(AUTH, exc.message)
    except errors.NotFound as exc:
        return _problem(NOT_FOUND, exc.message)
    except errors.Unavailable as exc:
        return _problem(UNREACHABLE, exc.message)
    except asyncio.TimeoutError:
        return _problem(UNREACHABLE, f"registry {ref.host} did not answer within {_TIMEOUT_S} s")
    except errors.InvalidArgument as exc:  # a manifest that does not match its digest
        return _problem(UNREACHABLE, exc.message)
    return {"resolved": True, "digest": digest, "image": pinned(ref, digest)}


async def resolve_image(request: web.Request) -> web.Response:
    data = await body_json(request)
    unknown = sorted(set(data) - {"ref", "auth"})
    if unknown:
        raise errors.InvalidArgument(f"unknown field {unknown[0]!r}: the body is "
                                     '{"ref": IMAGE, "auth": {"username", "password"}}',
                                     field=unknown[0])
    text = field(data, "ref", str)
    try:
        ref = parse_ref(text)
    except errors.InvalidArgument as exc:
        raise errors.InvalidArgument(f"ref: {exc.message}", field="ref") from None
    if not ref.tag:
        # NAME@DIGEST alone: nothing to resolve, the digest is the pin already.
        return reply({"resolved": True, "digest": ref.digest, "image": str(ref)})
    # the caller's credentials for this lookup only: in memory, never written or logged
    creds = registryauth.credentials_from_plain(data.get("auth"), "auth")
    daemon = request.app[CTX]
    insecure = ref.host in set(getattr(daemon, "insecure_registries", ()) or ())
    return reply(await lookup(ref, insecure, creds))


def routes() -> list[web.RouteDef]:
    return [web.post("/images/resolve", resolve_image)]
