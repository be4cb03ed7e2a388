"""Container logs: stdout.log/stderr.log copied into container.log as timestamped records."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

from common.fsutil import read_json
from worker.executor.container import LogLine, _Container, _write_small

log = logging.getLogger("shoal.executor")

STREAMS = ("stdout", "stderr")
MAX_LINE = 64 * 1024       # longer lines are cut into pieces of this size


class _LogTail:
    """Reads a container's stdout.log/stderr.log from where container.log stopped."""

    def __init__(self, path: Path) -> None:
        self.dir = path
        self.pos = {s: 0 for s in STREAMS}  # what container.log holds, per stream
        self.pos.update(read_json(path / "logpos.json", {}) or {})
        self.partial = {s: b"" for s in STREAMS}  # read, but no newline yet
        self.fds: dict[str, int] = {}
        self.out = -1
        try:
            for s in STREAMS:
                self.fds[s] = os.open(path / f"{s}.log", os.O_RDONLY | os.O_CREAT, 0o640)
            self.out = os.open(path / "container.log",
                               os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError:
            self.close()
            raise

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
                records += [_log_record(now, s, line) for line in lines]
                self.pos[s] += len(data) - len(rest)
                self.partial[s] = rest
                if len(records) >= 5000:  # bounded batches for chatty containers
                    more = True
                    break
        if final and not more:
            for s in STREAMS:  # the last words, even without a newline
                if self.partial[s]:
                    records.append(_log_record(now, s, self.partial[s]))
                    self.pos[s] += len(self.partial[s])
                    self.partial[s] = b""
        if records:
            _write_all(self.out, b"".join(records))
            # pos counts what container.log holds: a restart resumes exactly there
            _write_small(self.dir / "logpos.json", self.pos, durable=False)
        return bool(records), more

    def close(self) -> None:
        for fd in [*self.fds.values(), self.out]:
            if fd >= 0:
                os.close(fd)
        self.fds = {}
        self.out = -1


async def copy_logs(c: _Container, tail: _LogTail) -> None:
    """Copy new lines of stdout.log/stderr.log into container.log with a timestamp, until
    the container has exited and everything it wrote is copied."""
    delay = 0.05
    try:
        while True:
            final = c.exited.is_set()  # decided before reading: all output is in by now
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


def _tail_offset(fd: int, n: int) -> int:
    """Offset where the last n lines of the file start."""
    end = os.fstat(fd).st_size
    if n <= 0:
        return end
    pos = end
    seen = 0
    block = 1 << 16
    while pos > 0:
        start = max(0, pos - block)
        data = os.pread(fd, pos - start, start)
        # the file ends with "\n": the last newline closes the last line, it starts none
        for i in range(len(data) - 1, -1, -1):
            if data[i] == 0x0A and start + i != end - 1:
                seen += 1
                if seen == n:
                    return start + i + 1
        pos = start
    return 0

