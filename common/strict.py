"""Strict decoding of what arrives from outside (API bodies, and later compose files and the
Docker API's translation) into the object model's dataclasses.

The codec (common/codec.py) is lenient on purpose: it reads what other shoal versions wrote to
the replicated store. What a client sends is held to more: every value has the type its field
declares (no bool for an int, no string for a number, no null where an object belongs), numbers
are finite and fit in 64 bits, strings are valid UTF-8 without NUL bytes and fit in one argument
of exec(2), and unknown fields are refused so that a typo is not silently dropped. Errors name
the field's path (`task_template.container.stop_grace_period`) and what it must be.

Ranges that depend on the field's meaning (a port, a duration) are the semantic checks' business
(manager/specs/services.py and friends); they run after this, on values of the right type.

Why not a schema library: the model is plain dataclasses shared with the codec and the store,
and the rules above (int64 range, finite floats, NUL and surrogate free strings, bytes as base64)
would need an annotation on every field of every class to get from one; walking the type hints
that the codec already walks keeps one source of truth for the shape.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import math
import types
import typing
from typing import Any, TypeVar

from common import errors

T = TypeVar("T")

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# Linux's MAX_ARG_STRLEN (32 pages, NUL included): a longer string cannot be one argument or
# environment entry of a process, so no field of a spec needs more.
MAX_STRING_BYTES = 128 * 1024 - 1
# Deeper JSON is no spec: refuse it before anything walks it recursively.
MAX_DEPTH = 32
# Far beyond any real duration (about 31,700 years), yet small enough that adding it to a clock
# or multiplying it by 1e9 for nanoseconds stays finite and exact enough.
MAX_SECONDS = 1e12


def bad(path: str, message: str) -> errors.InvalidArgument:
    where = path or "body"
    return errors.InvalidArgument(f"{where}: {message}", field=path or None)


# ---- JSON ------------------------------------------------------------------------------------
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send a finite number")


def loads(raw: bytes | str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity refused, nesting bounded."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise errors.InvalidArgument(f"the request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise errors.InvalidArgument(f"the request body is not valid JSON: {exc}") from None
    check_depth(data)
    return data


def check_depth(data: Any, limit: int = MAX_DEPTH) -> None:
    """Iterative, so that it cannot itself run out of stack."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                raise errors.InvalidArgument(f"the request body nests deeper than {limit} levels")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items if isinstance(v, (dict, list)))


# ---- scalars ---------------------------------------------------------------------------------
def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def string(value: Any, path: str, max_bytes: int = MAX_STRING_BYTES) -> str:
    if not isinstance(value, str):
        raise bad(path, f"must be a string, got {_type_name(value)}")
    if "\x00" in value:
        raise bad(path, "must not contain a NUL byte")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise bad(path, "is not valid UTF-8 (it holds a lone surrogate)") from None
    if size > max_bytes:
        raise bad(path, f"is {size} bytes long; at most {max_bytes} bytes")
    return value


def integer(value: Any, path: str, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad(path, f"must be an integer, got {_type_name(value)}")
    if not lo <= value <= hi:
        raise bad(path, f"must be between {lo} and {hi}, got {value}")
    return value


def number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(path, f"must be a number, got {_type_name(value)}")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise bad(path, f"is out of range ({value})")
    value = float(value)
    if not math.isfinite(value):
        raise bad(path, "must be a finite number")
    return value


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise bad(path, f"must be true or false, got {_type_name(value)}")
    return value


def seconds(value: Any, path: str, *, lo: float = 0.0, hi: float = MAX_SECONDS) -> float:
    """A duration in seconds, within [lo, hi]."""
    value = number(value, path)
    if not lo <= value <= hi:
        raise bad(path, f"must be a duration between {lo:g} and {hi:g} seconds, got {value:g}")
    return value


def _bytes(value: Any, path: str) -> bytes:
    text = string(value, path)
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise bad(path, "must be base64") from None


# ---- structures ------------------------------------------------------------------------------
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


@functools.cache
def _required(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.init
                 and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def decode(cls: type[T], data: Any, path: str = "") -> T:
    """`data` (parsed JSON) as a `cls`, every field checked against its declared type."""
    return _value(cls, data, path)


def _value(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) != 1:
            raise TypeError(f"{path}: unions other than Optional are not decoded")
        return _value(args[0], value, path)
    if value is None:
        raise bad(path, "must not be null" + _shape_hint(tp))
    if origin is list:
        if not isinstance(value, list):
            raise bad(path, f"must be a list, got {_type_name(value)}")
        (item,) = typing.get_args(tp)
        return [_value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad(path, f"must be an object, got {_type_name(value)}")
        key_type, item = typing.get_args(tp)
        if key_type is not str:
            raise TypeError(f"{path}: only string keys are decoded")
        return {string(k, f"{path} (key {k!r})"): _value(item, v, _join(path, k))
                for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, path)
    if tp is bool:
        return boolean(value, path)
    if tp is int:
        return integer(value, path)
    if tp is float:
        return number(value, path)
    if tp is str:
        return string(value, path)
    if tp is bytes:
        return _bytes(value, path)
    if tp is Any:
        raise TypeError(f"{path}: an untyped field cannot be decoded strictly")
    raise TypeError(f"{path}: no strict decoding for {tp!r}")


def _shape_hint(tp: Any) -> str:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return " (send an object, or leave the field out for its default)"
    return " (leave the field out for its default)"


def _dataclass(cls: type, value: Any, path: str) -> Any:
    if not isinstance(value, dict):
        raise bad(path, f"must be an object, got {_type_name(value)}")
    names = _fields(cls)
    hints = _hints(cls)
    kwargs = {}
    for key, item in value.items():
        if key not in names:
            known = ", ".join(names)
            raise bad(_join(path, str(key)), f"unknown field (the fields here are: {known})")
        kwargs[key] = _value(hints[key], item, _join(path, key))
    for name in _required(cls):
        if name not in kwargs:
            raise bad(_join(path, name), "is required")
    return cls(**kwargs)
