"""Configs on the managers: like secrets (see manager.secrets), but not secret.

A config's data may be shown by the API (base64 in JSON). Services reference configs by name;
the dispatcher hands a node only the configs its live tasks use (answer key "configs"), and the
worker mounts each one read-only at its target (default /<name>, mode 0444).
"""
from __future__ import annotations

import base64
import binascii
import posixpath
import re
from typing import Any, Iterable

from common import errors
from common.model import Config, ConfigReference, ServiceSpec, Task
from manager.secrets import validate_labels  # noqa: F401  (re-exported for api_configs)

MAX_CONFIG_SIZE = 500 * 1024
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_ID_NUM = re.compile(r"^[0-9]{1,10}$")


def _bad(field: str, message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{field}: {message}", field=field)


def validate_config_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise _bad("name", f"invalid config name {name!r}: use 1-63 letters, digits, '_', '.' or "
                   "'-', starting with a letter or digit")
    return name


def decode_config_data(value: Any) -> bytes:
    """`data` arrives base64-encoded; it must decode and stay within the size limit."""
    if not isinstance(value, str):
        raise _bad("data", "must be the config's bytes, base64-encoded")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _bad("data", "is not valid base64") from None
    if not data:
        raise _bad("data", "a config cannot be empty")
    if len(data) > MAX_CONFIG_SIZE:
        raise _bad("data", f"config is {len(data)} bytes; the limit is {MAX_CONFIG_SIZE} bytes "
                   "(500 KB)")
    return data


def config_view(config: Config) -> dict:
    """What the API shows of a config: its metadata and (configs are not secret) its data."""
    return {"id": config.id,
            "meta": {"version": config.meta.version, "created_at": config.meta.created_at,
                     "updated_at": config.meta.updated_at},
            "spec": {"name": config.spec.name, "labels": dict(config.spec.labels),
                     "data": base64.b64encode(config.spec.data).decode("ascii")}}


def _target(ref: ConfigReference) -> str:
    target = ref.target or ref.config_name
    if not target.startswith("/"):
        target = f"/{target}"
    return target


def resolve_configs(manager, spec: ServiceSpec) -> ServiceSpec:
    """Check `task_template.container.configs`, resolve names to ids and fill the defaults
    (target /<name>, uid/gid "0", mode 0444). Changes `spec` in place."""
    refs = spec.task_template.container.configs
    if not isinstance(refs, list):
        raise _bad("task_template.container.configs", "must be a list of config references")
    secret_targets = {r.target for r in spec.task_template.container.secrets}
    targets: dict[str, int] = {}
    for i, ref in enumerate(refs):
        where = f"task_template.container.configs[{i}]"
        if not isinstance(ref, ConfigReference):
            raise _bad(where, "must be an object {config_name, target, uid, gid, mode}")
        name = ref.config_name or ""
        config = None
        if name:
            config = manager.store.by_name("configs", name)
        elif ref.config_id:
            config = manager.store.get("configs", ref.config_id)
            if config is None:
                raise errors.NotFound(f"{where}.config_id: config {ref.config_id!r} not found",
                                      field=f"{where}.config_id")
        else:
            raise _bad(f"{where}.config_name", "names no config")
        if config is None:
            raise errors.NotFound(f"config {name!r} not found: create it with "
                                  f"'shoal config create {name} FILE'", field=f"{where}.config_name")
        if ref.config_id and ref.config_id != config.id and name:
            raise _bad(f"{where}.config_id", f"{ref.config_id!r} is not the id of config {name!r}")
        ref.config_id, ref.config_name = config.id, config.spec.name
        if not isinstance(ref.target, str):
            raise _bad(f"{where}.target", "must be a path")
        target = _target(ref)
        norm = posixpath.normpath(target)
        if norm != target or ".." in target.split("/") or target == "/":
            raise _bad(f"{where}.target", f"{target!r} must be a plain file path in the container")
        if target in targets:
            raise _bad(f"{where}.target", f"{target!r} is also the target of configs[{targets[target]}]")
        if target in secret_targets:
            raise _bad(f"{where}.target", f"{target!r} is also the target of a secret")
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


def services_using(store, config_id: str) -> list[str]:
    """Services whose spec, or whose previous spec (what a rollback restores), uses the config."""
    def uses(spec) -> bool:
        return spec is not None and any(r.config_id == config_id
                                        for r in spec.task_template.container.configs)
    return sorted(s.spec.name for s in store.list("services")
                  if uses(s.spec) or uses(s.previous_spec))


def configs_for_tasks(store, tasks: Iterable[Task]) -> list[dict]:
    """The configs (id, name, data base64) that the live tasks among `tasks` use."""
    wanted: dict[str, None] = {}
    for t in tasks:
        if t.terminal or not t.desired_up:
            continue
        for ref in t.spec.container.configs:
            wanted.setdefault(ref.config_id, None)
    out = []
    for cid in wanted:
        config = store.get("configs", cid)
        if config is None:
            continue  # removed meanwhile: the task fails to start, naming the missing config
        out.append({"id": config.id, "name": config.spec.name,
                    "data": base64.b64encode(config.spec.data).decode("ascii")})
    return out
