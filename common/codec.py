"""Versioned msgpack codec for the object model.

Objects become plain dicts (to_plain) and back (from_plain) guided by the dataclasses' type
hints. Unknown keys are ignored and missing keys take their defaults, so a replica running an
older or newer shoal can still read what another wrote. The envelope carries a format version.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar

import msgpack

FORMAT_VERSION = 1
T = TypeVar("T")


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls) if f.init)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None):
                return _convert(arg, value)
        return value
    if origin is list:
        # A str or a dict would iterate into characters or keys: a malformed spec must fail.
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(item, v) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        _, item = typing.get_args(tp) or (Any, Any)
        return {k: _convert(item, v) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_plain(tp, value)
    if tp is bytes and isinstance(value, str):
        return value.encode()
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_plain(cls: type[T], data: dict) -> T:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    names = _field_names(cls)
    kwargs = {}
    for k, v in data.items():
        if k in names:
            try:
                kwargs[k] = _convert(hints[k], v)
            except (TypeError, ValueError, AttributeError) as exc:
                raise TypeError(f"{k}: {exc}") from None  # the path to the field, outermost first
    return cls(**kwargs)


def pack(value: Any) -> bytes:
    return msgpack.packb({"v": FORMAT_VERSION, "d": to_plain(value)}, use_bin_type=True)


def unpack(data: bytes) -> Any:
    env = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(env, dict) or "v" not in env:
        raise ValueError("not a shoal message")
    if env["v"] > FORMAT_VERSION:
        # Newer writers only add fields; reading what we understand is safe.
        pass
    return env["d"]


def clone(obj: T) -> T:
    """A deep copy through the codec: cheap enough for objects this size, and always faithful."""
    return from_plain(type(obj), to_plain(obj))
