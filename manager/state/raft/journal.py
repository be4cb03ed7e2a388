"""pysyncobj's raft journal, made safe on a full disk.

pysyncobj keeps its journal in a memory-mapped file that it grows with `mmap.resize`, which
extends the file sparsely: the blocks are only allocated when the mapped pages are first
written. On a full disk that write cannot be backed and the kernel kills the whole manager
with SIGBUS, in the middle of an append. And `FileJournal.add` appends the entry to its
in-memory log *before* writing it, so a failed write would leave a leader replicating and
acknowledging an entry its own disk does not hold.

Here the file's blocks are allocated with posix_fallocate before the map grows over them, so
a full disk is an ENOSPC OSError at that point and nothing else; and an append first makes
room for its record, so it fails before the in-memory log changes. pysyncobj's tick loop logs
the error and goes on: a leader's proposal is dropped (the caller's commit times out, and
`RaftNode` then says the disk is full), a follower does not acknowledge and the leader sends
the entries again once there is room.

The classes replace pysyncobj's through `pysyncobj.syncobj.createJournal`, the one seam.
Journals keep pysyncobj's on-disk format, so existing ones replay unchanged.
"""
from __future__ import annotations

import errno
import mmap
import os
import time
from typing import Optional

import pysyncobj.syncobj
from pysyncobj import journal as _pysyncobj_journal
from pysyncobj.journal import FileJournal, MemoryJournal

_GROWTH_FACTOR = 2
_MIN_GROWTH = 1 << 20  # small steps would call fallocate on most appends of a young journal
_RECORD_OVERHEAD = 4 + 16 + 4  # length, (index, term), length: FileJournal.add's framing


class _Failure:
    """The last time a journal could not get disk space, for RaftNode's error messages."""
    at: float = 0.0
    path: str = ""
    message: str = ""


last_failure = _Failure()


def failure_since(since: float) -> Optional[str]:
    """'<path>: <reason>' if a journal of this process ran out of space after `since`
    (time.monotonic())."""
    if last_failure.at and last_failure.at >= since:
        return f"{last_failure.path}: {last_failure.message}"
    return None


class PreallocatedFile:
    """The interface of pysyncobj's ResizableFile, with every mapped byte backed by disk."""

    def __init__(self, path: str, initialSize: int = 1024, resizeFactor: float = 2.0,  # noqa: N803
                 defaultContent: Optional[bytes] = None) -> None:
        self._path = path
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(defaultContent or b"")
        self._file = open(path, "r+b")
        # A journal written by plain pysyncobj may be sparse: back it now, or fail here.
        self._allocate(max(os.fstat(self._file.fileno()).st_size, initialSize))
        self._map = mmap.mmap(self._file.fileno(), 0)

    def _allocate(self, size: int) -> None:
        try:
            os.posix_fallocate(self._file.fileno(), 0, size)
        except OSError as exc:
            last_failure.at = time.monotonic()
            last_failure.path = self._path
            last_failure.message = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(exc.errno, f"cannot grow the raft journal {self._path} to {size} bytes: "
                                     f"{last_failure.message}") from None

    def reserve(self, size: int) -> None:
        """Make the file at least `size` bytes, all of them on disk; OSError(ENOSPC) if not."""
        current = self._map.size()
        if size <= current:
            return
        new_size = max(size, current * _GROWTH_FACTOR, current + _MIN_GROWTH)
        try:
            os.posix_fallocate(self._file.fileno(), 0, new_size)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            self._allocate(size)  # the generous step did not fit; the exact one may
            new_size = size
        self._map.resize(new_size)

    def write(self, offset: int, values: bytes) -> None:
        self.reserve(offset + len(values))
        self._map[offset:offset + len(values)] = values

    def read(self, offset: int, size: int) -> bytes:
        return self._map[offset:offset + size]

    def flush(self) -> None:
        self._map.flush()

    def _destroy(self) -> None:
        self._map.flush()
        self._map.close()
        self._file.close()


class SpaceCheckedJournal(FileJournal):
    """FileJournal whose `add` fails, if it fails, before the in-memory log changes."""

    def add(self, command, idx, term) -> None:
        record = _RECORD_OVERHEAD + len(command)
        self._FileJournal__journalFile.reserve(self._FileJournal__currentOffset + record)
        super().add(command, idx, term)


def create_journal(journal_file: Optional[str] = None):
    if journal_file is None:
        return MemoryJournal()
    return SpaceCheckedJournal(journal_file)


def install() -> None:
    """Route pysyncobj's journals through the classes above (idempotent)."""
    _pysyncobj_journal.ResizableFile = PreallocatedFile
    pysyncobj.syncobj.createJournal = create_journal


def _check_layout() -> None:
    # The journal reaches into FileJournal's private fields; fail at import, loudly, if a
    # pysyncobj release renames them, rather than on the first append.
    source = FileJournal.__init__.__code__.co_names + FileJournal.add.__code__.co_names
    for name in ("_FileJournal__journalFile", "_FileJournal__currentOffset"):
        if name not in source:
            raise ImportError(f"pysyncobj's FileJournal no longer has {name}: "
                              f"manager/state/raft/journal.py needs updating for this pysyncobj")


_check_layout()
