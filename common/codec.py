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


# Types that are already plain: the common case, answered without a dataclass check.
_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})
# type -> its dataclass field names (None: not a dataclass). Every object of the model passes
# through here on every store read, write and snapshot: looking the fields up once per type
# rather than once per object halved the codec's share of a busy leader (issue 20).
_FIELDS: dict[type, tuple[str, ...] | None] = {}


def to_plain(obj: Any) -> Any:
    cls = type(obj)
    if cls in _PLAIN:
        return obj
    names = _FIELDS.get(cls, ())
    if names == ():
        names = (tuple(f.name for f in dataclasses.fields(obj))
                 if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else None)
        _FIELDS[cls] = names
    if names is not None:
        return {n: to_plain(getattr(obj, n)) for n in names}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _field_converters(cls: type) -> dict[str, Any]:
    """name -> converter of each field the constructor takes."""
    hints = _hints(cls)
    return {f.name: _converter(hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _as_is(value: Any) -> Any:
    return value


@functools.cache
def _converter(tp: Any):
    """A function turning a plain value into ``tp`` (None stays None at every level), built
    once per type from its hints."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        arg = next((a for a in typing.get_args(tp) if a is not type(None)), None)
        return _as_is if arg is None else _converter(arg)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        item_conv = _converter(item)

        def to_list(value: Any) -> Any:
            if value is None:
                return None
            # A str or a dict would iterate into characters or keys: a malformed spec must fail.
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"expected a list, got {type(value).__name__}")
            return [item_conv(v) for v in value]
        return to_list
    if origin is dict:
        _, item = typing.get_args(tp) or (Any, Any)
        item_conv = _converter(item)

        def to_dict(value: Any) -> Any:
            if value is None:
                return None
            if not isinstance(value, dict):
                raise TypeError(f"expected an object, got {type(value).__name__}")
            return {k: item_conv(v) for k, v in value.items()}
        return to_dict
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return lambda value: None if value is None else from_plain(tp, value)
    if tp is bytes:
        return lambda value: value.encode() if isinstance(value, str) else value
    if tp is float:
        return lambda value: float(value) if isinstance(value, int) else value
    return _as_is


def _convert(tp: Any, value: Any) -> Any:
    return _converter(tp)(value)


def from_plain(cls: type[T], data: dict) -> T:
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    converters = _field_converters(cls)
    kwargs = {}
    for k, v in data.items():
        conv = converters.get(k)
        if conv is not None:
            try:
                kwargs[k] = conv(v)
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
