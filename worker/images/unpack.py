"""Tar unpacking for the image store: image layers and imported image archives.

This is the most security-sensitive code of the worker. It runs as root and writes whatever an
archive from anywhere says to write: a layer pulled from a registry, or the `docker save` / OCI
tarball a user hands to `shoal image load`. A layer legitimately holds absolute symlinks and
`..` symlinks (they point into the container's root at run time, not into the host's), so a
path taken from an archive must never be resolved by the host's kernel the ordinary way.
Hence the rules here:

- Nothing is addressed by a path string. A directory is reached from the destination's fd one
  component at a time, each opened with O_NOFOLLOW|O_DIRECTORY, and every create, delete,
  chown, chmod, utime and setxattr is done on an fd or relative to the parent's fd (dir_fd=).
  A symlink met on the way is refused, never traversed, so a write can only land beneath the
  destination, whatever links the archive planted before.
- Every check that a tar header allows is made before anything is created: a refused entry
  leaves nothing behind outside the destination (and, for a name that is refused outright,
  nothing inside it either).
- Whiteout names are validated as file names: `.wh...` does not delete the parent directory.

It runs in a child process (`python -m worker.images.unpack unpack-layer|extract-archive`):
unpacking is CPU and disk bound and must not stall the daemon's event loop. It only needs the
standard library, so that child starts fast.
"""
from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import json
import lzma
import os
import posixpath
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import BinaryIO, Optional

OPAQUE_XATTR = "trusted.overlay.opaque"
PATH_MAX = 4096  # bytes, with the final NUL: longer host paths cannot be named by path at all
NAME_MAX = 255

# O_NOFOLLOW on the last (only) component: a symlink is refused (ELOOP/ENOTDIR), not followed.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FD_CACHE = 128  # directory fds kept open: far below RLIMIT_NOFILE, plenty for a tar's order
_XATTR_PREFIX = "SCHILY.xattr."


class UnpackError(ValueError):
    """The archive asks for something unsafe or impossible; the message names the entry."""


def _reason(exc: BaseException) -> str:
    # OSError's own text ends with the name relative to a dir fd: misleading without the rest
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _show(name: str) -> str:
    """An entry name for a one-line error message (hostile names can be kilobytes long)."""
    return repr(name) if len(name) <= 200 else repr(name[:200]) + "..."


