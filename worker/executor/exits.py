"""Exit watching: the init's pidfd, its exact status (waitpid on that pid), orphaned zombies."""
from __future__ import annotations

import asyncio
import logging
import os
import signal as signals
from dataclasses import asdict
from typing import Iterable, Optional

from common import linux
from worker.executor.cgroups import oom_kills
from worker.executor.container import (ExitInfo, _Container, _start_time, _suppress_os,
                                       _write_small)

log = logging.getLogger("shoal.executor")


def watch(c: _Container) -> None:
    """Watch the init's exit (idempotent): collect it when its pidfd turns readable."""
    if c.watched:
        return
    c.watched = True
    if c.exited.is_set():
        if c.exit_info is None:
            collect(c)  # exited unseen: reap it if it is our zombie, else unknown
        return
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(c.pid)
    except ProcessLookupError:
        loop.call_soon(collect, c)
        return
    if _start_time(c.pid) != c.pid_start:  # the pid was reused: ours is long gone
        os.close(fd)
        loop.call_soon(collect, c)
        return
    c.pidfd = fd
    loop.add_reader(fd, collect, c)


def collect(c: _Container) -> None:
    loop = asyncio.get_running_loop()
    if c.pidfd is not None:
        loop.remove_reader(c.pidfd)
    status: Optional[int] = None
    # Only this pid, and only if it is still our init (its zombie keeps its start time):
    # never waitpid(0) or (-1), nor a reused pid, which would steal asyncio's children.
    if c.pid > 0 and (c.pidfd is not None or _start_time(c.pid) == c.pid_start):
        try:
            pid, st = os.waitpid(c.pid, os.WNOHANG)
            if pid == 0 and c.pidfd is not None:
                # readable pidfd, zombie not reapable yet: look again in a moment
                loop.call_later(0.01, collect, c)
                return
            status = st if pid == c.pid else None
        except ChildProcessError:
            status = None  # not our child (adopted after a restart): its status went elsewhere
    if c.pidfd is not None:
        os.close(c.pidfd)
        c.pidfd = None
    record_exit(c, status)


def record_exit(c: _Container, status: Optional[int]) -> None:
    limit = c.config.get("memory_limit", 0)
    oom = oom_kills(c.meta.get("cgroup", "")) > 0
    code: Optional[int] = None
    if status is not None:
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            code = 128 - code  # Docker's convention: 128 + signal number
    if oom:
        message = f"OOM killed (memory limit {limit} bytes)"
    elif code is None:
        message = ("exit code unknown: the container ran on from an earlier shoald process "
                   "and exited while no longer its child")
    elif code > 128 and code - 128 in set(s.value for s in signals.Signals):
        message = f"killed by signal {signals.Signals(code - 128).name} (exit code {code})"
    else:
        message = f"exited with code {code}"
    c.exit_info = ExitInfo(exit_code=code, oom_killed=oom, message=message)
    if not c.removed and c.dir.is_dir():
        _write_small(c.dir / "exit.json", asdict(c.exit_info))
    c.exited.set()
    log.info("container %s: %s", c.id[:12], message)


def reap_orphans(containers: Iterable[_Container]) -> None:
    """Reap container processes orphaned to us (the subreaper), never a running init."""
    inits = {c.pid for c in containers if not c.exited.is_set()}
    for pid in _orphan_zombies():
        if pid not in inits:
            with _suppress_os():
                os.waitpid(pid, os.WNOHANG)


def _orphan_zombies() -> list[int]:
    """Our zombie children that live in another (a container's) pid namespace: processes
    orphaned to us as the subreaper. Our own subprocesses (runc, rm) are in our namespace and
    belong to asyncio's child watcher, so they are never touched."""
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = linux.proc_stat(int(name))
        if st is None or st.state != "Z" or st.ppid != me:
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                nspid = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
        except OSError:
            continue
        if len(nspid) > 1:
            out.append(int(name))
    return out
