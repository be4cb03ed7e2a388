"""What a COPY/ADD reads: the build context (hostile: nothing outside it may be read) or a
previous stage's tree, resolved to entries and hashed for the cache.

Everything is read through directory fds, one component at a time with O_NOFOLLOW, so a
symlink swapped in after the check is refused rather than followed. A symlink named as a
source is resolved inside the tree: in the context, one pointing outside it (absolute, or `..`
above the root) is refused; in an image tree, an absolute link means the image's root, as it
would in a container.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Iterator, Optional

from worker.images.build.ignore import IgnoreRules

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_MAX_LINKS = 40


class SourceError(ValueError):
    """A source that may not or cannot be copied; the builder names the line."""


@dataclass(frozen=True)
class Entry:
    rel: str                # path below the source's root ("" for the root itself)
    parts: tuple[str, ...]  # the path from the tree's root, for reopening
    st: os.stat_result


class SourceTree:
    def __init__(self, root: str, is_context: bool, ignore: Optional[IgnoreRules] = None,
                 what: str = "the build context") -> None:
        self.root = root
        self.is_context = is_context
        self.ignore = ignore or IgnoreRules()
        self.what = what
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.root_fd)

    # -- opening ---------------------------------------------------------------------------
    def open_dir(self, parts: tuple[str, ...]) -> int:
        fd = os.dup(self.root_fd)
        try:
            for p in parts:
                nfd = os.open(p, _DIR, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except OSError:
            os.close(fd)
            raise
        return fd

    def open_file(self, parts: tuple[str, ...]) -> int:
        pfd = self.open_dir(parts[:-1])
        try:
            fd = os.open(parts[-1], _FILE, dir_fd=pfd)
        finally:
            os.close(pfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SourceError(f"{'/'.join(parts)} changed while it was read")
        return fd

    def lstat(self, parts: tuple[str, ...]) -> Optional[os.stat_result]:
        if not parts:
            return os.fstat(self.root_fd)
        try:
            pfd = self.open_dir(parts[:-1])
        except OSError:
            return None
        try:
            return os.lstat(parts[-1], dir_fd=pfd)
        except OSError:
            return None
        finally:
            os.close(pfd)

    def readlink(self, parts: tuple[str, ...]) -> str:
        pfd = self.open_dir(parts[:-1])
        try:
            return os.readlink(parts[-1], dir_fd=pfd)
        finally:
            os.close(pfd)

    # -- resolving a source argument --------------------------------------------------------
    def resolve(self, src: str) -> list[tuple[str, ...]]:
        """The paths (as components from the root, symlinks resolved) that `src` names; a
        pattern may name several. Raises SourceError naming the source."""
        cleaned = posixpath.normpath("/" + src).lstrip("/")
        if self.is_context and _escapes(src):
            raise SourceError(f"{src}: forbidden path outside the build context")
        parts = tuple(p for p in cleaned.split("/") if p)
        if any(_is_pattern(p) for p in parts):
            found = [self._follow(m, src) for m in self._glob(parts)]
            found = [f for f in found if not self._ignored(f)]
            if not found:
                raise SourceError(f"{src}: no source files were specified (nothing in "
                                  f"{self.what} matches)")
            return found
        resolved = self._follow(parts, src)
        if self.lstat(resolved) is None or self._ignored(resolved):
            raise SourceError(f"{src}: not found in {self.what}"
                              + (" (.dockerignore leaves it out)"
                                 if self.lstat(resolved) is not None else ""))
        return [resolved]

    def _ignored(self, parts: tuple[str, ...]) -> bool:
        return self.is_context and bool(parts) and self.ignore.ignored("/".join(parts))

    def _glob(self, parts: tuple[str, ...]) -> list[tuple[str, ...]]:
        level: list[tuple[str, ...]] = [()]
        for p in parts:
            nxt: list[tuple[str, ...]] = []
            for base in level:
                if not _is_pattern(p):
                    nxt.append(base + (p,))
                    continue
                try:
                    fd = self.open_dir(base)
                except OSError:
                    continue
                try:
                    names = sorted(os.listdir(fd))
                finally:
                    os.close(fd)
                nxt.extend(base + (n,) for n in names if fnmatch.fnmatchcase(n, p))
            level = nxt
        return [p for p in level if self.lstat(p) is not None]

    def _follow(self, parts: tuple[str, ...], src: str) -> tuple[str, ...]:
        """Resolve symlinks along `parts` inside the tree."""
        todo = list(parts)
        done: list[str] = []
        links = 0
        while todo:
            p = todo.pop(0)
            if p == "..":
                if not done:
                    if self.is_context:
                        raise SourceError(f"{src}: a symlink points outside the build context")
                    continue
                done.pop()
                continue
            if p in (".", ""):
                continue
            st = self.lstat(tuple(done) + (p,))
            if st is None or not stat.S_ISLNK(st.st_mode):
                done.append(p)
                continue
            links += 1
            if links > _MAX_LINKS:
                raise SourceError(f"{src}: too many levels of symbolic links")
            target = self.readlink(tuple(done) + (p,))
            if target.startswith("/"):
                if self.is_context:
                    raise SourceError(f"{src}: symlink {'/'.join(done + [p])} -> {target} "
                                      "points outside the build context")
                done = []
            todo = [t for t in target.split("/") if t] + todo
        return tuple(done)

    # -- walking ----------------------------------------------------------------------------
    def walk(self, parts: tuple[str, ...]) -> Iterator[Entry]:
        """The entry and, for a directory, everything below it (symlinks not followed,
        .dockerignore'd paths left out), parents before children, names sorted."""
        st = self.lstat(parts)
        if st is None:
            return
        yield Entry("", parts, st)
        if stat.S_ISDIR(st.st_mode):
            yield from self._walk_dir(parts, "")

    def _walk_dir(self, parts: tuple[str, ...], rel: str) -> Iterator[Entry]:
        fd = self.open_dir(parts)
        try:
            names = sorted(os.listdir(fd))
            stats = {n: os.lstat(n, dir_fd=fd) for n in names}
        finally:
            os.close(fd)
        for n in names:
            child = parts + (n,)
            child_rel = f"{rel}/{n}" if rel else n
            st = stats[n]
            ignored = self._ignored(child)
            if ignored and not (stat.S_ISDIR(st.st_mode) and self.ignore.may_hold_exceptions(
                    "/".join(child))):
                continue
            if not ignored:
                yield Entry(child_rel, child, st)
            if stat.S_ISDIR(st.st_mode):
                yield from self._walk_dir(child, child_rel)


def _is_pattern(part: str) -> bool:
    return any(c in part for c in "*?[")


def _escapes(src: str) -> bool:
    depth = 0
    for p in src.split("/"):
        if p == "..":
            depth -= 1
            if depth < 0:
                return True
        elif p and p != ".":
            depth += 1
    return False


def content_hash(tree: SourceTree, parts: tuple[str, ...], h: "hashlib._Hash") -> None:
    """Feed what a copy of `parts` would write (names, types, modes, contents, link targets;
    not times) into `h`, for the cache key."""
    for e in tree.walk(parts):
        mode = e.st.st_mode
        h.update(f"\0{e.rel}\0{stat.S_IFMT(mode)}\0{stat.S_IMODE(mode)}\0".encode(
            errors="surrogateescape"))
        if stat.S_ISREG(mode):
            fd = tree.open_file(e.parts)
            try:
                while chunk := os.read(fd, 1 << 20):
                    h.update(chunk)
            finally:
                os.close(fd)
        elif stat.S_ISLNK(mode):
            h.update(os.fsencode(tree.readlink(e.parts)))
