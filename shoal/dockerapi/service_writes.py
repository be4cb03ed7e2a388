"""POST /services/create, POST /services/{id}/update (with `rollback=previous`) and
DELETE /services/{id}: Docker's spec translated (translate/service_spec.py), then the control
API's own functions on the leader (manager/controlapi/services.py).

The spec as the client sent it goes along ("docker_spec") and is stored with the service, for
the reads with insertDefaults=false and PreviousSpec (services.py)."""
from __future__ import annotations

from aiohttp import web

from manager.controlapi import services as shoal_services
from shoal.dockerapi import leader, registry_auth
from shoal.dockerapi.errors import bad_request, json_answer
from shoal.dockerapi.services import lookup
from shoal.dockerapi.access import manager_of
from shoal.dockerapi.query import json_body
from shoal.dockerapi.translate.service_spec import docker_path, read_service_spec, sent_json


def _version(request: web.Request) -> int:
    value = request.query.get("version", "")
    if not value.isdecimal() or not value.isascii() or len(value) > 19:
        raise bad_request(f"invalid service version {value!r}: send the Version.Index of the "
                          "service you read")
    return int(value)


async def _body(request: web.Request) -> dict:
    """shoal's write body: the translated spec, the spec as sent, and the registry credentials
    of X-Registry-Auth (kept apart from the spec by the managers)."""
    spec, sent = read_service_spec(await json_body(request, "a ServiceSpec"))
    store = manager_of(request).store

    def network_id(ref: str):
        net = store.find("networks", ref)
        return net.id if net is not None else None
    return {"spec": spec, "docker_spec": sent_json(sent, network_id),
            **registry_auth.from_request(request)}


async def service_create(request: web.Request, params: dict[str, str]) -> web.Response:
    spec = await _body(request)

    async def local(manager) -> dict:
        svc = await shoal_services.create_service(manager, spec)
        return {"id": svc.id}

    answer = await leader.write(request, "POST", "/services/create", spec, local, docker_path,
                                leader.created("services"))
    return json_answer({"ID": answer["id"], "Warnings": []}, status=201)


async def service_update(request: web.Request, params: dict[str, str]) -> web.Response:
    # The service first (404), then the version (400), then the body, as dockerd.
    svc = lookup(manager_of(request), params["id"])
    version = _version(request)
    rollback = request.query.get("rollback", "")
    if rollback not in ("", "previous"):
        raise bad_request(f"unrecognized rollback option {rollback}")
    if rollback == "previous":
        # dockerd ignores the body: the previous spec is the new one.
        async def local(manager) -> dict:
            await shoal_services.rollback_service(manager, svc.id, version)
            return {}
        path = leader.shoal_path("services", svc.id, "rollback", version=version)
        await leader.write(request, "POST", path, None, local, docker_path,
                           leader.changed("services", svc.id))
    else:
        spec = await _body(request)

        async def local(manager) -> dict:
            await shoal_services.update_service(manager, svc.id, version, spec)
            return {}
        path = leader.shoal_path("services", svc.id, "update", version=version)
        await leader.write(request, "POST", path, spec, local, docker_path,
                           leader.changed("services", svc.id))
    return json_answer({"Warnings": []})


async def service_delete(request: web.Request, params: dict[str, str]) -> web.Response:
    svc = lookup(manager_of(request), params["id"])

    async def local(manager) -> dict:
        await shoal_services.remove_service(manager, svc.id)
        return {}

    await leader.write(request, "DELETE", leader.shoal_path("services", svc.id), None, local,
                       settled=leader.removed("services", svc.id))
    return web.Response(status=200)
