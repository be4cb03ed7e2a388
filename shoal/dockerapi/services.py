"""GET /services (filters id, name, label, mode; status=true) and GET /services/{id}."""
from __future__ import annotations

from aiohttp import web

from common import errors
from common.model import Service
from manager.controlapi.services import find_service, replicas_status
from shoal.dockerapi import filters
from shoal.dockerapi.access import manager_of
from shoal.dockerapi.errors import json_answer, not_found
from shoal.dockerapi.query import flag
from shoal.dockerapi.translate.services import mode_name, service as service_json
from shoal.dockerapi.versioning import at_least

_ACCEPTED = ("id", "name", "label", "mode", "runtime")


def lookup(manager, ref: str) -> Service:
    """By id, name or unique id prefix (as dockerd); Docker's 404 otherwise."""
    try:
        return find_service(manager, ref)
    except errors.NotFound:
        raise not_found(f"service {ref} not found") from None


async def service_list(request: web.Request, params: dict[str, str]) -> web.Response:
    manager = manager_of(request)
    f = filters.parse(request.query.get("filters"), _ACCEPTED)
    # ServiceStatus came with API 1.41; older clients count tasks themselves.
    status = flag(request, "status") and at_least(request, "1.41")
    out = []
    for svc in sorted(manager.store.list("services"), key=lambda s: s.spec.name):
        if not (f.prefix("id", svc.id) and f.prefix("name", svc.spec.name)
                and f.labels("label", svc.spec.labels)
                and f.exact("mode", mode_name(svc.spec.mode))
                # shoal's services all run containers
                and f.exact("runtime", "container")):
            continue
        out.append(service_json(svc, replicas_status(manager, svc) if status else None))
    return json_answer(out)


async def service_inspect(request: web.Request, params: dict[str, str]) -> web.Response:
    manager = manager_of(request)
    svc = lookup(manager, params["id"])
    # insertDefaults is not read: shoal stores a service's spec with its defaults filled in,
    # so both answers are that spec (keeping the spec as sent is a later step of issue 16).
    return json_answer(service_json(svc))
