"""Docker's error answers: a body `{"message": ...}` and Docker's status codes.

shoal's own errors (common/errors.py) keep their message and map to the status Docker uses
for the same kind of failure, so a client's `IsErrNotFound` / `IsErrConflict` checks work.
"""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from common import errors


class DockerError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> DockerError:
    return DockerError(400, message)


def not_found(message: str) -> DockerError:
    return DockerError(404, message)


PAGE_NOT_FOUND = "page not found"

# dockerd's own words, which scripts grep for.
NOT_A_MANAGER = ("This node is not a swarm manager. Worker nodes can't be used to view or "
                 "modify cluster state. Please run this command on a manager node or promote "
                 "the current node to a manager.")
NOT_IN_SWARM = ("This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm "
                "join\" to connect this node to swarm and try again.")
LOCKED = ("Swarm is encrypted and needs to be unlocked before it can be used. Please use "
          "\"docker swarm unlock\" to unlock it.")

# shoal's status -> Docker's (errdefs): what has no counterpart becomes the nearest kind.
_STATUS = {
    400: 400, 401: 401, 403: 403, 404: 404, 409: 409,
    412: 400,   # a precondition the caller can fix: Docker calls it invalid
    503: 503,
    507: 503,   # a pool or a disk ran out: the system is unavailable for this, not broken
}


def status_of(status: int) -> int:
    """Docker's status for one of shoal's."""
    return _STATUS.get(status, 500)


def from_shoal(exc: errors.ShoalError) -> DockerError:
    if isinstance(exc, errors.NotAManager):
        return DockerError(503, NOT_A_MANAGER)
    if isinstance(exc, errors.NotInSwarm):
        return DockerError(503, NOT_IN_SWARM)
    return DockerError(_STATUS.get(exc.status, 500), exc.message)


def json_answer(value: Any, status: int = 200) -> web.Response:
    """JSON with Content-Type exactly `application/json`: the docker client compares the
    header as a whole, and with aiohttp's `; charset=utf-8` it prints an error's raw JSON
    instead of its message."""
    return web.Response(body=json.dumps(value).encode(), status=status,
                        content_type="application/json")


def answer(status: int, message: str) -> web.Response:
    return json_answer({"message": message}, status)
