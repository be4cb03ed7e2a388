"""The swarm backup file (`shoal swarm backup` / `restore`): format, encryption, strict decoding.

A backup holds the whole store (the CA key, every secret, the join tokens, the unlock key)
and the raft secret, so it is never written in clear. Layout:

    b"SHOALBKP"  u16 format version (1)  u32 header length  header (JSON)  ciphertext

The header says how the key is derived and what the file is (cluster id, indexes): nothing
secret, and authenticated as AES-GCM's associated data, so it cannot be altered either. The key
comes from a passphrase through scrypt (a slow KDF: a passphrase is guessable, unlike the
unlock key), or from the swarm's unlock key through HKDF with a fresh salt (a 32-byte random
key needs no stretching; common/keywrap.py does the same). The ciphertext opens to a JSON
object of exactly known fields.

A backup file comes from outside: everything is checked before it is used (sizes, types,
exact key sets, KDF costs bounded so a hostile header cannot make a restore run for hours or
take all memory), and every failure is a BackupFileError naming what is wrong.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import time
from dataclasses import dataclass
from typing import Any, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from common import errors
from common.keywrap import UnlockKey

MAGIC = b"SHOALBKP"
VERSION = 1
_PREFIX = struct.Struct(">8sHI")
MAX_HEADER = 4096
MAX_FILE = 1 << 30            # 1 GiB: far above a store of a million objects
MIN_PASSPHRASE = 8
KDF_PASSPHRASE = "scrypt"
KDF_UNLOCK_KEY = "unlock-key"
CIPHER = "aes-256-gcm"
# scrypt's cost: ~0.1 s and 32 MiB here. Reading accepts up to 2^20 (1 GiB of memory at r=8
# would be too much: r is capped so n*r*128 stays within 256 MiB).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
_MAX_SCRYPT_MEMORY = 256 << 20
_HKDF_INFO = b"shoal swarm backup v1"


class BackupFileError(errors.InvalidArgument):
    """The file is not a readable shoal backup; the message says what is wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(f"the backup file is not usable: {message}", field="input")


class WrongBackupKey(errors.Unauthorized):
    code = "wrong_backup_key"


@dataclass
class BackupContents:
    cluster_id: str
    node_id: str                 # the manager the backup was taken on: the restored one
    raft_index: int
    raft_term: int
    store_index: int             # every write acknowledged with an index up to this is inside
    raft_secret: bytes
    store: bytes                 # manager.state.store.Store.snapshot()
    created_at: float = 0.0


@dataclass
class BackupHeader:
    kdf: str
    salt: bytes
    nonce: bytes
    cluster_id: str
    raft_index: int
    store_index: int
    created_at: float
    key_id: str = ""             # unlock-key backups: which key opens it
    scrypt_n: int = 0
    scrypt_r: int = 0
    scrypt_p: int = 0


