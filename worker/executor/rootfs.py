"""The container's root filesystem: the image's layers mounted as overlayfs, and unmounted."""
from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

from common import errors, linux


def _overlay_path(path: Path) -> str:
    # overlayfs splits its options at ',' and lowerdir at ':', and takes a backslash as an
    # escape: a data root holding any of the three would be cut up or lose its backslashes.
    return re.sub(r"([\\,:])", r"\\\1", str(path))


def _mount_overlay(target: Path, lowers: list[Path], upper: Path, work: Path) -> None:
    # overlayfs wants the top layer first; our list is lowest first.
    lower = ":".join(_overlay_path(p) for p in reversed(lowers))
    dirs = f"upperdir={_overlay_path(upper)},workdir={_overlay_path(work)}"
    opts = f"lowerdir={lower},{dirs},index=off"
    fds: list[int] = []
    try:
        if len(opts) >= 4000:  # mount data is one page: name deep stacks through short fd links
            fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in reversed(lowers)]
            lower = ":".join(f"/proc/self/fd/{fd}" for fd in fds)
            opts = f"lowerdir={lower},{dirs},index=off"
        try:
            linux.mount("overlay", target, "overlay", 0, opts)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                with contextlib.suppress(OSError):
                    linux.mount("overlay", target, "overlay", 0, opts.replace(",index=off", ""))
                    return  # a kernel that does not know index=
            raise errors.Unavailable(f"cannot mount the container's root filesystem (overlay on "
                                     f"{target}): {os.strerror(exc.errno)}")
    finally:
        for fd in fds:
            os.close(fd)


def _unmount(target: Path) -> None:
    for _ in range(10):  # stacked mounts, if any
        try:
            linux.umount(target)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return  # EINVAL: not a mount point (any more); ENOENT: gone
            with contextlib.suppress(OSError):
                linux.umount(target, linux.MNT_DETACH)
