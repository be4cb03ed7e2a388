"""GET /swarm: the cluster, from a manager's replica."""
from __future__ import annotations

from aiohttp import web

from shoal.dockerapi.access import manager_of
from shoal.dockerapi.errors import DockerError, json_answer
from shoal.dockerapi.translate.swarm import swarm as swarm_json


async def swarm_inspect(request: web.Request, params: dict[str, str]) -> web.Response:
    cluster = manager_of(request).cluster()
    if cluster is None:
        raise DockerError(503, "the cluster object is not replicated to this manager yet; "
                               "retry in a moment")
    return json_answer(swarm_json(cluster))
