"""Sizes and CPU amounts as people write them: 64m, 1.5g, 512k; 0.5 CPUs."""
from __future__ import annotations

import re

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$", re.IGNORECASE)
_FACTORS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def parse_size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"invalid size {text!r}: use bytes or a number with k, m or g (e.g. 64m)")
    try:
        return int(float(match.group(1)) * _FACTORS[match.group(2).lower()])
    except OverflowError:  # "9" * 400 is a float too large for an int
        raise ValueError(f"invalid size {text[:40]!r}: too large") from None


def parse_cpus(text: str) -> int:
    """CPUs as a decimal (0.5) -> nano CPUs."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid CPU amount {text!r}: use a decimal number of CPUs, e.g. 0.5") from None
    if value <= 0:
        raise ValueError(f"invalid CPU amount {text!r}: must be more than 0")
    return int(value * 1e9)


def format_size(n: int) -> str:
    for unit, size in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n}B"
