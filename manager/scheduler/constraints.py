"""Placement constraints and preferences, as Docker writes them.

Constraints: `KEY==VALUE` or `KEY!=VALUE` with KEY one of node.id, node.hostname, node.role,
node.platform.os, node.platform.arch, node.labels.<label>, engine.labels.<label>.
Preferences: `spread=node.labels.<label>` (or engine.labels.<label>).

Matching follows SwarmKit: values compare case-insensitively, label names exactly, and a node
without the label satisfies only `!=`. shoal has no separate engine labels, so `engine.labels.*`
reads the node labels. Parsing is strict where Docker is lax (unknown keys, a single `=`): a typo
would otherwise become a constraint that silently matches nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

from common.errors import InvalidArgument
from common.model import NODE_ROLES, Node

CONSTRAINT_FIELD = "placement.constraints"
PREFERENCE_FIELD = "placement.preferences"

_FORMS = ("expected KEY==VALUE or KEY!=VALUE with KEY one of node.id, node.hostname, node.role, "
          "node.platform.os, node.platform.arch, node.labels.<label>, engine.labels.<label> "
          "(e.g. node.labels.zone==a, node.role!=manager)")
_PREF_FORMS = "expected spread=node.labels.<label> (e.g. spread=node.labels.zone)"

_EXPR = re.compile(r"^\s*([^=!\s]+)\s*(==|!=)\s*(.*?)\s*\Z")
_LABEL_PREFIXES = ("node.labels.", "engine.labels.")

# Architecture names differ between uname (x86_64, aarch64) and Go/OCI (amd64, arm64); nodes
# report one, users write either.
_ARCH_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}

_ATTRS: dict[str, Callable[[Node], str]] = {
    "node.id": lambda n: n.id,
    "node.hostname": lambda n: n.description.hostname,
    "node.role": lambda n: n.role,
    "node.platform.os": lambda n: n.description.platform.os,
    "node.platform.arch": lambda n: n.description.platform.architecture,
}


def _norm(key: str, value: str) -> str:
    value = value.lower()
    return _ARCH_ALIASES.get(value, value) if key == "node.platform.arch" else value


def platform_key(os_name: str, arch: str) -> tuple[str, str]:
    """A platform as the scheduler compares them: lower case, architecture aliases folded."""
    return os_name.lower(), _norm("node.platform.arch", arch)


def platform_matches(node: Node, wanted: tuple[tuple[str, str], ...]) -> bool:
    """Whether the node is of one of the wanted platforms (an empty part matches any)."""
    if not wanted:
        return True
    have = platform_key(node.description.platform.os, node.description.platform.architecture)
    return any((not os_name or os_name == have[0]) and (not arch or arch == have[1])
               for os_name, arch in wanted)


@dataclass(frozen=True, slots=True)
class Constraint:
    text: str               # canonical form, used in messages: node.labels.zone==a
    key: str                # lower-case key; for labels the prefix only ("node.labels.")
    label: str | None       # label name (case kept) for node.labels.* / engine.labels.*
    equal: bool             # == (True) or != (False)
    value: str              # normalised (lower-case, arch aliases folded)

    def matches(self, node: Node) -> bool:
        if self.label is not None:
            actual = node.spec.labels.get(self.label)
            if actual is None:
                return not self.equal
        else:
            actual = _ATTRS[self.key](node)
        return (_norm(self.key, actual) == self.value) == self.equal


@dataclass(frozen=True, slots=True)
class Preference:
    text: str               # spread=node.labels.zone
    label: str              # node label whose values the tasks spread over


def _bad(text: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid placement constraint {text!r}: {why}; {_FORMS}",
                           field=CONSTRAINT_FIELD)


def _label_name(key: str) -> str | None:
    low = key.lower()
    for prefix in _LABEL_PREFIXES:
        if low.startswith(prefix):
            return key[len(prefix):]
    return None


def parse_constraint(text: str) -> Constraint:
    m = _EXPR.match(text) if isinstance(text, str) else None
    if m is None:
        raise _bad(str(text), "no == or != operator")
    key, op, value = m.groups()
    if not value:
        raise _bad(text, "empty value")
    if "==" in value or "!=" in value or value.startswith("="):
        raise _bad(text, "more than one operator")
    label = _label_name(key)
    if label is not None:
        if not label:
            raise _bad(text, "missing label name")
        canon_key = key[:len(key) - len(label)].lower()
    else:
        canon_key = key.lower()
        if canon_key not in _ATTRS:
            raise _bad(text, f"unknown key {key!r}")
        if canon_key == "node.role" and value.lower() not in NODE_ROLES:
            raise _bad(text, f"node.role is {' or '.join(NODE_ROLES)}, not {value!r}")
    return Constraint(text=f"{canon_key}{label or ''}{op}{value}", key=canon_key, label=label,
                      equal=op == "==", value=_norm(canon_key, value))


def parse_constraints(texts: Iterable[str]) -> tuple[Constraint, ...]:
    return tuple(parse_constraint(t) for t in texts)


def parse_preference(text: str) -> Preference:
    strategy, sep, target = text.partition("=") if isinstance(text, str) else ("", "", "")
    strategy, target = strategy.strip(), target.strip()
    if not sep or strategy.lower() != "spread":
        raise InvalidArgument(f"invalid placement preference {text!r}: only the spread strategy "
                              f"exists; {_PREF_FORMS}", field=PREFERENCE_FIELD)
    label = _label_name(target)
    if not label:
        raise InvalidArgument(f"invalid placement preference {text!r}: spread takes a node label; "
                              f"{_PREF_FORMS}", field=PREFERENCE_FIELD)
    return Preference(text=f"spread={target}", label=label)


def parse_preferences(texts: Iterable[str]) -> tuple[Preference, ...]:
    return tuple(parse_preference(t) for t in texts)


@lru_cache(maxsize=4096)
def _cached(texts: tuple[str, ...]) -> tuple[Constraint, ...] | None:
    try:
        return parse_constraints(texts)
    except InvalidArgument:
        return None


def node_matches(node: Node, constraints: Iterable[str | Constraint]) -> bool:
    """True if the node satisfies every constraint. An unparseable constraint (the API rejects
    them, so only old data could hold one) matches no node: a loop calling this must not die."""
    texts = [c.text if isinstance(c, Constraint) else c for c in constraints]
    parsed = _cached(tuple(texts))
    return parsed is not None and all(c.matches(node) for c in parsed)
