"""Raft data at rest: every entry and snapshot sealed with AES-GCM under a key derived from the
cluster's raft secret, before pysyncobj writes it."""
from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class DataCipher:
    """Seals raft entries and snapshots at rest. Nonces are random: entries are sealed once."""

    def __init__(self, raft_secret: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"shoal raft data at rest v1").derive(raft_secret)
        self._aead = AESGCM(key)

    def seal(self, data: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, data, b"shoal")

    def open(self, blob: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], b"shoal")
