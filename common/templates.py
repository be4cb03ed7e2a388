"""Swarm's service templates: `{{.Node.Hostname}}` and its siblings in a task's env values,
hostname and mounts, expanded on the node that runs the task.

Docker evaluates these as Go text/template with `missingkey=error`. shoal takes the part of
that language people use with swarm services: actions that name one placeholder, with blanks
inside the braces (`{{ .Node.ID }}`) and Go's trim markers (`{{- .Task.Slot -}}` eats the
blanks next to it). Anything else inside `{{ }}` (pipelines, functions, strings, comments) is
refused up front rather than half-supported. `check` is what the managers run on a spec; the
worker runs `expand`. Text without `{{` is never parsed, so ordinary values cost nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Optional, Union

from common import errors
from common.model import ContainerSpec, Mount

# What a template may name, in Swarm's (and Go's) spelling.
PLACEHOLDERS = ("Service.ID", "Service.Name", "Service.Labels",
                "Node.ID", "Node.Hostname", "Node.Platform.OS", "Node.Platform.Architecture",
                "Task.ID", "Task.Name", "Task.Slot")
LABELS = "Service.Labels"

Value = Union[str, Mapping[str, str]]

_OPEN, _CLOSE = "{{", "}}"
_BLANKS = " \t\r\n"  # Go's spaces inside an action and around trim markers
# Go's field chain: `.Name` repeated; a name is letters, digits and `_`, not starting with a digit
_CHAIN = re.compile(r"(?:\.(?!\d)\w+)+")
_SHOWN = 80  # how much of an offending value an error message quotes


@dataclass(frozen=True)
class _Action:
    name: str          # "Node.ID", or "Service.Labels.<key>"
    trim_before: bool  # `{{-`: the blanks before the action go
    trim_after: bool   # `-}}`: the blanks after it go


def check(text: str, *, field: Optional[str] = None) -> None:
    """InvalidArgument if `text` holds a malformed action or one that names no placeholder."""
    if _OPEN in text:
        _parse(text, field)


def expand(text: str, values: Mapping[str, Value], *, field: Optional[str] = None) -> str:
    """`text` with every action replaced by its value (a value missing from `values` is
    empty, as an unset field is in Go). A label key the service does not have is an error,
    as with Docker's missingkey=error."""
    if _OPEN not in text:
        return text
    out: list[str] = []
    for piece in _trimmed(_parse(text, field)):
        out.append(piece if isinstance(piece, str) else _value(piece, values, text, field))
    return "".join(out)


def expand_container_spec(c: ContainerSpec, values: Mapping[str, Value]) -> ContainerSpec:
    """The spec with Docker's set expanded: env values (an entry without "=" is left alone),
    the hostname, each mount's source and target and a volume's labels. The same spec object
    when nothing in it is a template. An error's field is the path in the container spec
    (`env[0]`, `mounts[1].source`), and its message starts with it."""
    out = replace(c, env=[_env(i, entry, values) for i, entry in enumerate(c.env)],
                  hostname=_field(c.hostname, values, "hostname"),
                  mounts=[_mount(i, m, values) for i, m in enumerate(c.mounts)])
    return c if out == c else out


def sample_values() -> dict[str, Value]:
    """Values of the right shape (hostname-safe, any label present) for a manager to expand a
    spec with before it checks the result as a node would see it (as swarmkit does)."""
    return {"Service.ID": "serviceid", "Service.Name": "servicename",
            "Service.Labels": _AnyLabel(), "Node.ID": "nodeid", "Node.Hostname": "nodehostname",
            "Node.Platform.OS": "linux", "Node.Platform.Architecture": "arch",
            "Task.ID": "taskid", "Task.Name": "servicename.1.taskid", "Task.Slot": "1"}


def describe() -> str:
    """The placeholders as a user writes them, for help texts and error messages."""
    return (", ".join(f"{{{{.{p}}}}}" for p in PLACEHOLDERS)
            + " (one label: {{.Service.Labels.KEY}})")


# ---- parsing --------------------------------------------------------------------------------
def _parse(text: str, field: Optional[str]) -> list[Union[str, _Action]]:
    pieces: list[Union[str, _Action]] = []
    pos = 0
    while (start := text.find(_OPEN, pos)) >= 0:
        pieces.append(text[pos:start])
        action, pos = _action(text, start, field)
        pieces.append(action)
    pieces.append(text[pos:])
    return pieces


