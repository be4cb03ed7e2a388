"""Join tokens, in the manner of Docker's SWMTKN: SHLTKN-1-<CA digest>-<secret>.

The digest lets a joining node pin the root CA before it trusts anything a manager says; the
secret decides the role it joins with. Error messages never repeat the token: it is a credential.
"""
from __future__ import annotations

import hmac
import re
import secrets
import string
from dataclasses import dataclass, field

from common.errors import InvalidArgument
from common.pki import ca_digest

PREFIX = "SHLTKN"
VERSION = 1
SECRET_LENGTH = 25
# 25 base-36 characters hold ~129 bits, like Docker's 128-bit secret.
_SECRET_ALPHABET = string.ascii_lowercase + string.digits
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}\Z")
_SECRET_RE = re.compile(r"^[a-z0-9]{%d}\Z" % SECRET_LENGTH)

_SHAPE = f"{PREFIX}-{VERSION}-<64 hex digits>-<{SECRET_LENGTH} characters>"
_RECOPY = "copy it again from 'shoal swarm join-token worker' (or manager) on a manager"


@dataclass(frozen=True)
class JoinToken:
    version: int
    ca_digest: str
    secret: str = field(repr=False)  # keep it out of logs that print the object

    def __str__(self) -> str:
        return f"{PREFIX}-{self.version}-{self.ca_digest}-{self.secret}"


def new_token(ca_cert_pem: bytes) -> str:
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    return str(JoinToken(VERSION, ca_digest(ca_cert_pem), secret))


def _invalid(why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid join token: {why}; {_RECOPY}", field="token")


def parse_token(text: str) -> JoinToken:
    text = (text or "").strip()
    if text.startswith("SWMTKN-"):
        raise _invalid("this is a Docker swarm token, not a shoal one; "
                       f"a shoal token looks like {_SHAPE}")
    if not text.startswith(PREFIX + "-"):
        raise _invalid(f"it must start with '{PREFIX}-' and look like {_SHAPE}")
    parts = text.split("-")
    if len(parts) != 4:
        raise _invalid(f"it must have 4 parts separated by '-' and look like {_SHAPE}")
    _, version_text, digest, secret = parts
    if not version_text.isdigit() or int(version_text) != VERSION:
        raise _invalid(f"version {version_text!r} is not supported (this shoal understands "
                       f"version {VERSION}); it may come from a newer shoal")
    if len(digest) != 64:
        raise _invalid(f"the CA digest has {len(digest)} characters instead of 64; "
                       "the token was probably cut short when copied")
    if not _DIGEST_RE.match(digest):
        raise _invalid("the CA digest must be 64 lowercase hex digits (0-9, a-f)")
    if not _SECRET_RE.match(secret):
        raise _invalid(f"the secret must be {SECRET_LENGTH} lowercase letters or digits; "
                       f"it has {len(secret)} characters")
    return JoinToken(VERSION, digest, secret)


def secrets_equal(a: str, b: str) -> bool:
    # bytes, because compare_digest refuses non-ASCII str and tokens come from the wire
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def role_for_token(token: str, worker_token: str, manager_token: str) -> str | None:
    """'worker', 'manager' or None. Both comparisons always run so timing reveals nothing."""
    token = (token or "").strip()
    is_worker = secrets_equal(token, worker_token or "")
    is_manager = secrets_equal(token, manager_token or "")
    if not token:
        return None
    if is_manager and manager_token:
        return "manager"
    if is_worker and worker_token:
        return "worker"
    return None


def with_ca(token: str, ca_cert_pem: bytes) -> str:
    """The same token (same secret, so the same role) pinning another root CA: after a root
    rotation, tokens that pin the old root stop working and these replace them."""
    parsed = parse_token(token)
    return str(JoinToken(parsed.version, ca_digest(ca_cert_pem), parsed.secret))
