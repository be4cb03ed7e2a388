"""One cluster event: what `shoal events` prints and the Docker API translates."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

# The object types events are about ("container": a standalone task, `shoal container run`).
TYPES = ("service", "node", "task", "network", "secret", "config", "container")
# create/update/remove of an object; state: a task's state, a node's status, a service's update
# progress; leader: a leader elected (type node).
ACTIONS = ("create", "update", "remove", "state", "leader", "exec")


@dataclass
class Change:
    """One changed field, by its path in the object (spec.task_template.container.image). The
    values are there only when they are small and cannot hold secrets (`shown`)."""
    path: str
    old: Any = None
    new: Any = None
    shown: bool = True

    def to_plain(self) -> dict:
        out: dict[str, Any] = {"path": self.path}
        if self.shown:
            out["old"], out["new"] = self.old, self.new
        return out


@dataclass
class StateChange:
    old: str = ""
    new: str = ""
    message: str = ""
    error: str = ""
    exit_code: Optional[int] = None

    def to_plain(self) -> dict:
        out: dict[str, Any] = {"old": self.old, "new": self.new}
        if self.message:
            out["message"] = self.message
        if self.error:
            out["error"] = self.error
        if self.exit_code is not None:
            out["exit_code"] = self.exit_code
        return out


@dataclass
class ClusterEvent:
    """`index` is the store index of the change (for a leader event, the index the manager had
    applied when it saw the election) and `time` the change's transaction time on the
    proposer's clock: both are in the raft entry, so every manager's history says the same."""
    index: int
    time: float
    type: str
    action: str
    id: str
    name: str = ""
    service: str = ""        # the service's name (services, tasks)
    service_id: str = ""
    node: str = ""           # the node's id (nodes, tasks, leader)
    node_name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    state: Optional[StateChange] = None

    def key(self) -> tuple:
        """What two managers' records of the same event share (a leader event's time is each
        manager's own sight of it)."""
        if self.action == "leader":
            return (self.type, self.action, self.id, self.attributes.get("term", ""))
        return (self.index, self.type, self.action, self.id)

    def to_plain(self) -> dict:
        out: dict[str, Any] = {"index": self.index, "time": self.time, "type": self.type,
                               "action": self.action, "id": self.id, "name": self.name}
        for key in ("service", "service_id", "node", "node_name"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        if self.changes:
            out["changes"] = [c.to_plain() for c in self.changes]
        if self.state is not None:
            out["state"] = self.state.to_plain()
        return out
