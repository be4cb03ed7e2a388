"""The CLI's side of an interactive exec's stream (commands: shoal/cli/exec.py): one websocket
to the local daemon (frames: common/execstream.py). Imported only when an exec runs: aiohttp
would slow every other command's start.

With -t and a terminal on stdin, the local terminal goes raw for the exec's life (restored on
every way out), so every key, ^C included, reaches the command's terminal, which echoes and
signals as a local one would; SIGWINCH sends the new size. With -i, stdin is streamed as it
comes and its end sent as such. The command's exit status becomes the CLI's (as `docker exec`).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from typing import Optional

from common import errors, execstream as xs
from common.httpclient import Endpoint
from shoal.cli.client import Cli

_CHUNK = 1 << 16


def _size() -> tuple[int, int]:
    for fd in (sys.stdout.fileno(), sys.stdin.fileno()):
        with contextlib.suppress(OSError):
            cols, rows = os.get_terminal_size(fd)
            if rows and cols:
                return rows, cols
    return 24, 80


def run_exec(cli: Cli, path: str, argv: list[str], *, tty_: bool, interactive: bool) -> int:
    """Run the exec the websocket at `path` serves; its exit status."""
    if cli.remote is not None:
        raise errors.InvalidArgument(
            "exec is not served over -H/SHOAL_HOST yet: run it on a manager's host (it reaches "
            "the task on any node), or 'ssh HOST shoal service exec ...'")
    if not argv:
        raise errors.InvalidArgument("exec needs a command: ... -- CMD [ARG...]", field="argv")
    stdin_fd = sys.stdin.fileno()
    raw = tty_ and interactive and os.isatty(stdin_fd)
    saved = termios.tcgetattr(stdin_fd) if raw else None
    try:
        if raw:
            tty.setraw(stdin_fd)
        return asyncio.run(_session(cli.socket_path, path, argv, tty_, interactive))
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)


async def _session(socket_path: str, path: str, argv: list[str], tty_: bool,
                   interactive: bool) -> int:
    rows, cols = _size() if tty_ else (0, 0)
    loop = asyncio.get_running_loop()
    async with xs.dial(Endpoint(unix_path=socket_path), path) as ws:
        await xs.send(ws, xs.Start(argv, tty=tty_, stdin=interactive, rows=rows, cols=cols))
        feeder: Optional[asyncio.Task] = None
        if interactive:
            feeder = asyncio.ensure_future(_feed_stdin(ws))
        if tty_:
            loop.add_signal_handler(signal.SIGWINCH, lambda: asyncio.ensure_future(
                _send_quietly(ws, xs.Resize(*_size()))))
        try:
            async for frame in xs.frames(ws):
                if isinstance(frame, xs.Data):
                    fd = 2 if frame.channel == xs.STDERR else 1
                    _write_all(fd, frame.data)
                elif isinstance(frame, xs.Exit):
                    return frame.code
                elif isinstance(frame, xs.Error):
                    raise xs.error_for(frame.status, frame.message)
            raise errors.Unavailable("the exec stream ended without the command's exit status "
                                     "(the daemon or the task's node went away)")
        finally:
            if tty_:
                loop.remove_signal_handler(signal.SIGWINCH)
            if feeder is not None:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await feeder


async def _send_quietly(ws, frame: xs.Frame) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await xs.send(ws, frame)


async def _feed_stdin(ws) -> None:
    fd = sys.stdin.fileno()
    loop = asyncio.get_running_loop()
    try:
        ready = asyncio.Event()
        loop.add_reader(fd, ready.set)
    except PermissionError:  # a regular file: always readable, epoll refuses it
        while chunk := os.read(fd, _CHUNK):
            await xs.send(ws, xs.Data(xs.STDIN, chunk))
        await xs.send(ws, xs.Eof())
        return
    # Non-blocking while we read it: a readiness callback queued before our last read can
    # wake us with nothing left, and a blocking read would then stall the whole loop.
    was_blocking = os.get_blocking(fd)
    os.set_blocking(fd, False)
    try:
        while True:
            await ready.wait()
            ready.clear()
            try:
                chunk = os.read(fd, _CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                break
            await xs.send(ws, xs.Data(xs.STDIN, chunk))
        await xs.send(ws, xs.Eof())
    finally:
        loop.remove_reader(fd)
        os.set_blocking(fd, was_blocking)  # the file may be the user's shell's too


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue


