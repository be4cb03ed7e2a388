"""Docker's X-Registry-Auth header (what `docker service create --with-registry-auth` and the
SDKs send): URL-safe base64 of a JSON AuthConfig, read strictly into shoal's
`registry_auth` (username and password). Never echoed: an error names the header, not its
content."""
from __future__ import annotations

import base64
import binascii
import json

from aiohttp import web

from shoal.dockerapi.errors import bad_request

HEADER = "X-Registry-Auth"
_MAX = 64 << 10


def from_request(request: web.Request) -> dict:
    """{"registry_auth": {...}} for the write body, or {} without credentials."""
    raw = request.headers.get(HEADER, "").strip()
    if not raw:
        return {}
    if len(raw) > _MAX:
        raise bad_request(f"{HEADER}: larger than {_MAX >> 10} KiB")
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        doc = json.loads(text)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad_request(f"{HEADER}: not base64url of a JSON AuthConfig") from None
    if not isinstance(doc, dict):
        raise bad_request(f"{HEADER}: not base64url of a JSON AuthConfig")
    user, password = doc.get("username") or "", doc.get("password") or ""
    if not (user or password) and isinstance(doc.get("auth"), str) and doc["auth"]:
        try:
            user, _, password = base64.b64decode(doc["auth"], validate=True).decode().partition(":")
        except (binascii.Error, ValueError):  # ValueError: not ASCII, or not UTF-8 once decoded
            raise bad_request(f"{HEADER}: its auth is not base64 of USER:PASSWORD") from None
    if not isinstance(user, str) or not isinstance(password, str):
        raise bad_request(f"{HEADER}: username and password must be strings")
    if not user and not password:
        if doc.get("identitytoken") or doc.get("registrytoken"):
            raise bad_request(f"{HEADER}: shoal passes a username and password to the nodes, "
                              "not identity or registry tokens: log in with a password")
        return {}  # an empty AuthConfig: the client had no credentials for the registry
    return {"registry_auth": {"username": user, "password": password}}
