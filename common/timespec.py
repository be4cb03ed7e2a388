"""A point in time as people give it on a command line (`--since`, `--until`), as the docker CLI
reads them: an RFC 3339 time, Unix seconds, or a duration ago (10m, 1h30m, 1.5s).

Used by the CLI (durations are relative to the client's clock, as docker's) and by the API
that accepts the same words; a bad value is a ValueError whose message names the flag and the
forms that work.
"""
from __future__ import annotations

import math
import re
from datetime import datetime, timezone

# Go's time.ParseDuration units, which docker's `--since 10m` uses.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h)")
_UNIX = re.compile(r"\d{1,12}(?:\.\d{1,9})?")
# Far enough for anything real, small enough that the arithmetic stays exact-ish and finite.
_MAX_SECONDS = 253402300799.0     # 9999-12-31T23:59:59Z
_MAX_AGO = 100 * 366 * 86400.0


def _forms(flag: str) -> str:
    return (f"give {flag} as an RFC 3339 time (2026-01-02T15:04:05Z), Unix seconds "
            "(1767366245) or a duration ago (10m, 1h30m)")


def parse_time(value: str, flag: str, now: float) -> float:
    """`value` as Unix seconds; a duration is counted back from `now`."""
    raw = value.strip()
    if not raw:
        raise ValueError(f"{flag} is empty: {_forms(flag)}")
    if _UNIX.fullmatch(raw):
        return float(raw)
    ago = _duration(raw)
    if ago is not None:
        if ago > _MAX_AGO:
            raise ValueError(f"{flag} {value!r} reaches back more than 100 years: {_forms(flag)}")
        return now - ago
    when = _rfc3339(raw)
    if when is None or not math.isfinite(when) or not 0 <= when <= _MAX_SECONDS:
        raise ValueError(f"invalid {flag} {value!r}: {_forms(flag)}")
    return when


def _duration(raw: str) -> float | None:
    pos, total = 0, 0.0
    if not raw or not raw[0].isdigit() and raw[0] != ".":
        return None
    for m in _DURATION.finditer(raw):
        if m.start() != pos:
            return None
        part = m.group(0)
        unit = next(u for u in sorted(_UNITS, key=len, reverse=True) if part.endswith(u))
        total += float(part[: -len(unit)]) * _UNITS[unit]
        pos = m.end()
    return total if pos == len(raw) and pos > 0 and math.isfinite(total) else None


def _rfc3339(raw: str) -> float | None:
    text = raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw
    # fromisoformat takes at most 6 fraction digits; RFC 3339 allows more (docker sends 9).
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2})?)?)(\.\d+)?"
                     r"([+-]\d{2}:\d{2})?", text)
    if m is None:
        return None
    base, frac, zone = m.group(1), m.group(2) or "", m.group(3) or ""
    try:
        parsed = datetime.fromisoformat(base + zone)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        # As docker: a time without a zone is the client's local time.
        parsed = parsed.astimezone()
    return parsed.astimezone(timezone.utc).timestamp() + (float(frac) if frac else 0.0)
