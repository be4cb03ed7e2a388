"""`${VAR}` and friends in a Compose file's values, as the Compose Specification defines them.

Supported: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`,
`${VAR?error}`, `${VAR:+alternative}`, `${VAR+alternative}`, `$$` for a literal `$`, and
substitutions nested inside defaults (`${A:-${B:-x}}`). Keys are never interpolated.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from shoal.stack.problems import Collector, Path
from shoal.stack.yamlfile import Override

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Bad(ValueError):
    pass


def interpolate(data: Any, env: Mapping[str, str], problems: Collector,
                unset: set[str], path: Path = ()) -> Any:
    """A copy of `data` with every string value substituted. Variables used but not set (and
    without a default) are added to `unset`: Compose warns and uses an empty string."""
    if isinstance(data, Override):
        return Override(interpolate(data.value, env, problems, unset, path))
    if isinstance(data, dict):
        return {k: interpolate(v, env, problems, unset, (*path, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, env, problems, unset, (*path, i)) for i, v in enumerate(data)]
    if isinstance(data, str) and "$" in data:
        try:
            return substitute(data, env, unset)
        except _Bad as exc:
            problems.add(path, str(exc))
            return data
    return data


def substitute(text: str, env: Mapping[str, str], unset: set[str]) -> str:
    out, _ = _scan(text, 0, env, unset, stop=None)
    return out


def _scan(text: str, pos: int, env: Mapping[str, str], unset: set[str],
          stop: str | None) -> tuple[str, int]:
    """Text from `pos` up to an unnested `stop` character (the `}` closing a default)."""
    out: list[str] = []
    while pos < len(text):
        ch = text[pos]
        if stop is not None and ch == stop:
            return "".join(out), pos
        if ch != "$":
            out.append(ch)
            pos += 1
            continue
        nxt = text[pos + 1: pos + 2]
        if nxt == "$":
            out.append("$")
            pos += 2
        elif nxt == "{":
            value, pos = _braced(text, pos + 2, env, unset)
            out.append(value)
        else:
            match = _NAME.match(text, pos + 1)
            if not match:
                raise _Bad(f"invalid interpolation format in {text!r}: a lone '$' (write '$$' "
                           "for a literal dollar sign)")
            out.append(_lookup(match.group(), env, unset))
            pos = match.end()
    if stop is not None:
        raise _Bad(f"invalid interpolation format in {text!r}: a '${{' is never closed")
    return "".join(out), pos


def _braced(text: str, pos: int, env: Mapping[str, str], unset: set[str]) -> tuple[str, int]:
    match = _NAME.match(text, pos)
    if not match:
        raise _Bad(f"invalid interpolation format in {text!r}: '${{' must be followed by a "
                   "variable name (letters, digits, '_')")
    name, pos = match.group(), match.end()
    if text[pos: pos + 1] == "}":
        return _lookup(name, env, unset), pos + 1
    for op in (":-", ":?", ":+", "-", "?", "+"):
        if text.startswith(op, pos):
            break
    else:
        raise _Bad(f"invalid interpolation format in {text!r}: after ${{{name} expected '}}', "
                   "':-', '-', ':?', '?', ':+' or '+'")
    # The default is itself text with substitutions; it is only looked at when used, but it must
    # parse either way (a missing '}' is an error even when the variable is set).
    arg, end = _scan(text, pos + len(op), env, set(), stop="}")
    present = name in env
    filled = present and env[name] != ""
    have = filled if op.startswith(":") else present
    kind = op[-1]
    if kind == "-":
        value = env[name] if have else arg
    elif kind == "?":
        if not have:
            why = arg or f"variable {name} is {'empty' if present else 'not set'}"
            raise _Bad(f"required variable {name} is missing a value: {why}")
        value = env[name]
    else:  # "+": the alternative when set
        value = arg if have else ""
    if kind == "-" and not have:
        _scan(text, pos + len(op), env, unset, stop="}")  # report unset variables it uses
    return value, end + 1


def _lookup(name: str, env: Mapping[str, str], unset: set[str]) -> str:
    if name not in env:
        unset.add(name)
        return ""
    return env[name]
