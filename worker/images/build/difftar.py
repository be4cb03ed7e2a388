"""A step's upper dir as an OCI layer: a tar with whiteouts (.wh.NAME for a deleted path,
.wh..wh..opq in a directory that hides the lower layers' one), gzipped; its digests."""
from __future__ import annotations

import hashlib
import os
import stat
import struct
import tarfile
import zlib
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


# zlib's default, as docker's push compresses (Go's default level): Python's gzip would take
# 9, two to four times slower on ordinary files for a few per cent less.
GZIP_LEVEL = 6


class _GzipBlocks:
    """A gzip stream of what is written, deflated 1 MiB at a time as pigz does (each block
    ends on a sync flush and starts with the previous block's last 32 KiB as its dictionary, so
    the blocks join into one ordinary deflate stream). A block that deflate cannot shrink (a
    compressed file, random bytes: a few samples of it say so) is stored, not deflated: zlib
    spends about a second per 50 MB failing to shrink such bytes, at any level."""

    BLOCK = 1 << 20
    SAMPLES, SAMPLE = 4, 8 << 10
    # mtime 0, no file name, unknown OS: the same tree gives the same blob
    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

    def __init__(self, out: BinaryIO, level: int = GZIP_LEVEL) -> None:
        self.out, self.level = out, level
        self.buf = bytearray()
        self.crc, self.size, self.window = 0, 0, b""
        out.write(self.HEADER)

    def write(self, data: bytes) -> int:
        self.buf += data
        done = 0
        if len(self.buf) >= self.BLOCK:
            with memoryview(self.buf) as view:  # blocks are read in place, not copied out
                while len(self.buf) - done >= self.BLOCK:
                    self._block(view[done:done + self.BLOCK], zlib.Z_SYNC_FLUSH)
                    done += self.BLOCK
            del self.buf[:done]
        return len(data)

    def flush(self) -> None:
        pass  # blocks are whole or not written: close() writes the rest

    def close(self) -> None:
        self._block(bytes(self.buf), zlib.Z_FINISH)
        self.buf = bytearray()
        self.out.write(struct.pack("<II", self.crc, self.size & 0xFFFFFFFF))

    def _incompressible(self, block: bytes) -> bool:
        if len(block) < self.SAMPLES * self.SAMPLE:
            return False
        step = (len(block) - self.SAMPLE) // (self.SAMPLES - 1)
        return all(len(zlib.compress(block[i:i + self.SAMPLE], 1)) > self.SAMPLE * 0.95
                   for i in range(0, step * self.SAMPLES, step))

    def _block(self, block: bytes | memoryview, mode: int) -> None:
        level = 0 if self._incompressible(block) else self.level
        c = (zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=self.window)
             if self.window else zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS))
        self.out.write(c.compress(block) + c.flush(mode))
        self.crc = zlib.crc32(block, self.crc)
        self.size += len(block)
        window = 32 << 10  # deflate's reach back
        self.window = bytes(block[-window:]) if len(block) >= window else \
            (self.window + bytes(block))[-window:]


def write_layer(upper: Path, blob: Path) -> dict:
    """Tar `upper` into the gzip file `blob`; returns diff_id, blob_digest, size. Both digests
    are taken as the bytes pass (the blob is not read again)."""
    links: dict[tuple[int, int], str] = {}
    with open(blob, "wb") as raw:
        compressed = _Hashing(raw)  # type: ignore[arg-type]
        gz = _GzipBlocks(compressed)  # type: ignore[arg-type]
        hashing = _Hashing(gz)  # type: ignore[arg-type]
        # 1 MiB reads and writes: tarfile's stream would cut each write into 10 KiB records,
        # copying the rest of the buffer at every cut
        with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT,
                          bufsize=1 << 20) as tar:
            tar.copybufsize = 1 << 20
            _add_dir(tar, str(upper), "", links)
        gz.close()
    return {"diff_id": "sha256:" + hashing.h.hexdigest(),
            "blob_digest": "sha256:" + compressed.h.hexdigest(), "size": compressed.size}


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


def settle(upper: Path) -> int:
    """Make `upper` (tarred by write_layer, no longer mounted) what unpacking that tar gives,
    so that it can become the layer itself rather than be unpacked again from the blob: only
    the xattrs the tar keeps (and overlayfs's opaque mark), whole-second times, no sockets, a
    root of 0755 owned by root. Returns the layer's size as the unpacker counts it (regular
    files, a hard-linked one once)."""
    seen: set[tuple[int, int]] = set()
    size = _settle_dir(str(upper), seen)
    for name in os.listxattr(upper):
        os.removexattr(upper, name)
    os.chown(upper, 0, 0)
    os.chmod(upper, 0o755)
    return size


def _settle_dir(path: str, seen: set[tuple[int, int]]) -> int:
    size = 0
    for entry in os.scandir(path):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISSOCK(st.st_mode):
            os.unlink(entry.path)  # the tar leaves sockets out
            continue
        if stat.S_ISDIR(st.st_mode):
            size += _settle_dir(entry.path, seen)
        elif stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            size += st.st_size
        _settle_xattrs(entry.path, stat.S_ISDIR(st.st_mode))
        # after its entries: removing a socket touched the directory's time
        os.utime(entry.path, (int(st.st_mtime), int(st.st_mtime)), follow_symlinks=False)
    return size


def _settle_xattrs(path: str, is_dir: bool) -> None:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return
    for n in names:
        if n.startswith(_KEEP_XATTRS) or n in _KEEP_XATTRS:
            continue
        if is_dir and n == OPAQUE_XATTR and _opaque(path):
            continue
        os.removexattr(path, n, follow_symlinks=False)

