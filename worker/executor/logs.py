"""Container logs: stdout.log/stderr.log copied into container.log as timestamped records.

The log driver (TaskSpec.log_driver) is Docker's:
- json-file (and no driver at all): container.log holds the records. With `max-size`
  (Docker's sizes: 10k, 10m, 1g, decimal as in Docker) it is rotated before a record would
  take it past that size: container.log.1 is the newest rotated file, up to `max-file` files
  in all (default 1: the log starts over). stdout.log/stderr.log are then freed (hole-punched)
  behind what was copied, so that they stop taking disk space too. A container that names no
  log options gets 10m x 3 (DEFAULT_POLICY): a chatty task never fills the node's disk (Docker
  leaves its json-file unbounded; its docs advise these limits, and shoal takes them).
- none: the container's stdout and stderr go to /dev/null; there is no log to read.

Readers see container.log and its rotated files as one stream with *logical offsets*: bytes
ever written to the log. `base` (in logpos.json) is where container.log starts in it; the
rotated files precede it back to back. A follower that sees its file rotated away re-opens
and finds its offset again (lines rotated out of existence meanwhile are lost, as in Docker).
"""
from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from common import errors
from common.fsutil import read_json
from common.linux import libc
from worker.executor.console import pump_of, pump_running, reap_pump
from worker.executor.container import LogLine, _Container, _write_small

log = logging.getLogger("shoal.executor")

STREAMS = ("stdout", "stderr")
MAX_LINE = 64 * 1024       # longer lines are cut into pieces of this size
LOG = "container.log"
# After its init exited, how long a container's terminal pump may take to copy the last output
PUMP_GRACE = 2.0
PUNCH_EVERY = 64 * 1024    # free the raw files' copied part in steps of this much at least
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 1, 2


# ---- the log driver -------------------------------------------------------------------------
@dataclass(frozen=True)
class LogPolicy:
    keep: bool = True                 # False: driver "none"
    max_size: Optional[int] = None    # bytes of container.log before it rotates
    max_files: int = 1                # container.log and its rotated files, in all


DEFAULT_MAX_SIZE = 10_000_000   # Docker's "10m" (decimal)
DEFAULT_MAX_FILES = 3
DEFAULT_POLICY = LogPolicy(max_size=DEFAULT_MAX_SIZE, max_files=DEFAULT_MAX_FILES)


def log_policy(driver: object) -> LogPolicy:
    """The policy of a LogDriver (or its plain form, as shoal.json keeps it). No driver, or
    json-file without options: DEFAULT_POLICY. InvalidArgument naming the option for what
    Docker would refuse too."""
    if driver is None:
        return DEFAULT_POLICY
    name = getattr(driver, "name", None) if not isinstance(driver, dict) else driver.get("name")
    options = (getattr(driver, "options", None) if not isinstance(driver, dict)
               else driver.get("options")) or {}
    if name == "none":
        if options:
            raise errors.InvalidArgument(f"log driver none takes no options (got "
                                         f"{', '.join(sorted(options))})", field="log_driver")
        return LogPolicy(keep=False)
    if name not in ("json-file", "", None):
        raise errors.InvalidArgument(f"unsupported log driver {name!r}: json-file or none",
                                     field="log_driver")
    unknown = sorted(set(options) - {"max-size", "max-file"})
    if unknown:
        raise errors.InvalidArgument(f"unknown log option {unknown[0]!r} for the json-file log "
                                     "driver: max-size and max-file only", field="log_driver")
    if not options:
        return DEFAULT_POLICY
    max_size = _docker_size(options["max-size"]) if "max-size" in options else None
    max_files = _max_files(options.get("max-file", "1"))
    return LogPolicy(max_size=max_size, max_files=max_files)


_SIZE = re.compile(r"^(\d+(?:\.\d+)*) ?([kmgtp])?i?b?$", re.IGNORECASE)
_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}


def _docker_size(text: str) -> int:
    """Docker's max-size (go-units FromHumanSize): decimal units, 10k = 10000 bytes."""
    match = _SIZE.match(str(text).strip())
    if not match:
        raise errors.InvalidArgument(f"log option max-size {text!r}: a size such as 10k, 10m "
                                     "or 1g (or bytes)", field="log_driver")
    try:
        size = int(float(match.group(1)) * _DECIMAL[(match.group(2) or "").lower()])
    except ValueError:  # "1.2.3" passes Docker's pattern and fails its number parse
        size = 0
    if size <= 0:
        raise errors.InvalidArgument(f"log option max-size {text!r} must be a positive size",
                                     field="log_driver")
    return size


