"""API paths built from names people typed."""
from __future__ import annotations

from urllib.parse import quote


def api_path(*segments: str) -> str:
    """An API path from its segments, each quoted whole: a name the user typed stays one segment
    and never becomes a query, a fragment or another path ('web2?', 'a/b', '..' stay names).
    Query values go through `params=`."""
    return "/" + "/".join(_segment(str(s)) for s in segments)


def _segment(text: str) -> str:
    if text in (".", ".."):
        # quote() keeps dots, and a client or proxy may resolve a dot segment away
        return text.replace(".", "%2E")
    return quote(text, safe="")
