"""GET /containers/json and GET /containers/{id}/json: this node's containers (its tasks'), on
any node, from the same executor, controllers and lookup as `shoal container ls/inspect`
(shoal/workerapi.py), translated by translate/containers.py."""
from __future__ import annotations

import os
from typing import Optional

from aiohttp import web

from common import errors, linux
from shoal import workerapi
from shoal.dockerapi import filters
from shoal.dockerapi.access import daemon_of
from shoal.dockerapi.errors import DockerError, bad_request, json_answer, not_found
from shoal.dockerapi.query import flag
from shoal.dockerapi.translate import containers as to_docker

_SERVED = ("id", "name", "label", "status", "exited", "health", "is-task", "network",
           "ancestor")
# dockerd's other container filters: refused by name rather than ignored.
_NOT_SERVED = ("before", "since", "volume", "publish", "expose", "isolation")
_STATES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
_HEALTH = ("starting", "healthy", "unhealthy", "none")


def _boot_time() -> float:
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _started_at(pid: int) -> float:
    """When a running container's init started, from /proc (the executor keeps no clock
    time for it)."""
    ticks = linux.pid_start_time(pid) if pid > 0 else None
    boot = _boot_time()
    if not ticks or not boot:
        return 0.0
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def facts(daemon, info, controller) -> to_docker.Facts:
    """What this node knows of one container, gathered for translation."""
    meta = daemon.executor.meta(info.id)
    view = workerapi._container_view(info, controller)
    config = meta.get("config", {}) or {}
    image_id = meta.get("image_id", "")
    image = daemon.images.get(image_id) if daemon.images is not None and image_id else None
    state = {"stopped": "exited"}.get(view["state"], view["state"])
    task = controller.task if controller is not None else None
    exit_info = info.exit
    networks: dict[str, tuple[str, str, str]] = {}
    health = ""
    finished = 0.0
    if controller is not None:
        runner = controller.runner
        views = runner.networks.views if getattr(runner, "networks", None) is not None else {}
        for a in task.networks:
            name = views.get(a.network_id, {}).get("name", a.network_id)
            networks[name] = (a.network_id, a.address, a.mac)
        health = task.status.health
        if task.status.state in ("complete", "failed", "shutdown", "rejected", "orphaned"):
            finished = task.status.timestamp
    return to_docker.Facts(
        id=info.id, name=view["name"], image=view["image"] or config.get("image", ""),
        image_id=image_id, state=state, pid=info.pid, created=float(meta.get("created") or 0),
        config=config, labels=dict(info.labels or {}),
        node_id=daemon.state.node_id if daemon.state.in_swarm else "",
        task=task,
        exit_code=exit_info.exit_code if exit_info is not None else None,
        oom_killed=bool(exit_info and exit_info.oom_killed),
        error=(exit_info.message if exit_info is not None and exit_info.exit_code is None
               else ""),
        started_at=_started_at(info.pid) if state == "running" else 0.0,
        finished_at=finished if state != "running" else 0.0,
        restart_count=int(meta.get("restart_count", 0) or 0),
        health=health if state == "running" else "",
        image_config=(image.config or {}) if image is not None else {},
        networks=networks)


def _all_facts(daemon) -> list[to_docker.Facts]:
    if daemon.executor is None:
        return []
    controllers = workerapi._controllers(daemon)
    out = []
    for info in daemon.executor.list():
        try:
            out.append(facts(daemon, info, controllers.get(info.id)))
        except errors.NotFound:
            continue  # removed while we looked
    return out


def _int_param(request: web.Request, name: str) -> Optional[int]:
    raw = request.query.get(name, "")
    if raw == "":
        return None
    if not (raw.lstrip("-").isascii() and raw.lstrip("-").isdigit()) or len(raw) > 19:
        raise bad_request(f"invalid value for '{name}': {raw!r} is not an integer")
    return int(raw)


def _parse_filters(request: web.Request) -> filters.Filters:
    f = filters.parse(request.query.get("filters"), _SERVED + _NOT_SERVED)
    for key in _NOT_SERVED:
        if key in f:
            raise bad_request(f"invalid filter '{key}': shoal does not filter containers by "
                              f"{key}; use one of {', '.join(_SERVED)}")
    for value in f.get("status"):
        if value not in _STATES:
            raise bad_request(f"invalid filter 'status={value}': use one of "
                              f"{', '.join(_STATES)}")
    for value in f.get("health"):
        if value not in _HEALTH:
            raise bad_request(f"invalid filter 'health={value}': use one of "
                              f"{', '.join(_HEALTH)}")
    for value in f.get("exited"):
        if not (value.isascii() and value.lstrip("-").isdigit() and len(value) < 12):
            raise bad_request(f"invalid filter 'exited={value}': give an exit code "
                              "(an integer)")
    for value in f.get("is-task"):
        if value not in ("true", "false", "1", "0"):
            raise bad_request(f"invalid filter 'is-task={value}': use true or false")
    return f


def _keep(f: filters.Filters, c: to_docker.Facts, show_all: bool) -> bool:
    labels = to_docker.docker_labels(c)
    if not (show_all or c.state in ("running", "restarting")):
        return False
    if not (f.prefix("id", c.id) and f.labels("label", labels)
            and f.exact("status", c.state)):
        return False
    if "name" in f and not any(w.lstrip("/") in c.name for w in f.get("name")):
        return False   # dockerd matches names as regular expressions; a substring is their core
    if "exited" in f and (c.state != "exited"
                          or str(c.exit_code if c.exit_code is not None else 0)
                          not in [str(int(v)) for v in f.get("exited")]):
        return False
    if "health" in f and (c.health or "none") not in f.get("health"):
        return False
    if "is-task" in f:
        is_task = c.task is not None and bool(c.task.service_id)
        if (f.get("is-task")[-1] in ("true", "1")) != is_task:
            return False
    if "network" in f and not any(w == name or w == net_id
                                  for w in f.get("network")
                                  for name, (net_id, _, _) in c.networks.items()):
        return False
    if "ancestor" in f and not any(w in (c.image, c.image_id) or c.image_id.startswith(w)
                                   for w in f.get("ancestor")):
        return False
    return True


async def container_list(request: web.Request, params: dict[str, str]) -> web.Response:
    f = _parse_filters(request)
    limit = _int_param(request, "limit")
    # As dockerd: a status filter or a limit lists stopped containers too.
    show_all = flag(request, "all") or "status" in f or (limit is not None and limit > 0)
    found = [c for c in _all_facts(daemon_of(request)) if _keep(f, c, show_all)]
    found.sort(key=lambda c: (c.created, c.id), reverse=True)   # newest first
    if limit is not None and limit > 0:
        found = found[:limit]
    return json_answer([to_docker.summary(c) for c in found])


async def container_inspect(request: web.Request, params: dict[str, str]) -> web.Response:
    daemon = daemon_of(request)
    ref = params["id"].lstrip("/")
    if daemon.executor is None or not ref:
        raise not_found(f"No such container: {params['id']}")
    try:
        info = workerapi._find_container(request, ref)
        controller = workerapi._controllers(daemon).get(info.id)
        return json_answer(to_docker.inspect(facts(daemon, info, controller)))
    except errors.NotFound:
        raise not_found(f"No such container: {params['id']}") from None
    except errors.InvalidArgument as exc:
        raise DockerError(400, exc.message) from None
