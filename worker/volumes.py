"""Node-local named volumes, as Docker's `local` driver: `shoal volume ...` and the named volumes
of the tasks this node runs.

Under the volumes directory (the executor's `volumes/`):

    <name>/opts.json    driver, driver options, labels, created_at (0600; never seen by a container)
    <name>/_data/       what a container mounts: a plain directory, or the mount point of the
                        volume's own mount (tmpfs, a bind of a host directory, a device)
    .layout.json        the names of the volumes made by shoal before this store (see below)
    .trash-*            a volume being deleted (renamed first, so nobody sees it half-gone)
    .creating-*         a volume being made (renamed into place once its opts.json is written)

Volumes made before this store (older shoal made a bare `<name>/` and mounted it whole) keep
working as they are, with their data in `<name>/` itself: their containers' bundles bind that
directory, and a container restarted in place reuses its bundle, so moving the data into `_data`
would hide it from them. Such a volume is *legacy* and is told apart by its name being listed in
`.layout.json`, never by what it holds: a legacy volume's directory is the container's, which
may have written an `opts.json` there, and trusting it would let a container choose a mount
(`device=/`) the next time the volume is mounted. The list is made once, when a store first opens
the directory (everything there then was made by older code); a bare directory that appears
later without an opts.json (the old mkdir of worker/executor/ocispec.py, until it calls
`ensure`) joins the list when the store first sees it.

Driver options (Docker's local driver, `-o type=.. -o device=.. -o o=..`):
    type=tmpfs [o=size=64m,uid=1000,mode=0750]     a tmpfs (device defaults to "tmpfs")
    type=none o=bind device=/abs/host/dir          a bind of an existing host directory
    type=X device=Y [o=Z]                          any mount(2), e.g. type=ext4 device=/dev/vdb1
A volume with options is mounted on `_data` when it is created and unmounted when it is removed;
mounts do not survive a reboot, so `ensure` (a task starting) mounts it again when it is not.
Mount flags in `o` (ro, nosuid, noexec, bind, ...) become mount flags, the rest goes to the file
system as its data, as Docker does; unlike Docker, an `addr=` for NFS is not resolved: give an IP.

Every method but remove and prune is synchronous and runs on the event loop: a create, an ensure
or the checks of a remove never interleave with another, so the store needs no lock, and it keeps
no state in memory (the disk is the truth: two stores on one directory agree).
The cost: a mount(2) that blocks (a network file system whose server does not answer) holds the
loop for as long. Deleting a tree is the one long step, and it runs after the volume has been
renamed away.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol

from common import errors, linux, strict
from common.fsutil import tree_bytes, write_json
from common.model import VolumeOptions
from worker.images.trees import remove_tree

log = logging.getLogger("shoal.volumes")

DRIVER = "local"
OPTION_KEYS = ("type", "device", "o")
# Docker marks the volumes made without a name this way; `volume prune` without --all removes
# only those (Docker 23+). Kept as Docker spells it, so that tools reading Docker's labels agree.
ANONYMOUS_LABEL = "com.docker.volume.anonymous"
DATA, OPTS, LAYOUT = "_data", "opts.json", ".layout.json"

# Docker's grammar, [a-zA-Z0-9][a-zA-Z0-9_.-]+, but one character is enough: the managers accept
# one-character volume names in a service (manager/specs/services.py), and so did older nodes.
# No '/', and never '.' or '..': a name is always one entry of the volumes directory.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_FSTYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}\Z")
MAX_DEVICE_BYTES = 4095          # PATH_MAX, NUL excluded
MAX_O_BYTES = 4000               # the kernel copies one page of mount data
MAX_LABEL_KEY_BYTES = 256
MAX_LABEL_VALUE_BYTES = 4096

# <sys/mount.h>
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_SYNCHRONOUS, MS_REMOUNT, MS_DIRSYNC = 16, 32, 128
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 1024, 2048, 4096, 16384
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24

# The words of `o` that are mount flags (as Docker's mount package reads them): word -> (clear?,
# flag). Any other word goes to the file system as data.
_FLAG_WORDS: dict[str, tuple[bool, int]] = {
    "defaults": (False, 0), "ro": (False, MS_RDONLY), "rw": (True, MS_RDONLY),
    "suid": (True, MS_NOSUID), "nosuid": (False, MS_NOSUID), "dev": (True, MS_NODEV),
    "nodev": (False, MS_NODEV), "exec": (True, MS_NOEXEC), "noexec": (False, MS_NOEXEC),
    "sync": (False, MS_SYNCHRONOUS), "async": (True, MS_SYNCHRONOUS),
    "dirsync": (False, MS_DIRSYNC), "atime": (True, MS_NOATIME), "noatime": (False, MS_NOATIME),
    "diratime": (True, MS_NODIRATIME), "nodiratime": (False, MS_NODIRATIME),
    "relatime": (False, MS_RELATIME), "norelatime": (True, MS_RELATIME),
    "strictatime": (False, MS_STRICTATIME), "nostrictatime": (True, MS_STRICTATIME),
    "bind": (False, MS_BIND), "rbind": (False, MS_BIND | MS_REC),
}

Users = Callable[[str], list[str]]


# ---- the volume and its mount -----------------------------------------------------------------
@dataclass
class Volume:
    name: str
    path: Path                       # <volumes dir>/<name>
    mountpoint: Path                 # what a container mounts: path/_data (legacy: path)
    driver: str = DRIVER
    options: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    legacy: bool = False

    @property
    def anonymous(self) -> bool:
        return ANONYMOUS_LABEL in self.labels

    def view(self) -> dict:
        """As `docker volume inspect` shows one."""
        return {"CreatedAt": self.created_at, "Driver": self.driver, "Labels": dict(self.labels),
                "Mountpoint": str(self.mountpoint), "Name": self.name,
                "Options": dict(self.options), "Scope": "local"}


@dataclass(frozen=True)
class MountPlan:
    """How a volume's options become mount(2) calls."""
    fstype: str
    device: str
    flags: int                        # for the mount itself
    data: str                         # the words of `o` that are not flags
    bind: bool = False
    remount_flags: int = 0            # a bind ignores flags: they take a second, remount call

    def describe(self) -> str:
        return f"type={self.fstype} device={self.device}" + (f" o={self.data}" if self.data else "")