# ---- names --------------------------------------------------------------------------------
def _clean_name(name: str, what: str = "layer entry") -> Optional[str]:
    """The entry's path relative to the destination ("a/b"), None for the root itself.
    A leading "/" is dropped (tar names are relative to the archive's root)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnpackError(f"{what} {_show(name)} escapes the {what.split()[0]} (..)")
    if "\0" in name:
        raise UnpackError(f"{what} {_show(name)} has a NUL byte in its name")
    return "/".join(parts) or None


def _check_length(rel: str, name: str, what: str, dest_len: int) -> None:
    """Refuse names the host cannot hold, before creating anything for them. The whole path
    must stay under PATH_MAX too: the store deletes and mounts layers by path later."""
    if any(len(os.fsencode(p)) > NAME_MAX for p in rel.split("/")):
        raise UnpackError(f"{what} {_show(name)} has a name component longer than "
                          f"{NAME_MAX} bytes")
    if dest_len + 1 + len(os.fsencode(rel)) >= PATH_MAX:
        raise UnpackError(f"{what} {_show(name)} is too long: its path on this host would "
                          f"exceed {PATH_MAX} bytes")


def _valid_whiteout_target(name: str) -> bool:
    # `.wh...` would name the parent directory, `.wh..` the directory itself.
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def _lstat_at(dir_fd: int, name: str) -> Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _proc_path(dir_fd: int, name: str) -> str:
    """A path to `name` in the directory behind dir_fd, for the calls that take no dir_fd
    (setxattr). /proc/self/fd/N is the kernel's own reference to that very directory; only the
    last component is then looked up, and callers pass follow_symlinks=False for it."""
    return f"/proc/self/fd/{dir_fd}/{name}"


# ---- directory fds ------------------------------------------------------------------------
class _Tree:
    """A destination directory reached only through directory fds opened without following
    symlinks. Known directories' fds are cached, least recently used closed first: an fd
    returned stays valid until the next call (dup it to keep it longer)."""

    def __init__(self, root_fd: int, what: str, dir_mode: int) -> None:
        self.root_fd = root_fd
        self.what = what          # "layer entry" / "archive entry", for messages
        self.dir_mode = dir_mode  # for parents the archive does not list
        self._fds: dict[str, int] = {}

    def dir(self, rel: str, entry: str, create: bool) -> int:
        """The fd of directory `rel` ("" is the root), creating missing ones if `create`;
        refuses a component that is a symlink or not a directory."""
        if not rel:
            return self.root_fd
        fd = self._fds.pop(rel, None)
        if fd is not None:
            self._fds[rel] = fd  # most recently used
            return fd
        done, fd = self._nearest_known(rel)
        rest = rel[len(done) + 1:] if done else rel
        for part in rest.split("/"):
            done = f"{done}/{part}" if done else part
            fd = self._open_component(fd, part, done, entry, create)
            self._fds[done] = fd
            self._evict()  # never the newest, which the walk goes on from
        return fd

    def _nearest_known(self, rel: str) -> tuple[str, int]:
        head = rel
        while "/" in head:
            head = head.rpartition("/")[0]
            fd = self._fds.get(head)
            if fd is not None:
                return head, fd
        return "", self.root_fd

    def _open_component(self, parent_fd: int, part: str, done: str, entry: str,
                        create: bool) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise UnpackError(f"{self.what} {_show(entry)}: {_show(done)} does not exist")
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                kind = "a symlink" if exc.errno == errno.ELOOP or _is_link(parent_fd, part) \
                    else "not a directory"
                raise UnpackError(f"{self.what} {_show(entry)} is under {_show(done)}, which is "
                                  f"{kind} (refused: unpacking never follows links)")
            raise
        os.mkdir(part, self.dir_mode, dir_fd=parent_fd)
        return os.open(part, _DIR_FLAGS, dir_fd=parent_fd)

    def _evict(self) -> None:
        while len(self._fds) > _FD_CACHE:
            os.close(self._fds.pop(next(iter(self._fds))))

    def forget(self, rel: str) -> None:
        """`rel` is being deleted: its fd and its descendants' must not be used again."""
        prefix = rel + "/"
        for key in [k for k in self._fds if k == rel or k.startswith(prefix)]:
            os.close(self._fds.pop(key))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _is_link(dir_fd: int, name: str) -> bool:
    st = _lstat_at(dir_fd, name)
    return st is not None and stat.S_ISLNK(st.st_mode)


