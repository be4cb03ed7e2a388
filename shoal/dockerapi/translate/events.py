"""Cluster events (manager/events/) as Docker's swarm events (events.Message), as dockerd's
managers log them from swarmkit's watch: Type, Action, Actor {ID, Attributes}, scope "swarm",
time and timeNano.

One store change of an object is one Docker event: shoal's `update` and `state` events of the
same change are merged. For updates the Attributes carry the changed fields under Docker's
names (image.old/new, replicas.old/new, updatestate.old/new for services; availability, role,
state for nodes), so scripts that grep `docker events` for them keep working. Tasks, standalone
containers and leader elections make no swarm events in Docker.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

from manager.events.model import ClusterEvent

TYPES = ("service", "node", "secret", "config", "network")
# Docker's attribute for a changed field, by shoal's event type and the field's path.
_CHANGED = {
    "service": {"spec.task_template.container.image": "image", "spec.mode.replicas": "replicas"},
    "node": {"spec.availability": "availability", "role": "role", "status.state": "state"},
}


# Events of shoal's own that are no store change of one object, and that Docker does not report.
_OWN = ("leader", "exec")


def changes(events: Iterable[ClusterEvent]) -> Iterator[list[ClusterEvent]]:
    """Events grouped by the store change of one object they came from (they are recorded
    together, so the group is a run)."""
    group: list[ClusterEvent] = []
    for ev in events:
        if group and (ev.action in _OWN or group[0].action in _OWN
                      or (ev.index, ev.type, ev.id) != (group[0].index, group[0].type,
                                                         group[0].id)):
            yield group
            group = []
        group.append(ev)
    if group:
        yield group


def message(group: list[ClusterEvent]) -> Optional[dict]:
    """Docker's event for one object's change, or None for one Docker does not report."""
    first = group[0]
    if first.type not in TYPES or first.action in _OWN:
        return None
    action = first.action if first.action in ("create", "remove") else "update"
    attributes = {"name": first.name}
    if action == "update":
        names = _CHANGED.get(first.type, {})
        for ev in group:
            for change in ev.changes:
                key = names.get(change.path)
                if key is None or not change.shown or change.old == change.new:
                    continue
                if key == "replicas" and first.attributes.get("mode") != "replicated":
                    continue
                attributes[f"{key}.old"], attributes[f"{key}.new"] = _s(change.old), _s(change.new)
            if first.type == "service" and ev.state is not None and ev.state.new:
                if ev.state.old:
                    attributes["updatestate.old"] = ev.state.old
                attributes["updatestate.new"] = ev.state.new
    nano = int(round(first.time * 1e9))
    return {"Type": first.type, "Action": action, "Actor": {"ID": first.id,
                                                            "Attributes": attributes},
            "scope": "swarm", "time": nano // 1_000_000_000, "timeNano": nano}


def _s(value: object) -> str:
    return "" if value is None else str(value)
