"""A step's upper dir as an OCI layer: a tar with whiteouts (.wh.NAME for a deleted path,
.wh..wh..opq in a directory that hides the lower layers' one), gzipped; its digests."""
from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

OPAQUE_XATTR = "trusted.overlay.opaque"
_KEEP_XATTRS = ("security.capability", "user.")


class _Hashing:
    """Writes through to `out`, hashing what passes (the uncompressed tar: the diff id)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.h, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.uname = ti.gname = ""
    ti.mtime = int(st.st_mtime)
    return ti


def _xattrs(path: str) -> dict[str, str]:
    out = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for n in names:
        if n.startswith(_KEEP_XATTRS) or n in _KEEP_XATTRS:
            try:
                out["SCHILY.xattr." + n] = os.getxattr(path, n, follow_symlinks=False).decode(
                    "utf-8", "surrogateescape")
            except OSError:
                continue
    return out


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def write_layer(upper: Path, blob: Path) -> dict:
    """Tar `upper` into the gzip file `blob`; returns diff_id, blob_digest, size."""
    links: dict[tuple[int, int], str] = {}
    with open(blob, "wb") as raw:
        # mtime=0 and no file name in the gzip header: the same tree gives the same blob.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            hashing = _Hashing(gz)  # type: ignore[arg-type]
            with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add_dir(tar, str(upper), "", links)
    with open(blob, "rb") as f:
        bh = hashlib.sha256()
        while chunk := f.read(1 << 20):
            bh.update(chunk)
    return {"diff_id": "sha256:" + hashing.h.hexdigest(),
            "blob_digest": "sha256:" + bh.hexdigest(), "size": blob.stat().st_size}


def _add_dir(tar: tarfile.TarFile, top: str, rel: str, links: dict) -> None:
    path = os.path.join(top, rel) if rel else top
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        arc = f"{rel}/{name}" if rel else name
        st = os.lstat(full)
        mode = st.st_mode
        if stat.S_ISCHR(mode) and st.st_rdev == 0:
            # overlayfs's whiteout (a 0/0 character device) becomes OCI's .wh. file
            wh = tarfile.TarInfo(f"{rel}/.wh.{name}" if rel else f".wh.{name}")
            wh.mtime = int(st.st_mtime)
            tar.addfile(wh)
            continue
        ti = _info(arc, st)
        ti.pax_headers = _xattrs(full)
        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
            tar.addfile(ti)
            if _opaque(full):
                opq = tarfile.TarInfo(f"{arc}/.wh..wh..opq")
                opq.mtime = int(st.st_mtime)
                tar.addfile(opq)
            _add_dir(tar, top, arc, links)
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
                tar.addfile(ti)
                continue
            links[key] = arc
            ti.size = st.st_size
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                tar.addfile(ti, f)
        elif stat.S_ISLNK(mode):
            ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(full)
            tar.addfile(ti)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
            tar.addfile(ti)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            tar.addfile(ti)
        # sockets carry no content: left out, as Docker does
