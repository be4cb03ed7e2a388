"""Autolock on the managers: the unlock key in the replicated store, and each manager keeping
its own sealed secrets in step with it.

The current key lives in the cluster object (the raft store is itself encrypted at rest), so
every manager learns a change from the store and reseals its local key bundle; the leader only
decides the key. What a restarted, locked manager does until `shoal swarm unlock` is the
daemon's part (shoal/autolock.py).

Rotation window: a manager that is down during a rotation (or restarts before it resealed) is
still sealed with the previous key. The cluster keeps that one previous key, and
`shoal swarm unlock-key --previous` prints it, so such a manager can always be unlocked; once
it is running it reseals under the current key within a moment, and from then on only the
current key opens it.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Optional

from aiohttp import web

from common import errors
from common.httpserver import CTX, query_flag, reply
from common.keywrap import UnlockKey, key_id_of
from common.model import Cluster
from common.nodestate import NodeFiles

log = logging.getLogger("shoal.autolock")

# How often the reseal loop looks again even without a store event: a missed wake-up must
# not leave a secret sealed under a key the operator no longer has.
_RECHECK_PERIOD = 2.0


def apply_swarm_update(cluster: Cluster, rotate: bool) -> Optional[str]:
    """Bring the cluster's unlock keys in line with its (already updated) spec: an autolocked
    swarm always has a current key, an unlocked one none.

    Returns the new key when one was made (turned on, or rotated), else None.
    """
    keys = cluster.unlock_keys
    enabled = cluster.spec.encryption_config.auto_lock_managers
    if rotate and not enabled:
        raise errors.FailedPrecondition(
            "cannot rotate the unlock key: autolock is off for this swarm; turn it on with "
            "`shoal swarm update --autolock=true`", field="rotate_manager_unlock_key")
    if enabled and (rotate or not keys.current):
        keys.previous, keys.current = keys.current or keys.previous, str(UnlockKey.generate())
        return keys.current
    if not enabled and keys.current:
        keys.previous, keys.current = keys.current, ""
    return None


def new_cluster_keys(enabled: bool) -> tuple[str, str]:
    """(current, previous) for a new swarm."""
    return (str(UnlockKey.generate()) if enabled else "", "")


async def keep_sealed(files: NodeFiles, manager) -> None:
    """Reseal this manager's secrets whenever the swarm's unlock key changes.

    Waits until the replica has caught up with a leader once: while the journal replays, the
    store passes through old states, and sealing under an old key (then crashing) would lock
    the node with a key the operator may no longer have.
    """
    queue = manager.watch(lambda e: e.table == "clusters")
    try:
        while manager.raft is None or not manager.raft.caught_up:
            await asyncio.sleep(0.1)
        while True:
            try:
                _reconcile(files, manager.cluster())
            except Exception:
                log.exception("resealing this manager's secrets for autolock")
            try:
                await asyncio.wait_for(queue.get(), _RECHECK_PERIOD)
                while not queue.empty():
                    queue.get_nowait()
            except asyncio.TimeoutError:
                pass
    finally:
        manager.unwatch(queue)


def _reconcile(files: NodeFiles, cluster: Optional[Cluster]) -> None:
    if cluster is None:
        return
    text = cluster.unlock_keys.current if cluster.spec.encryption_config.auto_lock_managers else ""
    if files.sealed_with() == key_id_of(text):
        return
    files.reseal(UnlockKey.parse(text) if text else None)
    if text:
        log.info("autolock: this manager's raft secret and TLS key are sealed with unlock key %s",
                 key_id_of(text))
    else:
        log.info("autolock is off: this manager's raft secret and TLS key are in plain 0600 files")


# ---- API --------------------------------------------------------------------------------------
async def unlock_key(request: web.Request) -> web.Response:
    """GET /swarm/unlockkey[?previous=true]: the key a locked manager needs."""
    manager = request.app[CTX].manager
    if manager is None:
        raise errors.NotAManager("this node is not a swarm manager: run `shoal swarm unlock-key` "
                                 "on a manager")
    key = current_unlock_key(manager, query_flag(request, "previous"))
    if not key:
        raise errors.FailedPrecondition("no unlock key is set: autolock is off for this swarm; "
                                        "turn it on with `shoal swarm update --autolock=true`")
    return reply({"unlock_key": key, "key_id": key_id_of(key)})


def current_unlock_key(manager, previous: bool = False) -> str:
    """The swarm's unlock key ("" while autolock is off), or with `previous` the one before the
    last rotation: what `swarm unlock-key` shows, on shoal's API and Docker's."""
    cluster = manager.cluster()
    if cluster is None:
        raise errors.Unavailable("the cluster object is not replicated here yet; retry in a moment")
    keys = cluster.unlock_keys
    if previous:
        if not keys.previous:
            raise errors.NotFound("there is no previous unlock key: the key was never rotated "
                                  "or turned off")
        return keys.previous
    if not cluster.spec.encryption_config.auto_lock_managers:
        return ""
    return keys.current


def routes() -> list[web.RouteDef]:
    return [web.get("/swarm/unlockkey", unlock_key)]
