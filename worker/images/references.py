"""Image references as the store keys them: Docker's grammar (common/imageref.py), normalized."""
from __future__ import annotations

from common import errors
from common.imageref import parse_ref

__all__ = ["normalize_ref", "normalize_ref_or_empty", "parse_ref"]


def normalize_ref(ref: str) -> str:
    return str(parse_ref(ref))


def normalize_ref_or_empty(ref: str) -> str:
    try:
        return normalize_ref(ref)
    except errors.InvalidArgument:
        return ""
