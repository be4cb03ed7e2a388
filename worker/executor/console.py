"""A container's terminal (ContainerSpec.tty) and its kept-open stdin (open_stdin).

tty: with `process.terminal`, runc makes the pseudo-terminal inside the container and sends its
master end over a unix socket (`--console-socket`, SCM_RIGHTS). We receive it on the event loop
and hand it to a `cat` that copies everything the container writes to its terminal into
stdout.log, the file a container without a terminal writes itself; the tailer turns it into log
records as usual. Why a process and not the event loop: the master must outlive this daemon.
Were the daemon the last holder, a daemon restart would close it, the terminal would hang up
and the container's session leader would get SIGHUP (most programs die of it). `cat` holds the
master for exactly the container's life: when the last process of the container closes its
terminal, reading the master fails with EIO and cat exits by itself. So across a daemon
restart a terminal's output keeps reaching stdout.log, and the adopted container's log goes
on where it stopped, like any other container's (lines written meanwhile get the time they
were read). What is recorded of the pump: console.json, its pid and start time.

open_stdin: the container's stdin is a FIFO (stdin.fifo in its directory) opened read-write:
reads block, as nobody writes, and never see end-of-file, since the container itself holds a
writer. Holding that writer in the daemon instead would end the container's stdin (and a
`cat` or `sh` reading it) at the daemon's next restart.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal as signals
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from common import errors
from common.fsutil import read_json
from worker.executor.container import _alive, _start_time, _suppress_os, _write_small

log = logging.getLogger("shoal.executor")

CONSOLE_STATE = "console.json"
STDIN_FIFO = "stdin.fifo"

# The pumps this process started, by pid, with a pidfd that tells when to reap them (they are
# its children). One started by an earlier daemon process was reparented away; its new parent
# reaps it.
_PUMPS: dict[int, tuple[subprocess.Popen, int]] = {}


class ConsoleSocket:
    """Where runc sends a terminal's master: a listening unix socket in a private directory
    of its own (sun_path holds 108 bytes, more than a container directory may take)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="shoal-console-", dir="/tmp")
        self.path = os.path.join(self.dir, "s")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(self.path)
            self.sock.listen(1)
            self.sock.setblocking(False)
        except OSError:
            self.close()
            raise

    async def receive(self) -> int:
        """The master's file descriptor, once runc has sent it."""
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self.sock)
        with conn:
            while True:
                try:
                    msg, fds, _, _ = socket.recv_fds(conn, 4096, 1)
                except BlockingIOError:
                    await _readable(conn.fileno())
                    continue
                for fd in fds:
                    os.set_inheritable(fd, False)  # no other child of ours may keep it open
                if fds:
                    return fds[0]
                if not msg:
                    raise ConnectionError("runc closed the console socket without sending the "
                                          "terminal")

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


# ---- the pump -------------------------------------------------------------------------------
def start_pump(cdir: Path, master: int, out: Optional[Path]) -> None:
    """Copy the terminal into `out` (appending; None: discard it) with a `cat` of its own
    session, so that neither this daemon's exit nor a signal to its process group ends it.
    Takes over `master`: closed here, held by the pump."""
    cat = shutil.which("cat")
    try:
        if cat is None:
            raise errors.FailedPrecondition("`cat` (coreutils) is missing on this node: a "
                                            "container with a terminal needs it")
        sink = os.open(out if out is not None else os.devnull, os.O_WRONLY | os.O_APPEND)
        try:
            proc = subprocess.Popen([cat], stdin=master, stdout=sink,
                                    stderr=subprocess.DEVNULL, close_fds=True,
                                    start_new_session=True)
        finally:
            os.close(sink)
    finally:
        os.close(master)
    _write_small(cdir / CONSOLE_STATE, {"pid": proc.pid, "start": _start_time(proc.pid)})
    _watch(proc)


def _watch(proc: subprocess.Popen) -> None:
    """Reap the pump as soon as it exits (with the container), not when the container goes."""
    pidfd = os.pidfd_open(proc.pid)
    _PUMPS[proc.pid] = (proc, pidfd)
    asyncio.get_running_loop().add_reader(pidfd, _exited, proc.pid)


def _exited(pid: int) -> None:
    reap_pump((pid, 0))
    if pid in _PUMPS:  # readable, not reapable yet: look again in a moment, not in a busy loop
        loop = asyncio.get_running_loop()
        loop.remove_reader(_PUMPS[pid][1])
        loop.call_later(0.05, _exited, pid)


def pump_of(cdir: Path) -> Optional[tuple[int, int]]:
    """(pid, start time) of the container's terminal pump, None if it has no terminal."""
    st = read_json(cdir / CONSOLE_STATE, None)
    if not isinstance(st, dict) or not isinstance(st.get("pid"), int):
        return None
    return st["pid"], int(st.get("start") or 0)


def pump_running(pump: Optional[tuple[int, int]]) -> bool:
    return pump is not None and _alive(*pump)


def reap_pump(pump: Optional[tuple[int, int]]) -> None:
    """Collect the pump's exit status if it was our child and has exited."""
    entry = _PUMPS.get(pump[0]) if pump is not None else None
    if entry is None or entry[0].poll() is None:
        return
    proc, pidfd = _PUMPS.pop(entry[0].pid)
    with contextlib.suppress(RuntimeError):  # no loop running: the one that watched is gone
        asyncio.get_running_loop().remove_reader(pidfd)
    os.close(pidfd)
    log.debug("terminal pump %d exited (%s)", proc.pid, proc.returncode)


async def stop_pump(cdir: Path) -> None:
    """Kill the pump if it still runs (the container is going away) and reap it."""
    pump = pump_of(cdir)
    if pump_running(pump):
        assert pump is not None
        try:
            fd = os.pidfd_open(pump[0])
        except ProcessLookupError:
            fd = -1
        if fd >= 0:
            try:
                if _start_time(pump[0]) == pump[1]:  # a pidfd names that very process
                    signals.pidfd_send_signal(fd, signals.SIGKILL)
                    await asyncio.wait_for(_readable(fd), 5)
            except (OSError, asyncio.TimeoutError) as exc:
                log.warning("terminal pump %d did not stop: %s", pump[0], exc)
            finally:
                os.close(fd)
    reap_pump(pump)


# ---- stdin ----------------------------------------------------------------------------------
def open_stdin(cdir: Path) -> int:
    """The container's kept-open stdin: its FIFO, opened read-write (never blocks, never
    reaches end-of-file)."""
    fifo = cdir / STDIN_FIFO
    with _suppress_os():
        os.mkfifo(fifo, 0o600)
    fd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise errors.FailedPrecondition(f"{fifo} is not a FIFO")
    return fd
