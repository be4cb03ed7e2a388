"""Object identifiers: 25 lowercase base-36 characters, like SwarmKit's."""
from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits


def new_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(25))


def short(ident: str) -> str:
    return ident[:12]
