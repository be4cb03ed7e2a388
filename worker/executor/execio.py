"""An interactive exec: a command run in a running container by `runc exec`, its stdio streamed
over an exec websocket (common/execstream.py), for `shoal service exec` and `container exec -i/-t`.

With a terminal, `runc exec --tty` runs in the foreground with a pseudo-terminal of ours as its
stdin and stdout (raw): runc makes the container's terminal and copies between the two, and the
exit status it returns is the command's. Why not `--console-socket`, as `run -t` does
(console.py): runc accepts it only with `--detach`, and a detached command's exit status would
come to us, the subreaper, as an orphan's, racing reap_orphans. Input goes through as typed, so
the container's terminal does what a local one does: echo, ^C as SIGINT to the command's
foreground process group, ^D as end of input. A resize is TIOCSWINSZ on our terminal, then
SIGWINCH to runc, which copies the size onto the container's terminal. runc copies the first
size once the command runs, so a command that asks at once can see 0x0 (docker exec has the
same race; its CLI resizes again over the first second): we signal runc again over the first
second after the command started (_size_again).

Without a terminal, runc gets pipes: stdin (only with -i; else /dev/null, so a command reading
it ends at once), stdout and stderr kept apart.

The exit status is runc's, which is the command's (128+N when a signal N killed it, as a
shell says). When the client goes away first, the command is killed (SIGKILL to its pid, read
from runc's pid file: killing runc instead would orphan it to us, the subreaper, see
Executor.exec), so no exec outlives the stream that started it.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import secrets
import signal as signals
import struct
import subprocess
import termios
import tty
from pathlib import Path
from typing import AsyncIterator, Optional

from aiohttp import web

from common import errors, execstream as xs
from worker.executor.console import _readable

log = logging.getLogger("shoal.executor")

_CHUNK = 1 << 16
# After the command exited, how long its terminal may still deliver what it wrote (a process
# it left in the background can hold the terminal open for ever: not waited for).
_DRAIN = 1.0


class ExecProcess:
    """One `runc exec` with its stdio: start(), then output(), write(), resize(), close_stdin(),
    wait(); kill() when the client is gone."""

    def __init__(self, runtime: str, state_dir: Path, cid: str, cdir: Path, argv: list[str],
                 *, tty: bool, stdin: bool) -> None:
        if not argv:
            raise errors.InvalidArgument("exec needs a command", field="argv")
        self.runtime, self.state_dir, self.cid = runtime, state_dir, cid
        self.argv, self.tty, self.stdin = list(argv), tty, stdin
        self.pid_file = cdir / f"exec-{secrets.token_hex(4)}.pid"
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.master = -1
        self._sizing: Optional[asyncio.Future] = None

    async def start(self, rows: int = 0, cols: int = 0) -> None:
        base = [self.runtime, "--root", str(self.state_dir), "exec",
                "--pid-file", str(self.pid_file)]
        if not self.tty:
            self.proc = await asyncio.create_subprocess_exec(
                *base, self.cid, *self.argv,
                stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            return
        # runc in the foreground copies between its own stdio and the container's terminal,
        # and reads its size from its stdio on SIGWINCH: so it gets a terminal of ours.
        self.master, slave = os.openpty()
        try:
            tty.setraw(slave)  # bytes pass unchanged both ways (runc sets it raw too)
            if rows and cols:
                self._set_size(rows, cols)
            self.proc = await asyncio.create_subprocess_exec(
                *base, "--tty", self.cid, *self.argv, stdin=slave, stdout=slave,
                stderr=subprocess.PIPE, start_new_session=True)
        except BaseException:
            os.close(self.master)
            self.master = -1
            raise
        finally:
            os.close(slave)  # runc holds it: its end is the end of our master's reads
        os.set_blocking(self.master, False)
        self._sizing = asyncio.ensure_future(self._size_again())

    async def _size_again(self) -> None:
        """runc copies our size onto the container's terminal once the command runs, which
        races a command that asks at once (as `docker exec -t` does, whose CLI resizes again
        over its first second): tell runc again in the first moments after the command has
        started (runc writes its pid file then; on a loaded machine that can take seconds, so
        a fixed first second after runc's own start is not enough)."""
        waited = 0.0
        while not self.pid_file.exists() and waited < 30.0:
            if self.proc is None or self.proc.returncode is not None:
                return
            await asyncio.sleep(0.02)
            waited += 0.02
        for delay in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8):
            await asyncio.sleep(delay)
            if self.proc is None or self.proc.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signals.SIGWINCH)

    # ---- input ------------------------------------------------------------------------------
    async def write(self, data: bytes) -> None:
        if not data:
            return
        if self.tty:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self.master, view)
                except BlockingIOError:
                    await _writable(self.master)
                    continue
                except OSError as exc:
                    if exc.errno == errno.EIO:  # the terminal is gone: input has nowhere to go
                        return
                    raise
                view = view[n:]
            return
        stdin = self.proc.stdin if self.proc is not None else None
        if stdin is None:
            raise errors.InvalidArgument("this exec was started without stdin (-i)")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(data)
            await stdin.drain()

    async def close_stdin(self) -> None:
        """End of input: ^D on a terminal (its line discipline's end of file), else the pipe
        closed."""
        if self.tty:
            await self.write(b"\x04")
        elif self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()

    def resize(self, rows: int, cols: int) -> None:
        if self.master < 0 or self.proc is None or self.proc.returncode is not None:
            return  # no terminal (or no command any more): nothing to size
        self._set_size(rows, cols)
        # runc passes our terminal's size on to the container's when told
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signals.SIGWINCH)

    def _set_size(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # ---- output -----------------------------------------------------------------------------
    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        """(channel, bytes) as the command writes them, until its output ends. With a
        terminal everything the command writes comes on stdout (runc's own messages are
        read after its exit: runc_errors)."""
        assert self.proc is not None
        if self.tty:
            async for chunk in self._terminal():
                yield xs.STDOUT, chunk
            return
        queue: asyncio.Queue = asyncio.Queue(maxsize=64)

        async def pump(chunks: AsyncIterator[bytes], channel: int) -> None:
            try:
                async for chunk in chunks:
                    await queue.put((channel, chunk))
            finally:
                await queue.put(None)
        pumps = [asyncio.ensure_future(pump(_stream(self.proc.stdout), xs.STDOUT)),
                 asyncio.ensure_future(pump(_stream(self.proc.stderr), xs.STDERR))]
        try:
            ended = 0
            while ended < len(pumps):
                item = await queue.get()
                if item is None:
                    ended += 1
                else:
                    yield item
        finally:
            for p in pumps:
                p.cancel()

    async def _terminal(self) -> AsyncIterator[bytes]:
        while True:
            try:
                chunk = os.read(self.master, _CHUNK)
            except BlockingIOError:
                await _readable(self.master)
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:  # every holder of the terminal closed it
                    return
                raise
            if not chunk:
                return
            yield chunk

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def runc_errors(self) -> str:
        """With a terminal, what runc itself said (its failures are not on the terminal)."""
        if not self.tty or self.proc is None or self.proc.stderr is None:
            return ""
        return (await self.proc.stderr.read()).decode(errors="replace")

    # ---- the end ----------------------------------------------------------------------------
    async def kill(self) -> None:
        """The client is gone: the command goes too (runc then reaps it and exits)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        # runc writes the pid file just after the command starts, which may be after its first
        # output: a client gone that fast finds no pid yet
        for _ in range(100):
            if self.pid_file.exists() or self.proc.returncode is not None:
                break
            await asyncio.sleep(0.02)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.pid_file.read_text().strip()), signals.SIGKILL)
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    def close(self) -> None:
        if self._sizing is not None:
            self._sizing.cancel()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        self.pid_file.unlink(missing_ok=True)


async def _writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(fd)


async def _stream(reader: Optional[asyncio.StreamReader]) -> AsyncIterator[bytes]:
    while reader is not None and (chunk := await reader.read(_CHUNK)):
        yield chunk


# ---- the stream ---------------------------------------------------------------------------
async def serve(ws: web.WebSocketResponse, process: ExecProcess, start: xs.Start) -> int:
    """Run `process` with the client on `ws` (its start frame already read): input and resizes
    from the client, output to it, and last its exit frame. Returns the exit status (-1: the
    client went away and the command was killed)."""
    await process.start(start.rows, start.cols)
    client_gone = asyncio.Event()

    async def from_client() -> None:
        try:
            async for frame in xs.frames(ws):
                if isinstance(frame, xs.Data) and frame.channel == xs.STDIN:
                    if process.stdin or process.tty:
                        await process.write(frame.data)
                elif isinstance(frame, xs.Resize):
                    process.resize(frame.rows, frame.cols)
                elif isinstance(frame, xs.Eof):
                    await process.close_stdin()
                else:
                    raise errors.InvalidArgument(f"a client may not send {frame!r} here")
        except errors.ShoalError as exc:
            log.warning("exec in %s: bad frame from the client: %s", process.cid, exc.message)
        finally:
            client_gone.set()

    async def to_client() -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client went away
            async for channel, chunk in process.output():
                await xs.send(ws, xs.Data(channel, chunk))

    reader = asyncio.ensure_future(from_client())
    writer = asyncio.ensure_future(to_client())
    exited = asyncio.ensure_future(process.wait())
    gone = asyncio.ensure_future(client_gone.wait())
    try:
        await asyncio.wait([exited, gone], return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            await process.kill()
            return -1
        code = exited.result()
        try:  # what the command wrote just before it exited is still on its way
            await asyncio.wait_for(asyncio.shield(writer), _DRAIN)
        except asyncio.TimeoutError:
            pass
        said = await process.runc_errors()
        with contextlib.suppress(ConnectionError, RuntimeError):
            if said.strip():
                await xs.send(ws, xs.Data(xs.STDERR, said.encode()))
            await xs.send(ws, xs.Exit(code & 0xFF))
        return code
    finally:
        for t in (reader, writer, exited, gone):
            t.cancel()
        for t in (reader, writer, exited, gone):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if process.proc is not None and process.proc.returncode is None:
            await process.kill()
        process.close()
        await ws.close()
