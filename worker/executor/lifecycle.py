"""The Executor: containers created, started, restarted, stopped, removed, adopted, exec'd into."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal as signals
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import AsyncIterator, Optional

from common import errors, linux
from common.fsutil import read_json, write_json
from worker.executor.cgroups import cgroup_mounts, cgroup_prefix_for
from worker.executor.container import (ContainerConfig, ContainerInfo, ExitInfo, LogLine,
                                       _alive, _Container, _plain_config, _start_time,
                                       _suppress_os, _write_small)
from worker.executor.console import stop_pump
from worker.executor.exits import reap_orphans, watch
from worker.executor.execio import ExecProcess
from worker.executor.logs import (STREAMS, LogReader, LogWindow, _LogTail, copy_logs, log_base,
                                  log_end, log_policy, policy_of, refuse_reading)
from worker.executor.ocispec import _signal, runtime_spec, stop_grace
from worker.executor.rootfs import _mount_overlay, _unmount
from worker.executor.runc import Stdio, _last_line, run_runc, runc_create, runtime_path
from worker.images import Image, ImageStore, finish_then_cancel, remove_tree
from worker.volumes import VolumeStore, containers_using

log = logging.getLogger("shoal.executor")

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
EXEC_OUTPUT_LIMIT = 1 << 20


class ExecTimeout(errors.ShoalError, TimeoutError):
    """An exec'd command ran past its timeout (and was killed)."""

    status = 504
    code = "timeout"


