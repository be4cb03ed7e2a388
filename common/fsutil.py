"""Crash-safe file writes: temporary file, fsync, rename, fsync of the directory."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        # A full disk: the old file stays as it was, and the half-written one must not keep
        # holding the space.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Keys, tokens and secrets: readable by root only."""
    write_atomic(path, data, 0o600)


def write_json(path: str | os.PathLike, obj, private: bool = False) -> None:
    data = json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"
    write_atomic(path, data, 0o600 if private else 0o644)


def read_json(path: str | os.PathLike, default=None):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return default


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use there (what df shows as available)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path`, not crossing into other mounts; yields to the loop."""
    try:
        dev = os.lstat(path).st_dev
    except OSError:
        return 0
    total, stack, seen = 0, [str(path)], 0
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if st.st_dev != dev:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                else:
                    total += st.st_size
                seen += 1
                if seen % 500 == 0:
                    await asyncio.sleep(0)
    return total
