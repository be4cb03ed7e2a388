"""A store change as Docker's swarm event (events.Message), as dockerd's managers log them from
swarmkit's watch: Type, Action, Actor {ID, Attributes}, scope "swarm", time and timeNano.

For updates the Attributes carry the changed fields under Docker's names (image.old/new,
replicas.old/new, updatestate.old/new for services; availability, role, state for nodes), so
scripts that grep `docker events` for them keep working.
"""
from __future__ import annotations

import time
from typing import Any, Optional

from manager.state.store import Event

# shoal's tables as Docker's event types; tasks and clusters make no swarm events in Docker.
TYPES = {"services": "service", "nodes": "node", "secrets": "secret", "configs": "config",
         "networks": "network"}
_ACTIONS = {"create": "create", "update": "update", "delete": "remove"}


def message(event: Event, now: Optional[float] = None) -> Optional[dict]:
    """Docker's event for a store change, or None for a change Docker does not report."""
    kind = TYPES.get(event.table)
    action = _ACTIONS.get(event.action)
    if kind is None or action is None or event.obj is None:
        return None
    obj = event.obj
    attributes = {"name": _name(kind, obj)}
    if action == "update" and event.old is not None:
        if kind == "service":
            attributes.update(_service_changes(obj, event.old))
        elif kind == "node":
            attributes.update(_node_changes(obj, event.old))
    # dockerd stamps a create with the object's CreatedAt, an update with its UpdatedAt and a
    # removal with the time it saw it.
    if action == "create":
        when = obj.meta.created_at
    elif action == "update":
        when = obj.meta.updated_at
    else:
        when = 0.0
    if when <= 0:
        when = time.time() if now is None else now
    nano = int(round(when * 1e9))
    return {"Type": kind, "Action": action, "Actor": {"ID": obj.id, "Attributes": attributes},
            "scope": "swarm", "time": nano // 1_000_000_000, "timeNano": nano}


def _name(kind: str, obj: Any) -> str:
    if kind == "node":
        return obj.description.hostname or obj.id
    return obj.spec.name


def _changed(out: dict, key: str, old: str, new: str) -> None:
    if old != new:
        out[f"{key}.old"], out[f"{key}.new"] = old, new


def _service_changes(new: Any, old: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    _changed(out, "image", old.spec.task_template.container.image,
             new.spec.task_template.container.image)
    if new.spec.mode.mode == old.spec.mode.mode == "replicated":
        _changed(out, "replicas", str(old.spec.mode.replicas), str(new.spec.mode.replicas))
    state_new, state_old = new.update_status.state, old.update_status.state
    if state_new and not state_old:
        out["updatestate.new"] = state_new
    elif state_new:
        _changed(out, "updatestate", state_old, state_new)
    return out


def _node_changes(new: Any, old: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    _changed(out, "availability", old.spec.availability, new.spec.availability)
    _changed(out, "role", old.role, new.role)
    _changed(out, "state", old.status.state, new.status.state)
    return out
