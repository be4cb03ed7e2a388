"""GET /images/json and GET /images/{name}/json: this node's image store (worker/images), on
any node, as `docker images` and `docker image inspect` read it."""
from __future__ import annotations

import fnmatch

from aiohttp import web

from common import errors
from shoal.dockerapi import filters
from shoal.dockerapi.access import daemon_of
from shoal.dockerapi.errors import DockerError, bad_request, json_answer, not_found
from shoal.dockerapi.translate import images as to_docker

_ACCEPTED = ("reference", "dangling", "label", "before", "since", "until")
# Filters dockerd has that shoal's store cannot answer (it keeps no tag times or parents).
_NOT_SERVED = ("before", "since", "until")


async def image_list(request: web.Request, params: dict[str, str]) -> web.Response:
    f = filters.parse(request.query.get("filters"), _ACCEPTED)
    for key in _NOT_SERVED:
        if key in f:
            raise bad_request(f"invalid filter '{key}': shoal's image store keeps no image "
                              "history; filter with reference, dangling or label")
    dangling = None
    for value in f.get("dangling"):
        if value.lower() not in ("true", "false", "1", "0"):
            raise bad_request(f"invalid filter 'dangling={value}': use true or false")
        dangling = value.lower() in ("true", "1")
    store = daemon_of(request).images
    out = []
    for image in (store.list() if store is not None else []):
        if dangling is not None and (not image.refs) != dangling:
            continue
        if "reference" in f and not any(_matches(p, r) for p in f.get("reference")
                                        for r in image.refs):
            continue
        if not f.labels("label", (image.config or {}).get("Labels") or {}):
            continue
        out.append(to_docker.summary(image, store.manifest_digests(image.id)))
    out.sort(key=lambda i: i["Created"], reverse=True)
    return json_answer(out)


def _matches(pattern: str, ref: str) -> bool:
    """dockerd's reference filter: a name (every tag of it) or NAME:TAG, with shell globs."""
    name = ref.rsplit(":", 1)[0] if ref.rfind(":") > ref.rfind("/") else ref
    return fnmatch.fnmatchcase(ref, pattern) or fnmatch.fnmatchcase(name, pattern)


async def image_inspect(request: web.Request, params: dict[str, str]) -> web.Response:
    name = params["name"]
    store = daemon_of(request).images
    try:
        image = store.get(name) if store is not None else None
    except errors.InvalidArgument as exc:
        raise DockerError(400, exc.message) from None
    if image is None:
        raise not_found(f"No such image: {name}")
    return json_answer(to_docker.inspect(image, store.manifest_digests(image.id)))
