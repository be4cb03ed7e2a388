"""Object identifiers: 25 lowercase base-36 characters, like SwarmKit's."""
from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits


_LENGTH = 25
# 160 random bits for 25 base-36 digits (129 bits): one read of the system's randomness per id,
# where a choice per character read it 25 times (4 % of a leader creating 100,000 tasks), and
# the modulo's bias is below one part in a billion.
_RANDOM_BYTES = 20


def new_id() -> str:
    n = int.from_bytes(secrets.token_bytes(_RANDOM_BYTES), "big")
    digits = []
    for _ in range(_LENGTH):
        n, d = divmod(n, 36)
        digits.append(_ALPHABET[d])
    return "".join(digits)


def short(ident: str) -> str:
    return ident[:12]