# ---- writing ----------------------------------------------------------------------------------
def seal_with_passphrase(contents: BackupContents, passphrase: str) -> bytes:
    check_new_passphrase(passphrase)
    salt = os.urandom(16)
    header = _header_dict(contents, KDF_PASSPHRASE, salt,
                          scrypt={"n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P})
    return _seal(contents, header, _scrypt(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))


def seal_with_unlock_key(contents: BackupContents, key: UnlockKey) -> bytes:
    salt = os.urandom(16)
    header = _header_dict(contents, KDF_UNLOCK_KEY, salt, key_id=key.key_id)
    return _seal(contents, header, _hkdf(key.raw, salt))


def check_new_passphrase(passphrase: str) -> None:
    if not isinstance(passphrase, str) or len(passphrase) < MIN_PASSPHRASE:
        raise errors.InvalidArgument(
            f"the passphrase is too short: give at least {MIN_PASSPHRASE} characters on stdin "
            "(--passphrase-stdin)", field="passphrase")


def _header_dict(contents: BackupContents, kdf: str, salt: bytes, **extra: Any) -> dict:
    return {"cipher": CIPHER, "kdf": kdf, "salt": _b64(salt), "nonce": _b64(os.urandom(12)),
            "cluster_id": contents.cluster_id, "raft_index": contents.raft_index,
            "store_index": contents.store_index,
            "created_at": round(contents.created_at or time.time(), 3), **extra}


def _seal(contents: BackupContents, header: dict, key: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    prefix = _PREFIX.pack(MAGIC, VERSION, len(head))
    plain = json.dumps({
        "format": VERSION, "cluster_id": contents.cluster_id, "node_id": contents.node_id,
        "raft_index": contents.raft_index, "raft_term": contents.raft_term,
        "store_index": contents.store_index, "created_at": header["created_at"],
        "raft_secret": _b64(contents.raft_secret), "store": _b64(contents.store)},
        separators=(",", ":")).encode()
    nonce = base64.b64decode(header["nonce"])
    return prefix + head + AESGCM(key).encrypt(nonce, plain, prefix + head)


# ---- reading ----------------------------------------------------------------------------------
def read_header(blob: bytes) -> BackupHeader:
    """Decode the clear part strictly (no key needed): BackupFileError if anything is off."""
    _, head, _ = _split(blob)
    return _parse_header(head)


def open_backup(blob: bytes, secret: str) -> BackupContents:
    """Decrypt with `secret` (the passphrase, or the unlock key for an unlock-key backup).
    WrongBackupKey if it does not open the file; BackupFileError for anything malformed."""
    prefix, head, sealed = _split(blob)
    header = _parse_header(head)
    if not isinstance(secret, str) or not secret:
        raise errors.InvalidArgument(_secret_needed(header), field="passphrase")
    if header.kdf == KDF_PASSPHRASE:
        key = _scrypt(secret, header.salt, header.scrypt_n, header.scrypt_r, header.scrypt_p)
    else:
        unlock = UnlockKey.parse(secret)
        if unlock.key_id != header.key_id:
            raise WrongBackupKey(
                f"this backup was encrypted with the unlock key whose id is {header.key_id}, and "
                f"the key given has id {unlock.key_id}; give the unlock key the swarm had when "
                "the backup was taken", field="passphrase")
        key = _hkdf(unlock.raw, header.salt)
    try:
        plain = AESGCM(key).decrypt(header.nonce, sealed, prefix + head)
    except InvalidTag:
        if header.kdf == KDF_PASSPHRASE:
            raise WrongBackupKey("the passphrase is wrong (or the backup file was altered): "
                                 "nothing was restored; try again with the passphrase given "
                                 "to `shoal swarm backup`", field="passphrase") from None
        raise BackupFileError("it fails authentication with the right unlock key: the file "
                              "was altered or damaged") from None
    return _parse_payload(plain, header)


def _secret_needed(header: BackupHeader) -> str:
    if header.kdf == KDF_PASSPHRASE:
        return "this backup is encrypted with a passphrase: give it on stdin with --passphrase-stdin"
    return ("this backup is encrypted with the swarm's unlock key (autolock was on): give the "
            "unlock key on stdin with --passphrase-stdin")


def _split(blob: bytes) -> tuple[bytes, bytes, bytes]:
    if not isinstance(blob, (bytes, bytearray)):
        raise BackupFileError("expected bytes")
    if len(blob) > MAX_FILE:
        raise BackupFileError(f"it is larger than {MAX_FILE} bytes")
    if len(blob) < _PREFIX.size or blob[:len(MAGIC)] != MAGIC:
        raise BackupFileError("it does not start with a shoal backup's signature (SHOALBKP); "
                              "give the file `shoal swarm backup -o` wrote")
    _, version, head_len = _PREFIX.unpack_from(blob)
    if version != VERSION:
        raise BackupFileError(f"it is format version {version}, and this shoal reads version "
                              f"{VERSION} only")
    if head_len > MAX_HEADER or _PREFIX.size + head_len > len(blob):
        raise BackupFileError(f"its header length ({head_len}) is out of bounds")
    end = _PREFIX.size + head_len
    sealed = bytes(blob[end:])
    if len(sealed) < 16:
        raise BackupFileError("it is truncated: the encrypted part is missing")
    return bytes(blob[:_PREFIX.size]), bytes(blob[_PREFIX.size:end]), sealed


def _parse_header(head: bytes) -> BackupHeader:
    obj = _json_object(head, "header")
    kdf = obj.get("kdf")
    required = {"cipher", "kdf", "salt", "nonce", "cluster_id", "raft_index", "store_index",
                "created_at"}
    if kdf == KDF_PASSPHRASE:
        required |= {"scrypt"}
    elif kdf == KDF_UNLOCK_KEY:
        required |= {"key_id"}
    else:
        raise BackupFileError(f"header.kdf must be {KDF_PASSPHRASE!r} or {KDF_UNLOCK_KEY!r}")
    _exact_keys(obj, required, "header")
    if obj["cipher"] != CIPHER:
        raise BackupFileError(f"header.cipher must be {CIPHER!r}")
    header = BackupHeader(
        kdf=kdf, salt=_bytes_field(obj, "salt", "header", exact=16),
        nonce=_bytes_field(obj, "nonce", "header", exact=12),
        cluster_id=_str_field(obj, "cluster_id", "header"),
        raft_index=_int_field(obj, "raft_index", "header"),
        store_index=_int_field(obj, "store_index", "header"),
        created_at=_float_field(obj, "created_at", "header"))
    if kdf == KDF_PASSPHRASE:
        params = obj["scrypt"]
        if not isinstance(params, dict):
            raise BackupFileError("header.scrypt must be an object")
        _exact_keys(params, {"n", "r", "p"}, "header.scrypt")
        n, r, p = (_int_field(params, k, "header.scrypt") for k in ("n", "r", "p"))
        if not (1 << 14 <= n <= 1 << 20 and n & (n - 1) == 0 and 1 <= r <= 16 and 1 <= p <= 4
                and 128 * n * r <= _MAX_SCRYPT_MEMORY):
            raise BackupFileError("header.scrypt's cost parameters are out of bounds")
        header.scrypt_n, header.scrypt_r, header.scrypt_p = n, r, p
    else:
        header.key_id = _str_field(obj, "key_id", "header", max_len=64)
    return header


def _parse_payload(plain: bytes, header: BackupHeader) -> BackupContents:
    obj = _json_object(plain, "contents", limit=MAX_FILE)
    _exact_keys(obj, {"format", "cluster_id", "node_id", "raft_index", "raft_term",
                      "store_index", "created_at", "raft_secret", "store"}, "contents")
    if obj["format"] != VERSION:
        raise BackupFileError(f"contents.format must be {VERSION}")
    contents = BackupContents(
        cluster_id=_str_field(obj, "cluster_id", "contents"),
        node_id=_str_field(obj, "node_id", "contents"),
        raft_index=_int_field(obj, "raft_index", "contents"),
        raft_term=_int_field(obj, "raft_term", "contents"),
        store_index=_int_field(obj, "store_index", "contents"),
        created_at=_float_field(obj, "created_at", "contents"),
        raft_secret=_bytes_field(obj, "raft_secret", "contents", exact=32),
        store=_bytes_field(obj, "store", "contents", exact=None))
    if (contents.cluster_id, contents.raft_index, contents.store_index) != \
            (header.cluster_id, header.raft_index, header.store_index):
        raise BackupFileError("the header and the contents disagree")
    return contents


# ---- strict little decoders -------------------------------------------------------------------
def _json_object(data: bytes, what: str, limit: int = MAX_HEADER) -> dict:
    if len(data) > limit:
        raise BackupFileError(f"the {what} is too large")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BackupFileError(f"the {what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise BackupFileError(f"the {what} must be a JSON object")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _exact_keys(obj: dict, keys: set[str], where: str) -> None:
    missing, unknown = keys - obj.keys(), obj.keys() - keys
    if missing:
        raise BackupFileError(f"{where} lacks {', '.join(sorted(missing))}")
    if unknown:
        raise BackupFileError(f"{where} has unknown fields: {', '.join(sorted(map(str, unknown)))[:200]}")


def _str_field(obj: dict, name: str, where: str, max_len: int = 128) -> str:
    value = obj[name]
    if not isinstance(value, str) or not value or len(value) > max_len \
            or not value.isprintable():
        raise BackupFileError(f"{where}.{name} must be a printable string of 1 to {max_len} "
                              "characters")
    return value


def _int_field(obj: dict, name: str, where: str) -> int:
    value = obj[name]
    if type(value) is not int or not 0 <= value < 1 << 63:
        raise BackupFileError(f"{where}.{name} must be an integer from 0 to 2^63-1")
    return value


def _float_field(obj: dict, name: str, where: str) -> float:
    value = obj[name]
    if type(value) not in (int, float) or not 0 <= value < 1e11:
        raise BackupFileError(f"{where}.{name} must be a timestamp")
    return float(value)


def _bytes_field(obj: dict, name: str, where: str, *, exact: Optional[int]) -> bytes:
    value = obj[name]
    if not isinstance(value, str):
        raise BackupFileError(f"{where}.{name} must be base64 text")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BackupFileError(f"{where}.{name} is not valid base64") from None
    if exact is not None and len(raw) != exact:
        raise BackupFileError(f"{where}.{name} must be {exact} bytes")
    return raw


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8", "surrogatepass"))


def _hkdf(raw: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_HKDF_INFO).derive(raw)
