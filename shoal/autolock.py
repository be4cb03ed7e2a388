"""Autolock on the node daemon: a restarted manager of an autolocked swarm comes up *locked*.

Locked means its raft secret and TLS key are still sealed on disk (common/keywrap.py): it runs
no raft, no agent and does not listen on the cluster port (it has no TLS key to do so), and its
local API refuses everything except ping, info, unlock and a forced leave, with one clear error.
`shoal swarm unlock` hands it the key; a wrong key changes nothing, the right one brings the
roles up as after any restart.
"""
from __future__ import annotations

import logging

from aiohttp import web

from common import errors
from common.keywrap import NodeLocked, UnlockKey
from manager.controlapi.middleware import local_only
from common.httpserver import CTX, body_json, field, reply

log = logging.getLogger("shoal.autolock")

# What a locked node still answers on its local socket.
_OPEN_WHILE_LOCKED = frozenset({"/_ping", "/info", "/swarm/unlock", "/swarm/leave"})


def comes_up_locked(daemon) -> bool:
    """Decide at start-up whether the node waits for `swarm unlock` (and say so in the log)."""
    daemon.locked = daemon.state.in_swarm and daemon.files.is_locked()
    if daemon.locked:
        log.warning("this node is locked (autolock): its raft secret and TLS key are sealed; "
                    "run `shoal swarm unlock` and enter the unlock key")
    return daemon.locked


@web.middleware
async def locked_middleware(request: web.Request, handler):
    if request.app[CTX].locked and request.path not in _OPEN_WHILE_LOCKED:
        raise NodeLocked()
    return await handler(request)


@local_only
async def swarm_unlock(request: web.Request) -> web.Response:
    data = await body_json(request)
    return reply(await unlock(request.app[CTX], UnlockKey.parse(field(data, "unlock_key", str))))


async def unlock(daemon, key: UnlockKey) -> dict:
    """Open a locked node with its unlock key and start its roles (shoal's API and the Docker
    API's POST /swarm/unlock)."""
    async with daemon.role_lock:
        if not daemon.locked:
            raise errors.FailedPrecondition("this node is not locked: there is nothing to unlock")
        daemon.files.unlock(key)  # WrongUnlockKey leaves everything as it was
        daemon.locked = False
        try:
            await daemon.start_roles()
        except BaseException:
            # Half-started roles must not linger with the key in memory.
            await daemon.stop_roles()
            daemon.files.forget_unlock_key()
            daemon.locked = True
            raise
    log.info("unlocked with unlock key %s; the manager is starting", key.key_id)
    return {"unlocked": True, "key_id": key.key_id}


def local_routes() -> list[web.RouteDef]:
    return [web.post("/swarm/unlock", swarm_unlock)]
