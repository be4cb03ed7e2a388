"""GET /services (filters id, name, label, mode; status=true) and GET /services/{id}
(insertDefaults).

As dockerd: the spec is the one the client sent (stored with the service by service_writes),
and insertDefaults=true fills in the defaults, which is the translation of shoal's spec (shoal
stores its spec complete). A sent spec stands for shoal's spec only while that spec's digest is
the one it was stored with: a change through shoal's own API, or an automatic rollback, shows
as the translation."""
from __future__ import annotations

import json
import weakref
from typing import Optional

from aiohttp import web

from common import errors
from common.model import Service
from manager.controlapi.services import find_service, replicas_status, spec_digest
from shoal.dockerapi import filters
from shoal.dockerapi.access import manager_of
from shoal.dockerapi.errors import json_answer, not_found
from shoal.dockerapi.query import flag
from shoal.dockerapi.translate.services import mode_name, service as service_json
from shoal.dockerapi.versioning import at_least

_ACCEPTED = ("id", "name", "label", "mode", "runtime")


# Per store: (service id, version) -> its sent spec and previous spec, or None each. The
# version is the store index of the service's last change, so an entry never goes stale; the
# cache spares each read a digest of every spec (a list of 50 services would spend ms on it).
_SENT: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()
_SENT_CACHE_MAX = 4096
Sent = tuple[Optional[dict], Optional[dict]]


def sent_specs(manager, svc: Service) -> Sent:
    if not svc.sent_specs:
        return None, None
    cache = _SENT.setdefault(manager.store, {})
    key = (svc.id, svc.meta.version)
    found = cache.get(key)
    if found is None:
        # the newest first, should an update have sent the same spec again
        by_digest = {s.digest: s.json for s in reversed(svc.sent_specs)}

        def match(spec) -> Optional[dict]:
            text = by_digest.get(spec_digest(spec)) if spec is not None else None
            return json.loads(text) if text else None
        found = (match(svc.spec), match(svc.previous_spec))
        if len(cache) >= _SENT_CACHE_MAX:
            cache.clear()
        cache[key] = found
    # shared with later reads: answers only serialise them, never change them
    return found


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
        out.append(service_json(svc, replicas_status(manager, svc) if status else None,
                                sent_specs(manager, svc)))
    return json_answer(out)


async def service_inspect(request: web.Request, params: dict[str, str]) -> web.Response:
    manager = manager_of(request)
    svc = lookup(manager, params["id"])
    sent = (None, None) if flag(request, "insertDefaults") else sent_specs(manager, svc)
    return json_answer(service_json(svc, sent=sent))
