"""Secrets and configs on the managers: the rules the two kinds share.

Both are named, immutable blobs of up to 500 KB that services reference by name and that a node
receives only for the live tasks it runs (in its assignment answer, over mutual TLS). They differ
in a few facts, which a `DataKind` holds: whether the API may show the data, where a reference
lands by default, and which targets are off limits. manager.specs.secrets and
manager.specs.configs define the two kinds; manager.controlapi.data_objects serves both.
"""
from __future__ import annotations

import base64
import binascii
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from common import errors, strict
from common.model import ServiceSpec, Task

MAX_DATA_SIZE = 500 * 1024
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")
_ID_NUM = re.compile(r"^[0-9]{1,10}\Z")
MAX_ID = 2**32 - 2  # 2**32 - 1 means "no id" to the kernel
# Mounted by the runtime in every container: a file cannot be bound beneath them.
_KERNEL_TREES = ("/proc/", "/sys/", "/dev/")
# Directories every image has: a file bound onto one fails in the runtime, far from the cause.
SYSTEM_DIRS = frozenset({"/proc", "/sys", "/dev", "/etc", "/bin", "/sbin", "/usr", "/lib",
                         "/lib64", "/var", "/tmp", "/run", "/home", "/root", "/opt", "/srv",
                         "/mnt", "/media", "/boot"})


