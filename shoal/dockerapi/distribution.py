"""GET /distribution/{name}/json: an image's manifest digest and platforms as its registry
answers, through the node's registry client (worker/images/registry.py, the one pulls use,
with the node's --insecure-registry list, the certs.d CAs and the caller's X-Registry-Auth).

A reference without a registry host names an image of the local store only (shoal has no
default registry): that, like an unreachable registry, is an error, on which the docker CLI
prints its "could not be accessed on a registry to record its digest" warning and keeps the
reference unpinned, as with dockerd when no registry answers.
"""
from __future__ import annotations

import json

from aiohttp import web

from common import errors
from common.imageref import parse_ref
from shoal.dockerapi.access import daemon_of
from shoal.dockerapi.errors import DockerError, bad_request, json_answer, status_of
from worker.images.manifests import INDEX_TYPES, MT_OCI_MANIFEST
from common.registryauth import credentials_from_plain
from shoal.dockerapi import registry_auth
from worker.images.registry import DEFAULT_CERTS_DIR, RegistryClient, ssl_context_for

_PLATFORM_KEYS = ("architecture", "os", "os.version", "os.features", "variant")


def platform(p: dict) -> dict:
    """An OCI platform as Docker's DistributionInspect lists it (its own spelling)."""
    return {k: p[k] for k in _PLATFORM_KEYS if p.get(k)}


async def distribution_inspect(request: web.Request, params: dict[str, str]) -> web.Response:
    name = params["name"]
    try:
        ref = parse_ref(name)
    except errors.InvalidArgument as exc:
        raise bad_request(f"invalid reference format for 'name' ({name!r}): {exc.message}") \
            from None
    if not ref.host:
        raise DockerError(404, f"image {ref} could not be looked up on a registry: its "
                               "reference names none and shoal has no default registry "
                               f"(name one: HOST:PORT/{ref})")
    daemon = daemon_of(request)
    insecure = ref.host in set(getattr(daemon, "insecure_registries", ()) or ())
    import aiohttp
    timeout = aiohttp.ClientTimeout(total=60, connect=15, sock_connect=15, sock_read=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            registry = RegistryClient(session, ref.host, ref.repo, insecure,
                                      credentials=_credentials(request),
                                      ssl_context=ssl_context_for(ref.host, DEFAULT_CERTS_DIR))
            data, digest = await registry.manifest(ref.digest or ref.tag, str(ref))
            manifest = _json(data, str(ref))
            media = manifest.get("mediaType") or MT_OCI_MANIFEST
            if media in INDEX_TYPES or "manifests" in manifest:
                platforms = [platform(d.get("platform") or {})
                             for d in manifest.get("manifests") or [] if isinstance(d, dict)]
            else:
                config = _json(await registry.small_blob(manifest["config"]["digest"],
                                                         str(ref)), str(ref))
                platforms = [platform(config)]
    except errors.ShoalError as exc:
        raise DockerError(status_of(exc.status), exc.message) from None
    except (KeyError, TypeError):
        raise DockerError(500, f"image {ref}: the registry's manifest has no config") \
            from None
    return json_answer({"Descriptor": {"mediaType": media, "digest": digest,
                                       "size": len(data)},
                        "Platforms": [p for p in platforms if p]})


def _credentials(request: web.Request):
    """The caller's credentials for the registry (X-Registry-Auth), for this lookup only."""
    return credentials_from_plain(registry_auth.from_request(request).get("registry_auth"),
                                  registry_auth.HEADER)


def _json(data: bytes, what: str) -> dict:
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"image {what}: the registry answered a manifest or "
                                     "config that is not a JSON object")
    return value
