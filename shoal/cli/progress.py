"""What a service's convergence looks like from its tasks: one line per slot with its latest
error, and whether waiting any longer is hopeless.

Docker's progress display waits forever when every attempt is rejected (an image that exists
nowhere, a constraint nothing meets): the user sees "0 out of 1 tasks" and never the reason.
Here each slot shows its last attempt's error as it happens, and the wait ends once every slot
has been rejected for the same reason several times in a row.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

# Rejections in a row, each for the same reason, after which a slot is taken to be stuck: the
# orchestrator backs off 5, 10, 20 s between them, so three come within about 30 s.
REJECTIONS_BEFORE_GIVING_UP = 3

_LIVE = ("running", "ready")


@dataclass(frozen=True)
class SlotLine:
    label: str
    state: str
    message: str
    error: str = ""  # the error this line shows, its own or the last attempt's

    def text(self) -> str:
        return f"{self.label}: {self.state:<10} {self.message}".rstrip()


@dataclass(frozen=True)
class Stuck:
    reasons: tuple[tuple[str, str], ...]  # (reason, node), each once
    times: int

    def describe(self) -> str:
        return "; ".join(f"{reason} (on {node})" for reason, node in self.reasons)


def _group_key(task: dict) -> object:
    # a global service's tasks have no slot: a node is their slot
    return task["slot"] if task.get("slot") else ("node", task.get("node_id") or "")


def _by_slot(tasks: list[dict]) -> dict[object, list[dict]]:
    groups: dict[object, list[dict]] = defaultdict(list)
    for t in tasks:
        groups[_group_key(t)].append(t)
    for group in groups.values():
        group.sort(key=lambda t: t["meta"]["created_at"])
    return groups


def _error(task: dict) -> str:
    return task["status"].get("err") or ""


def slot_lines(tasks: list[dict], desired: int) -> list[SlotLine]:
    """A line for each slot with a live task: its state, and its message or, while a new
    attempt has not said anything yet, the error that ended the last one."""
    lines = []
    for group in _by_slot(tasks).values():
        live = [t for t in group if t["desired_state"] in _LIVE]
        if not live:
            continue
        current = live[-1]
        error = _error(current)
        message = error or current["status"].get("message") or ""
        if error and current["status"]["state"] in ("rejected", "failed"):
            # the same words whether the poll caught this attempt or the next one after it
            error = f"{current['status']['state']}: {error}"
        ended = [t for t in group if t is not current and t["status"]["state"] in ("rejected", "failed")]
        if not error and ended and _error(ended[-1]):
            error = f"{ended[-1]['status']['state']}: {_error(ended[-1])}"
            message = f"{message} (last attempt: {error})".lstrip()
        label = f"{current['slot']}/{desired}" if current.get("slot") else current.get("node_hostname", "")
        lines.append(SlotLine(label, current["status"]["state"], message, error))
    return sorted(lines, key=lambda line: (len(line.label), line.label))


def stuck(tasks: list[dict], expected_slots: int) -> Optional[Stuck]:
    """Why the service cannot start, once every slot's last attempts were each rejected for one
    reason (and none of its tasks runs); None while any slot may still start."""
    groups = _by_slot(tasks)
    if expected_slots <= 0 or len(groups) < expected_slots:
        return None
    reasons: dict[str, str] = {}
    for group in groups.values():
        if any(t["status"]["state"] == "running" for t in group):
            return None
        ended = [t for t in group if t["status"]["state"] in ("rejected", "failed", "complete",
                                                              "shutdown", "orphaned")]
        recent = ended[-REJECTIONS_BEFORE_GIVING_UP:]
        if len(recent) < REJECTIONS_BEFORE_GIVING_UP:
            return None
        if any(t["status"]["state"] != "rejected" for t in recent) or \
                len({_error(t) for t in recent}) != 1:
            return None
        reasons.setdefault(_error(recent[-1]), recent[-1].get("node_hostname") or
                           recent[-1].get("node_id") or "no node")
    return Stuck(tuple(reasons.items()), REJECTIONS_BEFORE_GIVING_UP)
