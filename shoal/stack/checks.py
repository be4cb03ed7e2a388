"""Typed reads of a Compose file's values: each returns the value in shoal's terms or records a
problem that names the key path (`services.web.deploy.replicas: expected an integer, got "two"`)
and returns None, so one pass finds every mistake."""
from __future__ import annotations

import difflib
import re
import shlex
from typing import Any, Iterable, Optional

from common.durations import parse_duration
from common.units import parse_cpus, parse_size
from shoal.stack.problems import Collector, Path

_GO_DURATION_EXTRA = re.compile(r"^(\d+(?:\.\d+)?)(us|µs|ns)$")


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"' if len(value) < 60 else f'"{value[:57]}..."'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


class Checker:
    def __init__(self, problems: Collector) -> None:
        self.problems = problems

    def bad(self, path: Path, message: str) -> None:
        self.problems.add(path, message)

    def expected(self, path: Path, what: str, value: Any) -> None:
        self.bad(path, f"expected {what}, got {_shown(value)}")

    def string(self, path: Path, value: Any, *, allow_numbers: bool = False) -> Optional[str]:
        if isinstance(value, str):
            if "\x00" in value:
                self.bad(path, "a NUL character is not allowed")
                return None
            return value
        if allow_numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        self.expected(path, "a string", value)
        return None

    def boolean(self, path: Path, value: Any) -> Optional[bool]:
        if isinstance(value, bool):
            return value
        self.expected(path, "true or false", value)
        return None

    def integer(self, path: Path, value: Any, *, minimum: int = 0,
                maximum: int = 2**63 - 1) -> Optional[int]:
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            value = int(value)  # an interpolated "${REPLICAS:-2}" arrives as text
        if isinstance(value, bool) or not isinstance(value, int):
            self.expected(path, "an integer", value)
            return None
        if not minimum <= value <= maximum:
            self.bad(path, f"{value} is out of range ({minimum} to {maximum})")
            return None
        return value

    def number(self, path: Path, value: Any, *, minimum: float = 0.0,
               maximum: float = 1e18) -> Optional[float]:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            self.expected(path, "a number", value)
            return None
        if not minimum <= value <= maximum:
            self.bad(path, f"{value} is out of range ({minimum:g} to {maximum:g})")
            return None
        return float(value)

    def choice(self, path: Path, value: Any, choices: Iterable[str]) -> Optional[str]:
        choices = tuple(choices)
        text = self.string(path, value)
        if text is None:
            return None
        if text not in choices:
            self.bad(path, f"{_shown(text)} is not one of {', '.join(choices)}")
            return None
        return text

    def duration(self, path: Path, value: Any) -> Optional[float]:
        """Go's durations, as Compose writes them: 10s, 1m30s, 500ms, 100us."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        text = self.string(path, value)
        if text is None:
            return None
        extra = _GO_DURATION_EXTRA.match(text.strip())
        if extra:
            return float(extra.group(1)) * (1e-9 if extra.group(2) == "ns" else 1e-6)
        try:
            seconds = parse_duration(text)
        except ValueError:
            self.bad(path, f"{_shown(text)} is not a duration: write it like 10s, 1m30s or 500ms")
            return None
        if seconds > 9.2e9:
            self.bad(path, f"{_shown(text)} is too long")
            return None
        return seconds

    def size(self, path: Path, value: Any) -> Optional[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                self.bad(path, "a size cannot be negative")
                return None
            return value
        text = self.string(path, value)
        if text is None:
            return None
        try:
            return parse_size(text)
        except ValueError:
            self.bad(path, f"{_shown(text)} is not a size: bytes, or a number with k, m or g "
                     "(e.g. 64m)")
            return None

    def cpus(self, path: Path, value: Any) -> Optional[int]:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.expected(path, "a number of CPUs like 0.5", value)
            return None
        try:
            return parse_cpus(str(value))
        except ValueError as exc:
            self.bad(path, str(exc))
            return None

    def mapping(self, path: Path, value: Any) -> Optional[dict]:
        if isinstance(value, dict):
            return value
        self.expected(path, "a mapping", value)
        return None

    def items(self, path: Path, value: Any) -> list:
        """A list whose items are checked by the caller (ports, volumes, secrets, ...)."""
        if value is None:
            return []
        if isinstance(value, list):
            return value
        self.expected(path, "a list", value)
        return []

    def string_list(self, path: Path, value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            self.expected(path, "a list of strings", value)
            return []
        out = []
        for i, item in enumerate(value):
            text = self.string((*path, i), item, allow_numbers=True)
            if text is not None:
                out.append(text)
        return out

    def string_map(self, path: Path, value: Any) -> dict[str, str]:
        """labels, sysctls, driver options: values are strings (numbers and booleans written
        bare are turned into their text, as Compose does)."""
        data = self.mapping(path, value)
        out: dict[str, str] = {}
        for key, item in (data or {}).items():
            if isinstance(item, bool):
                out[str(key)] = "true" if item else "false"
            elif item is None:
                out[str(key)] = ""
            else:
                text = self.string((*path, key), item, allow_numbers=True)
                if text is not None:
                    out[str(key)] = text
        return out

    def command(self, path: Path, value: Any) -> Optional[list[str]]:
        """A string is split as a shell would split it (no shell runs it); a list is argv."""
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as exc:
                self.bad(path, f"cannot split the command: {exc}")
                return None
        return self.string_list(path, value)

    def keys(self, path: Path, data: dict, known: Iterable[str], *, what: str,
             extensions: bool = True) -> None:
        """Every key must be one this level knows; a near miss gets a suggestion."""
        known = tuple(known)
        for key in data:
            if not isinstance(key, str):
                self.bad(path, f"the key {_shown(key)} is not a string")
                continue
            if extensions and key.startswith("x-"):
                continue
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f": did you mean {near[0]!r}?" if near else \
                    f" (the {what} keys are: {', '.join(sorted(known))})"
                self.bad((*path, key), f"unknown {what} key{hint}")
