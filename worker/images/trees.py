"""Making and deleting trees off the event loop: the unpack child process, and remove_tree."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Awaitable, Optional

from common import errors


# ---- deleting trees -----------------------------------------------------------------------
def _rmtree_now(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


async def remove_tree(path: Path, trash_dir: Optional[Path] = None) -> None:
    """Delete a directory tree without stalling the event loop: rename it out of the way
    (instant, so nobody sees it half-deleted), then delete it here, yielding to the loop every
    few hundred entries. (No `rm -rf` child: a task cancelled while spawning one can hang
    forever on Python 3.11, CPython gh-105288.) Never crosses into another filesystem: a
    directory on another device (a mount still in place) fails the deletion instead."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    target = path
    if trash_dir is not None:
        target = Path(trash_dir) / f"trash-{secrets.token_hex(6)}"
        try:
            os.rename(path, target)
        except OSError:
            target = path
    st = os.lstat(target)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(target)
        return
    stack: list[tuple[str, bool]] = [(str(target), False)]
    done = 0
    while stack:
        current, emptied = stack.pop()
        if emptied:
            os.rmdir(current)
            continue
        stack.append((current, True))
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.stat(follow_symlinks=False).st_dev != st.st_dev:
                        raise errors.ShoalError(f"cannot delete {path}: {entry.path} is on "
                                                "another filesystem (still mounted?)")
                    stack.append((entry.path, False))
                else:
                    os.unlink(entry.path)
                done += 1
                if done % 500 == 0:
                    await asyncio.sleep(0)


async def finish_then_cancel(coro: Awaitable):
    """Await `coro` to its end even when the caller is cancelled meanwhile (the cancellation
    is re-raised afterwards). For child processes: cancelling a task inside
    asyncio.create_subprocess_exec can hang it forever (CPython gh-103847, gh-105288), and a
    runtime command cut short leaves half-made containers."""
    inner = asyncio.ensure_future(coro)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(inner)
            break
        except asyncio.CancelledError:
            if inner.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result


# ---- the helper process -------------------------------------------------------------------
async def _run_helper(*argv: str) -> dict:
    async def run() -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.images.unpack", *argv,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        return proc.returncode or 0, out, err

    proc_rc, out, err = await finish_then_cancel(run())
    if proc_rc != 0:
        msg = err.decode(errors="replace").strip().splitlines()
        raise errors.InvalidArgument(msg[-1] if msg else f"{argv[0]} failed (exit {proc_rc})")
    return json.loads(out or b"{}")
