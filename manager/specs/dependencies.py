"""A service's depends_on, checked at create and update: each entry names a service by a valid
name and a known condition, once, never the service itself, and no entry closes a cycle among
the services that exist (a cycle would gate every service in it forever).

Unlike the rest of a spec this needs the cluster (the other services' depends_on), so the
control API calls it with the stored specs after the spec's own checks.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

from common import errors
from common.model import DEPENDENCY_CONDITIONS, ServiceSpec

# A service name, as manager/specs/services.py checks a service's own name.
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")


def _bad(field: str, message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{field}: {message}", field=field)


def validate_dependencies(spec: ServiceSpec, existing: Iterable[ServiceSpec]) -> None:
    """Refuse `spec.depends_on` if malformed or if it closes a cycle. `existing` are the stored
    services' specs; one named like `spec` is the version `spec` replaces (an update)."""
    seen: set[str] = set()
    for i, dep in enumerate(spec.depends_on):
        where = f"depends_on[{i}]"
        if not _NAME.match(dep.service):
            raise _bad(f"{where}.service", f"invalid service name {dep.service!r}: use 1-63 "
                       "letters, digits, '_', '.' or '-', starting with a letter or digit")
        if dep.service == spec.name:
            raise _bad(f"{where}.service", f"service {spec.name} cannot depend on itself")
        if dep.service in seen:
            raise _bad(f"{where}.service", f"service {dep.service} is listed twice: give each "
                       "dependency once, with one condition")
        seen.add(dep.service)
        if dep.condition not in DEPENDENCY_CONDITIONS:
            raise _bad(f"{where}.condition", f"{dep.condition!r} is not one of "
                       f"{', '.join(DEPENDENCY_CONDITIONS)}")
    graph = {s.name: [d.service for d in s.depends_on] for s in existing}
    graph[spec.name] = [d.service for d in spec.depends_on]
    for i, dep in enumerate(spec.depends_on):
        back = path_between(graph, dep.service, spec.name)
        if back is not None:
            cycle = " -> ".join([spec.name, *back])
            raise _bad(f"depends_on[{i}].service", f"{cycle} is a dependency cycle: none of "
                       "these services would ever get a task")


def path_between(graph: dict[str, list[str]], start: str, goal: str) -> Optional[list[str]]:
    """Names from `start` to `goal` following the dependency edges, or None (iterative, so a
    long chain cannot exhaust the stack; the graph may hold cycles that avoid `goal`)."""
    parent: dict[str, Optional[str]] = {start: None}
    todo = [start]
    while todo:
        name = todo.pop()
        if name == goal:
            path = []
            at: Optional[str] = name
            while at is not None:
                path.append(at)
                at = parent[at]
            return path[::-1]
        for nxt in graph.get(name, ()):
            if nxt not in parent:
                parent[nxt] = name
                todo.append(nxt)
    return None