def _remove_dir_at(parent_fd: int, name: str) -> None:
    """`rm -r` of directory `name` under parent_fd: never follows a symlink, no recursion
    (a hostile tree can be thousands of levels deep) and two fds at most (it climbs back with
    "..", which is never a symlink)."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    below: list[str] = []  # the names walked down from `name` to where fd is
    try:
        while True:
            with os.scandir(fd) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            subdirs = [n for n, is_dir in entries if is_dir]
            for n, is_dir in entries:
                if not is_dir:
                    os.unlink(n, dir_fd=fd)
            if subdirs:
                child = os.open(subdirs[0], _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                below.append(subdirs[0])
                continue
            if not below:
                break
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            os.rmdir(below.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


# ---- layers -------------------------------------------------------------------------------
class _LayerWriter:
    """Applies tar entries to a directory in overlayfs form: whiteouts become 0/0 character
    devices, `.wh..wh..opq` marks its directory opaque."""

    def __init__(self, root_fd: int, dest_len: int) -> None:
        self.tree = _Tree(root_fd, "layer entry", 0o755)
        self.dest_len = dest_len
        self.dir_times: dict[str, float] = {}
        self.size = 0

    def apply(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        try:
            self._apply(tar, m)
        except UnpackError:
            raise
        except (OSError, OverflowError, ValueError) as exc:  # absurd mtimes and ids, NUL bytes
            raise UnpackError(f"layer entry {_show(m.name)}: {_reason(exc)}") from exc

    def _apply(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        rel = _clean_name(m.name)
        if rel is None:
            if m.isdir():
                self.dir_times[""] = m.mtime
                os.chmod(self.tree.root_fd, m.mode & 0o7777)
            return
        _check_length(rel, m.name, "layer entry", self.dest_len)
        parent, _, base = rel.rpartition("/")
        if base.startswith(".wh."):
            self._whiteout(parent, base, m)
            return
        link_target = self._link_target(m) if m.islnk() else None
        pfd = self.tree.dir(parent, m.name, create=True)
        kept_dir = self._clear(pfd, parent, base, keep_dir=m.isdir())
        if m.isdir():
            if not kept_dir:
                os.mkdir(base, 0o700, dir_fd=pfd)
            fd = self.tree.dir(rel, m.name, create=False)
            self._set_attrs_fd(fd, m)
            self.dir_times[rel] = m.mtime
        elif m.isreg():
            self._write_file(tar, m, pfd, base)
        elif m.islnk():
            assert link_target is not None
            self._hard_link(m, link_target, parent, base)
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=pfd)
            self._set_attrs_at(pfd, base, m, chmod=False)  # a symlink's mode means nothing
        elif m.ischr() or m.isblk() or m.isfifo():
            if m.isfifo():
                os.mkfifo(base, 0o600, dir_fd=pfd)
            else:
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(base, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
            self._set_attrs_at(pfd, base, m, chmod=True)
        # anything else (GNU volume labels and the like) carries no file

    def _whiteout(self, parent: str, base: str, m: tarfile.TarInfo) -> None:
        if base == ".wh..wh..opq":
            os.setxattr(self.tree.dir(parent, m.name, create=True), OPAQUE_XATTR, b"y")
            return
        if base.startswith(".wh..wh."):
            return  # aufs bookkeeping (.wh..wh.plnk and such): no file
        target = base[len(".wh."):]
        if not _valid_whiteout_target(target):
            raise UnpackError(f"layer entry {_show(m.name)} is a whiteout of {target!r}, which "
                              "is not a file name")
        pfd = self.tree.dir(parent, m.name, create=True)
        self._clear(pfd, parent, target, keep_dir=False)
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=pfd)

    def _clear(self, pfd: int, parent: str, name: str, keep_dir: bool) -> bool:
        """Make room for a new entry `name`: a later entry replaces an earlier one (or a
        whiteout replaces it). Returns whether an existing directory was kept."""
        st = _lstat_at(pfd, name)
        if st is None:
            return False
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=pfd)
            return False
        if keep_dir:
            return True
        self.tree.forget(f"{parent}/{name}" if parent else name)
        _remove_dir_at(pfd, name)
        return False

    def _link_target(self, m: tarfile.TarInfo) -> tuple[str, str]:
        """A hard link's target, checked before anything is created: inside the layer."""
        target = _clean_name(m.linkname, "layer entry")
        if target is None:
            raise UnpackError(f"layer entry {_show(m.name)} is a hard link to nothing")
        _check_length(target, m.name, "layer entry", self.dest_len)
        tparent, _, tbase = target.rpartition("/")
        return tparent, tbase

    def _hard_link(self, m: tarfile.TarInfo, target: tuple[str, str], parent: str,
                   base: str) -> None:
        tparent, tbase = target
        # The target's directory is walked like any other: a symlink on the way is refused,
        # so a hard link can only share an inode the layer itself created.
        tpfd = os.dup(self.tree.dir(tparent, m.name, create=False))
        try:
            st = _lstat_at(tpfd, tbase)
            if st is None or stat.S_ISDIR(st.st_mode):
                raise UnpackError(f"layer entry {_show(m.name)} is a hard link to "
                                  f"{_show(m.linkname)}, which is "
                                  f"{'missing' if st is None else 'a directory'}")
            pfd = self.tree.dir(parent, m.name, create=True)
            # linkat without AT_SYMLINK_FOLLOW: a target that is a symlink is linked, not
            # followed. A hard link shares the target's inode and attributes: nothing to set.
            os.link(tbase, base, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tpfd)

    def _write_file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, pfd: int,
                    base: str) -> None:
        fd = os.open(base, _NEW_FILE_FLAGS, 0o600, dir_fd=pfd)
        try:
            src = tar.extractfile(m)
            if src is not None:
                with open(fd, "wb", closefd=False) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            self._set_attrs_fd(fd, m)
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)
        self.size += m.size

    def _set_attrs_fd(self, fd: int, m: tarfile.TarInfo) -> None:
        os.chown(fd, m.uid, m.gid)
        os.chmod(fd, m.mode & 0o7777)  # after chown, which clears setuid bits
        for key, value in _xattrs(m):
            _set_xattr(fd, key, value, follow_symlinks=True)  # an fd: nothing to follow

    def _set_attrs_at(self, pfd: int, name: str, m: tarfile.TarInfo, chmod: bool) -> None:
        """For entries no fd can be written through (symlinks, devices, fifos)."""
        os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        if chmod:
            # fchmodat has no usable no-follow flag; `name` was created just now by this
            # (single-threaded) process as a device or fifo, so it is no link.
            os.chmod(name, m.mode & 0o7777, dir_fd=pfd)
        for key, value in _xattrs(m):
            _set_xattr(_proc_path(pfd, name), key, value, follow_symlinks=False)
        os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)

    def finish(self) -> None:
        # Directory times last: creating entries inside a directory changes its mtime.
        for rel, mtime in self.dir_times.items():
            try:
                fd = self.tree.dir(rel, rel, create=False)
            except (UnpackError, FileNotFoundError):
                continue  # replaced by a later entry, or whited out
            try:
                os.utime(fd, (mtime, mtime))
            except (OSError, OverflowError, ValueError) as exc:
                raise UnpackError(f"layer entry {_show(rel or '.')}: {_reason(exc)}") from exc

    def close(self) -> None:
        self.tree.close()


