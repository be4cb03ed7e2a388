"""Registry credentials as Docker keeps them: the `auths` of ~/.docker/config.json.

shoal reads what `docker login` wrote there and writes the same shape (0600), so one login
serves both tools. Keys other than the entry being changed are kept as they were. Credential
helpers (`credsStore`, `credHelpers`) are refused by name rather than silently ignored: the
password would not be where shoal looks.

The file is the user's, but a damaged or hand-edited one must still give a clear error naming
the key, never a traceback; and a password is never part of a repr, a log line or an error.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from common import errors

# Docker Hub's entry has a historical URL for a key; shoal has no default registry, but it
# reads and writes that entry under the same key docker uses, so a shared file stays docker's.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_NAMES = {"docker.io", "index.docker.io", "registry-1.docker.io", DOCKER_HUB_KEY}
MAX_CONFIG_BYTES = 4 << 20


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:  # the dataclass repr already hides it; say so plainly
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def plain(self) -> dict:
        return {"username": self.username, "password": self.password}


def credentials_from_plain(value: Any, where: str) -> Optional[Credentials]:
    """Credentials from an API body's `{"username": ..., "password": ...}` (or null)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"username", "password"}:
        raise errors.InvalidArgument(f"{where}: an object with username and password",
                                     field=where)
    user, password = value.get("username"), value.get("password")
    if not isinstance(user, str) or not isinstance(password, str) or not user or \
            len(user) > 1024 or len(password) > 64 << 10 or ":" in user:
        raise errors.InvalidArgument(f"{where}: username (no colon) and password must be "
                                     "non-empty strings", field=where)
    return Credentials(user, password)


def config_dir() -> Path:
    """Where docker keeps its config: $DOCKER_CONFIG, else ~/.docker."""
    env = os.environ.get("DOCKER_CONFIG")
    return Path(env) if env else Path.home() / ".docker"


def registry_key(registry: str) -> str:
    """The `auths` key for a registry as the user typed it (a host[:port], maybe a URL)."""
    text = registry.strip()
    if text in _HUB_NAMES:
        return DOCKER_HUB_KEY
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    text = text.split("/", 1)[0]
    if not text or any(c.isspace() for c in text) or text.startswith(("-", ".")):
        raise errors.InvalidArgument(f"{registry!r} is not a registry address: give HOST[:PORT]",
                                     field="registry")
    return text


class DockerConfig:
    """One config.json: read strictly, written back whole and atomically."""

    def __init__(self, directory: Optional[Path] = None) -> None:
        self.path = (directory or config_dir()) / "config.json"
        self.doc = self._read()

    def _read(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise errors.FailedPrecondition(f"cannot read {self.path}: {exc.strerror}",
                                            field="config") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise errors.InvalidArgument(f"{self.path} is larger than {MAX_CONFIG_BYTES >> 20} "
                                         "MiB: not a docker config file", field="config")
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.InvalidArgument(f"{self.path} is not valid JSON ({exc}): fix or remove "
                                         "it", field="config") from None
        if not isinstance(doc, dict):
            raise errors.InvalidArgument(f"{self.path}: the top level must be an object",
                                         field="config")
        auths = doc.get("auths", {})
        if not isinstance(auths, dict) or not all(isinstance(v, dict) for v in auths.values()):
            raise errors.InvalidArgument(f"{self.path}: \"auths\" must map registries to "
                                         "objects", field="auths")
        return doc

    def _helper_for(self, key: str) -> Optional[str]:
        helpers = self.doc.get("credHelpers")
        if isinstance(helpers, dict) and isinstance(helpers.get(key), str):
            return helpers[key]
        store = self.doc.get("credsStore")
        return store if isinstance(store, str) and store else None

    def credentials(self, registry: str) -> Optional[Credentials]:
        key = registry_key(registry)
        entry = self.doc.get("auths", {}).get(key)
        if entry is None:
            helper = self._helper_for(key)
            if helper:
                raise errors.FailedPrecondition(
                    f"{self.path} keeps the credentials of {key} in the credential helper "
                    f"docker-credential-{helper}, which shoal does not run: 'shoal login {key}' "
                    "stores them in the file instead", field="credsStore")
            return None
        where = f"{self.path}: auths[{key!r}]"
        if "auth" in entry and entry["auth"]:
            if not isinstance(entry["auth"], str):
                raise errors.InvalidArgument(f"{where}.auth must be a string", field="auth")
            try:
                text = base64.b64decode(entry["auth"], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise errors.InvalidArgument(f"{where}.auth is not base64 of USER:PASSWORD: "
                                             f"run 'shoal login {key}' again",
                                             field="auth") from None
            user, sep, password = text.partition(":")
            if not sep or not user:
                raise errors.InvalidArgument(f"{where}.auth is not base64 of USER:PASSWORD: "
                                             f"run 'shoal login {key}' again", field="auth")
            return Credentials(user, password)
        user, password = entry.get("username"), entry.get("password")
        if isinstance(user, str) and isinstance(password, str) and user:
            return Credentials(user, password)
        if entry.get("identitytoken"):
            raise errors.FailedPrecondition(f"{where} holds an identity token, which shoal does "
                                            f"not use: 'shoal login {key}' with a password",
                                            field="identitytoken")
        return None

    def store(self, registry: str, creds: Credentials) -> None:
        key = registry_key(registry)
        auths = self.doc.setdefault("auths", {})
        entry = dict(auths.get(key, {}))
        for stale in ("username", "password", "identitytoken"):
            entry.pop(stale, None)
        entry["auth"] = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        auths[key] = entry
        self._write()

    def erase(self, registry: str) -> bool:
        key = registry_key(registry)
        auths = self.doc.get("auths", {})
        if key not in auths:
            return False
        del auths[key]
        self._write()
        return True

    def _write(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(self.doc, indent="\t").encode() + b"\n"
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".config.json.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
