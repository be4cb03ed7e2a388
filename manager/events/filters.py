"""`--filter KEY=VALUE` for cluster events: the same key again is an alternative (OR), different
keys must all hold (AND), as docker's event filters."""
from __future__ import annotations

from dataclasses import dataclass, field

from common import errors
from manager.events.model import ACTIONS, TYPES, ClusterEvent

KEYS = ("type", "event", "service", "node", "label")
_CHOICES = {"type": TYPES, "event": ACTIONS}
_MAX_FILTERS = 64
_MAX_LEN = 512


@dataclass
class EventFilter:
    values: dict[str, set[str]] = field(default_factory=dict)

    def match(self, ev: ClusterEvent) -> bool:
        for key, wanted in self.values.items():
            if not any(_MATCHERS[key](ev, value) for value in wanted):
                return False
        return True


def _bad(raw: str, why: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"invalid --filter {raw!r}: {why}", field="filter")


def parse(raw_filters: list[str]) -> EventFilter:
    """The filters of `--filter` flags; a bad one is an InvalidArgument naming it and the fix."""
    if len(raw_filters) > _MAX_FILTERS:
        raise errors.InvalidArgument(f"too many --filter flags ({len(raw_filters)}): give at most "
                                     f"{_MAX_FILTERS}", field="filter")
    out = EventFilter()
    for raw in raw_filters:
        if not isinstance(raw, str):
            raise errors.InvalidArgument("each --filter must be a string KEY=VALUE",
                                         field="filter")
        if len(raw) > _MAX_LEN or "\x00" in raw:
            raise _bad(raw[:40], f"a filter is KEY=VALUE of at most {_MAX_LEN} characters")
        key, sep, value = raw.partition("=")
        key = key.strip()
        if not sep or key not in KEYS:
            raise _bad(raw, f"use KEY=VALUE with KEY one of {', '.join(KEYS)} "
                            "(e.g. --filter type=service)")
        if not value:
            raise _bad(raw, f"{key} needs a value (e.g. --filter {key}="
                            f"{_CHOICES[key][0] if key in _CHOICES else 'NAME'})")
        choices = _CHOICES.get(key)
        if choices is not None and value not in choices:
            raise _bad(raw, f"{key} must be one of {', '.join(choices)}")
        if key == "label" and value.startswith("="):
            raise _bad(raw, "label needs a key: --filter label=KEY or label=KEY=VALUE")
        out.values.setdefault(key, set()).add(value)
    return out


def _service(ev: ClusterEvent, value: str) -> bool:
    # By name, or by id or a prefix of it (as docker's fuzzy match).
    return bool(ev.service_id) and (ev.service == value or ev.service_id.startswith(value))


def _node(ev: ClusterEvent, value: str) -> bool:
    return bool(ev.node) and (ev.node_name == value or ev.node.startswith(value))


def _label(ev: ClusterEvent, value: str) -> bool:
    key, sep, want = value.partition("=")
    return key in ev.labels and (not sep or ev.labels[key] == want)


_MATCHERS = {"type": lambda ev, v: ev.type == v, "event": lambda ev, v: ev.action == v,
             "service": _service, "node": _node, "label": _label}
