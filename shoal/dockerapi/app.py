"""The Docker API socket's application: routes, the version prefix, Docker's errors.

One catch-all aiohttp route hands every request to `dispatch`, which strips an optional
/v1.NN prefix (checking it is in range) and matches the rest against ROUTES. What Docker has
but this does not serve gets a 501 naming it; anything else, a wrong method included, is
dockerd's "page not found".
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from common import errors as shoal_errors
from common.httpserver import CTX
from common.version import __version__
from shoal.dockerapi import (data_objects, info, logs, networks, nodes, service_writes, services, swarm,
                             tasks, unsupported, versioning)
from shoal.dockerapi import containers, distribution, events, images
from shoal.dockerapi import node_writes, swarm_membership
from shoal.dockerapi.errors import PAGE_NOT_FOUND, DockerError, answer, from_shoal
from shoal.metrics_server import ROUTE_LABEL, api_middlewares

log = logging.getLogger("shoal.dockerapi")

Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]

# A path parameter: one segment, as Docker's router takes it.
_ID = r"(?P<id>[^/]+)"
_KIND = r"/(?P<kind>secrets|configs)"


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    pattern: re.Pattern
    handler: Handler
    label: str  # the pattern as a metrics label (/services/{id}): never a caller's id or name


def _route(methods: str, path: str, handler: Handler) -> Route:
    return Route(frozenset(methods.split()), re.compile(path, re.DOTALL), handler,
                 re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path))


ROUTES: tuple[Route, ...] = (
    _route("GET HEAD", r"/_ping", versioning.ping),
    _route("GET", r"/version", info.version),
    _route("GET", r"/info", info.info),
    _route("GET", r"/swarm", swarm.swarm_inspect),
    _route("POST", r"/swarm/update", swarm.swarm_update),
    _route("GET", r"/swarm/unlockkey", swarm.swarm_unlockkey),
    _route("POST", r"/swarm/init", swarm_membership.swarm_init),
    _route("POST", r"/swarm/join", swarm_membership.swarm_join),
    _route("POST", r"/swarm/leave", swarm_membership.swarm_leave),
    _route("POST", r"/swarm/unlock", swarm_membership.swarm_unlock),
    _route("GET", r"/nodes", nodes.node_list),
    _route("GET", rf"/nodes/{_ID}", nodes.node_inspect),
    _route("POST", rf"/nodes/{_ID}/update", node_writes.node_update),
    _route("DELETE", rf"/nodes/{_ID}", node_writes.node_delete),
    _route("GET", r"/services", services.service_list),
    _route("POST", r"/services/create", service_writes.service_create),
    _route("GET", rf"/services/{_ID}", services.service_inspect),
    _route("POST", rf"/services/{_ID}/update", service_writes.service_update),
    _route("GET", rf"/services/{_ID}/logs", logs.service_logs),
    _route("DELETE", rf"/services/{_ID}", service_writes.service_delete),
    _route("GET", r"/tasks", tasks.task_list),
    _route("GET", rf"/tasks/{_ID}", tasks.task_inspect),
    _route("GET", rf"/tasks/{_ID}/logs", logs.task_logs),
    _route("GET", _KIND, data_objects.listing),
    _route("POST", rf"{_KIND}/create", data_objects.create),
    _route("GET", rf"{_KIND}/{_ID}", data_objects.inspect),
    _route("POST", rf"{_KIND}/{_ID}/update", data_objects.update),
    _route("DELETE", rf"{_KIND}/{_ID}", data_objects.delete),
    _route("GET", r"/networks", networks.listing),
    _route("POST", r"/networks/create", networks.create),
    _route("GET", rf"/networks/{_ID}", networks.inspect),
    _route("DELETE", rf"/networks/{_ID}", networks.delete),
    _route("GET", r"/containers/json", containers.container_list),
    _route("GET", rf"/containers/{_ID}/json", containers.container_inspect),
    _route("GET", r"/images/json", images.image_list),
    # An image name may hold slashes (HOST:PORT/REPO): Docker's router takes all of it.
    _route("GET", r"/images/(?P<name>.+)/json", images.image_inspect),
    _route("GET", r"/distribution/(?P<name>.+)/json", distribution.distribution_inspect),
    _route("GET", r"/events", events.events),
)


async def dispatch(request: web.Request) -> web.StreamResponse:
    version, path = versioning.split(request.path)
    if version is not None:
        versioning.check(version)
        request[versioning.VERSION_KEY] = version
    # A trailing slash is the same endpoint to Docker's router.
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    request[ROUTE_LABEL] = "unmatched"
    for route in ROUTES:
        m = route.pattern.fullmatch(path)
        if m is not None and request.method in route.methods:
            request[ROUTE_LABEL] = route.label
            return await route.handler(request, m.groupdict())
    if unsupported.is_docker_endpoint(request.method, path):
        raise DockerError(501, unsupported.message(request.method, path))
    raise DockerError(404, PAGE_NOT_FOUND)


@web.middleware
async def docker_middleware(request: web.Request, handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except DockerError as exc:
        response = answer(exc.status, exc.message)
    except shoal_errors.ShoalError as exc:
        err = from_shoal(exc)
        response = answer(err.status, err.message)
    except web.HTTPException as exc:
        # aiohttp's own refusals (a body too large, say) in Docker's shape.
        response = answer(exc.status, exc.reason or "request refused")
    except Exception:
        # A bug: its details are for the daemon's log, never for the caller.
        incident = secrets.token_hex(4)
        log.exception("internal error (id %s) in %s %s", incident, request.method,
                      request.path)
        response = answer(500, f"internal error (id {incident}): see the daemon's log")
    for key, value in versioning.common_headers().items():
        response.headers.setdefault(key, value)
    response.headers.setdefault("Server", f"shoal/{__version__} (linux)")
    return response


def make_app(daemon: Any, listener: str = "docker") -> web.Application:
    app = web.Application(middlewares=[*api_middlewares(daemon, listener), docker_middleware])
    app[CTX] = daemon
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


async def serve(daemon: Any, socket_path: str, shutdown_timeout: float) -> web.AppRunner:
    """Listen on `socket_path`, root only from the moment it exists (as shoal's socket)."""
    runner = web.AppRunner(make_app(daemon), access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    Path(socket_path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    old = os.umask(0o177)
    try:
        await web.UnixSite(runner, socket_path).start()
    except BaseException:
        await runner.cleanup()
        raise
    finally:
        os.umask(old)
    return runner
