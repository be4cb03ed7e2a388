"""The local socket's recovery endpoints: force-new-cluster, backup, restore (shoal/recovery.py).

Served on the root-only Unix socket only, never forwarded to the leader: a backup is taken
on the manager asked, a recovery concerns this node. The backup file travels base64-encoded
inside the JSON body and answer; it is ciphertext, and the passphrase or unlock key that
opens it comes in the request body only (never in a URL or a log).
"""
from __future__ import annotations

import base64
import binascii
import ipaddress

from aiohttp import web

from common import backupfile, errors, strict
from common.httpserver import CTX, body_json, field, reply
from manager.controlapi.context import identity_of
from manager.controlapi.middleware import local_only
from shoal import recovery

# The restore body holds the whole backup file (base64): far above aiohttp's 1 MiB default.
_MAX_RESTORE_BODY = backupfile.MAX_FILE * 4 // 3 + (64 << 10)


@local_only
async def force_new_cluster(request: web.Request) -> web.Response:
    data = await body_json(request, required=False)
    return reply(await recovery.force_new_cluster(
        request.app[CTX], field(data, "advertise_addr", str, required=False)))


@local_only
async def backup(request: web.Request) -> web.Response:
    data = await body_json(request, required=False)
    result = await recovery.backup(request.app[CTX],
                                   field(data, "passphrase", str, required=False))
    result["file"] = base64.b64encode(result["file"]).decode()
    return reply(result)


@local_only
async def restore(request: web.Request) -> web.Response:
    length = request.content_length
    if length is not None and length > _MAX_RESTORE_BODY:
        raise errors.InvalidArgument(f"the backup file is larger than {backupfile.MAX_FILE} "
                                     "bytes: not a shoal backup", field="input")
    raw = await request.content.read(_MAX_RESTORE_BODY + 1)
    if len(raw) > _MAX_RESTORE_BODY:
        raise errors.InvalidArgument(f"the backup file is larger than {backupfile.MAX_FILE} "
                                     "bytes: not a shoal backup", field="input")
    data = strict.loads(raw)
    if not isinstance(data, dict):
        raise errors.InvalidArgument("the request body must be a JSON object")
    try:
        blob = base64.b64decode(field(data, "backup", str), validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidArgument("field 'backup' must be the backup file in base64",
                                     field="backup") from None
    return reply(await recovery.restore_swarm(
        request.app[CTX], blob, field(data, "passphrase", str, required=False) or "",
        field(data, "advertise_addr", str, required=False),
        field(data, "listen_addr", str, required=False)))


@local_only
async def learn_managers(request: web.Request) -> web.Response:
    """On 2377, from a manager of this swarm (auth_middleware checked the certificate): the
    managers to talk to now. A recovered swarm's new manager tells every worker, as one whose
    address the workers never learnt (a restore on a new host) is otherwise out of their reach."""
    ident = identity_of(request)
    if ident is None or not ident.is_manager:
        raise errors.PermissionDenied("only a manager of this swarm may tell a node its managers")
    data = await body_json(request)
    managers = field(data, "managers", list)
    if not 1 <= len(managers) <= 16:
        raise errors.InvalidArgument("managers: give 1 to 16 addresses", field="managers")
    for i, addr in enumerate(managers):
        host, sep, port = addr.rpartition(":") if isinstance(addr, str) else ("", "", "")
        try:
            ipaddress.ip_address(host)
            ok = bool(sep) and port.isdigit() and 0 < int(port) < 65536
        except ValueError:
            ok = False
        if not ok:
            raise errors.InvalidArgument(f"managers[{i}] must be IP:PORT", field=f"managers[{i}]")
    await recovery.learn_managers(request.app[CTX], ident.node_id, sorted(set(managers)))
    return reply({"managers": sorted(set(managers))})


def cluster_routes() -> list[web.RouteDef]:
    """Served on 2377 (shoal/daemon.py): managers' calls to this node."""
    return [web.post("/recovery/managers", learn_managers)]


def routes() -> list[web.RouteDef]:
    return [web.post("/swarm/force-new-cluster", force_new_cluster),
            web.post("/swarm/backup", backup), web.post("/swarm/restore", restore)]
