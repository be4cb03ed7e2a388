"""Docker's spelling of scalar values: times, durations, versions, one-of objects."""
from __future__ import annotations

import datetime
from typing import Any

# Go's zero time.Time, which Docker prints for a time never set.
ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339(ts: float) -> str:
    """A Unix time as Go's RFC 3339 with nanoseconds (`2024-05-01T10:00:00.123456789Z`)."""
    if ts <= 0:
        return ZERO_TIME
    ns = round(ts * 1e9)
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.datetime.fromtimestamp(secs, datetime.timezone.utc)
    return base.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def nanos(seconds: float) -> int:
    """A duration in seconds as Docker's integer nanoseconds."""
    return round(seconds * 1e9)


def version(index: int) -> dict:
    return {"Version": {"Index": index}}


def meta(obj: Any) -> dict:
    """ID, Version, CreatedAt and UpdatedAt, the head of every swarm object."""
    return {"ID": obj.id, **version(obj.meta.version),
            "CreatedAt": rfc3339(obj.meta.created_at),
            "UpdatedAt": rfc3339(obj.meta.updated_at)}


def drop_empty(d: dict) -> dict:
    """Without the keys Go's `omitempty` leaves out of an object: None, "", [] and {} (numbers
    and booleans stay: where Docker omits a zero, the caller leaves the key out itself)."""
    return {k: v for k, v in d.items() if v not in (None, "", [], {})}
