"""Writing COPY/ADD sources into the image being built (its overlay rootfs).

The destination is resolved inside the rootfs (an image's symlinks point into its own root),
then every directory is opened from the rootfs fd one component at a time with O_NOFOLLOW and
every file is created relative to its parent's fd with O_EXCL|O_NOFOLLOW: nothing can be
written outside the image's tree, whatever links the image or the context holds.
"""
from __future__ import annotations

import os
import posixpath
import shutil
import stat
from pathlib import Path
from typing import Optional

from worker.executor.ocispec import in_rootfs
from worker.images.build.sources import SourceError, SourceTree

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Owner:
    def __init__(self, uid: Optional[int], gid: Optional[int], mode: Optional[int]) -> None:
        self.uid, self.gid, self.mode = uid, gid, mode  # None: keep (uid/gid: root, as Docker)


def dest_parts(rootfs: Path, path: str) -> list[str]:
    """`path` (absolute, in the image) as components below the rootfs, symlinks resolved the
    way the container would see them."""
    resolved = in_rootfs(rootfs, path)
    rel = os.path.relpath(resolved, rootfs)
    return [] if rel == "." else rel.split("/")


def open_dest_dir(rootfs: Path, parts: list[str], create: bool = True) -> int:
    fd = os.open(rootfs, _DIR)
    try:
        for p in parts:
            try:
                nfd = os.open(p, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(p, 0o755, dir_fd=fd)
                nfd = os.open(p, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError:
        os.close(fd)
        raise
    return fd


def is_dir_in(rootfs: Path, path: str) -> bool:
    try:
        return in_rootfs(rootfs, path).is_dir()
    except OSError:
        return False


def copy_source(tree: SourceTree, src: tuple[str, ...], rootfs: Path, dest: str,
                into_dir: bool, owner: Owner) -> None:
    """Copy `src` to `dest` (absolute in the image). A directory's contents go into `dest`;
    a file goes to `dest` itself, or into it when `into_dir`."""
    st = tree.lstat(src)
    if st is None:
        raise SourceError(f"{'/'.join(src)} vanished while the build read it")
    if stat.S_ISDIR(st.st_mode):
        target_dir, name = dest, None
    elif into_dir:
        target_dir, name = dest, (src[-1] if src else "")
    else:
        target_dir, name = posixpath.dirname(dest.rstrip("/")) or "/", \
            posixpath.basename(dest.rstrip("/"))
    dfd = open_dest_dir(rootfs, dest_parts(rootfs, target_dir))
    try:
        for e in tree.walk(src):
            if e.rel == "":
                if name is None:
                    continue  # the directory itself: its contents are what is copied
                _write(tree, e.parts, e.st, dfd, [name], owner)
            else:
                rel = e.rel.split("/")
                _write(tree, e.parts, e.st, dfd, ([name] if name else []) + rel, owner)
    finally:
        os.close(dfd)


def _write(tree: SourceTree, src: tuple[str, ...], st: os.stat_result, base_fd: int,
           rel: list[str], owner: Owner) -> None:
    pfd = _parent(base_fd, rel[:-1])
    name = rel[-1]
    try:
        _make_room(pfd, name, keep_dir=stat.S_ISDIR(st.st_mode))
        mode = owner.mode if owner.mode is not None else stat.S_IMODE(st.st_mode)
        uid = owner.uid if owner.uid is not None else 0
        gid = owner.gid if owner.gid is not None else 0
        if stat.S_ISDIR(st.st_mode):
            try:
                os.mkdir(name, 0o700, dir_fd=pfd)
            except FileExistsError:
                pass
            fd = os.open(name, _DIR, dir_fd=pfd)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
        elif stat.S_ISREG(st.st_mode):
            sfd = tree.open_file(src)
            try:
                fd = os.open(name, _NEW, 0o600, dir_fd=pfd)
                try:
                    with os.fdopen(sfd, "rb", closefd=False) as fin, \
                            os.fdopen(fd, "wb", closefd=False) as fout:
                        shutil.copyfileobj(fin, fout, 1 << 20)
                    os.fchown(fd, uid, gid)
                    os.fchmod(fd, mode)
                    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                finally:
                    os.close(fd)
            finally:
                os.close(sfd)
        elif stat.S_ISLNK(st.st_mode):
            # A link is copied as a link: it points into the image at run time, not the host.
            os.symlink(tree.readlink(src), name, dir_fd=pfd)
            os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
        else:
            raise SourceError(f"{'/'.join(src)} is not a file, directory or symlink "
                              "(devices, sockets and pipes are not copied)")
    finally:
        os.close(pfd)


def _parent(base_fd: int, parts: list[str]) -> int:
    fd = os.dup(base_fd)
    try:
        for p in parts:
            try:
                nfd = os.open(p, _DIR, dir_fd=fd)
            except FileNotFoundError:  # a parent .dockerignore left out, its exception kept
                os.mkdir(p, 0o755, dir_fd=fd)
                nfd = os.open(p, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except OSError:
        os.close(fd)
        raise
    return fd


def _make_room(pfd: int, name: str, keep_dir: bool) -> None:
    try:
        st = os.lstat(name, dir_fd=pfd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return
        shutil.rmtree(name, dir_fd=pfd)
    else:
        os.unlink(name, dir_fd=pfd)
