"""Control API for secrets and configs: create, list, inspect, remove.

A secret's answers carry its metadata only; its data goes nowhere but to the nodes whose tasks use
it (DataKind.for_tasks). A config's answers show its data, base64-encoded.
"""
from __future__ import annotations

import time

from aiohttp import web

from common import errors, strict
from common.httpserver import body_json, field, reply
from common.ids import new_id
from manager.controlapi.context import manager_of
from manager.specs.configs import CONFIGS
from manager.specs.data_objects import DataKind, validate_labels
from manager.specs.secrets import SECRETS
from manager.state.store import Transaction


def _find(kind: DataKind, manager, ref: str):
    obj = manager.store.find(kind.table, ref)
    if obj is None:
        raise errors.NotFound(f"no such {kind.noun}: {ref}")
    return obj


def kind_routes(kind: DataKind) -> list[web.RouteDef]:
    async def create(request: web.Request) -> web.Response:
        manager = manager_of(request)
        data = await body_json(request)
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
        return reply({"id": obj.id}, status=201)

    async def listing(request: web.Request) -> web.Response:
        objs = sorted(manager_of(request).store.list(kind.table), key=lambda o: o.spec.name)
        return reply([kind.view(o) for o in objs])

    async def inspect(request: web.Request) -> web.Response:
        return reply(kind.view(_find(kind, manager_of(request), request.match_info["ref"])))

    async def remove(request: web.Request) -> web.Response:
        manager = manager_of(request)
        obj = _find(kind, manager, request.match_info["ref"])
        users = kind.services_using(manager.store, obj.id)
        if users:
            raise errors.FailedPrecondition(
                f"{kind.noun} {obj.spec.name!r} is in use by service(s) {', '.join(users)}: remove "
                "it from them first ('shoal service rm' or update them without it)")
        await manager.propose(Transaction().delete(kind.table, obj.id,
                                                   expect_version=obj.meta.version))
        return reply({"id": obj.id})

    return [
        web.post(f"/{kind.table}/create", create),
        web.get(f"/{kind.table}", listing),
        web.get(f"/{kind.table}/{{ref}}", inspect),
        web.delete(f"/{kind.table}/{{ref}}", remove),
    ]


def routes() -> list[web.RouteDef]:
    return kind_routes(SECRETS) + kind_routes(CONFIGS)