class Executor:
    def __init__(self, root: Path, images: ImageStore, runtime: str = "runc") -> None:
        self.root = Path(root)
        self.images = images
        self.runtime = runtime
        self.containers_dir = self.root / "containers"
        self.volumes_dir = self.root / "volumes"
        self.state_dir = self.root / "runc-state"
        for d in (self.containers_dir, self.volumes_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.containers_dir, 0o700)
        # named volumes; in use while any container of this executor mounts them
        self.volumes = VolumeStore(self.volumes_dir, users=containers_using(self))
        self.cgroup_prefix = cgroup_prefix_for(self.root)
        linux.become_subreaper()
        self._containers: dict[str, _Container] = {}
        for path in sorted(self.containers_dir.iterdir()):
            if path.name.startswith(".trash-"):  # a removal that a crash interrupted
                shutil.rmtree(path, ignore_errors=True)
                continue
            if path.name.startswith(".") or not path.is_dir():
                continue
            self._containers[path.name] = _Container(
                path.name, path, read_json(path / "shoal.json", {}) or {})
        if images.in_use is None:
            images.in_use = self.uses_image  # the image store asks us before deleting

    # ---- queries ----------------------------------------------------------------------------
    def list(self) -> list[ContainerInfo]:
        return [self._info(c) for c in self._containers.values()]

    def inspect(self, cid: str) -> ContainerInfo:
        return self._info(self._get(cid))

    def meta(self, cid: str) -> dict:
        """What shoal asked for: the ContainerConfig (as plain data), image id, creation time."""
        return dict(self._get(cid).meta)

    def uses_image(self, image_id: str) -> bool:
        return any(c.meta.get("image_id") == image_id for c in self._containers.values())

    def _info(self, c: _Container) -> ContainerInfo:
        return ContainerInfo(id=c.id, labels=dict(c.config.get("labels", {})), state=c.state,
                             pid=c.pid if not c.exited.is_set() else 0,
                             name=c.config.get("name", ""), image=c.config.get("image", ""),
                             exit=c.exit_info)

    def _get(self, cid: str) -> _Container:
        c = self._containers.get(cid)
        if c is None:
            raise errors.NotFound(f"container {cid} not found on this node", field="id")
        return c

    # ---- create / start ---------------------------------------------------------------------
    async def create(self, config: ContainerConfig) -> None:
        if not _ID_RE.match(config.id):
            raise errors.InvalidArgument(f"container id {config.id!r}: letters, digits, '_', "
                                         "'.', '-' only", field="id")
        if config.id in self._containers or (self.containers_dir / config.id).exists():
            raise errors.Conflict(f"container {config.id} already exists on this node",
                                  field="id")
        policy = log_policy(config.log_driver)
        image = self.images.require(config.image)
        layers = self.images.layer_dirs(image)
        runc = self._runtime_path()
        path = self.containers_dir / config.id
        path.mkdir(mode=0o700)
        for sub in ("rootfs", "upper", "work"):
            (path / sub).mkdir(mode=0o755)
        stop_signal = _signal(config.stop_signal or (image.config or {}).get("StopSignal")
                              or "SIGTERM").name
        meta = {"config": _plain_config(config), "image_id": image.id,
                "cgroup": f"/{self.cgroup_prefix}{config.id}", "created": time.time(),
                "stop_signal": stop_signal}
        write_json(path / "shoal.json", meta)
        c = _Container(config.id, path, meta)
        c.exited.clear()
        self._containers[config.id] = c
        try:
            _mount_overlay(path / "rootfs", layers, path / "upper", path / "work")
            spec = self._spec(config, image, path, meta["cgroup"])
            write_json(path / "config.json", spec)
            if policy.keep:
                for stream in STREAMS:
                    (path / f"{stream}.log").touch(mode=0o640)
            await runc_create(runc, self.state_dir, c, self._stdio(c, spec))
        except BaseException:
            c.exited.set()
            await self._teardown(c)
            raise
        self._arm(c)

    async def start(self, cid: str) -> int:
        c = self._get(cid)
        async with c.lock:
            if c.started and not c.exited.is_set():
                return c.pid
            if c.exited.is_set():
                raise errors.FailedPrecondition(f"container {cid} has already exited: "
                                                f"{c.exit_info.message if c.exit_info else ''}")
            return await self._runc_start(c)

    async def _runc_start(self, c: _Container) -> int:
        rc, _, err = await self._runc("start", c.id)
        if rc != 0:
            raise errors.FailedPrecondition(f"container {c.id} could not be started: "
                                            f"{_last_line(err)}")
        c.started = True
        c.save_state()
        return c.pid

    async def restart(self, cid: str) -> int:
        """Run an exited container again in place, as Docker's restart policies do: the same
        directory, writable layer, log and cgroup path, a new init. Returns its pid."""
        c = self._get(cid)
        async with c.lock:
            if c.removed:
                raise errors.NotFound(f"container {cid} was removed", field="id")
            if not c.exited.is_set():
                raise errors.FailedPrecondition(f"container {cid} is still running")
            if c.tailer is not None:  # the last run's output first, then the tailer goes
                try:
                    await asyncio.wait_for(asyncio.shield(c.tailer), 5)
                except (asyncio.TimeoutError, Exception):
                    c.tailer.cancel()
                c.tailer = None
            rc, _, err = await self._runc("delete", "--force", cid)
            if rc != 0 and "not exist" not in err:
                raise errors.Unavailable(f"container {cid} cannot be restarted: runc delete: "
                                         f"{_last_line(err)}")
            with _suppress_os():
                os.unlink(c.dir / "exit.json")
            await stop_pump(c.dir)  # the last run's terminal, should it still be open
            c.past_exits[c.run] = c.exit_info or ExitInfo(
                exit_code=None, oom_killed=False, message="exit unknown")
            c.log_ends[c.run] = log_end(c)
            for old in [r for r in c.past_exits if r < c.run - 16]:
                c.past_exits.pop(old, None)
                c.log_ends.pop(old, None)
            # New events, not cleared ones: whoever waits on the run that ended (an attached
            # `container run`, a `logs --follow`) sees that run end, not the next one.
            c.exited, c.tail_done = asyncio.Event(), asyncio.Event()
            c.exit_info, c.started, c.watched = None, False, False
            c.meta["restart_count"] = c.meta.get("restart_count", 0) + 1
            write_json(c.dir / "shoal.json", c.meta)
            try:
                spec = read_json(c.dir / "config.json", {}) or {}
                await runc_create(self._runtime_path(), self.state_dir, c, self._stdio(c, spec))
                self._arm(c)
                return await self._runc_start(c)
            except BaseException as exc:
                if not c.exited.is_set():
                    with _suppress_os():
                        await self._kill(c, signals.SIGKILL)
                    if c.exit_info is None:
                        c.exit_info = ExitInfo(exit_code=None, oom_killed=False,
                                               message=f"restart failed: {exc}")
                        _write_small(c.dir / "exit.json", asdict(c.exit_info))
                    c.exited.set()
                raise

    # ---- the runtime spec -------------------------------------------------------------------
    def _spec(self, cfg: ContainerConfig, image: Image, path: Path, cgroup: str) -> dict:
        return runtime_spec(cfg, image, path, cgroup, self.volumes)

    @staticmethod
    def _stdio(c: _Container, spec: dict) -> Stdio:
        """The init's stdio: its log files (none with log driver "none"), a terminal when
        the spec asks for one (runc then needs a console socket), stdin kept open or not."""
        keep = policy_of(c).keep
        return Stdio(terminal=bool((spec.get("process") or {}).get("terminal")),
                     open_stdin=bool(c.config.get("open_stdin")),
                     stdout=c.dir / "stdout.log" if keep else None,
                     stderr=c.dir / "stderr.log" if keep else None)

    # ---- exit watching ----------------------------------------------------------------------
    def _arm(self, c: _Container) -> None:
        """Watch the init's exit and tail its logs (idempotent)."""
        if c.removed:
            return
        policy = policy_of(c)
        if not policy.keep:  # log driver "none": there is nothing to copy
            c.tail_done.set()
        elif c.tailer is None:
            try:
                c.tail = _LogTail(c.dir, policy)
            except FileNotFoundError:  # the directory is going away
                c.tail_done.set()
                return
            c.tail_done.clear()
            c.tailer = asyncio.create_task(copy_logs(c, c.tail), name=f"logs-{c.id[:12]}")
        watch(c)

    # ---- stop / remove ----------------------------------------------------------------------
    async def stop(self, cid: str, signal: Optional[str] = None,
                   grace: Optional[float] = None) -> None:
        """Send the stop signal, then SIGKILL once the grace period is over. A container that
        has already stopped is left as it is."""
        c = self._get(cid)
        async with c.lock:  # a restart under way finishes first: then its new run is stopped
            self._arm(c)
            if c.exited.is_set():
                return
            sig = _signal(signal or c.meta.get("stop_signal") or c.config.get("stop_signal")
                          or "SIGTERM")
            grace = stop_grace(c.config.get("stop_grace") if grace is None else grace)
            if not c.started:
                sig = signals.SIGKILL  # still in `runc init`: nothing of the service runs yet
            await self._kill(c, sig)
            if await self._wait_exit(c, grace if sig != signals.SIGKILL else 10):
                return
            if sig != signals.SIGKILL:
                log.info("container %s ignored %s for %.1fs: killing it", cid[:12], sig.name,
                         grace)
                await self._kill(c, signals.SIGKILL)
                if await self._wait_exit(c, 10):
                    return
            raise errors.Unavailable(f"container {cid} did not exit after SIGKILL")

    async def kill(self, cid: str, signal: str = "KILL") -> signals.Signals:
        """`container kill`: the signal (a name or number, as docker's; default KILL) to the
        container's init, nothing more: its exit is handled as any exit (a task's restart
        policy). Returns the signal sent."""
        try:
            sig = _signal(signal)
        except errors.InvalidArgument:
            raise errors.InvalidArgument(
                f"unknown signal {signal!r}: give -s/--signal a name (KILL, SIGTERM, HUP) or a "
                "number (9)", field="signal") from None
        c = self._get(cid)
        async with c.lock:
            self._arm(c)
            if c.exited.is_set() or not c.started:
                raise errors.Conflict(f"cannot kill container {cid}: it is not running",
                                      field="id")
            await self._kill(c, sig)
        return sig

    async def _wait_exit(self, c: _Container, timeout: float) -> bool:
        """Wait for the init's exit; meanwhile reap container processes orphaned to us (they
        would keep the container's pid namespace, hence its init, from finishing its exit)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(c.exited.wait(), max(0.0, min(left, 0.5)))
                return True
            except asyncio.TimeoutError:
                if left <= 0.5:
                    return False
                reap_orphans(self._containers.values())

    async def _kill(self, c: _Container, sig: signals.Signals) -> None:
        if c.pidfd is not None:
            try:  # race-free: the pidfd names exactly our init, never a reused pid
                signals.pidfd_send_signal(c.pidfd, sig)
                return
            except ProcessLookupError:
                return
            except OSError:
                pass
        await self._runc("kill", c.id, sig.name)

    async def remove(self, cid: str) -> None:
        """Kill if needed, delete from runc, unmount, delete the directory. Idempotent."""
        c = self._containers.get(cid)
        if c is None:
            path = self.containers_dir / cid
            if not _ID_RE.match(cid):
                return
            if path.is_dir():
                c = _Container(cid, path, read_json(path / "shoal.json", {}) or {})
                self._containers[cid] = c
            else:
                await self._runc("delete", "--force", cid)  # a leftover runc state, if any
                return
        async with c.lock:
            if c.removed:
                return
            if not c.exited.is_set():
                self._arm(c)
                await self._kill(c, signals.SIGKILL)
                if not await self._wait_exit(c, 10):
                    log.warning("container %s: init did not exit after SIGKILL", cid[:12])
            await self._teardown(c)

    async def _teardown(self, c: _Container) -> None:
        if c.tailer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(c.tailer), 5)
            except (asyncio.TimeoutError, Exception):
                c.tailer.cancel()
        if c.tail is not None:  # a tailer cancelled before it ran never closes its files
            c.tail.close()
        c.tail_done.set()
        await stop_pump(c.dir)
        if c.exit_info is None:  # nobody may wait forever on a container that is gone
            c.exit_info = ExitInfo(exit_code=None, oom_killed=False,
                                   message="removed before its exit could be observed")
        c.exited.set()
        if c.pidfd is not None:
            asyncio.get_running_loop().remove_reader(c.pidfd)
            os.close(c.pidfd)
            c.pidfd = None
        rc, _, err = await self._runc("delete", "--force", c.id)
        if rc != 0 and "not exist" not in err:
            log.warning("runc delete %s: %s", c.id[:12], _last_line(err))
        cg = c.meta.get("cgroup", "")
        if cg:  # runc delete removes it; make sure (a crashed create can leave one behind)
            for mnt, _, _ in cgroup_mounts():
                with _suppress_os():
                    os.rmdir(mnt + cg)
        _unmount(c.dir / "rootfs")
        if linux.is_mountpoint(c.dir / "rootfs"):
            raise errors.Unavailable(f"container {c.id}: cannot unmount its root filesystem")
        c.removed = True
        trash = self.containers_dir / f".trash-{secrets.token_hex(6)}"
        try:
            os.rename(c.dir, trash)
        except FileNotFoundError:
            trash = None
        self._containers.pop(c.id, None)
        if trash is not None:
            await remove_tree(trash)

    # ---- adoption ---------------------------------------------------------------------------
    async def adopt(self) -> list[ContainerInfo]:
        """After a daemon restart: find our containers (runc state + directories), watch the
        running ones again, tail their logs; delete runc containers that have no directory."""
        rc, out, err = await self._runc("list", "--format", "json")
        runc_states = {}
        if rc == 0:
            for entry in json.loads(out or "null") or []:
                runc_states[entry["id"]] = entry
        for path in sorted(self.containers_dir.iterdir()):
            if path.name.startswith(".") or not path.is_dir() or path.name in self._containers:
                continue
            self._containers[path.name] = _Container(
                path.name, path, read_json(path / "shoal.json", {}) or {})
        stray = [cid for cid in runc_states if cid not in self._containers]
        for cid in stray:
            log.info("deleting runc container %s: it has no bundle", cid)
            await self._runc("delete", "--force", cid)
        if stray:
            reap_orphans(self._containers.values())  # a killed init that was still our child
        for c in list(self._containers.values()):
            entry = runc_states.get(c.id)
            status = (entry or {}).get("status", "stopped")
            if status in ("running", "paused", "created") and not c.watched:
                # runc's pid wins: state.json may predate a crash right after `runc create`
                pid = int(entry.get("pid") or 0)
                if pid and pid != c.pid:
                    c.pid, c.pid_start = pid, _start_time(pid)
                    c.save_state()
                if _alive(c.pid, c.pid_start):
                    c.exit_info = None
                    c.exited.clear()
                c.started = c.started or status != "created"
            elif not c.exited.is_set() and not _alive(c.pid, c.pid_start):
                c.exited.set()
            self._arm(c)
        return self.list()

    async def close(self) -> None:
        """Stop watching (daemon shutdown): containers keep running, to be adopted later."""
        loop = asyncio.get_running_loop()
        for c in self._containers.values():
            if c.pidfd is not None:
                loop.remove_reader(c.pidfd)
                os.close(c.pidfd)
                c.pidfd = None
            c.watched = False
            if c.tailer is not None:
                c.tailer.cancel()
                with _suppress_os():
                    try:
                        await c.tailer
                    except asyncio.CancelledError:
                        pass
                c.tailer = None
            if c.tail is not None:
                c.tail.close()
                c.tail = None

    # ---- wait / exec ------------------------------------------------------------------------
    async def wait(self, cid: str, run: Optional[int] = None) -> ExitInfo:
        """The exit of the current run, or of run `run` (0: the first) if given, which may
        have ended before a restart."""
        c = self._get(cid)
        self._arm(c)
        if run is not None and run < c.run:
            return c.past_exits.get(run) or ExitInfo(
                exit_code=None, oom_killed=False, message=f"the exit of run {run} is not kept")
        await c.exited.wait()
        assert c.exit_info is not None
        return c.exit_info

    async def exec(self, cid: str, argv: list[str], timeout: float = 30.0) -> tuple[int, str]:
        """Run argv in the running container (its user, env and cwd); returns the exit code and
        the combined output. Past `timeout` the command is killed and ExecTimeout (both a
        ShoalError and a TimeoutError) raised."""
        c = self._get(cid)
        if c.state != "running":
            raise errors.FailedPrecondition(f"container {cid} is not running", field="id")
        if not argv:
            raise errors.InvalidArgument("exec needs a command", field="argv")
        pid_file = c.dir / f"exec-{secrets.token_hex(4)}.pid"
        proc = await finish_then_cancel(asyncio.create_subprocess_exec(
            self._runtime_path(), "--root", str(self.state_dir), "exec",
            "--pid-file", str(pid_file), cid, *argv,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        try:
            out = await asyncio.wait_for(_read_limited(proc.stdout, EXEC_OUTPUT_LIMIT), timeout)
            rc = await asyncio.wait_for(proc.wait(), max(1.0, timeout))
        except asyncio.CancelledError:
            with _suppress_os():  # the caller gave up: so does the command (runc then exits)
                os.kill(int(pid_file.read_text().strip()), signals.SIGKILL)
            raise
        except asyncio.TimeoutError:
            # Kill the command, not runc: runc reaps it and exits. Killing runc first would
            # orphan the command to us (the subreaper) as a zombie that blocks the container's
            # pid namespace from ever finishing its exit.
            with _suppress_os():
                os.kill(int(pid_file.read_text().strip()), signals.SIGKILL)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                with _suppress_os():
                    proc.kill()
                await proc.wait()
                reap_orphans(self._containers.values())
            raise ExecTimeout(f"{argv[0]} in container {cid} timed out after {timeout:g}s "
                              "and was killed", field="timeout")
        finally:
            pid_file.unlink(missing_ok=True)
        return rc, out.decode(errors="replace")

    def exec_process(self, cid: str, argv: list[str], *, tty: bool,
                     stdin: bool) -> ExecProcess:
        """An interactive exec into the running container, not started yet (execio.serve
        runs it against a client's stream)."""
        c = self._get(cid)
        if c.state != "running":
            raise errors.FailedPrecondition(f"container {cid} is not running ({c.state}): "
                                            "exec needs a running container", field="id")
        return ExecProcess(self._runtime_path(), self.state_dir, cid, c.dir, argv,
                           tty=tty, stdin=stdin)

    # ---- logs -------------------------------------------------------------------------------
    async def logs(self, cid: str, tail: Optional[int] = None, follow: bool = False,
                   timestamps: bool = True, run: Optional[int] = None,
                   window: LogWindow = LogWindow()) -> AsyncIterator[LogLine]:
        """The container's log lines, oldest first (the last `tail` ones if given); with
        `follow`, keeps yielding new lines until the container has exited and its output is
        all read. With `run`, the lines end where that run's output ends (a restarted
        container's log holds every run). Every LogLine carries its timestamp: `timestamps`
        only tells a formatter whether to show it (kept in the signature for the API layer's
        convenience). `window` keeps the lines from `since` to `until` (a follower stops once
        `until` has passed); `tail` counts lines before that filter, as Docker's does."""
        c = self._get(cid)
        refuse_reading(c)
        self._arm(c)
        await self._catch_up(c)
        tail_done = c.tail_done  # following ends with this run: a restart makes a new event
        my_run = c.run if run is None else run
        ended_before = my_run < c.run
        reader = LogReader(c.dir, lambda: log_base(c))
        try:
            if tail is not None:
                reader.seek_tail(tail)
            if window.since is not None:
                reader.seek_since(window.since)
            while True:
                done = ended_before or tail_done.is_set()
                end = c.log_ends.get(my_run) if follow or run is not None else None
                lines = reader.read(end)
                if lines is not None:
                    for line in lines:
                        if window.after(line):
                            return
                        if not window.before(line):
                            yield line
                    continue
                if not follow or done or window.over(time.time()):
                    return
                await asyncio.sleep(0.1)
        finally:
            reader.close()

    @staticmethod
    async def _catch_up(c: _Container) -> None:
        """Have the log hold what the container wrote up to now, not 250 ms ago; all of it
        once it exited (a big backlog is left to the tailer's batches, which yield to the
        loop, rather than copied here in one go)."""
        tail = c.tail
        if tail is None:
            return
        with _suppress_os():
            _, more = tail.pump(tail.source_done(c.exited.is_set()))
            if more and c.exited.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(c.tail_done.wait(), 10)

    def check_logs(self, cid: str) -> None:
        """FailedPrecondition, as Docker answers, for a container whose log driver keeps no
        log: for an API to refuse before it starts streaming (logs() raises it on its first
        step, which a streaming answer has already begun)."""
        refuse_reading(self._get(cid))

    # ---- runc -------------------------------------------------------------------------------
    def _runtime_path(self) -> str:
        return runtime_path(self.runtime)

    async def _runc(self, *args: str, timeout: float = 30.0) -> tuple[int, str, str]:
        return await run_runc(self.runtime, self.state_dir, *args, timeout=timeout)


async def _read_limited(stream: asyncio.StreamReader, limit: int) -> bytes:
    buf = bytearray()
    while chunk := await stream.read(1 << 16):
        if len(buf) < limit:
            buf += chunk[:limit - len(buf)]
    return bytes(buf)
