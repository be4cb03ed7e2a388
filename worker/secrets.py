"""Secrets on a worker: one fresh tmpfs per task, never the disk.

The agent keeps the secrets its assignments carry in memory only (`SecretCache`). When a task
starts, `SecretMounts.prepare` mounts a small tmpfs (mode 0700) at
``/run/shoal-secrets/<hash of the data root>/<task id>`` (under /run, not under the data root on
disk), writes each referenced secret there with the reference's uid, gid and mode, and returns
the read-only bind mounts (host file -> target in the container). `cleanup(task_id)` unmounts the
tmpfs and removes the directory once the task's container ended or was removed.
Nothing here logs a secret's bytes.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Iterable

from common import errors, linux
from common.model import Task

log = logging.getLogger("shoal.secrets")

RUN_ROOT = Path("/run/shoal-secrets")
_TASK_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}\Z")


def run_dir_for(data_root: Path | str) -> Path:
    digest = hashlib.sha256(str(Path(data_root).resolve()).encode()).hexdigest()[:16]
    return RUN_ROOT / digest


def _mount_tmpfs(path: Path, size: int) -> None:
    try:
        linux.mount("tmpfs", path, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                    f"mode=0700,size={size},nr_inodes=1024")
    except OSError as exc:
        raise errors.FailedPrecondition(f"cannot mount a tmpfs for secrets at {path}: "
                                        f"{os.strerror(exc.errno)}") from None


def _umount(path: Path) -> None:
    try:
        linux.umount(path, linux.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):  # not a mount point; gone
            raise


def _is_mount(path: Path) -> bool:
    try:
        return linux.is_mountpoint(path)
    except OSError:  # cleanup never raises, not even without /proc
        return False


class SecretCache:
    """The secrets the managers handed this node: id -> (name, bytes). Memory only."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[str, bytes]] = {}

    def __repr__(self) -> str:  # never the data, even by accident
        return f"SecretCache({len(self._data)} secrets)"

    def update(self, items: Iterable[dict], full: bool) -> None:
        fresh: dict[str, tuple[str, bytes]] = {}
        for item in items or ():
            try:
                fresh[item["id"]] = (item.get("name", ""), base64.b64decode(item["data"]))
            except (KeyError, TypeError, ValueError):
                log.warning("ignored a malformed secret in the assignments")
        if full:
            self._data = fresh
        else:
            self._data.update(fresh)

    def retain(self, ids: set[str]) -> None:
        for sid in [s for s in self._data if s not in ids]:
            del self._data[sid]

    def get(self, secret_id: str) -> tuple[str, bytes] | None:
        return self._data.get(secret_id)

    def ids(self) -> set[str]:
        return set(self._data)


class SecretMounts:
    def __init__(self, data_root: Path | str, run_root: Path | None = None) -> None:
        self.root = Path(run_root) if run_root is not None else run_dir_for(data_root)

    def _dir(self, task_id: str) -> Path:
        if not _TASK_ID.match(task_id):
            raise errors.InvalidArgument(f"bad task id {task_id!r}")
        return self.root / task_id

    def prepare(self, task: Task, cache: SecretCache) -> list[tuple[str, str, bool]]:
        refs = task.spec.container.secrets
        if not refs:
            return []
        found = []
        for ref in refs:
            item = cache.get(ref.secret_id)
            if item is None:
                raise errors.FailedPrecondition(
                    f"secret {ref.secret_name or ref.secret_id!r} was not delivered to this node "
                    "(removed, or not yet known)")
            found.append((ref, item[1]))
        self.cleanup(task.id)  # a leftover from an earlier attempt
        path = self._dir(task.id)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (self.root.parent, self.root):
            os.chmod(d, 0o700)  # whatever the umask was when they were made
        path.mkdir(mode=0o700)
        size = sum(len(d) for _, d in found) + 4096 * (len(found) + 2)
        size = (size + 4095) // 4096 * 4096
        try:
            _mount_tmpfs(path, size)
            binds = []
            for i, (ref, data) in enumerate(found):
                host = path / str(i)
                fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fchown(fd, int(ref.uid or 0), int(ref.gid or 0))
                    os.fchmod(fd, ref.mode & 0o777)
                finally:
                    os.close(fd)
                target = ref.target or f"/run/secrets/{ref.secret_name}"
                binds.append((str(host), target, True))
            return binds
        except BaseException:
            self.cleanup(task.id)
            raise

    def cleanup(self, task_id: str) -> None:
        """Unmount the task's tmpfs and remove its directory. Idempotent, never raises."""
        try:
            path = self._dir(task_id)
        except errors.ShoalError:
            return
        if not path.exists():
            return
        try:
            for _ in range(3):  # stacked mounts after a crash, if any
                if not _is_mount(path):
                    break
                _umount(path)
            path.rmdir()
        except OSError as exc:
            log.warning("cannot remove the secrets tmpfs of task %s: %s", task_id, exc)
            if _is_mount(path):
                return
            shutil.rmtree(path, ignore_errors=True)

    def tasks(self) -> list[str]:
        try:
            return [p.name for p in self.root.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return []

    def cleanup_except(self, keep: set[str]) -> None:
        for tid in self.tasks():
            if tid not in keep:
                self.cleanup(tid)

    def cleanup_all(self) -> None:
        self.cleanup_except(set())
        try:
            self.root.rmdir()
        except OSError:
            pass
