"""The swarm object: inspect and update (its spec, join tokens, autolock)."""
from __future__ import annotations

import time
from typing import Optional

from aiohttp import web

from common import codec, errors, tokens
from common.httpserver import body_json, query_flag, query_int, reply
from common.model import Cluster, ClusterSpec
from manager.controlapi import autolock
from manager.controlapi.context import Manager, manager_of
from manager.specs.cluster import parse_cluster_spec
from manager.state.store import Transaction


def cluster_view(cluster: Cluster) -> dict:
    plain = codec.to_plain(cluster)
    plain["root_ca"].pop("key_pem", None)  # the CA key never leaves the managers' store
    if plain["root_ca"].get("rotation"):  # nor does a new root's, during a rotation
        plain["root_ca"]["rotation"].pop("key_pem", None)
    plain.pop("unlock_keys", None)  # only `swarm unlock-key` shows it (manager/controlapi/autolock.py)
    return plain


async def swarm_inspect(request: web.Request) -> web.Response:
    manager = manager_of(request)
    cluster = manager.cluster()
    if cluster is None:
        raise errors.Unavailable("the cluster object is not replicated here yet; retry in a moment")
    return reply(cluster_view(cluster))


async def swarm_update(request: web.Request) -> web.Response:
    manager = manager_of(request)
    data = await body_json(request, required=False)
    spec = parse_cluster_spec(data["spec"]) if "spec" in data else None
    return reply(await update_swarm(
        manager, query_int(request, "version"), spec,
        rotate_worker_token=query_flag(request, "rotate_worker_token"),
        rotate_manager_token=query_flag(request, "rotate_manager_token"),
        rotate_unlock_key=query_flag(request, "rotate_manager_unlock_key")))


async def update_swarm(manager: Manager, version: Optional[int], spec: Optional[ClusterSpec], *,
                       rotate_worker_token: bool = False, rotate_manager_token: bool = False,
                       rotate_unlock_key: bool = False) -> dict:
    """Replace the swarm's spec (when given; checked by parse_cluster_spec), rotate join
    tokens or the unlock key, on the leader; the cluster's view afterwards, with `unlock_key`
    when a new one was made. shoal's API and the Docker API's translation both call this."""
    current = manager.cluster()
    if current is None:
        raise errors.Unavailable("the cluster object is not replicated here yet; retry in a moment")
    cluster = manager.store.get("clusters", current.id)
    if spec is not None:
        # Only a root rotation raises the rotation counter (controlapi/ca.py rotate_root).
        spec.ca_config.force_rotate = cluster.spec.ca_config.force_rotate
        cluster.spec = spec
    if rotate_worker_token:
        cluster.join_tokens.worker = tokens.new_token(cluster.root_ca.cert_pem)
    if rotate_manager_token:
        cluster.join_tokens.manager = tokens.new_token(cluster.root_ca.cert_pem)
    new_unlock_key = autolock.apply_swarm_update(cluster, rotate_unlock_key)
    if version is not None and version != cluster.meta.version:
        raise errors.Conflict(f"the swarm changed since version {version} (now {cluster.meta.version}); "
                              "read it again and retry")
    cluster.meta.updated_at = time.time()
    await manager.propose(Transaction().update("clusters", cluster))
    view = cluster_view(manager.cluster())
    if new_unlock_key:  # printed once by the CLI, like docker
        view["unlock_key"] = new_unlock_key
    return view


def routes() -> list[web.RouteDef]:
    return [
        web.get("/swarm", swarm_inspect),
        web.post("/swarm/update", swarm_update),
    ]
