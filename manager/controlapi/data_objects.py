"""Control API for secrets and configs: create, list, inspect, remove.

A secret's answers carry its metadata only; its data goes nowhere but to the nodes whose tasks use
it (DataKind.for_tasks). A config's answers show its data, base64-encoded.
"""
from __future__ import annotations

import time

from aiohttp import web

from common import codec, errors, strict
from common.httpserver import body_json, field, query_int, reply
from common.ids import new_id
from manager.controlapi.context import manager_of
from manager.specs.configs import CONFIGS
from manager.specs.data_objects import DataKind, validate_labels
from manager.specs.secrets import SECRETS
from manager.state.store import Transaction


def find_object(kind: DataKind, manager, ref: str):
    obj = manager.store.find(kind.table, ref)
    if obj is None:
        raise errors.NotFound(f"no such {kind.noun}: {ref}")
    return obj


async def create_object(kind: DataKind, manager, data: dict):
    """A new secret or config from a decoded body ({name, data (base64), labels} or
    {"spec": ...}): the one way either is created (shoal's API and the Docker API's)."""
    if isinstance(data.get("spec"), dict):
        data = data["spec"]
    name = kind.validate_name(field(data, "name", str))
    # base64 of up to MAX_DATA_SIZE bytes (decode_data checks the size it decodes to)
    payload = kind.decode_data(strict.string(data.get("data"), "data", max_bytes=1 << 20))
    labels = validate_labels(data.get("labels"))
    if manager.store.by_name(kind.table, name) is not None:
        raise errors.Conflict(f"{kind.noun} {name!r} already exists: {kind.table} cannot be "
                              "changed; create one under another name and point the service "
                              "at it", field="name")
    now = time.time()
    obj = kind.object_type(id=new_id(), spec=kind.spec_type(name=name, labels=labels,
                                                              data=payload))
    obj.meta.created_at = obj.meta.updated_at = now
    await manager.propose(Transaction().create(kind.table, obj))
    return obj


async def remove_object(kind: DataKind, manager, ref: str):
    obj = find_object(kind, manager, ref)
    users = kind.services_using(manager.store, obj.id)
    if users:
        raise errors.FailedPrecondition(
            f"{kind.noun} {obj.spec.name!r} is in use by service(s) {', '.join(users)}: remove "
            "it from them first ('shoal service rm' or update them without it)")
    await manager.propose(Transaction().delete(kind.table, obj.id,
                                               expect_version=obj.meta.version))
    return obj


async def update_object_labels(kind: DataKind, manager, ref: str, version, data: dict):
    """New labels for a secret or config at `version`: the one change either allows (Docker's
    rule: its name and data are immutable; sending them unchanged is fine)."""
    obj = find_object(kind, manager, ref)
    if version is None:
        raise errors.InvalidArgument(f"the 'version' query parameter is required: read the "
                                     f"{kind.noun} and send the version you changed",
                                     field="version")
    if version != obj.meta.version:
        raise errors.Conflict(f"{kind.noun} {obj.spec.name} changed since version {version} (now "
                              f"{obj.meta.version}); read it again and retry")
    if isinstance(data.get("spec"), dict):
        data = data["spec"]
    name = field(data, "name", str, required=False, default=obj.spec.name)
    payload = data.get("data")
    if name != obj.spec.name or (payload is not None and kind.decode_data(
            strict.string(payload, "data", max_bytes=1 << 20)) != obj.spec.data):
        raise errors.InvalidArgument(f"only updates to labels are allowed: a {kind.noun}'s name "
                                     "and data cannot change", field="name" if name !=
                                     obj.spec.name else "data")
    labels = validate_labels(data.get("labels"))
    obj = codec.clone(obj)
    obj.spec.labels = labels
    obj.meta.updated_at = time.time()
    await manager.propose(Transaction().update(kind.table, obj))
    return manager.store.get(kind.table, obj.id)


def kind_routes(kind: DataKind) -> list[web.RouteDef]:
    async def create(request: web.Request) -> web.Response:
        obj = await create_object(kind, manager_of(request), await body_json(request))
        return reply({"id": obj.id}, status=201)

    async def listing(request: web.Request) -> web.Response:
        objs = sorted(manager_of(request).store.list(kind.table), key=lambda o: o.spec.name)
        return reply([kind.view(o) for o in objs])

    async def inspect(request: web.Request) -> web.Response:
        return reply(kind.view(find_object(kind, manager_of(request), request.match_info["ref"])))

    async def remove(request: web.Request) -> web.Response:
        obj = await remove_object(kind, manager_of(request), request.match_info["ref"])
        return reply({"id": obj.id})

    async def update(request: web.Request) -> web.Response:
        manager = manager_of(request)
        obj = await update_object_labels(kind, manager, request.match_info["ref"],
                                         query_int(request, "version"), await body_json(request))
        return reply(kind.view(obj))

    return [
        web.post(f"/{kind.table}/create", create),
        web.post(f"/{kind.table}/{{ref}}/update", update),
        web.get(f"/{kind.table}", listing),
        web.get(f"/{kind.table}/{{ref}}", inspect),
        web.delete(f"/{kind.table}/{{ref}}", remove),
    ]


def routes() -> list[web.RouteDef]:
    return kind_routes(SECRETS) + kind_routes(CONFIGS)
