"""Registry credentials that come with a service (`--with-registry-auth`), on the managers.

They are stored beside the service, not in its spec, so no view of the service, no event and
no log carries them; the raft store holding them is encrypted at rest. A node gets them in its
assignment only while it runs a live task of that service, and uses them only for a pull from
the registry the service's image names.
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Optional

from common import errors
from common.imageref import parse_ref
from common.model import Meta, RegistryAuth, Task
from common.registryauth import credentials_from_plain

TABLE = "registry_auths"


def from_body(data: dict, image: str) -> Optional[RegistryAuth]:
    """The credentials a create or update body carries ("registry_auth"), for the registry of
    `image`; None when it carries none (an update then keeps the ones stored, as Docker)."""
    creds = credentials_from_plain(data.get("registry_auth"), "registry_auth")
    if creds is None:
        return None
    host = parse_ref(image).host
    if not host:
        raise errors.InvalidArgument(
            f"registry_auth: image {image!r} names no registry, so there is nothing to log in "
            "to: name the registry in the image (HOST:PORT/NAME:TAG) or deploy without "
            "--with-registry-auth", field="registry_auth")
    now = time.time()
    return RegistryAuth(id="", meta=Meta(created_at=now, updated_at=now), registry=host,
                        username=creds.username, password=creds.password)


def stage(txn: Any, store: Any, service_id: str, auth: Optional[RegistryAuth]) -> None:
    """Add to `txn` what stores `auth` for the service (nothing when auth is None)."""
    if auth is None:
        return
    auth.id = service_id
    if store.get(TABLE, service_id) is None:
        txn.create(TABLE, auth)
    else:
        txn.update(TABLE, auth, check_version=False)


def stage_removal(txn: Any, store: Any, service_id: str) -> None:
    if store.get(TABLE, service_id) is not None:
        txn.delete(TABLE, service_id)


def for_tasks(store: Any, tasks: Iterable[Task]) -> list[dict]:
    """What one assignment answer carries: the credentials of the services whose live tasks
    are among `tasks`. Terminal tasks and tasks told to stop get none."""
    out = []
    seen: set[str] = set()
    for t in tasks:
        if t.terminal or not t.desired_up or t.service_id in seen:
            continue
        seen.add(t.service_id)
        auth = store.get(TABLE, t.service_id)
        if auth is not None:
            out.append({"service_id": t.service_id, "registry": auth.registry,
                        "username": auth.username, "password": auth.password})
    return out
