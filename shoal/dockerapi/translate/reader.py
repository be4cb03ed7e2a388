"""Reading Docker's JSON on its way in: each object's keys matched as Go's encoding/json
matches them (case-insensitively), each value type-checked where it is read, and every error a
400 naming the field's path in Docker's spelling (`TaskTemplate.ContainerSpec.Image`).

Three kinds of refusal, so nothing is dropped silently: a key this reader does not know
(`unknown field`), a key Docker has but shoal cannot honour, sent with a value (`refuse`), and
a value of the wrong type. A refused key with its zero value (null, "", 0, false, [], an
object of zero values) is what a client sends when it does not use it, and passes.

Each object also keeps what it read under Docker's spelling of each key (`sent`): the body as
Go's decoder would hold it, the spec Docker keeps "as the client sent it".
"""
from __future__ import annotations

from typing import Any, Optional

from common import errors, strict

INT64_MAX = (1 << 63) - 1


def bad(path: str, message: str) -> errors.InvalidArgument:
    where = path or "body"
    return errors.InvalidArgument(f"{where}: {message}", field=path or None)


def _is_zero(value: Any) -> bool:
    """Go's zero value, an object of zero values included (`{"CredentialSpec": null}` is what
    the docker CLI sends for no privileges)."""
    if isinstance(value, dict):
        return all(_is_zero(v) for v in value.values())
    if isinstance(value, list):
        return not value
    return value is None or value == "" or (value == 0 and value is not True)


class Obj:
    """One JSON object of a Docker body (None reads as an empty one)."""

    def __init__(self, value: Any, path: str = "") -> None:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise bad(path, f"must be an object, got {_kind(value)}")
        self.path = path
        self.sent: dict[str, Any] = {}
        self._items: dict[str, tuple[str, Any]] = {}
        for key, item in value.items():
            self._items.setdefault(key.lower(), (key, item))

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        entry = self._items.get(key.lower())
        return entry is not None and entry[1] is not None

    def take(self, key: str) -> Any:
        entry = self._items.pop(key.lower(), None)
        value = None if entry is None else entry[1]
        if value is not None:
            # obj() and objs() put their children's own `sent` in its place
            self.sent[key] = value
        return value

    # -- scalars ----------------------------------------------------------------------------
    def str(self, key: str, default: str = "") -> str:
        value = self.take(key)
        return default if value is None else strict.string(value, self.at(key))

    def int(self, key: str, default: int = 0, lo: int = 0, hi: int = INT64_MAX) -> int:
        value = self.take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(self.at(key), f"must be an integer, got {_kind(value)}")
        if not lo <= value <= hi:
            raise bad(self.at(key), f"must be an integer between {lo} and {hi}")
        return value

    def float(self, key: str, default: float = 0.0) -> float:
        value = self.take(key)
        return default if value is None else strict.number(value, self.at(key))

    def bool(self, key: str, default: bool = False) -> bool:
        value = self.take(key)
        return default if value is None else strict.boolean(value, self.at(key))

    def seconds(self, key: str, default: float) -> float:
        """A Go time.Duration (integer nanoseconds) as shoal's seconds."""
        if not self.has(key):
            self.take(key)
            return default
        return self.int(key) / 1e9

    # -- collections ------------------------------------------------------------------------
    def strs(self, key: str) -> list[str]:
        value = self.take(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise bad(self.at(key), f"must be a list of strings, got {_kind(value)}")
        return [strict.string(v, f"{self.at(key)}[{i}]") for i, v in enumerate(value)]

    def str_map(self, key: str) -> dict[str, str]:
        value = self.take(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad(self.at(key), f"must be an object of strings, got {_kind(value)}")
        return {k: strict.string(v, f"{self.at(key)}.{k}") for k, v in value.items()}

    def obj(self, key: str) -> Optional["Obj"]:
        value = self.take(key)
        if value is None:
            return None
        child = Obj(value, self.at(key))
        self.sent[key] = child.sent
        return child

    def objs(self, key: str) -> list["Obj"]:
        value = self.take(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise bad(self.at(key), f"must be a list of objects, got {_kind(value)}")
        children = [Obj(v, f"{self.at(key)}[{i}]") for i, v in enumerate(value)]
        self.sent[key] = [c.sent for c in children]
        return children

    # -- refusals ---------------------------------------------------------------------------
    def refuse(self, key: str, why: str, allowed: tuple = ()) -> None:
        """A field shoal cannot honour: fine absent, zero or one of `allowed`; else a 400."""
        value = self.take(key)
        if _is_zero(value) or value in allowed:
            return
        raise bad(self.at(key), f"shoal does not support this field ({why})")

    def done(self) -> None:
        """Every key read: what is left is no field of Docker's API that shoal knows."""
        for original, _ in self._items.values():
            raise bad(self.at(original), "unknown field")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
