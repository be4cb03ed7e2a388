"""Secrets on the managers: validation of secrets and of the services' references to them, and
what the dispatcher hands to a node (only the secrets its live tasks use).

The data never leaves the managers except in a node's assignment answer (mutual TLS), and only
for the tasks that node runs. API views of a secret carry its metadata only.
"""
from __future__ import annotations

import base64
import binascii
import posixpath
import re
from typing import Any, Iterable

from common import errors
from common.model import Secret, SecretReference, ServiceSpec, Task

MAX_SECRET_SIZE = 500 * 1024
SECRETS_DIR = "/run/secrets"
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_ID_NUM = re.compile(r"^[0-9]{1,10}$")


def _bad(field: str, message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{field}: {message}", field=field)


def validate_secret_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise _bad("name", f"invalid secret name {name!r}: use 1-63 letters, digits, '_', '.' or "
                   "'-', starting with a letter or digit")
    return name


def decode_secret_data(value: Any) -> bytes:
    """`data` arrives base64-encoded; it must decode and stay within the size limit."""
    if not isinstance(value, str):
        raise _bad("data", "must be the secret's bytes, base64-encoded")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _bad("data", "is not valid base64") from None
    if not data:
        raise _bad("data", "a secret cannot be empty")
    if len(data) > MAX_SECRET_SIZE:
        raise _bad("data", f"secret is {len(data)} bytes; the limit is {MAX_SECRET_SIZE} bytes "
                   "(500 KB)")
    return data


def validate_labels(labels: Any) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and k and isinstance(v, str)
                                               for k, v in labels.items()):
        raise _bad("labels", "must be an object of string keys and string values")
    return dict(labels)


def secret_view(secret: Secret) -> dict:
    """What the API shows of a secret: never its data."""
    return {"id": secret.id,
            "meta": {"version": secret.meta.version, "created_at": secret.meta.created_at,
                     "updated_at": secret.meta.updated_at},
            "spec": {"name": secret.spec.name, "labels": dict(secret.spec.labels)}}


def _target(ref: SecretReference) -> str:
    target = ref.target or ref.secret_name
    if not target.startswith("/"):
        target = f"{SECRETS_DIR}/{target}"
    return target


def validate_secret_refs(manager, spec: ServiceSpec) -> ServiceSpec:
    """Check `task_template.container.secrets`, resolve names to ids and fill the defaults
    (target /run/secrets/<name>, uid/gid "0", mode 0444). Changes `spec` in place."""
    refs = spec.task_template.container.secrets
    if not isinstance(refs, list):
        raise _bad("task_template.container.secrets", "must be a list of secret references")
    targets: dict[str, int] = {}
    for i, ref in enumerate(refs):
        where = f"task_template.container.secrets[{i}]"
        if not isinstance(ref, SecretReference):
            raise _bad(where, "must be an object {secret_name, target, uid, gid, mode}")
        name = ref.secret_name or ""
        secret = None
        if name:
            secret = manager.store.by_name("secrets", name)
        elif ref.secret_id:
            secret = manager.store.get("secrets", ref.secret_id)
            if secret is None:
                raise errors.NotFound(f"{where}.secret_id: secret {ref.secret_id!r} not found",
                                      field=f"{where}.secret_id")
        else:
            raise _bad(f"{where}.secret_name", "names no secret")
        if secret is None:
            raise errors.NotFound(f"secret {name!r} not found: create it with "
                                  f"'shoal secret create {name} FILE'", field=f"{where}.secret_name")
        if ref.secret_id and ref.secret_id != secret.id and name:
            raise _bad(f"{where}.secret_id", f"{ref.secret_id!r} is not the id of secret {name!r}")
        ref.secret_id, ref.secret_name = secret.id, secret.spec.name
        if not isinstance(ref.target, str):
            raise _bad(f"{where}.target", "must be a path")
        target = _target(ref)
        norm = posixpath.normpath(target)
        if norm != target or ".." in target.split("/") or target in ("/", SECRETS_DIR):
            raise _bad(f"{where}.target", f"{target!r} must be a plain file path in the container")
        if target in targets:
            raise _bad(f"{where}.target", f"{target!r} is also the target of secrets[{targets[target]}]")
        targets[target] = i
        ref.target = target
        for attr in ("uid", "gid"):
            value = getattr(ref, attr)
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            value = value or "0"
            if not isinstance(value, str) or not _ID_NUM.match(value):
                raise _bad(f"{where}.{attr}", f"{value!r} must be a numeric id")
            setattr(ref, attr, value)
        if not isinstance(ref.mode, int) or isinstance(ref.mode, bool) or not 0 <= ref.mode <= 0o777:
            raise _bad(f"{where}.mode", f"{ref.mode!r} must be a file mode between 0 and 0o777")
    return spec


# The name service_create (and service update) call.
resolve_secrets = validate_secret_refs


def services_using(store, secret_id: str) -> list[str]:
    """Services whose spec, or whose previous spec (what a rollback restores), uses the secret."""
    def uses(spec) -> bool:
        return spec is not None and any(r.secret_id == secret_id
                                        for r in spec.task_template.container.secrets)
    return sorted(s.spec.name for s in store.list("services")
                  if uses(s.spec) or uses(s.previous_spec))


def secrets_for_tasks(store, tasks: Iterable[Task]) -> list[dict]:
    """The secrets (id, name, data base64) that the live tasks among `tasks` use: what one
    assignment answer carries. Terminal tasks and tasks told to stop get none."""
    wanted: dict[str, None] = {}
    for t in tasks:
        if t.terminal or not t.desired_up:
            continue
        for ref in t.spec.container.secrets:
            wanted.setdefault(ref.secret_id, None)
    out = []
    for sid in wanted:
        secret = store.get("secrets", sid)
        if secret is None:
            continue  # removed meanwhile: the task fails to start, naming the missing secret
        out.append({"id": secret.id, "name": secret.spec.name,
                    "data": base64.b64encode(secret.spec.data).decode("ascii")})
    return out
