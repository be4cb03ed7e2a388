"""pysyncobj's raft journal, made durable, checksummed and safe on a full disk.

Durable: an entry reaches stable storage (fdatasync) before anything acknowledges it; the
journal only says what is unsynced (`dirty`) and syncs when asked (`sync`), so one sync covers
every entry appended meanwhile (group commit). When to ask is pysyncobj's side of the seam:
manager/state/raft/durable_acks.py. The raft metadata (term, vote) and the snapshot pysyncobj
writes are replaced crash-safely too: temporary file, fsync, rename, fsync of the directory.

Checksummed (manager/state/raft/records.py): a torn or corrupt tail left by a crash is found
by its checksum, cut back to the last whole entry and reported (a WARNING naming the file, the
offset and what was dropped); it is never loaded as entries. A journal in pysyncobj's own format
is read once and rewritten in shoal's. Rewrites of the whole journal (compaction, clearing it
for a snapshot) go to a new file that is renamed over the old one, so a crash in the middle
leaves the old journal whole rather than half of each.

Safe on a full disk: pysyncobj grew its memory-mapped journal sparsely with `mmap.resize`, so
on a full disk the first write to a new page killed the manager with SIGBUS. Here the file's
blocks are allocated with posix_fallocate before the map grows over them, so a full disk is an
ENOSPC OSError at that point and nothing else; and an append makes room for its record before
the in-memory log changes. pysyncobj's tick loop logs the error and goes on: a leader's
proposal is dropped (the caller's commit times out, and `RaftNode` then says the disk is full),
a follower does not acknowledge and the leader sends the entries again once there is room.

SHOAL_UNSAFE_RAFT_NO_SYNC=1 (read when a journal is created) turns every sync of this module
off, for tests and benchmarks that measure what syncing costs or buys; it is logged loudly.

The classes replace pysyncobj's through `pysyncobj.syncobj.createJournal` and the serializer's
`atomicReplace`, the seams (`install`).
"""
from __future__ import annotations

import errno
import gzip
import logging
import mmap
import os
import secrets
import time
from typing import Optional

import pysyncobj.serializer
import pysyncobj.syncobj
from pysyncobj import journal as _pysyncobj_journal
from pysyncobj import pickle as _pysyncobj_pickle
from pysyncobj.journal import Journal, MemoryJournal

from common.fsutil import write_atomic
from manager.state.raft import records, snapshot_retention

log = logging.getLogger("shoal.raft.journal")

UNSAFE_NO_SYNC_ENV = "SHOAL_UNSAFE_RAFT_NO_SYNC"

_GROWTH_FACTOR = 2
_MIN_GROWTH = 1 << 20  # small steps would call fallocate on most appends of a young journal


class DurabilityLost(BaseException):
    """fdatasync of the journal failed. After a failed sync the kernel may have dropped the
    dirty pages and a retry can succeed without them being on disk, so no later sync can be
    trusted: the raft thread stops here (a BaseException, which pysyncobj's tick loop does not
    catch and retry), and this manager neither acknowledges nor commits again until restarted."""


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
    """A memory-mapped file whose every mapped byte is backed by disk (pysyncobj's
    ResizableFile interface)."""

    def __init__(self, path: str, initialSize: int = 1024, resizeFactor: float = 2.0,  # noqa: N803
                 defaultContent: Optional[bytes] = None) -> None:
        self._path = path
        if not os.path.exists(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as f:
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

    def size(self) -> int:
        return self._map.size()

    def write(self, offset: int, values: bytes) -> None:
        self.reserve(offset + len(values))
        self._map[offset:offset + len(values)] = values

    def read(self, offset: int, size: int) -> bytes:
        return self._map[offset:offset + size]

    def sync(self) -> None:
        # Pages written through a shared map are the file's dirty pages: fdatasync writes them
        # (and the allocation metadata needed to read them back), no msync needed on Linux.
        os.fdatasync(self._file.fileno())

    def flush(self) -> None:
        self._map.flush()

    def _destroy(self) -> None:
        self._map.flush()
        self._map.close()
        self._file.close()


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: str, path: str) -> None:
    """pysyncobj's `atomicReplace` for its snapshot (written, and received from a leader, to a
    temporary file it has closed): the bytes reach the disk before the name does, and the name
    before the journal is compacted on the strength of it."""
    if _sync_files:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    snapshot_retention.before_replace(path)
    os.replace(tmp, path)
    if _sync_files:
        _fsync_dir(path)


_sync_files = True  # set from the environment by every journal created (one per manager)