def _max_files(text: str) -> int:
    try:
        n = int(str(text).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise errors.InvalidArgument(f"log option max-file {text!r}: a whole number, at least 1",
                                     field="log_driver")
    return n


def policy_of(c: _Container) -> LogPolicy:
    """A stored container's policy (checked when it was created)."""
    try:
        return log_policy(c.config.get("log_driver"))
    except errors.InvalidArgument:
        return DEFAULT_POLICY


def refuse_reading(c: _Container) -> None:
    """Docker's refusal for a container that keeps no log."""
    if not policy_of(c).keep:
        raise errors.FailedPrecondition(
            f"container {c.id}: configured logging driver does not support reading (its log "
            "driver is none: nothing it writes is kept)", field="log_driver")


# ---- copying --------------------------------------------------------------------------------
class _LogTail:
    """Reads a container's stdout.log/stderr.log from where container.log stopped."""

    def __init__(self, path: Path, policy: LogPolicy = LogPolicy()) -> None:
        self.dir = path
        self.policy = policy
        self.pty_pump = pump_of(path)  # the terminal's pump, which writes stdout.log
        # A terminal ends lines with \r\n (ONLCR): the \r is the terminal's, not the output's
        self.tty = self.pty_pump is not None
        saved = read_json(path / "logpos.json", {}) or {}
        # what container.log holds, per stream, and where it starts in the log's offsets
        self.pos = {s: int(saved.get(s, 0)) for s in STREAMS}
        self.base = int(saved.get("base", 0))
        self.partial = {s: b"" for s in STREAMS}  # read, but no newline yet
        self.punched = {s: 0 for s in STREAMS}
        self.fds: dict[str, int] = {}
        self.out = -1
        self.size = 0
        raw_mode = os.O_RDWR if policy.max_size else os.O_RDONLY  # punching holes writes
        try:
            for s in STREAMS:
                self.fds[s] = os.open(path / f"{s}.log", raw_mode | os.O_CREAT, 0o640)
            self._open_out()
        except OSError:
            self.close()
            raise

    def _open_out(self) -> None:
        self.out = os.open(self.dir / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.size = os.fstat(self.out).st_size

    def source_done(self, exited: bool) -> bool:
        """All output is in the raw files: the init exited, and its terminal's pump (if any)
        has copied the rest."""
        return exited and not pump_running(self.pty_pump)

    def pump(self, final: bool) -> tuple[bool, bool]:
        """Copy what is new; returns (copied anything, more is waiting)."""
        now = time.time()
        records: list[bytes] = []
        more = False
        for s, fd in self.fds.items():
            while True:
                chunk = os.pread(fd, 1 << 16, self.pos[s] + len(self.partial[s]))
                if not chunk:
                    break
                data = self.partial[s] + chunk
                lines = data.split(b"\n")
                rest = lines.pop()
                while len(rest) > MAX_LINE:
                    lines.append(rest[:MAX_LINE])
                    rest = rest[MAX_LINE:]
                records += [self._record(now, s, line) for line in lines]
                self.pos[s] += len(data) - len(rest)
                self.partial[s] = rest
                if len(records) >= 5000:  # bounded batches for chatty containers
                    more = True
                    break
        if final and not more:
            for s in STREAMS:  # the last words, even without a newline
                if self.partial[s]:
                    records.append(self._record(now, s, self.partial[s]))
                    self.pos[s] += len(self.partial[s])
                    self.partial[s] = b""
        if records:
            self._write(records)
            # pos counts what container.log holds: a restart resumes exactly there
            _write_small(self.dir / "logpos.json", {**self.pos, "base": self.base},
                         durable=False)
            self._punch()
        return bool(records), more

    def _record(self, now: float, stream: str, line: bytes) -> bytes:
        if self.tty and line.endswith(b"\r"):
            line = line[:-1]
        return _log_record(now, stream, line)

    def _write(self, records: list[bytes]) -> None:
        limit = self.policy.max_size
        batch: list[bytes] = []
        pending = 0
        for rec in records:
            if limit is not None and self.size + pending > 0 and \
                    self.size + pending + len(rec) > limit:
                self._flush(batch, pending)
                batch, pending = [], 0
                self._rotate()
            batch.append(rec)
            pending += len(rec)
        self._flush(batch, pending)

    def _flush(self, batch: list[bytes], size: int) -> None:
        if batch:
            _write_all(self.out, b"".join(batch))
            self.size += size

    def _rotate(self) -> None:
        """container.log becomes container.log.1 (the others move one up, the oldest goes)."""
        os.close(self.out)
        self.out = -1
        current = self.dir / LOG
        if self.policy.max_files > 1:
            for k in range(self.policy.max_files - 1, 1, -1):
                older = rotated(self.dir, k - 1)
                if older.exists():
                    os.replace(older, rotated(self.dir, k))
            os.replace(current, rotated(self.dir, 1))
        else:
            os.unlink(current)
        self.base += self.size
        self._open_out()

    def _punch(self) -> None:
        """With rotation, free the raw files' blocks that container.log already holds (the
        container appends to them for ever; offsets stay valid, the space comes back)."""
        if not self.policy.max_size:
            return
        for s, fd in self.fds.items():
            upto = self.pos[s] & ~4095
            if upto - self.punched[s] >= PUNCH_EVERY:
                if _punch_hole(fd, upto):
                    self.punched[s] = upto

    def close(self) -> None:
        for fd in [*self.fds.values(), self.out]:
            if fd >= 0:
                os.close(fd)
        self.fds = {}
        self.out = -1


def _punch_hole(fd: int, length: int) -> bool:
    fallocate = getattr(libc, "fallocate64", None) or libc.fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, length) == 0:
        return True
    log.debug("punching log hole: errno %d", ctypes.get_errno())  # not every fs can: fine
    return False


async def copy_logs(c: _Container, tail: _LogTail) -> None:
    """Copy new lines of stdout.log/stderr.log into container.log with a timestamp, until
    the container has exited and everything it wrote is copied."""
    delay = 0.05
    exit_seen: Optional[float] = None
    try:
        while True:
            exited = c.exited.is_set()
            if exited and exit_seen is None:
                exit_seen = time.monotonic()
            # decided before reading: all output is in by now (a stuck pump is not waited for)
            final = tail.source_done(exited) or (
                exit_seen is not None and time.monotonic() - exit_seen > PUMP_GRACE)
            got, more = tail.pump(final)
            if final and not more:
                break
            if more:
                await asyncio.sleep(0)
                continue
            delay = 0.05 if got else min(delay * 1.5, 0.25)
            await asyncio.sleep(delay)
    except FileNotFoundError:
        pass  # the container directory went away (removed)
    except OSError as exc:  # e.g. a full disk: the container runs on, its logs stop here
        log.warning("container %s: log copying stopped: %s", c.id[:12], exc)
    finally:
        tail.close()
        reap_pump(tail.pty_pump)
        if c.tail is tail:
            c.tail = None
        c.tail_done.set()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _log_record(ts: float, stream: str, line: bytes) -> bytes:
    text = line.decode("utf-8", errors="replace")
    return json.dumps({"t": round(ts, 6), "s": stream, "l": text},
                      ensure_ascii=False).encode() + b"\n"


def _parse_record(raw: bytes) -> Optional[LogLine]:
    try:
        rec = json.loads(raw)
        return LogLine(ts=float(rec["t"]), stream=rec["s"], line=rec["l"])
    except (ValueError, KeyError, TypeError):
        return None


# ---- reading --------------------------------------------------------------------------------
def rotated(cdir: Path, k: int) -> Path:
    return cdir / f"{LOG}.{k}"


def stored_base(cdir: Path) -> int:
    pos = read_json(cdir / "logpos.json", {}) or {}
    return int(pos.get("base", 0)) if isinstance(pos, dict) else 0


def log_base(c: _Container) -> int:
    """Where container.log starts in the log's logical offsets."""
    tail = c.tail
    return tail.base if isinstance(tail, _LogTail) else stored_base(c.dir)


def log_end(c: _Container) -> int:
    """The logical offset of the log's end (where the next record goes)."""
    try:
        size = os.path.getsize(c.dir / LOG)
    except OSError:
        size = 0
    return log_base(c) + size


@dataclass
class _Segment:
    fd: int
    base: int  # the logical offset of its first byte


class LogReader:
    """container.log and its rotated files, read in order as one stream of records."""

    def __init__(self, cdir: Path, base: Callable[[], int]) -> None:
        self.dir = cdir
        self.base = base
        self.segments: list[_Segment] = []
        self.i = 0          # the segment being read
        self.pos = 0        # logical offset of the next byte to read
        self.pending = b""  # read, no newline yet
        self._open()
        self.pos = self.segments[0].base if self.segments else 0

    def _open(self) -> None:
        """Opens every file at one moment (no await in here: the tailer, which rotates, runs
        on this event loop)."""
        self.close()
        try:
            current = os.open(self.dir / LOG, os.O_RDONLY)
        except FileNotFoundError:
            return
        start = self.base()
        segments = [_Segment(current, start)]
        k = 1
        while True:
            try:
                fd = os.open(rotated(self.dir, k), os.O_RDONLY)
            except FileNotFoundError:
                break
            start -= os.fstat(fd).st_size
            segments.insert(0, _Segment(fd, start))
            k += 1
        self.segments = segments

    def seek_tail(self, n: int) -> None:
        """To where the last n lines begin."""
        need = n
        for i in range(len(self.segments) - 1, -1, -1):
            offset, found = _tail_start(self.segments[i].fd, need)
            if found >= need or i == 0:
                self.i, self.pos = i, self.segments[i].base + offset
                return
            need -= found

    def seek_since(self, since: float) -> None:
        """Past the rotated files whose last record is older than `since`: they are skipped
        unread (records are written in time order). Never moves back (after seek_tail)."""
        for i in range(self.i, len(self.segments) - 1):
            last = _last_record(self.segments[i].fd)
            if last is not None and last.ts >= since:
                return
            nxt = self.segments[i + 1]
            if nxt.base > self.pos:
                self.i, self.pos, self.pending = i + 1, nxt.base, b""

    def read(self, end: Optional[int] = None) -> Optional[list[LogLine]]:
        """The next records (up to logical offset `end`); None when there is nothing new."""
        if not self.segments:
            self._reopen()  # no log file yet when we opened
        while self.segments:
            seg = self.segments[self.i]
            size = 1 << 16 if end is None else min(1 << 16, end - self.pos)
            if size <= 0:
                return None
            chunk = os.pread(seg.fd, size, self.pos - seg.base)
            if chunk:
                self.pos += len(chunk)
                lines = (self.pending + chunk).split(b"\n")
                self.pending = lines.pop()
                return [line for line in map(_parse_record, lines) if line is not None]
            if self.i + 1 < len(self.segments):
                self.i += 1
                self.pending = b""  # files hold whole records: nothing spans two
                continue
            if not self._rotated_away(seg):
                return None
            self._reopen()
        return None

    def _rotated_away(self, seg: _Segment) -> bool:
        try:
            return os.stat(self.dir / LOG).st_ino != os.fstat(seg.fd).st_ino
        except FileNotFoundError:
            return False  # the container is being removed: nothing more comes

    def _reopen(self) -> None:
        self._open()
        self.pending = b""
        if not self.segments:
            return
        if self.pos < self.segments[0].base:  # what we had not read yet was rotated out
            self.pos = self.segments[0].base
        self.i = max(i for i, s in enumerate(self.segments) if s.base <= self.pos)

    def close(self) -> None:
        for seg in self.segments:
            os.close(seg.fd)
        self.segments = []


def _last_record(fd: int) -> Optional[LogLine]:
    """A file's last record (None for an empty or unreadable one)."""
    start = _tail_offset(fd, 1)
    return _parse_record(os.pread(fd, os.fstat(fd).st_size - start, start).rstrip(b"\n"))


@dataclass(frozen=True)
class LogWindow:
    """`logs --since/--until` (Unix seconds, both inclusive, as Docker's)."""
    since: Optional[float] = None
    until: Optional[float] = None

    def before(self, line: LogLine) -> bool:
        return self.since is not None and line.ts < self.since

    def after(self, line: LogLine) -> bool:
        return self.until is not None and line.ts > self.until

    def over(self, now: float) -> bool:
        """A follower stops once `until` has passed: nothing later may be shown."""
        return self.until is not None and now > self.until


def _tail_start(fd: int, n: int) -> tuple[int, int]:
    """(offset where the file's last n lines start, how many lines that is): fewer than n,
    from offset 0, when the file has fewer."""
    end = os.fstat(fd).st_size
    if n <= 0:
        return end, 0
    pos = end
    seen = 0
    block = 1 << 16
    while pos > 0:
        start = max(0, pos - block)
        data = os.pread(fd, pos - start, start)
        # the file ends with "\n": the last newline closes the last line, it starts none
        i = len(data)
        while (i := data.rfind(b"\n", 0, i)) >= 0:
            if start + i != end - 1:
                seen += 1
                if seen == n:
                    return start + i + 1, n
        pos = start
    return 0, seen + 1 if end > 0 else 0


def _tail_offset(fd: int, n: int) -> int:
    """Offset where the last n lines of the file start."""
    return _tail_start(fd, n)[0]
