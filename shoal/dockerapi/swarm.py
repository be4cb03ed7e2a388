"""GET /swarm, POST /swarm/update and GET /swarm/unlockkey: the cluster, read from a
manager's replica and changed through the control API's own functions on the leader
(manager/controlapi/swarm.update_swarm, autolock.current_unlock_key)."""
from __future__ import annotations

from aiohttp import web

from common.model import Cluster
from manager.controlapi.autolock import current_unlock_key
from manager.controlapi.ca import rotate_root
from manager.controlapi.swarm import update_swarm
from manager.specs.cluster import parse_cluster_spec
from shoal.dockerapi import leader
from shoal.dockerapi.access import manager_of
from shoal.dockerapi.errors import DockerError, json_answer
from shoal.dockerapi.node_writes import version_of
from shoal.dockerapi.query import flag, json_body
from shoal.dockerapi.translate.swarm import cluster_spec, swarm as swarm_json, update_path


def _cluster(manager) -> Cluster:
    cluster = manager.cluster()
    if cluster is None:
        raise DockerError(503, "the cluster object is not replicated to this manager yet; "
                               "retry in a moment")
    return cluster


async def swarm_inspect(request: web.Request, params: dict[str, str]) -> web.Response:
    return json_answer(swarm_json(_cluster(manager_of(request))))


async def swarm_update(request: web.Request, params: dict[str, str]) -> web.Response:
    """The whole SwarmSpec, as the docker CLI sends back what it read, plus the rotations
    (`docker swarm join-token --rotate`, `unlock-key --rotate`) as query parameters."""
    cluster = _cluster(manager_of(request))
    version = version_of(request, "swarm")
    rotate = {"rotate_worker_token": flag(request, "rotateWorkerToken"),
              "rotate_manager_token": flag(request, "rotateManagerToken"),
              "rotate_unlock_key": flag(request, "rotateManagerUnlockKey")}
    spec = cluster_spec(await json_body(request, "a SwarmSpec"), cluster.spec)
    # `docker swarm ca --rotate` sends CAConfig.ForceRotate one higher: a root rotation, started
    # once the rest of the spec (its --cert-expiry) is in.
    wanted_rotation = spec["ca_config"].pop("force_rotate", 0)
    spec["ca_config"]["force_rotate"] = cluster.spec.ca_config.force_rotate

    async def local(manager) -> dict:
        return await update_swarm(manager, version, parse_cluster_spec(spec), **rotate)

    path = leader.shoal_path(
        "swarm", "update", version=version,
        rotate_worker_token="true" if rotate["rotate_worker_token"] else None,
        rotate_manager_token="true" if rotate["rotate_manager_token"] else None,
        rotate_manager_unlock_key="true" if rotate["rotate_unlock_key"] else None)
    await leader.write(request, "POST", path, {"spec": spec}, local, update_path,
                       leader.changed("clusters", cluster.id))
    if wanted_rotation > cluster.spec.ca_config.force_rotate:
        async def rotate_here(manager) -> dict:
            return await rotate_root(manager, None, wanted_rotation)
        await leader.write(request, "POST", "/swarm/ca/rotate", {"force_rotate": wanted_rotation},
                           rotate_here, update_path, leader.changed("clusters", cluster.id))
    return web.Response(status=200)


async def swarm_unlockkey(request: web.Request, params: dict[str, str]) -> web.Response:
    """Docker's answer has an empty key while autolock is off (the docker CLI says so)."""
    return json_answer({"UnlockKey": current_unlock_key(manager_of(request))})