def _read_no_sync_switch(path: str) -> bool:
    value = os.environ.get(UNSAFE_NO_SYNC_ENV)
    if value == "1":
        log.warning("UNSAFE: %s=1: the raft journal %s is NEVER synced to disk; a power loss "
                    "can lose acknowledged writes. For tests and benchmarks only.",
                    UNSAFE_NO_SYNC_ENV, path)
        return True
    if value not in (None, "", "0"):
        log.warning("%s=%r is not 1: raft syncing stays on (set it to 1 to turn syncing off, "
                    "for tests only)", UNSAFE_NO_SYNC_ENV, value)
    return False


class _Meta:
    """pysyncobj's `<journal>.meta` (current term, vote, commit index), same pickle format,
    written crash-safely: raft needs the term and vote on disk before a vote is sent."""

    def __init__(self, path: str, durable: bool) -> None:
        self._path = path
        self._durable = durable
        self.values: dict = {}
        self.saved = True
        try:
            with open(path, "rb") as f:
                self.values = _pysyncobj_pickle.loads(f.read())
        except FileNotFoundError:
            pass
        except Exception as exc:  # an unreadable file: the term falls back to the log's last
            log.warning("raft metadata %s is unreadable (%s): starting from the journal's last "
                        "term", path, exc)

    def store(self) -> None:
        data = _pysyncobj_pickle.dumps(self.values)
        if self._durable:
            write_atomic(self._path, data, 0o600)
        else:
            tmp = self._path + ".tmp"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                f.write(data)
            os.replace(tmp, self._path)
        self.saved = True


