"""This node's images and disk use on the local socket: `shoal image load|push|tag|inspect|
history|rm|prune|save` and `shoal system df|prune`. The store work is in worker/images/; this
module checks requests, shapes docker's views and streams push progress."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from aiohttp import web

from common import errors, registryauth
from common.fsutil import tree_bytes
from common.httpserver import CTX, body_json, field, reply
from common import httpstreams as streams
from common.imageref import parse_ref
from worker.images import prune as pruning
from worker.images import push as pushing
from worker.images import save as saving
from worker.images.manifests import Image


def _daemon(request: web.Request):
    return request.app[CTX]


def _images(request: web.Request):
    store = getattr(_daemon(request), "images", None)
    if store is None:
        raise errors.Unavailable("this node's image store is not running")
    return store


def _refs(data: dict, name: str = "refs") -> list[str]:
    refs = field(data, name, list)
    if not refs or not all(isinstance(r, str) and r for r in refs):
        raise errors.InvalidArgument(f"{name}: a non-empty list of image references",
                                     field=name)
    return refs


def _absolute(text: str, name: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise errors.InvalidArgument(f"{name} {text!r} must be absolute (the daemon has no "
                                     "working directory of yours)", field=name)
    return path


# ---- load (and import, its old name) ----------------------------------------------------------
async def image_load(request: web.Request) -> web.Response:
    store = _images(request)
    data = await body_json(request)
    path = _absolute(field(data, "path", str), "path")
    ref = field(data, "ref", str, required=False)
    if ref:
        parse_ref(ref)
    if not path.exists():
        raise errors.InvalidArgument(f"{path} does not exist on this node", field="path")
    refs_before = dict(store._index["refs"])
    first = await store.import_archive(path, ref or None)
    tagged = sorted(r for r, i in store._index["refs"].items() if refs_before.get(r) != i)
    loaded = [f"Loaded image: {r}" for r in tagged] or [f"Loaded image ID: {first.id}"]
    return reply({"ref": first.ref, "id": first.id, "size": first.size, "loaded": loaded})


# ---- push ------------------------------------------------------------------------------------
async def image_push(request: web.Request) -> web.StreamResponse:
    d = _daemon(request)
    store = _images(request)
    data = await body_json(request)
    ref = field(data, "ref", str)
    r = parse_ref(ref)  # before anything goes on the network or the stream starts
    insecure = set(getattr(d, "insecure_registries", ()) or ())
    if field(data, "insecure", bool, required=False, default=False) and r.host:
        insecure.add(r.host)
    # the caller's credentials for this push only: in memory, never written or logged
    creds = registryauth.credentials_from_plain(data.get("auth"), "auth")
    chunk = field(data, "chunk_size", int, required=False, default=pushing.CHUNK_SIZE)
    if not 1024 <= chunk <= 1 << 30:
        raise errors.InvalidArgument("chunk_size: 1 KiB to 1 GiB", field="chunk_size")
    resp = await streams.start_ndjson(request)

    async def progress(record: dict) -> None:
        try:
            await streams.write_record(resp, record)
        except (ConnectionResetError, ConnectionError):
            pass  # the reader went away: the push goes on to its end
    await pushing.push(store, ref, insecure_registries=frozenset(insecure),
                          credentials=creds, progress=progress, chunk_size=chunk)
    return resp


# ---- tag, inspect, history -----------------------------------------------------------------
async def image_tag(request: web.Request) -> web.Response:
    data = await body_json(request)
    source, target = field(data, "source", str), field(data, "target", str)
    parse_ref(target)
    image = _images(request).tag(source, target)
    return reply({"id": image.id, "ref": image.ref})


def _config(store, image: Image, what: str) -> dict:
    try:
        doc = json.loads(saving.config_blob(store, image, what))
    except ValueError:
        doc = None
    return doc if isinstance(doc, dict) else {}


def inspect_view(store, image: Image) -> dict:
    """docker's `image inspect` fields, and the manifests the image is known by."""
    config = _config(store, image, image.ref or image.id)
    manifests = store.manifest_digests(image.id)
    # a digest names content in a registry: names without one (busybox:1) get none
    named = [parse_ref(ref) for ref in image.refs]
    repos = sorted({f"{r.host}/{r.repo}" for r in named if r.host})
    return {"Id": image.id, "RepoTags": list(image.refs),
            "RepoDigests": [f"{repo}@{m}" for repo in repos for m in manifests],
            "Created": image.created, "Author": config.get("author", ""),
            "Architecture": image.architecture, "Os": image.os,
            "Size": image.size, "Config": image.config,
            "RootFS": {"Type": "layers", "Layers": list(image.layers)},
            "ManifestDigests": manifests,
            "Metadata": {"LastTagTime": ""}}


async def image_inspect(request: web.Request) -> web.Response:
    store = _images(request)
    data = await body_json(request)
    return reply([inspect_view(store, store.require(ref)) for ref in _refs(data)])


async def image_history(request: web.Request) -> web.Response:
    store = _images(request)
    data = await body_json(request)
    ref = field(data, "ref", str)
    image = store.require(ref)
    config = _config(store, image, ref)
    history = config.get("history")
    if not isinstance(history, list):
        history = []
    sizes = [store._index["layers"].get(d, {}).get("size", 0) for d in image.layers]
    rows, layer = [], 0
    for entry in history:
        entry = entry if isinstance(entry, dict) else {}
        empty = bool(entry.get("empty_layer"))
        size = 0 if empty or layer >= len(sizes) else sizes[layer]
        rows.append({"id": "<missing>", "created": str(entry.get("created", "")),
                     "created_by": str(entry.get("created_by", "")), "size": size,
                     "comment": str(entry.get("comment", ""))})
        layer += 0 if empty else 1
    rows.reverse()  # newest first, as docker's
    if rows:
        rows[0]["id"] = image.id
    return reply(rows)


