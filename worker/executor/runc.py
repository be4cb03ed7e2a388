"""The OCI runtime (runc), run against the executor's own --root: its commands and their errors."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

from common import errors
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


async def runc_create(runc: str, state_dir: Path, c: _Container) -> None:
    """`runc create` the bundle in c.dir, its stdio straight to its log files; records the
    init's pid and start time in state.json."""
    pid_file = c.dir / "init.pid"
    runc_log = c.dir / "runc.log"

    async def run() -> int:
        out = os.open(c.dir / "stdout.log", os.O_WRONLY | os.O_APPEND)
        err = os.open(c.dir / "stderr.log", os.O_WRONLY | os.O_APPEND)
        try:
            # Detached, stdio passed through: the container writes its log files itself.
            proc = await asyncio.create_subprocess_exec(
                runc, "--root", str(state_dir), "--log", str(runc_log),
                "--log-format", "json", "create", "--bundle", str(c.dir),
                "--pid-file", str(pid_file), c.id,
                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        finally:
            os.close(out)
            os.close(err)
        try:
            return await asyncio.wait_for(proc.wait(), 60)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return -1

    rc = await finish_then_cancel(run())
    if rc != 0:
        raise errors.FailedPrecondition(
            f"container {c.id} could not be created: {_runc_error(runc_log, rc)}",
            field="image")
    c.pid = int(pid_file.read_text().strip())
    c.pid_start = _start_time(c.pid)
    c.save_state()


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
