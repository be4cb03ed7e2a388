"""/secrets and /configs: create, list (filters id, name, names, label), inspect, update (of
labels only, Docker's rule) and delete, through the control API's functions
(manager/controlapi/data_objects.py) on the leader."""
from __future__ import annotations

from aiohttp import web

from manager.controlapi import data_objects as shoal_objects
from manager.specs.configs import CONFIGS
from manager.specs.data_objects import DataKind
from manager.specs.secrets import SECRETS
from shoal.dockerapi import filters, leader
from shoal.dockerapi.access import manager_of
from shoal.dockerapi.query import json_body
from shoal.dockerapi.errors import bad_request, json_answer, not_found
from shoal.dockerapi.translate.objects import data_object, data_object_spec, object_path

_ACCEPTED = ("id", "name", "names", "label")


def _kind(params: dict[str, str]) -> DataKind:
    return SECRETS if params["kind"] == "secrets" else CONFIGS


def _lookup(kind: DataKind, manager, ref: str):
    obj = manager.store.find(kind.table, ref)
    if obj is None:
        raise not_found(f"{kind.noun} {ref} not found")
    return obj


async def create(request: web.Request, params: dict[str, str]) -> web.Response:
    kind = _kind(params)
    spec = data_object_spec(await json_body(request))

    async def local(manager) -> dict:
        return {"id": (await shoal_objects.create_object(kind, manager, spec)).id}

    answer = await leader.write(request, "POST", f"/{kind.table}/create", spec, local,
                                object_path, settled=leader.created(kind.table))
    return json_answer({"ID": answer["id"]}, status=201)


async def listing(request: web.Request, params: dict[str, str]) -> web.Response:
    kind = _kind(params)
    manager = manager_of(request)
    f = filters.parse(request.query.get("filters"), _ACCEPTED)
    out = []
    for obj in sorted(manager.store.list(kind.table), key=lambda o: o.spec.name):
        if (f.prefix("id", obj.id) and f.prefix("name", obj.spec.name)
                and f.exact("names", obj.spec.name) and f.labels("label", obj.spec.labels)):
            out.append(data_object(obj, kind.shows_data))
    return json_answer(out)


async def inspect(request: web.Request, params: dict[str, str]) -> web.Response:
    kind = _kind(params)
    return json_answer(data_object(_lookup(kind, manager_of(request), params["id"]),
                                   kind.shows_data))


async def update(request: web.Request, params: dict[str, str]) -> web.Response:
    kind = _kind(params)
    obj = _lookup(kind, manager_of(request), params["id"])
    value = request.query.get("version", "")
    if not value.isdecimal() or not value.isascii() or len(value) > 19:
        raise bad_request(f"invalid {kind.noun} version {value!r}")
    version = int(value)
    spec = data_object_spec(await json_body(request))

    async def local(manager) -> dict:
        await shoal_objects.update_object_labels(kind, manager, obj.id, version, spec)
        return {}

    await leader.write(request, "POST",
                       leader.shoal_path(kind.table, obj.id, "update", version=version), spec,
                       local, object_path, settled=leader.changed(kind.table, obj.id))
    return web.Response(status=200)


async def delete(request: web.Request, params: dict[str, str]) -> web.Response:
    kind = _kind(params)
    obj = _lookup(kind, manager_of(request), params["id"])

    async def local(manager) -> dict:
        await shoal_objects.remove_object(kind, manager, obj.id)
        return {}

    await leader.write(request, "DELETE", leader.shoal_path(kind.table, obj.id), None, local,
                       settled=leader.removed(kind.table, obj.id))
    return web.Response(status=204)