# ---- rm, prune, save -------------------------------------------------------------------------
async def image_remove(request: web.Request) -> web.Response:
    store = _images(request)
    data = await body_json(request)
    force = field(data, "force", bool, required=False, default=False)
    done, failed = [], []
    for ref in _refs(data):
        try:
            done += pruning.remove_image(store, ref, force)
        except errors.ShoalError as exc:
            failed.append(exc.message)
    return reply({"deleted": done, "errors": failed})


async def image_prune_handler(request: web.Request) -> web.Response:
    data = await body_json(request, required=False) or {}
    all_unused = field(data, "all", bool, required=False, default=False)
    return reply(await pruning.prune(_images(request), all_unused))


async def image_save_handler(request: web.Request) -> web.Response:
    data = await body_json(request)
    output = _absolute(field(data, "output", str), "output")
    return reply(await saving.save(_images(request), _refs(data), output))


# ---- system df / prune -----------------------------------------------------------------------
async def _containers(d) -> list[dict]:
    executor = getattr(d, "executor", None)
    if executor is None:
        return []
    out = []
    for c in executor.list():
        labels = c.labels or {}
        out.append({"id": c.id, "running": c.state == "running",
                    "standalone": not labels.get("shoal.service.id"),
                    "task_id": labels.get("shoal.task.id", ""),
                    "size": await tree_bytes(executor.containers_dir / c.id / "upper")})
    return out


async def system_df(request: web.Request) -> web.Response:
    d = _daemon(request)
    containers = await _containers(d)
    stopped = [c for c in containers if not c["running"]]
    volumes = getattr(d, "volumes", None)
    vol_rows: list[dict] = []
    if volumes is not None:
        for v in volumes.list():
            mountpoint = Path(v.view()["Mountpoint"])
            size = await tree_bytes(mountpoint) if mountpoint.is_dir() else 0
            vol_rows.append({"size": size, "used": bool(volumes.users(v.name))})
    return reply({
        "images": pruning.usage(_images(request)),
        "containers": {"count": len(containers),
                       "active": sum(1 for c in containers if c["running"]),
                       "size": sum(c["size"] for c in containers),
                       "reclaimable": sum(c["size"] for c in stopped if c["standalone"])},
        "volumes": {"count": len(vol_rows), "active": sum(1 for v in vol_rows if v["used"]),
                    "size": sum(v["size"] for v in vol_rows),
                    "reclaimable": sum(v["size"] for v in vol_rows if not v["used"])},
        # no image build on this node yet keeps a cache: reported as docker reports none
        "build_cache": {"count": 0, "active": 0, "size": 0, "reclaimable": 0}})


async def system_prune(request: web.Request) -> web.Response:
    d = _daemon(request)
    data = await body_json(request, required=False) or {}
    all_unused = field(data, "all", bool, required=False, default=False)
    with_volumes = field(data, "volumes", bool, required=False, default=False)
    removed_containers, reclaimed, notes = [], 0, []
    stopped = [c for c in await _containers(d) if not c["running"] and c["standalone"]]
    agent = getattr(d, "agent", None)
    if stopped and agent is None:
        notes.append(f"{len(stopped)} stopped containers kept: this node is in no swarm, "
                     "and containers are removed through the managers")
    for c in stopped if agent is not None else []:
        try:
            # the managers own standalone containers: a removal goes through them
            await agent.request_managers("DELETE", f"/dispatcher/containers/{c['task_id']}")
        except errors.ShoalError as exc:
            notes.append(f"container {c['id'][:12]} kept: {exc.message}")
            continue
        removed_containers.append(c["id"])
        reclaimed += c["size"]
    if removed_containers:  # their images are in use until the executor lets them go
        executor = d.executor
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and \
                {c.id for c in executor.list()} & set(removed_containers):
            await asyncio.sleep(0.2)
    volumes_removed: list[str] = []
    volumes = getattr(d, "volumes", None)
    if with_volumes and volumes is not None:
        volumes_removed, freed = await volumes.prune(all=False)
        reclaimed += freed
    images = await pruning.prune(_images(request), all_unused)
    reclaimed += images["reclaimed"]
    return reply({"containers": removed_containers, "images": images["deleted"],
                  "volumes": volumes_removed, "reclaimed": reclaimed, "notes": notes})


HANDLERS = (image_load, image_push, image_tag, image_inspect, image_history, image_remove,
            image_prune_handler, image_save_handler, system_df, system_prune)
for _handler in HANDLERS:
    _handler.local_only = True  # about this node: never forwarded to the leader


def routes() -> list[web.RouteDef]:
    return [web.post("/images/load", image_load),
            web.post("/images/push", image_push),
            web.post("/images/tag", image_tag),
            web.post("/images/inspect", image_inspect),
            web.post("/images/history", image_history),
            web.post("/images/remove", image_remove),
            web.post("/images/prune", image_prune_handler),
            web.post("/images/save", image_save_handler),
            web.get("/system/df", system_df),
            web.post("/system/prune", system_prune)]

