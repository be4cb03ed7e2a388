"""Autolock: the unlock key, and the sealed bundle of a manager's secrets on disk.

A manager of an autolocked swarm keeps its raft secret (which the raft data key is derived
from) and its TLS private key on disk only inside one *key bundle*, sealed with AES-GCM under a
key derived from the swarm's unlock key. One file for both means a rotation replaces them in a
single atomic rename: a crash can never leave the two sealed under different unlock keys.

The unlock key is 32 random bytes, so HKDF (with a fresh random salt per seal) is the right
KDF: a slow password KDF such as scrypt would only add start-up time, not strength.

Text form: `SHLKEY-1-<base32 of the key and a 2-byte checksum>`. The checksum tells a mistyped
key ("malformed") from a well-formed key of another swarm or another rotation ("wrong").
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common import errors

KEY_PREFIX = "SHLKEY-1-"
KEY_BYTES = 32
_CHECK_BYTES = 2
BUNDLE_FORMAT = "shoal-key-bundle/1"

LOCKED_MESSAGE = ("this node is locked: it is a manager of an autolocked swarm and was restarted; "
                  "run `shoal swarm unlock` and enter the unlock key")


class NodeLocked(errors.Unavailable):
    """The node's secrets are sealed by the unlock key and it has not been unlocked yet."""

    code = "node_locked"

    def __init__(self, message: str = LOCKED_MESSAGE, **kwargs) -> None:
        super().__init__(message, **kwargs)


class WrongUnlockKey(errors.Unauthorized):
    code = "wrong_unlock_key"


@dataclass(frozen=True)
class UnlockKey:
    raw: bytes

    @classmethod
    def generate(cls) -> "UnlockKey":
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def parse(cls, text: str) -> "UnlockKey":
        """Accepts surrounding blanks and any letter case (base32 is case-blind by design)."""
        if not isinstance(text, str):
            raise errors.InvalidArgument("the unlock key must be a string", field="unlock_key")
        value = "".join(text.split())
        if not value:
            raise errors.InvalidArgument("no unlock key given: enter the key that `shoal swarm "
                                         "unlock-key` printed (SHLKEY-1-...)", field="unlock_key")
        if not value.upper().startswith(KEY_PREFIX):
            raise errors.InvalidArgument(
                f"this is not a shoal unlock key: it must start with {KEY_PREFIX} (the key that "
                "`shoal swarm init --autolock` or `shoal swarm unlock-key` printed)",
                field="unlock_key")
        body = value[len(KEY_PREFIX):].upper()
        try:
            data = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError:
            data = b""
        if len(data) != KEY_BYTES + _CHECK_BYTES or _check(data[:KEY_BYTES]) != data[KEY_BYTES:]:
            raise errors.InvalidArgument(
                "the unlock key is malformed (wrong length or checksum): a character is "
                "missing or mistyped; copy the whole key again", field="unlock_key")
        return cls(data[:KEY_BYTES])

    def __str__(self) -> str:
        body = base64.b32encode(self.raw + _check(self.raw)).decode().rstrip("=")
        return KEY_PREFIX + body

    def __repr__(self) -> str:  # never print the key itself by accident (logs, tracebacks)
        return f"UnlockKey(id={self.key_id})"

    @property
    def key_id(self) -> str:
        """A fingerprint that names the key in files and messages without revealing it."""
        return _derive(self.raw, b"", b"shoal unlock key id v1", 8).hex()

    def wrapping_key(self, salt: bytes) -> bytes:
        return _derive(self.raw, salt, b"shoal unlock key wrap v1", 32)


def _check(raw: bytes) -> bytes:
    return hashlib.sha256(b"shoal unlock key check" + raw).digest()[:_CHECK_BYTES]


def _derive(raw: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(raw)


def key_id_of(text: str) -> str:
    """The fingerprint of a key in text form, or "" for no key."""
    return UnlockKey.parse(text).key_id if text else ""


def seal_bundle(key: UnlockKey, secrets: dict[str, bytes]) -> bytes:
    """The sealed file's content: a JSON header (format, key id, salt, nonce) and ciphertext."""
    salt, nonce = os.urandom(16), os.urandom(12)
    plain = json.dumps({name: base64.b64encode(value).decode()
                        for name, value in sorted(secrets.items())}).encode()
    header = {"format": BUNDLE_FORMAT, "key_id": key.key_id, "kdf": "hkdf-sha256",
              "cipher": "aes-256-gcm", "salt": base64.b64encode(salt).decode(),
              "nonce": base64.b64encode(nonce).decode()}
    sealed = AESGCM(key.wrapping_key(salt)).encrypt(nonce, plain, _aad(header))
    header["ciphertext"] = base64.b64encode(sealed).decode()
    return json.dumps(header, indent=1).encode() + b"\n"


def bundle_key_id(blob: bytes) -> str:
    return _header(blob)["key_id"]


def open_bundle(key: UnlockKey, blob: bytes) -> dict[str, bytes]:
    header = _header(blob)
    try:
        salt = base64.b64decode(header["salt"])
        nonce = base64.b64decode(header["nonce"])
        sealed = base64.b64decode(header["ciphertext"])
        plain = AESGCM(key.wrapping_key(salt)).decrypt(nonce, sealed, _aad(header))
    except InvalidTag:
        if header.get("key_id") == key.key_id:
            # Right key, bad bytes: say so rather than send the operator hunting for keys.
            raise errors.FailedPrecondition(
                "the key bundle on disk is damaged (the key is right but authentication of the "
                "file failed); restore the node's data root from a backup, or leave and rejoin "
                "the swarm") from None
        raise WrongUnlockKey(
            f"the unlock key is wrong: this node's secrets are sealed with the unlock key whose id "
            f"is {header.get('key_id')}, and the key given has id {key.key_id}. If the key was "
            "rotated (or autolock turned off) while this manager was down, it is still locked "
            "with the previous key: `shoal swarm unlock-key --previous` on a running manager "
            "prints it", field="unlock_key") from None
    except (KeyError, ValueError) as exc:
        raise errors.FailedPrecondition(f"the key bundle on disk is damaged: {exc}") from None
    return {name: base64.b64decode(value) for name, value in json.loads(plain).items()}


def _header(blob: bytes) -> dict:
    try:
        header = json.loads(blob)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != BUNDLE_FORMAT:
        raise errors.FailedPrecondition(
            f"the key bundle on disk is not a {BUNDLE_FORMAT} file; it is damaged or from "
            "another version of shoal")
    return header


def _aad(header: dict) -> bytes:
    # The header is authenticated too: a bundle cannot be relabelled with another key id.
    return "|".join([header["format"], header["key_id"], header["kdf"], header["cipher"],
                     header["salt"]]).encode()