def _bad(field_path: str, message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(message, field=field_path)


def check_name(name: str, what: str = "volume name") -> str:
    strict.string(name, "name")
    if not NAME_RE.match(name):
        raise _bad("name", f"invalid {what} {name!r}: letters, digits, '_', '.' and '-' only, "
                           "starting with a letter or digit, at most 128 characters")
    return name


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        strict.string(key, "labels", MAX_LABEL_KEY_BYTES)
        strict.string(value, f"labels.{key}", MAX_LABEL_VALUE_BYTES)
        if not key.strip() or "=" in key:
            raise _bad("labels", f"invalid label key {key!r}: it must not be empty nor hold '=' "
                                 "(--label KEY=VALUE)")
    return dict(labels)


def parse_options(opts: dict[str, str], volumes_dir: Path) -> Optional[MountPlan]:
    """The local driver's options checked, as a mount plan (None: a plain directory)."""
    for key, value in opts.items():
        if key not in OPTION_KEYS:
            raise _bad(f"driver_opts.{key}", f"invalid volume option {key!r}: the local driver "
                       f"takes {', '.join(OPTION_KEYS)} (e.g. -o type=tmpfs -o o=size=64m)")
        strict.string(value, f"driver_opts.{key}",
                      MAX_O_BYTES if key == "o" else MAX_DEVICE_BYTES)
        if key != "o" and not value:
            raise _bad(f"driver_opts.{key}", f"volume option {key} must not be empty")
    if not opts:
        return None
    fstype, device, o = opts.get("type", ""), opts.get("device", ""), opts.get("o", "")
    if not fstype:
        raise _bad("driver_opts.type", "volume options device and o need type too (e.g. "
                   "-o type=tmpfs, or -o type=none -o o=bind -o device=/host/dir)")
    if not _FSTYPE_RE.match(fstype):
        raise _bad("driver_opts.type", f"invalid file system type {fstype!r} (e.g. tmpfs, "
                   "none, ext4, nfs)")
    bind_flags, flags, data = 0, 0, []
    for word in (w for w in o.split(",") if w):
        flag = _FLAG_WORDS.get(word)
        if flag is None:
            data.append(word)
            continue
        clear, bits = flag
        if bits & MS_BIND:
            bind_flags |= bits
        elif clear:
            flags &= ~bits
        else:
            flags |= bits
    if bind_flags:
        if data:
            raise _bad("driver_opts.o", f"o={o!r}: a bind takes mount flags only (ro, nosuid, "
                       f"noexec, ...), not {data[0]!r}")
        _check_bind_device(device, volumes_dir)
        return MountPlan(fstype=fstype, device=device, flags=bind_flags, data=",".join(data),
                         bind=True, remount_flags=flags)
    if fstype == "none":
        raise _bad("driver_opts.o", "type=none mounts nothing by itself: a bind of a host "
                   "directory is -o type=none -o o=bind -o device=/host/dir")
    if not device:
        if fstype != "tmpfs":
            raise _bad("driver_opts.device", f"type={fstype} needs device (e.g. -o "
                       "device=/dev/vdb1); only tmpfs goes without one")
        device = "tmpfs"
    return MountPlan(fstype=fstype, device=device, flags=flags, data=",".join(data))


def _check_bind_device(device: str, volumes_dir: Path) -> None:
    if not device.startswith("/") or os.path.normpath(device) != device or device.startswith("//"):
        raise _bad("driver_opts.device", f"a bind needs device=/absolute/host/dir, plain (no "
                   f"'.', '..' or '//'), got {device!r}")
    real = os.path.realpath(device)
    if not os.path.isdir(real):
        raise _bad("driver_opts.device", f"bind device {device} is not an existing directory "
                   "on this node")
    root = str(volumes_dir)
    # The volumes directory holds every volume's opts.json: a container given it could choose
    # what another volume mounts.
    if real == root or real.startswith(root + "/") or root.startswith(real.rstrip("/") + "/"):
        raise _bad("driver_opts.device", f"bind device {device} would expose the volumes "
                   f"directory {root}: bind a directory outside it")


def _mount(name: str, plan: MountPlan, target: Path) -> None:
    try:
        if plan.bind:
            linux.mount(plan.device, target, None, plan.flags)
            if plan.remount_flags:
                try:
                    linux.mount("", target, None, MS_REMOUNT | MS_BIND | plan.remount_flags)
                except OSError:
                    _unmount_all(target)
                    raise
        else:
            linux.mount(plan.device, target, plan.fstype, plan.flags, plan.data or None)
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        hint = {errno.ENODEV: "this kernel has no such file system type",
                errno.ENOENT: "the device does not exist",
                errno.ENOTBLK: "the device is not a block device",
                errno.EINVAL: "the kernel refused the options (check o=)"}.get(exc.errno or 0, "")
        raise errors.FailedPrecondition(
            f"volume {name!r}: cannot mount {plan.describe()}: {code} "
            f"({os.strerror(exc.errno or 0)}){'; ' + hint if hint else ''}") from None


def _mounts_under(path: Path) -> list[str]:
    base = str(path)
    return [m.mount_point for m in linux.mountinfo()
            if m.mount_point == base or m.mount_point.startswith(base + "/")]


def _unmount_all(path: Path) -> list[str]:
    """Unmount everything at and under `path`; what is still mounted there afterwards."""
    for _ in range(10):  # stacked mounts, if any
        points = _mounts_under(path)
        if not points:
            return []
        for point in sorted(points, key=lambda p: p.count("/"), reverse=True):
            try:
                linux.umount(point)
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    with contextlib.suppress(OSError):
                        linux.umount(point, linux.MNT_DETACH)
    return _mounts_under(path)


# ---- filters ------------------------------------------------------------------------------------
def _truth(key: str, value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise _bad("filters", f"filter {key}={value!r}: use {key}=true or {key}=false")


def _label_match(labels: dict[str, str], spec: str) -> bool:
    key, sep, value = spec.partition("=")
    return key in labels and (not sep or labels[key] == value)


def check_filters(filters: dict[str, list[str]], allowed: Iterable[str]) -> dict[str, list[str]]:
    allowed = tuple(allowed)
    for key, values in filters.items():
        if key not in allowed:
            raise _bad("filters", f"invalid filter {key!r}: the filters here are "
                                  f"{', '.join(allowed)}")
        for value in values:
            strict.string(value, f"filters.{key}")
            if key == "dangling":
                _truth(key, value)
            if key.startswith("label") and not value.partition("=")[0]:
                raise _bad("filters", f"filter {key}={value!r}: give a label key "
                                      f"({key}=KEY or {key}=KEY=VALUE)")
    dangling = {_truth("dangling", v) for v in filters.get("dangling", [])}
    if len(dangling) > 1:
        raise _bad("filters", "filters dangling=true and dangling=false exclude each other")
    return filters


# ---- reading the executor's container records ---------------------------------------------------
class ContainerRecords(Protocol):
    """What `containers_using` reads of worker.executor.Executor (read only)."""
    def list(self) -> list[Any]: ...
    def meta(self, cid: str) -> dict: ...


def containers_using(executor: ContainerRecords) -> Users:
    """`users(name)`: the containers of this node (any state: a stopped one may start again)
    whose config mounts the named volume, by name."""
    def users(name: str) -> list[str]:
        found = []
        for c in executor.list():
            try:
                mounts = (executor.meta(c.id).get("config") or {}).get("mounts") or []
            except errors.NotFound:  # removed meanwhile
                continue
            for m in mounts:
                get = m.get if isinstance(m, dict) else (lambda k, m=m: getattr(m, k, None))
                if get("type") == "volume" and get("source") == name:
                    labels = getattr(c, "labels", None) or {}
                    found.append(labels.get("shoal.task.name") or getattr(c, "name", "")
                                 or c.id[:12])
                    break
        return sorted(found)
    return users


# ---- the store ------------------------------------------------------------------------------------
class VolumeStore:
    def __init__(self, root: Path, *, users: Users) -> None:
        """`users(name)` names the containers that mount a volume (containers_using(executor));
        required, so that no store can remove a volume in use for want of being told."""
        Path(root).mkdir(parents=True, exist_ok=True)
        # mountinfo names mount points by their real path
        self.root = Path(os.path.realpath(root))
        self._users = users
        self._legacy_names()
        self._clean_leftovers()

    # ---- layout -----------------------------------------------------------------------------
    def _legacy_names(self) -> set[str]:
        """The legacy list as it is on disk now. Read every time (it is small): two stores on
        one directory (the daemon's and the executor's) must never disagree on it."""
        path = self.root / LAYOUT
        try:
            return {n for n in json.loads(path.read_bytes())["legacy"] if isinstance(n, str)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s is unreadable: every volume directory is taken as legacy", path)
        # First open (or the list was lost): whatever is here was made by older code. Taking a
        # volume of this store for legacy only shows its opts.json and _data to its containers;
        # the other way round would trust an opts.json a container wrote.
        legacy = {e.name for e in os.scandir(self.root)
                  if NAME_RE.match(e.name) and e.is_dir(follow_symlinks=False)}
        self._save_layout(legacy)
        return legacy

    def _save_layout(self, legacy: set[str]) -> None:
        write_json(self.root / LAYOUT, {"version": 2, "legacy": sorted(legacy)}, private=True)

    def _clean_leftovers(self) -> None:
        """A create or a removal that a crash interrupted."""
        for entry in os.scandir(self.root):
            if entry.name.startswith((".creating-", ".trash-")) and \
                    entry.is_dir(follow_symlinks=False):
                path = Path(entry.path)
                if _unmount_all(path):
                    log.warning("volumes: %s is still mounted; left in place", path)
                    continue
                shutil.rmtree(path, ignore_errors=True)

    # ---- queries ----------------------------------------------------------------------------
    def _load(self, name: str, lenient: bool = False) -> Optional[Volume]:
        """The volume of that name, None if there is none. The name is checked by the caller.
        `lenient`: one whose opts.json is unreadable still comes back (for its removal)."""
        path = self.root / name
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))
        if name not in self._legacy_names():
            try:
                raw = (path / OPTS).read_bytes()
            except FileNotFoundError:
                # a bare directory made by older code
                self._save_layout(self._legacy_names() | {name})
            except OSError as exc:
                if lenient:
                    return Volume(name=name, path=path, mountpoint=path / DATA, created_at=created)
                raise errors.FailedPrecondition(
                    f"volume {name!r}: cannot read {path / OPTS}: {exc.strerror}") from None
            else:
                try:
                    meta = json.loads(raw)
                    return Volume(name=name, path=path, mountpoint=path / DATA,
                                  driver=meta["driver"], options=dict(meta["options"]),
                                  labels=dict(meta["labels"]), created_at=meta["created_at"])
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    if lenient:
                        return Volume(name=name, path=path, mountpoint=path / DATA,
                                      created_at=created)
                    raise errors.FailedPrecondition(
                        f"volume {name!r}: its {path / OPTS} is unreadable ({exc!r}); restore "
                        f"the file, or remove the volume (shoal volume rm {name})") from None
        return Volume(name=name, path=path, mountpoint=path, created_at=created, legacy=True)

    def get(self, name: str, lenient: bool = False) -> Volume:
        volume = self._load(name, lenient) if isinstance(name, str) and NAME_RE.match(name) \
            else None
        if volume is None:
            raise errors.NotFound(f"no such volume: {name!r} (see 'shoal volume ls')")
        return volume

    def list(self, filters: Optional[dict[str, list[str]]] = None) -> list[Volume]:
        filters = check_filters(filters or {}, ("name", "label", "dangling", "driver"))
        out = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not NAME_RE.match(entry.name):
                continue
            try:
                volume = self._load(entry.name)
            except errors.ShoalError as exc:
                log.warning("%s", exc.message)
                continue
            if volume is not None and self._matches(volume, filters):
                out.append(volume)
        return out

    def _matches(self, v: Volume, filters: dict[str, list[str]]) -> bool:
        if "name" in filters and not any(n in v.name for n in filters["name"]):
            return False
        if "driver" in filters and v.driver not in filters["driver"]:
            return False
        if not all(_label_match(v.labels, spec) for spec in filters.get("label", [])):
            return False
        if any(_label_match(v.labels, spec) for spec in filters.get("label!", [])):
            return False
        if filters.get("dangling"):
            dangling = _truth("dangling", filters["dangling"][0])
            if dangling == bool(self.users(v.name)):
                return False
        return True

    def users(self, name: str) -> list[str]:
        """The containers of this node that mount the volume (what keeps it from removal)."""
        return self._users(name)

    def in_use(self, name: str) -> bool:
        return bool(self.users(name))

    # ---- create / ensure ----------------------------------------------------------------------
    def create(self, name: str = "", driver: str = DRIVER,
               driver_opts: Optional[dict[str, str]] = None,
               labels: Optional[dict[str, str]] = None) -> Volume:
        """A new volume; without a name an anonymous one with a random 64-hex name (as Docker).
        An existing volume of that name is returned as it is (as Docker: its options win)."""
        labels = check_labels(labels or {})
        if not name:
            name = secrets.token_hex(32)
            labels[ANONYMOUS_LABEL] = ""
        check_name(name)
        strict.string(driver, "driver")
        if (driver or DRIVER) != DRIVER:
            raise _bad("driver", f"volume driver {driver!r} is not available on this node: "
                                 f"only {DRIVER!r} (--driver {DRIVER})")
        opts = dict(driver_opts or {})
        plan = parse_options(opts, self.root)
        existing = self._load(name)
        if existing is not None:
            return existing
        legacy = self._legacy_names()
        if name in legacy:  # its directory was deleted behind the store's back: a stale entry
            self._save_layout(legacy - {name})
        # Made aside and renamed into place whole: no reader ever sees a volume without its
        # opts.json (which would make it a legacy one).
        tmp = self.root / f".creating-{secrets.token_hex(6)}"
        tmp.mkdir(mode=0o701)
        try:
            (tmp / DATA).mkdir(mode=0o755)
            write_json(tmp / OPTS, {"driver": DRIVER, "options": opts, "labels": labels,
                                    "created_at": _now()}, private=True)
            try:
                os.rename(tmp, self.root / name)
            except OSError as exc:  # something that is no volume holds the name
                raise errors.Conflict(f"cannot create volume {name!r}: {self.root / name} exists "
                                      f"and is not a volume directory ({exc.strerror})") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        volume = self._load(name)
        assert volume is not None
        if plan is not None:
            try:
                _mount(name, plan, volume.mountpoint)
            except BaseException:
                self._discard(volume)
                raise
        log.info("volume %s created (%s)", name, plan.describe() if plan else "a directory")
        return volume

    def ensure(self, name: str, options: VolumeOptions | dict | None = None) -> Path:
        """The directory a container mounts for the named volume: made with `options` if there
        is no such volume yet (a task's mount carries them), else the volume as it is, mounted
        again if its mount is gone (a reboot). `options` may be the plain form a container's
        saved config holds."""
        check_name(name)
        volume = self._load(name)
        if volume is None:
            if isinstance(options, dict):
                options = strict.decode(VolumeOptions, options, "volume_options")
            options = options or VolumeOptions()
            volume = self.create(name, options.driver or DRIVER, options.driver_opts,
                                 options.labels)
        else:
            self._mount_if_needed(volume)
        return volume.mountpoint

    def _mount_if_needed(self, volume: Volume) -> None:
        if volume.legacy or not volume.options:
            return
        if not linux.is_mountpoint(volume.mountpoint):
            plan = parse_options(volume.options, self.root)
            if plan is not None:
                _mount(volume.name, plan, volume.mountpoint)

    # ---- remove / prune ----------------------------------------------------------------------
    async def remove(self, name: str, force: bool = False) -> bool:
        """Remove a volume no container uses. `force` only forgives a volume that does not
        exist (as `docker volume rm -f`): a volume in use is never removed. True if removed."""
        try:
            volume = self.get(name, lenient=True)
        except errors.NotFound:
            if force:
                return False
            raise
        users = self.users(name)
        if users:
            raise errors.FailedPrecondition(
                f"volume {name!r} is in use by container{'s' if len(users) > 1 else ''} "
                f"{', '.join(users)}: remove {'them' if len(users) > 1 else 'it'} first "
                "(shoal container rm, or remove its service)")
        trash = self._discard_start(volume)
        await remove_tree(trash)
        log.info("volume %s removed", name)
        return True

    def _discard_start(self, volume: Volume) -> Path:
        """Unmount the volume and rename it out of the way (synchronous: nothing interleaves);
        the caller deletes the returned tree."""
        left = _unmount_all(volume.path)
        if left:
            # Deleting now would delete what is mounted there (a bind's host directory).
            raise errors.Unavailable(f"volume {volume.name!r}: cannot unmount {', '.join(left)}; "
                                     "nothing was deleted")
        trash = self.root / f".trash-{secrets.token_hex(6)}"
        os.rename(volume.path, trash)
        legacy = self._legacy_names()
        if volume.name in legacy:
            self._save_layout(legacy - {volume.name})
        return trash

    def _discard(self, volume: Volume) -> None:
        """Undo a create (its mount failed): nothing was written in it."""
        trash = self._discard_start(volume)
        shutil.rmtree(trash, ignore_errors=True)

    async def prune(self, all: bool = False,
                    filters: Optional[dict[str, list[str]]] = None) -> tuple[list[str], int]:
        """Remove the volumes no container uses: the anonymous ones, or every one with `all`
        (Docker 23+). Returns the names removed and the bytes freed (a bind's host directory
        is not freed, so it does not count)."""
        filters = check_filters(filters or {}, ("label", "label!"))
        removed, freed = [], 0
        for volume in self.list():
            if (not all and not volume.anonymous) or not self._matches(volume, filters) \
                    or self.users(volume.name):
                continue
            plan = None if volume.legacy else parse_options(volume.options, self.root)
            size = await tree_bytes(volume.mountpoint) if plan is None or not plan.bind else 0
            try:
                if await self.remove(volume.name):
                    removed.append(volume.name)
                    freed += size
            except errors.ShoalError as exc:  # taken into use meanwhile, or stuck: keep going
                log.warning("volume prune: %s", exc.message)
        return removed, freed


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