def _xattrs(m: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    return [(key[len(_XATTR_PREFIX):], value.encode("utf-8", "surrogateescape"))
            for key, value in (m.pax_headers or {}).items() if key.startswith(_XATTR_PREFIX)]


def _set_xattr(target, key: str, value: bytes, follow_symlinks: bool) -> None:
    try:
        os.setxattr(target, key, value, follow_symlinks=follow_symlinks)
    except OSError as exc:
        # user.* on a symlink or device, a filesystem without xattrs, a name the kernel does
        # not know: the file is still right, only the attribute is lost
        if exc.errno not in (errno.ENOTSUP, errno.EPERM, errno.EINVAL, errno.ERANGE,
                             errno.E2BIG):
            raise


class _HashingReader:
    """Wraps a binary stream: hashes and counts everything read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def _decompressed(f: BinaryIO, path: Path) -> BinaryIO:
    """Open a layer blob whatever its compression (gzip, zstd, xz, bzip2 or none)."""
    magic = f.read(6)
    f.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        if shutil.which("zstd") is None:
            raise ValueError(f"layer {path.name} is zstd-compressed and the 'zstd' program is "
                             "not installed (apt-get install zstd)")
        proc = subprocess.Popen(["zstd", "-dc"], stdin=f, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        return proc.stdout
    if magic[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(f)  # type: ignore[return-value]
    if magic[:3] == b"BZh":
        return bz2.BZ2File(f)  # type: ignore[return-value]
    return f


def _new_root(dest: Path, mode: int) -> int:
    """Create `dest` (it must not exist) and open it without following a link."""
    os.mkdir(dest, mode)
    return os.open(dest, _DIR_FLAGS)


def unpack_layer(blob: Path, dest: Path) -> dict:
    """Unpack one layer blob into a new directory `dest`; returns its digests and size."""
    blob, dest = Path(blob), Path(dest)
    with open(blob, "rb") as f:
        blob_hash = hashlib.sha256()
        while chunk := f.read(1 << 20):
            blob_hash.update(chunk)
        f.seek(0)
        stream = _HashingReader(_decompressed(f, blob))
        root_fd = _new_root(dest, 0o755)
        writer = _LayerWriter(root_fd, len(os.fsencode(dest)))
        try:
            with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tar:  # type: ignore
                for member in tar:
                    writer.apply(tar, member)
            stream.drain()  # the diff id covers the whole stream, end-of-archive padding too
            writer.finish()
        finally:
            writer.close()
            os.close(root_fd)
    return {"blob_digest": "sha256:" + blob_hash.hexdigest(), "diff_id": stream.digest(),
            "size": writer.size}


# ---- image archives -----------------------------------------------------------------------
def extract_archive(archive: Path, dest: Path) -> dict:
    """Extract an image archive (an OCI layout or `docker save` tarball) into a new directory.

    Only regular files, directories and relative symlinks that stay inside the archive are
    made (`docker save` links shared layers: `<id>/layer.tar -> ../<other>/layer.tar`), and a
    symlink is only ever a leaf: an entry under one, or replacing one, is refused. Whoever
    reads the result must still resolve paths within `dest` (a chain of links can leave it)."""
    dest = Path(dest)
    root_fd = _new_root(dest, 0o700)
    tree = _Tree(root_fd, "archive entry", 0o700)
    count = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for m in tar:
                try:
                    count += _extract_entry(tar, tree, m, len(os.fsencode(dest)))
                except OSError as exc:
                    raise UnpackError(f"archive entry {_show(m.name)}: {_reason(exc)}") from exc
    finally:
        tree.close()
        os.close(root_fd)
    return {"files": count}


def _extract_entry(tar: tarfile.TarFile, tree: _Tree, m: tarfile.TarInfo, dest_len: int) -> int:
    """Extract one entry; returns the number of regular files written (0 or 1)."""
    what = "archive entry"
    rel = _clean_name(m.name, what)
    if rel is None or not (m.isdir() or m.isreg() or m.issym()):
        return 0  # hard links, devices and such have no place in an image archive
    _check_length(rel, m.name, what, dest_len)
    parent, _, base = rel.rpartition("/")
    if m.issym():
        _check_archive_symlink(m, parent)
    pfd = tree.dir(parent, m.name, create=True)
    st = _lstat_at(pfd, base)
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise UnpackError(f"{what} {_show(m.name)} would replace or write through the "
                              f"symlink {_show(rel)} (refused)")
        if stat.S_ISDIR(st.st_mode) and m.isdir():
            return 0  # listed twice: nothing to do
        if not (stat.S_ISREG(st.st_mode) and m.isreg()):
            raise UnpackError(f"{what} {_show(m.name)}: {_show(rel)} already exists as "
                              f"another kind of file")
        os.unlink(base, dir_fd=pfd)  # a file listed twice: the last one wins, as with tar
    if m.isdir():
        os.mkdir(base, 0o700, dir_fd=pfd)
        return 0
    if m.issym():
        os.symlink(m.linkname, base, dir_fd=pfd)
        return 0
    fd = os.open(base, _NEW_FILE_FLAGS, 0o600, dir_fd=pfd)
    with open(fd, "wb") as out:
        src = tar.extractfile(m)
        if src is not None:
            shutil.copyfileobj(src, out, 1 << 20)
    return 1


def _check_archive_symlink(m: tarfile.TarInfo, parent: str) -> None:
    target = m.linkname
    if not target or "\0" in target:
        raise UnpackError(f"archive entry {_show(m.name)} is a symlink to nothing")
    if target.startswith("/"):
        raise UnpackError(f"archive entry {_show(m.name)} is an absolute symlink")
    # Lexically only: a chain of links can still leave, which is why readers resolve paths
    # within the extraction directory. This catches the plain case early, with a clear message.
    where = posixpath.normpath(posixpath.join(parent, target))
    if where == ".." or where.startswith("../"):
        raise UnpackError(f"archive entry {_show(m.name)} is a symlink leaving the archive "
                          f"({_show(target)})")


# ---- the helper process -------------------------------------------------------------------
def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["unpack-layer"] and len(argv) == 3:
            result = unpack_layer(Path(argv[1]), Path(argv[2]))
        elif argv[:1] == ["extract-archive"] and len(argv) == 3:
            result = extract_archive(Path(argv[1]), Path(argv[2]))
        else:
            print("usage: python -m worker.images.unpack unpack-layer BLOB DEST | "
                  "extract-archive TAR DEST", file=sys.stderr)
            return 2
    except (OSError, ValueError, tarfile.TarError, EOFError, lzma.LZMAError) as exc:
        print(f"{argv[0]} {argv[1]}: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
