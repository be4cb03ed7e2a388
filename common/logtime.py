"""The times `logs --since/--until` take, as the docker CLI reads them (timetypes.GetTimestamp):
a Go duration before now (10m, 1h30m, 1.5h), Unix seconds (1700000000, 1700000000.5), or an
RFC 3339 date or time (2024-05-01, 2024-05-01T10:00, 2024-05-01T10:00:00.5Z, ...+02:00), in
local time when it names no zone. Shared by the CLI (which sends Unix seconds, as docker's
does) and the APIs (which take every form, for callers such as curl)."""
from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Optional

from common import errors

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                 "m": 60.0, "h": 3600.0}
_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)"
_DURATION = re.compile(rf"^([+-]?)((?:{_PART})+)$")
_UNIX = re.compile(r"^\d+(?:\.\d{1,9})?$")
_HINT = ("a duration before now (10m, 1h30m), Unix seconds (1700000000) or an RFC 3339 time "
         "(2024-05-01T10:00:00Z)")


def duration_seconds(text: str) -> Optional[float]:
    """A Go duration (time.ParseDuration) in seconds; None when `text` is not one."""
    match = _DURATION.match(text)
    if not match:
        return None
    total = sum(float(n) * _UNIT_SECONDS[u] for n, u in re.findall(_PART, match.group(2)))
    return -total if match.group(1) == "-" else total


def parse_time(text: str, flag: str = "--since", now: Optional[float] = None) -> float:
    """Unix seconds for a --since/--until value; InvalidArgument naming `flag` otherwise."""
    value = str(text).strip()
    if value == "":
        raise errors.InvalidArgument(f"{flag} needs a value: {_HINT}", field=flag.lstrip("-"))
    seconds = duration_seconds(value) if value != "0" else None
    if seconds is not None:
        return (time.time() if now is None else now) - seconds
    if _UNIX.match(value):
        return float(value)
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise errors.InvalidArgument(f"{flag} {text!r}: expected {_HINT}",
                                     field=flag.lstrip("-")) from None
    # A naive time is local time, as docker's ParseInLocation with the local zone.
    return moment.timestamp()


def optional_time(text: Optional[str], flag: str, now: Optional[float] = None
                  ) -> Optional[float]:
    """parse_time for a query parameter or option that may be absent or empty."""
    if text is None or str(text).strip() == "":
        return None
    return parse_time(text, flag, now)
