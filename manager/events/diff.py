"""A store change as cluster events: pure, so every manager turns the same change into the
same events.

An update names its changed fields by path. A service's update progress (update_status) and a
node's status (ready, down) are `state` events of their own, apart from the `update` of the rest
of the change, so `--filter event=state` follows them (an automatic rollback changes both the
spec and the progress: two events). A task's change is one event, `state` when its state moved.
Values are shown only when small and never where a secret could be: secret and config
payloads, environment variables, passwords, the Docker client's spec text.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Iterator, Optional

from common import codec
from manager.events.model import Change, ClusterEvent, StateChange
from manager.state.store import Event

# Store tables with events, by their event type (tasks: "task", or "container" standalone).
TABLE_TYPES = {"services": "service", "nodes": "node", "tasks": "task", "networks": "network",
               "secrets": "secret", "configs": "config"}
_ACTIONS = {"create": "create", "update": "update", "delete": "remove"}
# Never in a diff: bookkeeping that changes with everything, and copies of other fields.
_SKIPPED = {"meta", "previous_spec", "status.timestamp"}
# A change here is named, its values never shown (they may hold secrets).
_HIDDEN_KEYS = {"data", "password", "env", "sent_specs", "token", "key"}
# Larger values are named only: an event is a line, not a dump.
_MAX_VALUE = 200
# The fields whose change is a `state` event of its own, and where that state is.
_STATE_PREFIX = {"service": "update_status", "node": "status"}


def events_of(event: Event, when: float, node_name: Callable[[str], str]) -> list[ClusterEvent]:
    """The cluster events of one store change (none for tables without events)."""
    kind = TABLE_TYPES.get(event.table)
    action = _ACTIONS.get(event.action)
    obj = event.obj
    if kind is None or action is None or obj is None:
        return []
    if kind == "task" and getattr(obj, "standalone", False):
        kind = "container"
    base = _describe(kind, obj, event.index, when, node_name)
    if action != "update" or event.old is None:
        base.action = action
        if action == "create" and kind in ("task", "container"):
            base.state = StateChange(new=obj.status.state, message=obj.status.message)
        return [base]
    changes = list(diff(event.old, obj))
    if kind in ("task", "container"):
        moved = event.old.status.state != obj.status.state
        if not changes:
            return []
        base.action, base.changes = ("state" if moved else "update"), changes
        if moved:
            base.state = StateChange(old=event.old.status.state, new=obj.status.state,
                                     message=obj.status.message, error=obj.status.err,
                                     exit_code=obj.status.exit_code)
        return [base]
    out: list[ClusterEvent] = []
    prefix = _STATE_PREFIX.get(kind)
    state_changes = [c for c in changes if prefix and _under(c.path, prefix)]
    rest = [c for c in changes if c not in state_changes]
    if rest:
        update = _copy(base)
        update.action, update.changes = "update", rest
        out.append(update)
    state = _state_of(kind, event.old, obj) if state_changes else None
    if state is not None:
        base.action, base.changes, base.state = "state", state_changes, state
        out.append(base)
    elif state_changes and out:
        out[0].changes = changes      # a message or address alone: part of the update
    elif state_changes:
        base.action, base.changes = "update", state_changes
        out.append(base)
    return out


def _state_of(kind: str, old: Any, new: Any) -> Optional[StateChange]:
    if kind == "service":
        if old.update_status.state == new.update_status.state:
            return None
        return StateChange(old=old.update_status.state, new=new.update_status.state,
                           message=new.update_status.message)
    if old.status.state == new.status.state:
        return None
    return StateChange(old=old.status.state, new=new.status.state, message=new.status.message)


def _describe(kind: str, obj: Any, index: int, when: float,
              node_name: Callable[[str], str]) -> ClusterEvent:
    ev = ClusterEvent(index=index, time=when, type=kind, action="", id=obj.id)
    if kind == "node":
        ev.name = ev.node_name = obj.description.hostname or obj.id
        ev.node = obj.id
        ev.labels = dict(obj.spec.labels)
        ev.attributes = {"role": obj.role, "availability": obj.spec.availability}
    elif kind in ("task", "container"):
        ev.name = obj.name
        ev.service, ev.service_id = obj.service_name, obj.service_id
        ev.node = obj.node_id
        ev.node_name = node_name(obj.node_id) if obj.node_id else ""
        ev.labels = dict(obj.spec.container.labels)
        ev.attributes = {"image": obj.spec.container.image, "desired_state": obj.desired_state}
        if obj.slot:
            ev.attributes["slot"] = str(obj.slot)
    else:
        ev.name = obj.spec.name
        ev.labels = dict(obj.spec.labels)
        if kind == "service":
            ev.service, ev.service_id = obj.spec.name, obj.id
            ev.attributes = {"image": obj.spec.task_template.container.image,
                             "mode": obj.spec.mode.mode}
            if obj.spec.mode.mode == "replicated":
                ev.attributes["replicas"] = str(obj.spec.mode.replicas)
    return ev


def _copy(ev: ClusterEvent) -> ClusterEvent:
    return ClusterEvent(index=ev.index, time=ev.time, type=ev.type, action=ev.action, id=ev.id,
                        name=ev.name, service=ev.service, service_id=ev.service_id,
                        node=ev.node, node_name=ev.node_name, labels=dict(ev.labels),
                        attributes=dict(ev.attributes))


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def diff(old: Any, new: Any, path: str = "", hidden: bool = False) -> Iterator[Change]:
    """The changed leaves between two objects of the model (or plain values), outermost first.
    Dataclasses are walked field by field and mappings key by key (equal ones skipped whole:
    this runs on the loop for every change), lists of objects of one length item by item; any
    other changed value is one change at its path, in plain form."""
    if path in _SKIPPED or old == new:
        return
    if (dataclasses.is_dataclass(old) and type(old) is type(new)
            and not isinstance(old, type)):
        for f in dataclasses.fields(old):
            sub = f"{path}.{f.name}" if path else f.name
            yield from diff(getattr(old, f.name), getattr(new, f.name), sub,
                            hidden or f.name.lower() in _HIDDEN_KEYS)
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            yield from diff(old.get(key), new.get(key), sub,
                            hidden or str(key).lower() in _HIDDEN_KEYS)
        return
    if (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)
            and all(isinstance(x, dict) or dataclasses.is_dataclass(x) for x in old + new)):
        for i, (a, b) in enumerate(zip(old, new)):
            yield from diff(a, b, f"{path}[{i}]", hidden)
        return
    old, new = codec.to_plain(old), codec.to_plain(new)
    yield Change(path, old, new) if not hidden and _small(old) and _small(new) \
        else Change(path, shown=False)


def _small(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray)):
        return False
    try:
        return len(json.dumps(value)) <= _MAX_VALUE
    except (TypeError, ValueError):
        return False
