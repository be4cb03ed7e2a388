"""Control API for secrets: create, list, inspect, remove. Answers carry metadata only; the
data goes nowhere but to the nodes whose tasks use it (see manager.secrets.secrets_for_tasks)."""
from __future__ import annotations

import time

from aiohttp import web

from common import errors
from common.ids import new_id
from common.model import Secret, SecretSpec
from manager.api import _manager
from manager.httputil import body_json, field, reply
from manager.secrets import (decode_secret_data, secret_view, services_using, validate_labels,
                             validate_secret_name)
from manager.store import Transaction


def _find_secret(manager, ref: str) -> Secret:
    secret = manager.store.find("secrets", ref)
    if secret is None:
        raise errors.NotFound(f"no such secret: {ref}")
    return secret


async def secret_create(request: web.Request) -> web.Response:
    manager = _manager(request)
    data = await body_json(request)
    if isinstance(data.get("spec"), dict):
        data = data["spec"]
    name = validate_secret_name(field(data, "name", str))
    payload = decode_secret_data(field(data, "data", str))
    labels = validate_labels(data.get("labels"))
    if manager.store.by_name("secrets", name) is not None:
        raise errors.Conflict(f"secret {name!r} already exists: secrets cannot be changed; create "
                              "one under another name and point the service at it", field="name")
    now = time.time()
    secret = Secret(id=new_id(), spec=SecretSpec(name=name, labels=labels, data=payload))
    secret.meta.created_at = secret.meta.updated_at = now
    await manager.propose(Transaction().create("secrets", secret))
    return reply({"id": secret.id}, status=201)


async def secret_list(request: web.Request) -> web.Response:
    manager = _manager(request)
    secrets = sorted(manager.store.list("secrets"), key=lambda s: s.spec.name)
    return reply([secret_view(s) for s in secrets])


async def secret_inspect(request: web.Request) -> web.Response:
    manager = _manager(request)
    return reply(secret_view(_find_secret(manager, request.match_info["ref"])))


async def secret_remove(request: web.Request) -> web.Response:
    manager = _manager(request)
    secret = _find_secret(manager, request.match_info["ref"])
    users = services_using(manager.store, secret.id)
    if users:
        raise errors.FailedPrecondition(
            f"secret {secret.spec.name!r} is in use by service(s) {', '.join(users)}: remove it "
            "from them first ('shoal service rm' or update them without it)")
    await manager.propose(Transaction().delete("secrets", secret.id, expect_version=secret.meta.version))
    return reply({"id": secret.id})


def routes() -> list[web.RouteDef]:
    return [
        web.post("/secrets/create", secret_create),
        web.get("/secrets", secret_list),
        web.get("/secrets/{ref}", secret_inspect),
        web.delete("/secrets/{ref}", secret_remove),
    ]
