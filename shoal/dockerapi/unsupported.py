"""Endpoints of Docker's Engine API that this socket does not serve yet: a 501 that names
them, so a client learns what is missing rather than meeting a silent 404."""
from __future__ import annotations

import re

_ID = r"[^/]+"

# The swarm groups, endpoint by endpoint (API 1.44), since this socket serves part of them.
_ENDPOINTS: tuple[tuple[frozenset[str], re.Pattern], ...] = tuple(
    (frozenset(methods.split()), re.compile(path, re.DOTALL)) for methods, path in (
        ("POST", rf"/networks/{_ID}/(?:connect|disconnect)"),
        ("POST", r"/networks/prune"),
        ("POST", r"/auth"),
    ))

# Groups not served, or only in part (containers and images: list and inspect; distribution:
# inspect), whose served routes app.ROUTES matches first: any other path under them.
_GROUPS = re.compile(r"/(?:containers|images|volumes|plugins|exec|build|commit|distribution|"
                     r"session|grpc|system)(?:/.*)?", re.DOTALL)


def is_docker_endpoint(method: str, path: str) -> bool:
    if _GROUPS.fullmatch(path):
        return True
    return any(method in methods and pattern.fullmatch(path) for methods, pattern in _ENDPOINTS)


def message(method: str, path: str) -> str:
    return (f"{method} {path} is part of the Docker Engine API that shoal does not serve yet "
            "(this socket answers _ping, version, info, swarm (init, join, leave, update, "
            "unlock), nodes, tasks and services with their logs, secrets, configs and "
            "networks, events, this node's containers and images (list and inspect) and "
            "distribution inspect; shoal's own CLI does the rest)")
