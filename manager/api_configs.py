"""Control API for configs: create, list, inspect (data included, base64), remove."""
from __future__ import annotations

import time

from aiohttp import web

from common import errors
from common.ids import new_id
from common.model import Config, ConfigSpec
from manager.api import _manager
from manager.configs import (config_view, decode_config_data, services_using, validate_config_name,
                             validate_labels)
from manager.httputil import body_json, field, reply
from manager.store import Transaction


def _find_config(manager, ref: str) -> Config:
    config = manager.store.find("configs", ref)
    if config is None:
        raise errors.NotFound(f"no such config: {ref}")
    return config


async def config_create(request: web.Request) -> web.Response:
    manager = _manager(request)
    data = await body_json(request)
    if isinstance(data.get("spec"), dict):
        data = data["spec"]
    name = validate_config_name(field(data, "name", str))
    payload = decode_config_data(field(data, "data", str))
    labels = validate_labels(data.get("labels"))
    if manager.store.by_name("configs", name) is not None:
        raise errors.Conflict(f"config {name!r} already exists: configs cannot be changed; create "
                              "one under another name and point the service at it", field="name")
    now = time.time()
    config = Config(id=new_id(), spec=ConfigSpec(name=name, labels=labels, data=payload))
    config.meta.created_at = config.meta.updated_at = now
    await manager.propose(Transaction().create("configs", config))
    return reply({"id": config.id}, status=201)


async def config_list(request: web.Request) -> web.Response:
    manager = _manager(request)
    configs = sorted(manager.store.list("configs"), key=lambda c: c.spec.name)
    return reply([config_view(c) for c in configs])


async def config_inspect(request: web.Request) -> web.Response:
    manager = _manager(request)
    return reply(config_view(_find_config(manager, request.match_info["ref"])))


async def config_remove(request: web.Request) -> web.Response:
    manager = _manager(request)
    config = _find_config(manager, request.match_info["ref"])
    users = services_using(manager.store, config.id)
    if users:
        raise errors.FailedPrecondition(
            f"config {config.spec.name!r} is in use by service(s) {', '.join(users)}: remove it "
            "from them first ('shoal service rm' or update them without it)")
    await manager.propose(Transaction().delete("configs", config.id, expect_version=config.meta.version))
    return reply({"id": config.id})


def routes() -> list[web.RouteDef]:
    return [
        web.post("/configs/create", config_create),
        web.get("/configs", config_list),
        web.get("/configs/{ref}", config_inspect),
        web.delete("/configs/{ref}", config_remove),
    ]
