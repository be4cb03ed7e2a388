"""Services: create, list, inspect, update, roll back, remove, and their logs gathered from the nodes."""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import AsyncIterator, Optional

import aiohttp
from aiohttp import web

from common import codec, errors, httpstreams as streams
from common.httpserver import CTX, body_json, query_flag, query_int, reply
from common.ids import new_id
from common.logtime import optional_time
from common.model import SentSpec, Service, ServiceSpec, Task, UpdateStatus
from common.nodestate import API_PORT
from manager.allocator.allocator import ingress_ports
from manager.controlapi.context import manager_of
from manager.orchestrator.dependencies import dependency_wait
from manager.specs import registry_auths
from manager.specs.configs import CONFIGS
from manager.specs.dependencies import validate_dependencies
from manager.specs.secrets import SECRETS
from manager.specs.services import parse_service_spec
from manager.state.store import Transaction


# The most a Docker client's sent spec may take in the store (raft entries and snapshots carry
# it). A bigger one is not kept: the Docker API then shows the translation of shoal's spec,
# which holds the same settings.
MAX_SENT_SPEC = 64 * 1024


def spec_digest(spec: ServiceSpec) -> str:
    """What a sent spec is matched against: it stands for the spec that has this digest."""
    plain = json.dumps(codec.to_plain(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(plain.encode()).hexdigest()


def _sent_text(data: dict) -> Optional[str]:
    """The Docker API's spec as its client sent it, in a write's body next to shoal's spec
    ({"spec": ..., "docker_spec": "<JSON text>"}); None when there is none or it is too big."""
    if "spec" not in data or data.get("docker_spec") is None:
        return None
    text = data["docker_spec"]
    if not isinstance(text, str):
        raise errors.InvalidArgument("docker_spec must be a JSON object as text", field="docker_spec")
    if len(text.encode()) > MAX_SENT_SPEC:
        return None
    try:
        ok = isinstance(json.loads(text), dict)
    except ValueError:
        ok = False
    if not ok:
        raise errors.InvalidArgument("docker_spec must be a JSON object as text", field="docker_spec")
    return text


def find_service(manager, ref: str) -> Service:
    svc = manager.store.find("services", ref)
    if svc is None:
        raise errors.NotFound(f"no such service: {ref}")
    return svc


def replicas_status(manager, svc: Service) -> dict:
    """Tasks running, desired and completed: `service ls`'s REPLICAS (and Docker's
    ServiceStatus, shoal/dockerapi)."""
    tasks = manager.store.by_index("tasks", "service_id", svc.id)
    live = [t for t in tasks if t.desired_up]
    mode = svc.spec.mode
    if mode.is_global:
        desired = len(live)
    elif mode.is_job:
        desired = mode.total_completions or mode.replicas
    else:
        desired = mode.replicas
    return {
        "running": sum(1 for t in live if t.status.state == "running"),
        "completed": sum(1 for t in tasks if t.status.state == "complete"),
        "desired": desired,
    }


def service_view(manager, svc: Service) -> dict:
    plain = codec.to_plain(svc)
    # The Docker API's business (shoal/dockerapi), not part of shoal's view of a service.
    plain.pop("sent_specs", None)
    plain["replicas_status"] = replicas_status(manager, svc)
    # Only while gated: why a service has no task yet is otherwise a mystery.
    wait = dependency_wait(svc, manager.store)
    if wait is not None:
        plain["dependency_wait"] = wait
    return plain


async def create_service(manager, data: dict) -> Service:
    """A new service from a decoded body (shoal's spec, or {"spec": ...}): checked, named
    uniquely, allocated and stored. The one way a service is created (shoal's API and the
    Docker API's translation both call it, on the leader; the latter also passes the spec as
    its client sent it, "docker_spec")."""
    spec = parse_service_spec(data.get("spec", data))
    sent = _sent_text(data)
    auth = registry_auths.from_body(data, spec.task_template.container.image)
    # Secrets first: a config may not take a target one of the secrets has.
    SECRETS.resolve_refs(manager, spec)
    CONFIGS.resolve_refs(manager, spec)
    if manager.store.by_name("services", spec.name) is not None:
        raise errors.Conflict(f"service {spec.name!r} already exists: pick another name or update it "
                              f"with 'shoal service update {spec.name}'", field="name")
    validate_dependencies(spec, (s.spec for s in manager.store.list("services")))
    now = time.time()
    svc = Service(id=new_id(), spec=spec)
    svc.meta.created_at = svc.meta.updated_at = now
    manager.require_leader()
    manager.allocator.allocate_service(svc)
    if sent is not None:
        svc.sent_specs = [SentSpec(json=sent, digest=spec_digest(svc.spec))]
    txn = Transaction().create("services", svc)
    registry_auths.stage(txn, manager.store, svc.id, auth)
    try:
        await manager.propose(txn)
    except BaseException:
        manager.allocator.release_service(svc)
        raise
    return svc


async def service_create(request: web.Request) -> web.Response:
    svc = await create_service(manager_of(request), await body_json(request))
    return reply({"id": svc.id}, status=201)


async def service_list(request: web.Request) -> web.Response:
    manager = manager_of(request)
    services = sorted(manager.store.list("services"), key=lambda s: s.spec.name)
    return reply([service_view(manager, s) for s in services])


async def service_inspect(request: web.Request) -> web.Response:
    manager = manager_of(request)
    return reply(service_view(manager, find_service(manager, request.match_info["ref"])))


async def update_service(manager, ref: str, version, data: dict) -> Service:
    """`ref`'s spec replaced by the decoded body's, if `version` is still the service's.

    The Docker API's sent spec of the spec being replaced is kept, as the previous one; the new
    spec has one only if this write came through the Docker API. So a change made through
    shoal's own API shows in the Docker view (translated from shoal's spec), never hidden
    behind an older sent spec."""
    svc = manager.store.get("services", find_service(manager, ref).id)
    _check_version(svc, version)
    spec = parse_service_spec(data.get("spec", data))
    sent = _sent_text(data)
    # None keeps the credentials stored (as Docker: an update without them does not drop them)
    auth = registry_auths.from_body(data, spec.task_template.container.image)
    # Secrets first: a config may not take a target one of the secrets has.
    SECRETS.resolve_refs(manager, spec)
    CONFIGS.resolve_refs(manager, spec)
    if spec.name != svc.spec.name:
        raise errors.InvalidArgument("a service cannot be renamed", field="name")
    validate_dependencies(spec, (s.spec for s in manager.store.list("services")))
    manager.require_leader()
    manager.allocator.resolve_networks(spec)
    now = time.time()
    if spec.task_template != svc.spec.task_template or _publishing_changes(svc.spec, spec):
        # The updater replaces the tasks batch by batch; the status tells how it goes.
        svc.update_status = UpdateStatus(state="updating", message="update in progress",
                                         started_at=now)
    old = codec.clone(svc)
    current = spec_digest(svc.spec)
    kept = [s for s in svc.sent_specs if s.digest == current][:1]
    svc.previous_spec, svc.spec = svc.spec, spec
    svc.meta.updated_at = now
    manager.require_leader()
    manager.allocator.allocate_service(svc, old)
    # A rollback swaps spec and previous spec; the sent specs follow by their digests.
    svc.sent_specs = ([SentSpec(json=sent, digest=spec_digest(svc.spec))] if sent else []) + kept
    txn = Transaction().update("services", svc)
    registry_auths.stage(txn, manager.store, svc.id, auth)
    await manager.propose(txn)
    return manager.store.get("services", svc.id)


def _check_version(svc: Service, version) -> None:
    if version is None:
        raise errors.InvalidArgument("the 'version' query parameter is required: read the service "
                                     "and send the version you changed", field="version")
    if version != svc.meta.version:
        raise errors.Conflict(f"service {svc.spec.name} changed since version {version} (now "
                              f"{svc.meta.version}); read it again and retry")


async def service_update(request: web.Request) -> web.Response:
    manager = manager_of(request)
    # The version is checked before the body is read, as ever.
    find_service(manager, request.match_info["ref"])
    version = query_int(request, "version")
    svc = await update_service(manager, request.match_info["ref"], version,
                               await body_json(request))
    return reply(service_view(manager, svc))


def _publishing_changes(old: ServiceSpec, new: ServiceSpec) -> bool:
    """Whether the tasks gain or lose the ingress network (first port published, last gone)."""
    return bool(ingress_ports(old.endpoint_spec.ports)) != bool(ingress_ports(new.endpoint_spec.ports))


async def rollback_service(manager, ref: str, version=None) -> Service:
    """Back to the previous spec; a second rollback swaps back again (like docker). With a
    `version` (the Docker API always sends one), a stale one is refused."""
    svc = manager.store.get("services", find_service(manager, ref).id)
    if version is not None:
        _check_version(svc, version)
    if svc.previous_spec is None:
        raise errors.FailedPrecondition(f"service {svc.spec.name} has no previous spec to roll "
                                        "back to (it was never updated)")
    now = time.time()
    old = codec.clone(svc)
    svc.spec, svc.previous_spec = svc.previous_spec, svc.spec
    svc.update_status = UpdateStatus(state="rollback_started", message="manually requested rollback",
                                     started_at=now)
    svc.meta.updated_at = now
    manager.require_leader()
    manager.allocator.allocate_service(svc, old)
    await manager.propose(Transaction().update("services", svc))
    return manager.store.get("services", svc.id)


async def service_rollback(request: web.Request) -> web.Response:
    manager = manager_of(request)
    svc = await rollback_service(manager, request.match_info["ref"],
                                 query_int(request, "version"))
    return reply(service_view(manager, svc))


async def remove_service(manager, ref: str) -> Service:
    svc = find_service(manager, ref)
    txn = Transaction().delete("services", svc.id)
    registry_auths.stage_removal(txn, manager.store, svc.id)
    # Every task is told to stop in the same transaction; the reaper drops them once stopped.
    now = time.time()
    for t in manager.store.by_index("tasks", "service_id", svc.id):
        if t.desired_up:
            t = codec.clone(t)
            t.desired_state = "shutdown"
            t.meta.updated_at = now
            txn.update("tasks", t, check_version=False)
    await manager.propose(txn)
    return svc


async def service_remove(request: web.Request) -> web.Response:
    svc = await remove_service(manager_of(request), request.match_info["ref"])
    return reply({"id": svc.id})


async def gather_logs(ctx, manager, svc: Service, follow: bool, tail: int | None,
                      since: Optional[float] = None,
                      until: Optional[float] = None) -> AsyncIterator[dict]:
    """Every task's log entries ({t, s, l, task, node, task_id, node_id}, or {error, node}),
    gathered from the nodes that ran them (mutual TLS to each): as they come with `follow`,
    else all of them in time order. shoal's API and the Docker API's both stream these.
    `since`/`until` (Unix seconds) are applied by the nodes, as they read."""
    by_node: dict[str, list[Task]] = {}
    for t in manager.store.by_index("tasks", "service_id", svc.id):
        if t.node_id and t.status.container_id:
            by_node.setdefault(t.node_id, []).append(t)
    queue: asyncio.Queue = asyncio.Queue(maxsize=1000)
    done = object()

    async def from_node(node_id: str, tasks: list[Task]) -> None:
        node = manager.store.get("nodes", node_id)
        hostname = node.description.hostname if node else node_id
        names = {t.id: t.name for t in tasks}
        try:
            if node is None or not node.status.addr:
                raise errors.Unavailable("node is gone")
            if node.simulated:
                raise errors.FailedPrecondition(
                    "a simulated node (shoal sim nodes): its tasks run nothing and have no logs")
            client = ctx.peer_client(f"{node.status.addr}:{API_PORT}")
            params = [("follow", "true" if follow else "false"),
                      ("tail", "all" if tail is None else str(tail))] + \
                [("task", t.id) for t in tasks] + \
                [(k, f"{v:.6f}") for k, v in (("since", since), ("until", until)) if v is not None]
            stream = await client.open_stream("GET", "/worker/logs", params=params, connect_timeout=3)
            try:
                async for raw in stream.content:
                    if raw.strip():
                        entry = json.loads(raw)
                        if "error" in entry:  # the node's stream failed (manager.streams)
                            raise errors.Unavailable(str(entry["error"]))
                        entry.update(task=names.get(entry["task_id"], "?"), node=hostname,
                                     node_id=node_id)
                        await queue.put(entry)
            finally:
                stream.release()
        except (errors.ShoalError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            await queue.put({"error": getattr(exc, "message", str(exc)) or type(exc).__name__,
                             "node": hostname})
        finally:
            await queue.put(done)

    pumps = [asyncio.create_task(from_node(n, ts)) for n, ts in by_node.items()]
    remaining, pending = len(pumps), []
    try:
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif follow:
                yield item
            else:
                pending.append(item)
        for item in sorted(pending, key=lambda e: e.get("t", 0)):
            yield item
    finally:
        for p in pumps:
            p.cancel()


async def service_logs(request: web.Request) -> web.StreamResponse:
    """Every task's log lines, gathered from the nodes that ran them (mutual TLS to each)."""
    manager = manager_of(request)
    svc = find_service(manager, request.match_info["ref"])
    # Checked here, before the stream starts (manager.streams), not by each node later.
    follow, tail, since, until = log_query(request)
    return await stream_log_entries(request, svc, gather_logs(
        request.app[CTX], manager, svc, follow, tail, since, until))


def log_query(request: web.Request) -> tuple[bool, Optional[int], Optional[float],
                                             Optional[float]]:
    """follow, tail, since, until of a logs request (refused here, before any stream)."""
    return (query_flag(request, "follow"), streams.query_tail(request),
            optional_time(request.query.get("since"), "since"),
            optional_time(request.query.get("until"), "until"))


async def stream_log_entries(request: web.Request, svc: Service,
                             entries: AsyncIterator[dict]) -> web.StreamResponse:
    """The entries as NDJSON; with details=true each keeps its task_id and node_id and gets
    its service_id (what `service logs --details` shows, as docker's com.docker.swarm.*)."""
    details = query_flag(request, "details")
    resp = await streams.start_ndjson(request)
    try:
        async for item in entries:
            if details and "error" not in item:
                item["service_id"] = svc.id
            else:
                item.pop("task_id", None)
                item.pop("node_id", None)
            await resp.write(json.dumps(item).encode() + b"\n")
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        await entries.aclose()
    return resp


def routes() -> list[web.RouteDef]:
    return [
        web.post("/services/create", service_create),
        web.get("/services", service_list),
        web.get("/services/{ref}", service_inspect),
        web.post("/services/{ref}/update", service_update),
        web.post("/services/{ref}/rollback", service_rollback),
        web.delete("/services/{ref}", service_remove),
        web.get("/services/{ref}/logs", service_logs),
    ]
