"""This node's containers, images, volumes and task logs: on the local socket for the CLI
(`container`, `image`, `volume`), and /worker/logs on 2377 for managers gathering `service logs`."""
from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field as dc_field
from pathlib import Path
from typing import AsyncIterator

from aiohttp import web

from common import errors, strict
from common import registryauth
from common.imageref import parse_ref
from common import httpstreams as streams
from common.httpserver import CTX, body_json, field, query_flag, reply
from common.logtime import optional_time
from worker.executor.logs import LogWindow
from worker.images import registry
from worker.restarts import Restarts
from worker.volumes import VolumeStore


def _daemon(request: web.Request):
    return request.app[CTX]


def _container_view(c, controller=None) -> dict:
    labels = c.labels or {}
    # between the runs of a restart policy: as `docker ps`, listed as not done
    state = "restarting" if controller is not None and controller.restarting else c.state
    return {"id": c.id, "name": labels.get("shoal.task.name", c.id), "image": labels.get("shoal.image", ""),
            "state": state, "pid": c.pid, "service": labels.get("shoal.service.name", ""),
            "labels": labels}


def _find_container(request: web.Request, ref: str):
    containers = _daemon(request).executor.list()
    exact = [c for c in containers if ref in (c.id, (c.labels or {}).get("shoal.task.name"))]
    matches = exact or [c for c in containers if c.id.startswith(ref)
                        or (c.labels or {}).get("shoal.task.name", "").startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise errors.NotFound(f"no such container on this node: {ref} (see 'shoal container ls')")
    raise errors.InvalidArgument(f"{ref!r} matches {len(matches)} containers: give more of the id")


def _controllers(daemon) -> dict:
    runner = daemon.agent.runner if daemon.agent is not None else None
    return runner.controllers if runner is not None else {}


async def containers_list(request: web.Request) -> web.Response:
    show_all = query_flag(request, "all")
    daemon = _daemon(request)
    controllers = _controllers(daemon)
    items = []
    for c in daemon.executor.list():
        view = _container_view(c, controllers.get(c.id))
        if show_all or view["state"] in ("running", "restarting"):
            items.append(view)
    return reply(sorted(items, key=lambda c: c["name"]))


async def container_inspect(request: web.Request) -> web.Response:
    daemon = _daemon(request)
    c = _find_container(request, request.match_info["ref"])
    controller = _controllers(daemon).get(c.id)
    view = _container_view(c, controller)
    meta = daemon.executor.meta(c.id)
    view.update(image_id=meta.get("image_id", ""), created=meta.get("created"),
                exit=asdict(c.exit) if c.exit else None, config=meta.get("config", {}),
                restart_count=meta.get("restart_count", 0))
    if controller is not None:
        task, runner = controller.task, controller.runner
        views = runner.networks.views if runner.networks is not None else {}
        view["task"] = {"id": task.id, "desired_state": task.desired_state,
                        "state": controller.state, "message": controller.message,
                        "restart_policy": Restarts(task.restart).describe()}
        view["networks"] = [{"network": views.get(a.network_id, {}).get("name", a.network_id),
                             "network_id": a.network_id, "address": a.address, "mac": a.mac}
                            for a in task.networks]
    return reply(view)


async def container_exec(request: web.Request) -> web.Response:
    data = await body_json(request)
    argv = strict.decode(list[str], field(data, "argv", list), "argv")
    if not argv:
        raise errors.InvalidArgument("argv must be a non-empty list of strings", field="argv")
    timeout = strict.seconds(field(data, "timeout", float, required=False, default=120.0),
                             "timeout", lo=0.001, hi=86400)
    c = _find_container(request, request.match_info["ref"])
    if c.state != "running":
        raise errors.FailedPrecondition(f"container {c.id[:12]} is not running ({c.state})")
    code, output = await _daemon(request).executor.exec(c.id, argv, timeout=timeout)
    return reply({"exit_code": code, "output": output})


async def _ndjson(request: web.Request, lines: AsyncIterator[dict]) -> web.StreamResponse:
    """Stream `lines`; the request must have been fully checked before (manager.streams)."""
    resp = await streams.start_ndjson(request)
    try:
        async for entry in lines:
            await streams.write_record(resp, entry)
    except (ConnectionResetError, ConnectionError):
        pass  # the reader went away (a `logs -f` interrupted): nothing to report
    return resp


def query_window(request: web.Request) -> LogWindow:
    """`since` and `until`: Unix seconds (or a duration before now, or RFC 3339)."""
    return LogWindow(optional_time(request.query.get("since"), "since"),
                     optional_time(request.query.get("until"), "until"))


async def container_logs(request: web.Request) -> web.StreamResponse:
    c = _find_container(request, request.match_info["ref"])
    tail, follow = streams.query_tail(request), query_flag(request, "follow")
    window = query_window(request)
    ex = _daemon(request).executor
    ex.check_logs(c.id)  # before the answer starts: a `none` log driver keeps nothing to read

    async def lines():
        async for line in ex.logs(c.id, tail=tail, follow=follow, timestamps=True,
                                  window=window):
            yield {"t": line.ts, "s": line.stream, "l": line.line}
    return await _ndjson(request, lines())


async def task_logs(request: web.Request) -> web.StreamResponse:
    """Logs of the given tasks' containers on this node (what managers merge for service logs)."""
    ex = _daemon(request).executor
    task_ids = request.query.getall("task", [])
    known = {c.id for c in ex.list()}
    follow = query_flag(request, "follow")
    tail = streams.query_tail(request)
    window = query_window(request)
    for tid in task_ids:
        if tid in known:
            ex.check_logs(tid)  # a `none` log driver: say so, rather than an empty answer

    async def lines():
        queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
        done = object()

        async def pump(tid: str) -> None:
            try:
                async for line in ex.logs(tid, tail=tail, follow=follow, timestamps=True,
                                          window=window):
                    await queue.put({"task_id": tid, "t": line.ts, "s": line.stream, "l": line.line})
            except errors.ShoalError:
                pass
            finally:
                await queue.put(done)
        pumps = [asyncio.create_task(pump(t)) for t in task_ids if t in known]
        remaining = len(pumps)
        try:
            while remaining:
                item = await queue.get()
                if item is done:
                    remaining -= 1
                else:
                    yield item
        finally:
            for p in pumps:
                p.cancel()
    return await _ndjson(request, lines())


async def images_list(request: web.Request) -> web.Response:
    return reply([{"ref": i.ref, "id": i.id, "size": i.size} for i in _daemon(request).images.list()])


async def image_import(request: web.Request) -> web.Response:
    data = await body_json(request)
    path = Path(field(data, "path", str))
    ref = field(data, "ref", str, required=False)
    if ref:
        parse_ref(ref)
    if not path.is_absolute():
        raise errors.InvalidArgument(f"path {str(path)!r} must be absolute (the daemon has no "
                                     "working directory of yours)", field="path")
    if not path.exists():
        raise errors.InvalidArgument(f"{path} does not exist on this node", field="path")
    img = await _daemon(request).images.import_archive(path, ref)
    return reply({"ref": img.ref, "id": img.id, "size": img.size})


async def image_pull(request: web.Request) -> web.Response:
    d = _daemon(request)
    data = await body_json(request)
    ref = field(data, "ref", str)
    parse_ref(ref)  # before anything goes on the network
    insecure = set(d.insecure_registries)
    if field(data, "insecure", bool, required=False, default=False):
        insecure.add(ref.split("/", 1)[0])
    # the caller's credentials for this pull only: in memory, never written or logged
    creds = registryauth.credentials_from_plain(data.get("auth"), "auth")
    img = await d.images.pull(ref, insecure_registries=frozenset(insecure), credentials=creds)
    return reply({"ref": img.ref, "id": img.id, "size": img.size})


async def registry_login(request: web.Request) -> web.Response:
    """Check credentials on a registry from this node, as `docker login` asks its daemon."""
    d = _daemon(request)
    data = await body_json(request)
    host = registryauth.registry_key(field(data, "registry", str))
    creds = registryauth.credentials_from_plain(field(data, "auth", dict), "auth")
    insecure = host in d.insecure_registries or field(data, "insecure", bool, required=False,
                                                      default=False)
    await registry.check_login(host, creds, insecure=insecure)
    return reply({"registry": host, "status": "Login Succeeded"})


async def image_remove(request: web.Request) -> web.Response:
    _daemon(request).images.remove(request.match_info["ref"])
    return reply({"removed": request.match_info["ref"]})


# ---- volumes (worker/volumes.py): node-local, as Docker's local driver --------------------------
@dataclass
class VolumeCreateRequest:
    name: str = ""                    # "": an anonymous volume with a random name
    driver: str = "local"
    driver_opts: dict[str, str] = dc_field(default_factory=dict)
    labels: dict[str, str] = dc_field(default_factory=dict)


@dataclass
class VolumePruneRequest:
    all: bool = False                 # named volumes too, not only anonymous ones
    filters: dict[str, list[str]] = dc_field(default_factory=dict)


def _volumes(request: web.Request) -> VolumeStore:
    store = getattr(_daemon(request), "volumes", None)
    if store is None:
        raise errors.Unavailable("this node's volume store is not running")
    return store


def _query_filters(request: web.Request) -> dict[str, list[str]]:
    """`?filters={"label": ["a=b"], "dangling": ["true"]}`, Docker's form."""
    raw = request.query.get("filters")
    if not raw:
        return {}
    try:
        data = strict.loads(raw)
    except errors.InvalidArgument as exc:
        raise errors.InvalidArgument(
            f"query parameter filters is not valid JSON ({exc.message}): send a map like "
            '{"label": ["app=web"], "dangling": ["true"]}', field="filters") from None
    return strict.decode(dict[str, list[str]], data, "filters")


async def volumes_list(request: web.Request) -> web.Response:
    return reply([v.view() for v in _volumes(request).list(_query_filters(request))])


async def volume_create(request: web.Request) -> web.Response:
    req = strict.decode(VolumeCreateRequest, await body_json(request, required=False))
    return reply(_volumes(request).create(req.name, req.driver, req.driver_opts,
                                          req.labels).view())


async def volume_inspect(request: web.Request) -> web.Response:
    return reply(_volumes(request).get(request.match_info["name"]).view())


async def volume_remove(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    removed = await _volumes(request).remove(name, force=query_flag(request, "force"))
    return reply({"removed": name if removed else None})


async def volume_prune(request: web.Request) -> web.Response:
    req = strict.decode(VolumePruneRequest, await body_json(request, required=False))
    deleted, freed = await _volumes(request).prune(all=req.all, filters=req.filters)
    return reply({"deleted": deleted, "reclaimed": freed})


def _local(*handlers):
    # These act on this node itself: never forwarded to the leader.
    for h in handlers:
        h.local_only = True


_local(containers_list, container_inspect, container_exec, container_logs, images_list,
       image_import, image_pull, image_remove, registry_login, task_logs, volumes_list, volume_create,
       volume_inspect, volume_remove, volume_prune)


def local_routes() -> list[web.RouteDef]:
    return [web.get("/containers", containers_list),
            web.get("/containers/{ref}", container_inspect),
            web.post("/containers/{ref}/exec", container_exec),
            web.get("/containers/{ref}/logs", container_logs),
            web.get("/images", images_list),
            web.post("/images/import", image_import),
            web.post("/images/pull", image_pull),
            web.delete("/images/{ref:.+}", image_remove),
            web.post("/registry/login", registry_login),
            web.get("/volumes", volumes_list),
            web.post("/volumes/create", volume_create),
            web.post("/volumes/prune", volume_prune),
            web.get("/volumes/{name}", volume_inspect),
            web.delete("/volumes/{name}", volume_remove),
            web.get("/worker/logs", task_logs)]


def cluster_routes() -> list[web.RouteDef]:
    return [web.get("/worker/logs", task_logs)]
