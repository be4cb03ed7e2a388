"""API versions: the optional /v1.NN prefix, the range served, and _ping with its headers.

Clients negotiate from _ping's Api-Version header; without it they fall back to 1.24 and
refuse secrets, configs and jobs, so every answer carries it.
"""
from __future__ import annotations

import re
from typing import Optional

from aiohttp import web

from common.httpserver import CTX
from shoal.dockerapi.errors import DockerError

API_VERSION = "1.44"
MIN_API_VERSION = "1.24"

# Where app.py records the version a request asked for (None: no prefix).
VERSION_KEY: web.RequestKey[str] = web.RequestKey("shoal.docker.version", str)

_PREFIX = re.compile(r"/v([0-9]{1,4}\.[0-9]{1,4})(/.*)?", re.DOTALL)


def parse(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor)


def split(path: str) -> tuple[Optional[str], str]:
    """(`1.41`, `/nodes`) for `/v1.41/nodes`; (None, path) without a prefix."""
    m = _PREFIX.fullmatch(path)
    if m is None:
        return None, path
    return m.group(1), m.group(2) or ""


def check(version: str) -> None:
    """dockerd's answers to a version outside its range."""
    if parse(version) < parse(MIN_API_VERSION):
        raise DockerError(400, f"client version {version} is too old. Minimum supported API "
                               f"version is {MIN_API_VERSION}, please upgrade your client to a "
                               "newer version")
    if parse(version) > parse(API_VERSION):
        raise DockerError(400, f"client version {version} is too new. Maximum supported API "
                               f"version is {API_VERSION}")


def at_least(request: web.Request, version: str) -> bool:
    """Whether the request speaks `version` or later (no prefix: the newest)."""
    asked = request.get(VERSION_KEY)
    return asked is None or parse(asked) >= parse(version)


def common_headers() -> dict[str, str]:
    """On every answer, as dockerd sends them."""
    return {"Api-Version": API_VERSION, "Docker-Experimental": "false", "Ostype": "linux"}


def swarm_state(daemon) -> str:
    """_ping's Swarm header: inactive, pending, error, locked, or active/manager|worker."""
    if not daemon.state.in_swarm:
        return "inactive"
    if daemon.locked:
        return "locked"
    return "active/manager" if daemon.manager is not None else "active/worker"


async def ping(request: web.Request, params: dict[str, str]) -> web.Response:
    headers = {"Swarm": swarm_state(request.app[CTX]),
               "Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache"}
    return web.Response(text="OK", headers=headers, content_type="text/plain")