def _bad(field: str, message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{field}: {message}", field=field)


def validate_labels(labels: Any) -> dict[str, str]:
    if labels is None:
        return {}
    labels = strict.decode(dict[str, str], labels, "labels")
    if not all(labels):
        raise _bad("labels", "a label needs a non-empty key")
    return labels


@dataclass(frozen=True)
class DataKind:
    noun: str                    # "secret": messages, the CLI command, the reference fields
    object_type: type            # Secret / Config
    spec_type: type              # SecretSpec / ConfigSpec
    reference_type: type         # SecretReference / ConfigReference
    shows_data: bool             # may the API show the data (base64)?
    target_dir: str              # a relative target lands under it ("" for the root)
    reserved_targets: tuple[str, ...]
    # Another kind whose resolved targets this kind's targets must not repeat; the service API
    # resolves that kind first.
    shares_targets_with: Optional["DataKind"] = None

    @property
    def table(self) -> str:
        return f"{self.noun}s"

    def _refs(self, container) -> list:
        return getattr(container, self.table)

    def _ref_id(self, ref) -> str:
        return getattr(ref, f"{self.noun}_id")

    def _ref_name(self, ref) -> str:
        return getattr(ref, f"{self.noun}_name")

    # -- the object itself ------------------------------------------------------------------
    def validate_name(self, name: Any) -> str:
        if not isinstance(name, str) or not _NAME.match(name):
            raise _bad("name", f"invalid {self.noun} name {name!r}: use 1-63 letters, digits, "
                       "'_', '.' or '-', starting with a letter or digit")
        return name

    def decode_data(self, value: Any) -> bytes:
        """`data` arrives base64-encoded; it must decode and stay within the size limit."""
        if not isinstance(value, str):
            raise _bad("data", f"must be the {self.noun}'s bytes, base64-encoded")
        try:
            data = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise _bad("data", "is not valid base64") from None
        if not data:
            raise _bad("data", f"a {self.noun} cannot be empty")
        if len(data) > MAX_DATA_SIZE:
            raise _bad("data", f"{self.noun} is {len(data)} bytes; the limit is {MAX_DATA_SIZE} "
                       "bytes (500 KB)")
        return data

    def view(self, obj) -> dict:
        """What the API shows: the metadata, and the data only where the kind is not secret."""
        spec = {"name": obj.spec.name, "labels": dict(obj.spec.labels)}
        if self.shows_data:
            spec["data"] = base64.b64encode(obj.spec.data).decode("ascii")
        return {"id": obj.id,
                "meta": {"version": obj.meta.version, "created_at": obj.meta.created_at,
                         "updated_at": obj.meta.updated_at},
                "spec": spec}

    # -- services' references ---------------------------------------------------------------
    def default_target(self, name: str) -> str:
        return name if name.startswith("/") else f"{self.target_dir}/{name}"

    def resolve_refs(self, manager, spec: ServiceSpec) -> ServiceSpec:
        """Check the service's references of this kind, resolve names to ids and fill the
        defaults (target, uid/gid "0", mode 0444). Changes `spec` in place."""
        container = spec.task_template.container
        refs = self._refs(container)
        list_field = f"task_template.container.{self.table}"
        if not isinstance(refs, list):
            raise _bad(list_field, f"must be a list of {self.noun} references")
        other = self.shares_targets_with
        other_targets = {r.target for r in other._refs(container)} if other else set()
        targets: dict[str, int] = {}
        for i, ref in enumerate(refs):
            where = f"{list_field}[{i}]"
            if not isinstance(ref, self.reference_type):
                raise _bad(where, f"must be an object {{{self.noun}_name, target, uid, gid, mode}}")
            obj = self._lookup(manager, ref, where)
            setattr(ref, f"{self.noun}_id", obj.id)
            setattr(ref, f"{self.noun}_name", obj.spec.name)
            ref.target = self._check_target(ref, where, targets, i, other_targets, other)
            targets[ref.target] = i
            self._fill_owner_and_mode(ref, where)
        return spec

    def _lookup(self, manager, ref, where: str):
        name, ref_id = self._ref_name(ref) or "", self._ref_id(ref)
        obj = None
        if name:
            obj = manager.store.by_name(self.table, name)
        elif ref_id:
            obj = manager.store.get(self.table, ref_id)
            if obj is None:
                raise errors.NotFound(f"{where}.{self.noun}_id: {self.noun} {ref_id!r} not found",
                                      field=f"{where}.{self.noun}_id")
        else:
            raise _bad(f"{where}.{self.noun}_name", f"names no {self.noun}")
        if obj is None:
            raise errors.NotFound(f"{self.noun} {name!r} not found: create it with "
                                  f"'shoal {self.noun} create {name} FILE'",
                                  field=f"{where}.{self.noun}_name")
        if ref_id and ref_id != obj.id and name:
            raise _bad(f"{where}.{self.noun}_id", f"{ref_id!r} is not the id of {self.noun} {name!r}")
        return obj

    def _check_target(self, ref, where: str, targets: dict[str, int], index: int,
                      other_targets: set[str], other: Optional["DataKind"]) -> str:
        if not isinstance(ref.target, str):
            raise _bad(f"{where}.target", "must be a path")
        target = self.default_target(ref.target or self._ref_name(ref))
        if (posixpath.normpath(target) != target or ".." in target.split("/")
                or target.startswith("//") or target in self.reserved_targets):
            raise _bad(f"{where}.target", f"{target!r} must be a plain file path in the container")
        if target.startswith(_KERNEL_TREES) or target in SYSTEM_DIRS:
            raise _bad(f"{where}.target", f"{target!r} is a directory of the system or a kernel "
                       f"file system in every container: give a file path such as "
                       f"{self.default_target(self._ref_name(ref) or 'name')!r}")
        if target in targets:
            raise _bad(f"{where}.target",
                       f"{target!r} is also the target of {self.table}[{targets[target]}]")
        if target in other_targets:
            raise _bad(f"{where}.target", f"{target!r} is also the target of a {other.noun}")
        return target

    @staticmethod
    def _fill_owner_and_mode(ref, where: str) -> None:
        for attr in ("uid", "gid"):
            value = getattr(ref, attr) or "0"
            if not _ID_NUM.match(value) or int(value) > MAX_ID:
                raise _bad(f"{where}.{attr}", f"{value!r} must be a numeric id between 0 and "
                           f"{MAX_ID}")
            setattr(ref, attr, value)
        if not 0 <= ref.mode <= 0o777:
            raise _bad(f"{where}.mode", f"{ref.mode!r} must be a file mode between 0 and 0o777")

    def services_using(self, store, obj_id: str) -> list[str]:
        """Services whose spec, or whose previous spec (what a rollback restores), uses it."""
        def uses(spec) -> bool:
            return spec is not None and any(self._ref_id(r) == obj_id
                                            for r in self._refs(spec.task_template.container))
        return sorted(s.spec.name for s in store.list("services")
                      if uses(s.spec) or uses(s.previous_spec))

    # -- what a node receives ---------------------------------------------------------------
    def for_tasks(self, store, tasks: Iterable[Task]) -> list[dict]:
        """The objects (id, name, data base64) that the live tasks among `tasks` use: what one
        assignment answer carries. Terminal tasks and tasks told to stop get none."""
        wanted: dict[str, None] = {}
        for t in tasks:
            if t.terminal or not t.desired_up:
                continue
            for ref in self._refs(t.spec.container):
                wanted.setdefault(self._ref_id(ref), None)
        out = []
        for obj_id in wanted:
            obj = store.get(self.table, obj_id)
            if obj is None:
                continue  # removed meanwhile: the task fails to start, naming what is missing
            out.append({"id": obj.id, "name": obj.spec.name,
                        "data": base64.b64encode(obj.spec.data).decode("ascii")})
        return out
