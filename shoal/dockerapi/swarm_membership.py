"""POST /swarm/init, /swarm/join, /swarm/leave and /swarm/unlock: what this node itself does
(it need not be in a swarm, or may be locked), through the same operations as shoal's own
socket: shoal/lifecycle.py's init_swarm, join_swarm and leave_swarm, and shoal's unlock."""
from __future__ import annotations

import ipaddress
from typing import Callable, Optional

from aiohttp import web

from common import errors
from common.keywrap import UnlockKey
from shoal import autolock, lifecycle, recovery
from shoal.dockerapi.access import daemon_of
from shoal.dockerapi.errors import DockerError, bad_request, from_shoal, json_answer
from shoal.dockerapi.query import flag, json_body
from shoal.dockerapi.translate.reader import Obj
from shoal.dockerapi.translate.swarm import init_path, init_request, join_request

# dockerd's words for a node that is already in a swarm, or in none.
ALREADY_IN_SWARM = ("This node is already part of a swarm. Use \"docker swarm leave\" to leave "
                    "this swarm and join another one.")
NOT_PART_OF_SWARM = "This node is not part of a swarm"


def _spelled(exc: errors.ShoalError, spell: Callable[[str], str]) -> DockerError:
    """shoal's error with its field in Docker's spelling."""
    err = from_shoal(exc)
    field = exc.field if isinstance(exc.field, str) else None
    if field:
        docker = spell(field)
        message = exc.message
        if message.startswith(f"{field}: "):
            message = message[len(field) + 2:]
        err = DockerError(err.status, f"{docker}: {message}")
    return err


def _advertise(value: str) -> Optional[str]:
    """Docker takes IP[:PORT] (port 2377 implied); shoal advertises an IP."""
    if not value:
        return None
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    host, sep, port = value.rpartition(":")
    if sep and port == "2377":
        return host.strip("[]")
    return value  # shoal names what is wrong with it


def _not_in_swarm(daemon) -> None:
    if daemon.state.in_swarm:
        raise DockerError(503, ALREADY_IN_SWARM)


async def swarm_init(request: web.Request, params: dict[str, str]) -> web.Response:
    daemon = daemon_of(request)
    req = init_request(await json_body(request, "a SwarmInitRequest"))
    # `docker swarm init --force-new-cluster` on a node of a swarm: recover it with this
    # manager alone. On a node in no swarm it is a plain init, as dockerd's.
    if req.force_new_cluster and daemon.state.in_swarm:
        try:
            result = await recovery.force_new_cluster(daemon, req.advertise_addr or None)
        except errors.ShoalError as exc:
            raise _spelled(exc, init_path) from None
        return json_answer(result["node_id"])
    _not_in_swarm(daemon)
    try:
        result = await lifecycle.init_swarm(daemon, _advertise(req.advertise_addr),
                                            req.listen_addr or None, req.spec,
                                            req.data_path_port or None)
    except errors.ShoalError as exc:
        raise _spelled(exc, init_path) from None
    # dockerd answers with the new node's id, a JSON string.
    return json_answer(result["node_id"])


async def swarm_join(request: web.Request, params: dict[str, str]) -> web.Response:
    daemon = daemon_of(request)
    _not_in_swarm(daemon)
    req = join_request(await json_body(request, "a SwarmJoinRequest"))
    last: Optional[errors.ShoalError] = None
    # Each manager in turn, as dockerd: one that is down must not fail the join.
    for remote in req.remote_addrs:
        try:
            await lifecycle.join_swarm(daemon, remote, req.token, _advertise(req.advertise_addr),
                                       req.listen_addr or None)
            return web.Response(status=200)
        except errors.Unavailable as exc:
            last = exc
        except errors.ShoalError as exc:
            raise _spelled(exc, init_path) from None
    assert last is not None
    raise _spelled(last, init_path)


async def swarm_leave(request: web.Request, params: dict[str, str]) -> web.Response:
    daemon = daemon_of(request)
    if not daemon.state.in_swarm:
        raise DockerError(503, NOT_PART_OF_SWARM)
    await lifecycle.leave_swarm(daemon, flag(request, "force"))
    return web.Response(status=200)


async def swarm_unlock(request: web.Request, params: dict[str, str]) -> web.Response:
    """shoal's unlock, asked of this node's own socket: the one place that opens the sealed
    secrets and starts the roles (shoal/autolock.py) keeps doing it."""
    o = Obj(await json_body(request, "a SwarmUnlockRequest"))
    key = o.str("UnlockKey").strip()
    o.done()
    if not key:
        raise bad_request("UnlockKey: is required: the key `docker swarm unlock-key` printed "
                          "on a manager")
    daemon = daemon_of(request)
    if not daemon.state.in_swarm:
        raise DockerError(503, NOT_PART_OF_SWARM)
    try:
        await autolock.unlock(daemon, UnlockKey.parse(key))
    except errors.ShoalError as exc:
        raise _spelled(exc, lambda f: "UnlockKey" if f == "unlock_key" else f) from None
    return web.Response(status=200)
