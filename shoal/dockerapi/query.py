"""Query parameters read as dockerd reads them."""
from __future__ import annotations

from aiohttp import web


def flag(request: web.Request, name: str) -> bool:
    """dockerd's BoolValue: anything but "", 0, no, false and none is true."""
    value = request.query.get(name, "").strip().lower()
    return value not in ("", "0", "no", "false", "none")