class DurableJournal(Journal):
    """pysyncobj's Journal interface over the format of records.py. Appends fail, if they fail,
    before the in-memory log changes; nothing is synced until `sync()`."""

    def __init__(self, path: str) -> None:
        global _sync_files
        self._path = path
        self._durable = not _read_no_sync_switch(path)
        _sync_files = self._durable
        self._meta = _Meta(path + ".meta", self._durable)
        self._dirty = False
        self._file: PreallocatedFile
        self._entries: list[records.Entry] = []
        self._offsets: list[int] = []
        self._crcs: list[int] = []
        self._salt = 0
        self._end = records.FIRST_RECORD
        self._open()

    # ---- opening ----------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            with open(self._path, "rb") as f:
                head = f.read(records.FIRST_RECORD)
                blank = not head.strip(b"\0") and not any(
                    chunk.strip(b"\0") for chunk in iter(lambda: f.read(1 << 20), b""))
        except FileNotFoundError:
            blank = True
        if blank:
            self._rewrite([])  # new, or created but never written
            if self._durable:  # and the raft directory's own name, new with it
                _fsync_dir(os.path.dirname(self._path))
            return
        if head.startswith(records.V1_NAME):
            self._convert_v1()
            return
        if not head.startswith(records.MAGIC) or len(head) < records.FIRST_RECORD:
            raise ValueError(f"{self._path} is not a raft journal this shoal can read (unknown "
                             f"header); move it aside and restart: this manager then catches up "
                             f"from the leader (nothing was changed)")
        self._salt = records.read_header(head, self._path)
        self._file = PreallocatedFile(self._path)
        found = records.scan(self._file.read, self._file.size(), self._salt)
        self._entries, self._offsets, self._crcs = found.entries, found.offsets, found.crcs
        self._end = found.end
        if found.damage is not None:
            d = found.damage
            self._report(d)
            self._file.write(d.offset, b"\0" * max(d.bytes_dropped, len(records.END_MARK)))
            self._sync_now()

    def _report(self, d: records.Damage) -> None:
        after = f"after entry {self._entries[-1][1]}" if self._entries else "before any entry"
        log.warning("raft journal %s: %s at offset %d; dropped %d bytes (%d entries) %s and "
                    "kept %d entries; the leader sends what is missing again",
                    self._path, d.reason, d.offset, d.bytes_dropped, d.entries_dropped, after,
                    len(self._entries))

    def _convert_v1(self) -> None:
        with open(self._path, "rb") as f:
            old = records.scan_v1(f.read())
        self._entries = old.entries
        if old.damage is not None:
            self._report(old.damage)
        self._rewrite(old.entries)
        log.info("raft journal %s: converted %d entries from pysyncobj's format to shoal's "
                 "checksummed format", self._path, len(old.entries))

    def _rewrite(self, entries: list[records.Entry]) -> None:
        """Replace the whole journal by `entries`: a new file, synced, renamed over the old one.
        On failure (a full disk) the old file and the in-memory log stay as they were."""
        tmp = self._path + ".new"
        if os.path.exists(tmp):
            os.unlink(tmp)  # the scrap of a rewrite that crashed
        salt = secrets.randbits(32)
        new = None
        try:
            new = PreallocatedFile(tmp, defaultContent=records.header(salt))
            offsets, crcs, end, prev = [], [], records.FIRST_RECORD, salt
            chunks = []
            for command, index, term in entries:
                record, prev = records.encode(command, index, term, prev)
                chunks.append(record[:-len(records.END_MARK)])
                offsets.append(end)
                crcs.append(prev)
                end += len(chunks[-1])
            new.write(records.FIRST_RECORD, b"".join(chunks) + records.END_MARK)
            if self._durable:
                new.sync()
            os.replace(tmp, self._path)
        except BaseException:
            if new is not None:
                new._destroy()
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        if self._durable:
            try:
                _fsync_dir(self._path)
            except OSError as exc:  # the new file is in place but maybe not its name
                self._lost(f"fsync of the directory of {self._path} failed", exc)
        old = getattr(self, "_file", None)
        self._file = new
        if old is not None:
            old._destroy()
        self._entries, self._offsets, self._crcs = list(entries), offsets, crcs
        self._salt, self._end = salt, end
        self._dirty = False

    # ---- durability -------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        """Entries (or a truncation) not yet on stable storage."""
        return self._dirty

    @property
    def durable(self) -> bool:
        return self._durable

    def sync(self) -> bool:
        """fdatasync if anything changed since the last sync; True if it synced."""
        if not self._dirty:
            return False
        self._sync_now()
        return True

    def _sync_now(self) -> None:
        if not self._durable:
            return
        try:
            self._file.sync()
        except OSError as exc:
            self._lost(f"fdatasync of {self._path} failed", exc)
        self._dirty = False

    def _lost(self, what: str, exc: OSError) -> None:
        log.critical("raft journal: %s (%s): raft stops on this manager, which neither "
                     "acknowledges nor commits until shoald is restarted on a working disk",
                     what, os.strerror(exc.errno) if exc.errno else exc)
        raise DurabilityLost(f"{what}: {exc}") from None

    # ---- pysyncobj's Journal ----------------------------------------------------------------
    def add(self, command, idx, term) -> None:
        prev = self._crcs[-1] if self._crcs else self._salt
        command = _pysyncobj_pickle.to_bytes(command)
        record, crc = records.encode(command, idx, term, prev)
        self._file.write(self._end, record)  # may raise ENOSPC: nothing has changed yet
        self._entries.append((command, idx, term))
        self._offsets.append(self._end)
        self._crcs.append(crc)
        self._end += len(record) - len(records.END_MARK)
        self._dirty = self._durable

    def clear(self) -> None:
        self._rewrite([])

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802
        if entryFrom >= len(self._entries):
            return
        end = self._offsets[entryFrom]
        self._file.write(end, records.END_MARK)
        del self._entries[entryFrom:], self._offsets[entryFrom:], self._crcs[entryFrom:]
        self._end = end
        self._dirty = self._durable

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802
        self._rewrite(self._entries[entryTo:])

    def __getitem__(self, item):
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self._file._destroy()

    def flush(self) -> None:
        self.sync()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802, N803
        self._meta.values["raftCommitIndex"] = raftCommitIndex
        self._meta.saved = False

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        # Never past the last entry: after a cut tail, a commit index covering entries that are
        # gone would let a restarted lone leader treat its next appends as already committed.
        index = self._meta.values.get("raftCommitIndex", 1)
        return min(index, self._entries[-1][1] if self._entries else 1)

    def setCurrentTerm(self, term: int, votedForNodeId) -> None:  # noqa: N802, N803
        # Raft: the term and vote are on disk before any message reflecting them is sent.
        self._meta.values["currentTerm"] = term
        self._meta.values["votedForNodeId"] = votedForNodeId
        self._meta.store()

    def getCurrentTerm(self) -> int:  # noqa: N802
        return self._meta.values.get("currentTerm", 0)

    def getVotedForNodeId(self):  # noqa: N802
        return self._meta.values.get("votedForNodeId", None)

    def onOneSecondTimer(self) -> None:  # noqa: N802
        if not self._meta.saved:
            self._meta.store()


def create_journal(journal_file: Optional[str] = None):
    if journal_file is None:
        return MemoryJournal()
    return DurableJournal(journal_file)


def install() -> None:
    """Route pysyncobj's journals and snapshot replacements through this module (idempotent)."""
    _pysyncobj_journal.ResizableFile = PreallocatedFile
    pysyncobj.syncobj.createJournal = create_journal
    pysyncobj.serializer.atomicReplace = replace_durably
    pysyncobj.serializer.gzip = _StoredGzip


class _StoredGzip:
    """pysyncobj's snapshot file is gzip (level 9) of a pickle; ours is nearly all the store's
    sealed bytes, which do not compress. Level 0 writes the same gzip format, readable by any
    version, at the speed of a copy: at level 9 the raft thread spent seconds per snapshot
    of a large store, sending no heartbeat meanwhile (issue 20)."""

    @staticmethod
    def GzipFile(*args, **kwargs):  # noqa: N802 - the name pysyncobj calls
        kwargs.setdefault("compresslevel", 0)
        return gzip.GzipFile(*args, **kwargs)