def _action(text: str, start: int, field: Optional[str]) -> tuple[_Action, int]:
    """The action opening at `start`, and where the text after it begins."""
    body = start + len(_OPEN)
    end = text.find(_CLOSE, body)
    if end < 0:
        raise _malformed(text, f"{text[start:start + _SHOWN]!r} is never closed with }}}}",
                         field)
    raw = text[start:end + len(_CLOSE)]
    inner = text[body:end]
    # Go's trim markers are "{{- " and " -}}": the blank tells them from a negative number
    trim_before = len(inner) >= 2 and inner[0] == "-" and inner[1] in _BLANKS
    trim_after = len(inner) >= 2 and inner[-1] == "-" and inner[-2] in _BLANKS
    if trim_before:
        inner = inner[1:]
    if trim_after:
        inner = inner[:-1]
    name = inner.strip(_BLANKS)
    if not _CHAIN.fullmatch(name):
        what = "an empty action" if not name else f"{raw[:_SHOWN]!r} is not a placeholder"
        raise _malformed(text, f"{what}: write one of {describe()}", field)
    name = name[1:]
    if name not in PLACEHOLDERS and not _is_label(name):
        raise errors.InvalidArgument(
            f"unknown template placeholder {{{{.{name[:_SHOWN]}}}}} in {_quote(text)}: "
            f"the placeholders are {describe()}", field=field)
    return _Action(name, trim_before, trim_after), end + len(_CLOSE)


def _is_label(name: str) -> bool:
    """`Service.Labels.<key>`: Go reads a map's entry as a field (one level, an identifier)."""
    prefix = LABELS + "."
    return name.startswith(prefix) and "." not in name[len(prefix):]


def _malformed(text: str, why: str, field: Optional[str]) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"malformed template {_quote(text)}: {why}", field=field)


def _quote(text: str) -> str:
    return repr(text) if len(text) <= _SHOWN else repr(text[:_SHOWN]) + "..."


# ---- expansion ------------------------------------------------------------------------------
def _trimmed(pieces: list[Union[str, _Action]]) -> list[Union[str, _Action]]:
    """The text pieces with the blanks that trim markers remove taken off."""
    out = list(pieces)
    for i, piece in enumerate(out):
        if isinstance(piece, _Action):
            # pieces alternate text, action, text...: an action always has text on both sides
            if piece.trim_before:
                out[i - 1] = str(out[i - 1]).rstrip(_BLANKS)
            if piece.trim_after:
                out[i + 1] = str(out[i + 1]).lstrip(_BLANKS)
    return out


def _value(action: _Action, values: Mapping[str, Value], text: str,
           field: Optional[str]) -> str:
    if _is_label(action.name):
        labels = values.get(LABELS)
        key = action.name[len(LABELS) + 1:]
        if not isinstance(labels, Mapping) or key not in labels:  # None: no labels
            raise errors.InvalidArgument(
                f"template {_quote(text)}: the service has no label {key!r}", field=field)
        return str(labels[key])
    value = values.get(action.name)
    if action.name == LABELS:
        return _go_map(value if isinstance(value, Mapping) else {})
    return "" if value is None else str(value)


def _go_map(labels: Mapping[str, str]) -> str:
    """How Go prints a map[string]string: `map[a:1 b:2]`, keys sorted."""
    return "map[" + " ".join(f"{k}:{labels[k]}" for k in sorted(labels)) + "]"


# ---- the fields of a container spec --------------------------------------------------------
def _field(text: str, values: Mapping[str, Value], path: str) -> str:
    try:
        return expand(text, values, field=path)
    except errors.InvalidArgument as exc:
        raise errors.InvalidArgument(f"{path}: {exc.message}", field=path) from None


def _env(i: int, entry: str, values: Mapping[str, Value]) -> str:
    name, eq, value = entry.partition("=")
    if not eq:
        return entry
    return f"{name}={_field(value, values, f'env[{i}]')}"


def _mount(i: int, m: Mount, values: Mapping[str, Value]) -> Mount:
    at = f"mounts[{i}]"
    out = replace(m, source=_field(m.source, values, f"{at}.source"),
                  target=_field(m.target, values, f"{at}.target"))
    if m.volume_options is not None and m.volume_options.labels:
        labels = {k: _field(v, values, f"{at}.volume_options.labels.{k}")
                  for k, v in m.volume_options.labels.items()}
        out = replace(out, volume_options=replace(m.volume_options, labels=labels))
    return out


class _AnyLabel(Mapping[str, str]):
    """A service's labels when they are not known yet: every key is there."""

    def __getitem__(self, key: str) -> str:
        return "label"

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0
