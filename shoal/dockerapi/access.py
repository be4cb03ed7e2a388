"""Who answers what: cluster reads come from a manager's replica; a worker, a node outside a
swarm and a locked manager answer with dockerd's errors."""
from __future__ import annotations

from aiohttp import web

from common.httpserver import CTX
from manager.controlapi.context import Manager
from shoal.dockerapi.errors import LOCKED, NOT_A_MANAGER, NOT_IN_SWARM, DockerError


def daemon_of(request: web.Request):
    return request.app[CTX]


def manager_of(request: web.Request) -> Manager:
    daemon = daemon_of(request)
    if daemon.locked:
        raise DockerError(503, LOCKED)
    if not daemon.state.in_swarm:
        raise DockerError(503, NOT_IN_SWARM)
    if daemon.manager is None:
        raise DockerError(503, NOT_A_MANAGER)
    return daemon.manager
