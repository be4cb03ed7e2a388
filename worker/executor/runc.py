"""The OCI runtime (runc), run against the executor's own --root: its commands and their errors."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from common import errors
from worker.executor.console import ConsoleSocket, open_stdin, start_pump
from worker.executor.container import _Container, _start_time
from worker.images import finish_then_cancel


def runtime_path(runtime: str) -> str:
    found = shutil.which(runtime)
    if found is None:
        raise errors.FailedPrecondition(f"the container runtime {runtime!r} is not "
                                        f"installed on this node (apt-get install "
                                        f"{runtime})")
    return found


async def run_runc(runtime: str, state_dir: Path, *args: str,
                   timeout: float = 30.0) -> tuple[int, str, str]:
    """`runtime --root state_dir args...`: (exit code, stdout, stderr); -1 past `timeout`."""
    path = runtime_path(runtime)

    async def run() -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            path, "--root", str(state_dir), *args,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return -1, "", f"{runtime} {args[0]} timed out"
        return (proc.returncode or 0, out.decode(errors="replace"),
                err.decode(errors="replace"))

    return await finish_then_cancel(run())


@dataclass(frozen=True)
class Stdio:
    """What the container's init gets as stdio (lifecycle decides, from its config)."""
    terminal: bool = False            # process.terminal: a pty, its master sent to us
    open_stdin: bool = False          # stdin kept open (a FIFO) rather than /dev/null
    stdout: Optional[Path] = None     # appended to; None: /dev/null (log driver "none")
    stderr: Optional[Path] = None


async def runc_create(runc: str, state_dir: Path, c: _Container, stdio: Stdio = Stdio()) -> None:
    """`runc create` the bundle in c.dir, its stdio straight to its log files (or its
    terminal to a pump that appends to them: console.py); records the init's pid and start
    time in state.json."""
    pid_file = c.dir / "init.pid"
    runc_log = c.dir / "runc.log"

    async def run() -> int:
        console = ConsoleSocket() if stdio.terminal else None
        try:
            proc = await _spawn_create(runc, state_dir, c, stdio, console, pid_file, runc_log)
            receiving = asyncio.ensure_future(console.receive()) if console else None
            try:
                rc = await _wait_create(proc)
                if rc == 0 and receiving is not None:
                    master = await _terminal(c, receiving)
                    receiving = None  # start_pump owns it now, even if it fails
                    start_pump(c.dir, master, stdio.stdout)
                return rc
            finally:
                if receiving is not None:
                    _drop(receiving)
        finally:
            if console is not None:
                console.close()

    rc = await finish_then_cancel(run())
    if rc != 0:
        raise errors.FailedPrecondition(
            f"container {c.id} could not be created: {_runc_error(runc_log, rc)}",
            field="image")
    c.pid = int(pid_file.read_text().strip())
    c.pid_start = _start_time(c.pid)
    c.save_state()


async def _spawn_create(runc: str, state_dir: Path, c: _Container, stdio: Stdio,
                        console: Optional[ConsoleSocket], pid_file: Path,
                        runc_log: Path) -> asyncio.subprocess.Process:
    args = [runc, "--root", str(state_dir), "--log", str(runc_log), "--log-format", "json",
            "create", "--bundle", str(c.dir), "--pid-file", str(pid_file)]
    if console is not None:
        args += ["--console-socket", console.path]
    fds = _open_stdio(c, stdio)
    try:
        # Detached, stdio passed through: the container writes its log files itself. (With
        # a terminal, runc gives the init the pty instead; its own messages still go here.)
        return await asyncio.create_subprocess_exec(*args, c.id, stdin=fds[0], stdout=fds[1],
                                                    stderr=fds[2])
    finally:
        for fd in fds:
            os.close(fd)


def _open_stdio(c: _Container, stdio: Stdio) -> list[int]:
    fds: list[int] = []
    try:
        if stdio.open_stdin and not stdio.terminal:
            fds.append(open_stdin(c.dir))
        else:
            fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        for path in (stdio.stdout, stdio.stderr):
            fds.append(os.open(path if path is not None else os.devnull,
                               os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    return fds


async def _wait_create(proc: asyncio.subprocess.Process) -> int:
    try:
        return await asyncio.wait_for(proc.wait(), 60)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return -1


async def _terminal(c: _Container, receiving: asyncio.Future) -> int:
    """The terminal's master: runc sent it before `runc create` returned."""
    try:
        return await asyncio.wait_for(receiving, 10)
    except (asyncio.TimeoutError, OSError) as exc:
        raise errors.FailedPrecondition(f"container {c.id}: runc sent no terminal: "
                                        f"{str(exc) or 'timed out'}") from None


def _drop(receiving: asyncio.Future) -> None:
    """A terminal nobody takes (the create failed) is closed, not leaked."""
    if not receiving.done():
        receiving.cancel()
    elif not receiving.cancelled() and receiving.exception() is None:
        os.close(receiving.result())


def _runc_error(runc_log: Path, rc: int) -> str:
    msg = ""
    try:
        for line in runc_log.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("level") in ("error", "fatal"):
                msg = rec.get("msg", "")
    except OSError:
        pass
    return msg or f"runc exited with code {rc}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no detail"
