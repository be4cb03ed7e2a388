"""Containers, run by an OCI runtime (`runc`), with no helper process per container.

Under the executor's root:

    containers/<id>/         one bundle per container (the id is the task id)
        config.json          the OCI runtime spec runc reads
        shoal.json           what shoal asked for (the ContainerConfig, image id, cgroup path)
        state.json           the init's pid and start time, and whether it was started
        exit.json            how it ended, once known
        rootfs/              overlayfs: the image's layers + upper/ (+ work/)
        stdout.log stderr.log  the container's own stdio, written by the container directly
        container.log        the same lines as JSON {"t": epoch, "s": stream, "l": text}
        logpos.json          how far container.log has consumed stdout.log / stderr.log
    volumes/<name>/          named local volumes (kept when containers go)
    runc-state/              runc's --root: several daemons on one machine never see each
                             other's containers

Lifecycle: `runc create` (stdio straight to the log files, so the container never depends on
this daemon being alive), `runc start`, exit noticed via a pidfd, `runc delete`. The daemon is
the child subreaper: when `runc create` exits, the container's init is reparented to us, so we
collect its exact exit status with waitpid on that one pid (never waitpid(-1): asyncio's child
watcher owns our other children). After a daemon restart the inits belong to someone else; they
are adopted (watched, their logs tailed), but their exit codes can no longer be known.

Log timestamps are taken when the daemon reads a line from stdout.log/stderr.log (polled every
50-250 ms while the container runs): lines written while shoald was down get the time it read
them after restarting.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import secrets
import signal as signals
import shutil
import stat
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import AsyncIterator, Optional

from common import errors, linux
from common.fsutil import read_json, write_json
from common.model import Mount
from worker.images import Image, ImageStore, finish_then_cancel, remove_tree

log = logging.getLogger("shoal.executor")

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_VOLUME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
STREAMS = ("stdout", "stderr")
MAX_LINE = 64 * 1024       # longer lines are cut into pieces of this size
EXEC_OUTPUT_LIMIT = 1 << 20

# Docker's default capability set.
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
# runc's `runc spec` defaults, plus what Docker masks on top.
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
BASE_MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
]


class ExecTimeout(errors.ShoalError, TimeoutError):
    """An exec'd command ran past its timeout (and was killed)."""

    status = 504
    code = "timeout"


# Docker's default: the grace period of a spec that gives no usable one.
DEFAULT_STOP_GRACE = 10.0
# SIGKILL follows the stop signal after this long at the latest, whatever the spec says.
MAX_STOP_GRACE = 3600.0


def stop_grace(value: object) -> float:
    """The seconds to wait between the stop signal and SIGKILL: always finite, so that a stop
    always ends. A spec from a manager that let NaN, infinity or a negative number through
    (NaN passes every comparison) gets the default; a huge one gets the bound."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return DEFAULT_STOP_GRACE
    try:
        grace = float(value)
    except OverflowError:  # an int beyond any float
        return MAX_STOP_GRACE if value > 0 else DEFAULT_STOP_GRACE
    if not math.isfinite(grace) or grace < 0:
        return DEFAULT_STOP_GRACE
    return min(grace, MAX_STOP_GRACE)


@dataclass
class ContainerConfig:
    id: str                                   # the task id
    name: str = ""
    image: str = ""
    command: list[str] = field(default_factory=list)   # replaces the image's Entrypoint
    args: list[str] = field(default_factory=list)      # replaces the image's Cmd
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""                            # uid, uid:gid, name or name:group
    hostname: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    memory_limit: int = 0                     # bytes, 0 = none
    nano_cpus: int = 0                        # 10^9 = one CPU, 0 = none
    pids_limit: int = 0                       # 0 = none
    stop_signal: str = "SIGTERM"              # "" = the image's StopSignal, else SIGTERM
    stop_grace: float = 10.0
    netns_path: Optional[str] = None          # join this netns; None = a new one (loopback only)
    host_network: bool = False                # share the node's network namespace instead
    extra_binds: list[tuple[str, str, bool]] = field(default_factory=list)  # src, dst, ro


@dataclass
class ExitInfo:
    exit_code: Optional[int]                  # None: unknowable (exited while not our child)
    oom_killed: bool
    message: str


@dataclass
class ContainerInfo:
    id: str
    labels: dict[str, str]
    state: str                                # created | running | stopped
    pid: int
    name: str = ""
    image: str = ""
    exit: Optional[ExitInfo] = None


@dataclass
class LogLine:
    ts: float
    stream: str                               # stdout | stderr
    line: str


class _Container:
    """What the executor knows and tracks about one container."""

    def __init__(self, cid: str, path: Path, meta: dict) -> None:
        self.id = cid
        self.dir = path
        self.meta = meta
        st = read_json(path / "state.json", {}) or {}
        self.pid: int = st.get("pid", 0)
        self.pid_start: int = st.get("pid_start", 0)
        self.started: bool = st.get("started", False)
        ex = read_json(path / "exit.json", None)
        self.exit_info: Optional[ExitInfo] = ExitInfo(**ex) if ex else None
        self.exited = asyncio.Event()
        self.pidfd: Optional[int] = None
        self.watched = False
        self.tailer: Optional[asyncio.Task] = None
        self.tail_done = asyncio.Event()
        self.tail: Optional[_LogTail] = None
        self.lock = asyncio.Lock()
        self.removed = False
        # The exit and where the log ended of the last runs before a restart in place
        self.past_exits: dict[int, ExitInfo] = {}
        self.log_ends: dict[int, int] = {}
        if self.exit_info is not None or not _alive(self.pid, self.pid_start):
            self.exited.set()

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})

    @property
    def run(self) -> int:
        """Which run this is: 0 for the first, then one more at each restart in place."""
        return self.meta.get("restart_count", 0)

    @property
    def state(self) -> str:
        if self.exited.is_set():
            return "stopped"
        return "running" if self.started else "created"

    def save_state(self) -> None:
        _write_small(self.dir / "state.json", {"pid": self.pid, "pid_start": self.pid_start,
                                              "started": self.started})


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
            for stream in STREAMS:
                (path / f"{stream}.log").touch(mode=0o640)
            await self._runc_create(runc, c)
        except BaseException:
            c.exited.set()
            await self._teardown(c)
            raise
        self._arm(c)

    async def _runc_create(self, runc: str, c: _Container) -> None:
        pid_file = c.dir / "init.pid"
        runc_log = c.dir / "runc.log"

        async def run() -> int:
            out = os.open(c.dir / "stdout.log", os.O_WRONLY | os.O_APPEND)
            err = os.open(c.dir / "stderr.log", os.O_WRONLY | os.O_APPEND)
            try:
                # Detached, stdio passed through: the container writes its log files itself.
                proc = await asyncio.create_subprocess_exec(
                    runc, "--root", str(self.state_dir), "--log", str(runc_log),
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
            c.past_exits[c.run] = c.exit_info or ExitInfo(
                exit_code=None, oom_killed=False, message="exit unknown")
            try:
                c.log_ends[c.run] = os.path.getsize(c.dir / "container.log")
            except OSError:
                c.log_ends[c.run] = 0
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
                await self._runc_create(self._runtime_path(), c)
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
        rootfs = path / "rootfs"
        ic = image.config or {}
        entrypoint = list(cfg.command) if cfg.command else list(ic.get("Entrypoint") or [])
        # Docker's rule: overriding the entrypoint drops the image's Cmd too.
        cmd = list(cfg.args) if cfg.args else ([] if cfg.command else list(ic.get("Cmd") or []))
        argv = entrypoint + cmd
        if not argv:
            raise errors.InvalidArgument(f"image {cfg.image} has no command and the service "
                                         "gives none", field="command")
        uid, gid, extra_gids, home = resolve_user(rootfs, cfg.user or ic.get("User") or "")
        hostname = cfg.hostname or cfg.id[:12]
        env = merge_env([DEFAULT_PATH, f"HOSTNAME={hostname}"], ic.get("Env") or [], cfg.env)
        if not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={home}")
        cwd = cfg.workdir or ic.get("WorkingDir") or "/"
        if not cwd.startswith("/"):
            raise errors.InvalidArgument(f"working directory {cwd!r} must be absolute",
                                         field="dir")
        wd = in_rootfs(rootfs, cwd)
        if not wd.exists():
            wd.mkdir(parents=True, mode=0o755)
        caps = {"bounding": DEFAULT_CAPS}
        if uid == 0:  # as Docker: a non-root user gets no effective capabilities
            caps.update(effective=DEFAULT_CAPS, permitted=DEFAULT_CAPS)
        resources: dict = {"devices": [{"allow": False, "access": "rwm"}]}
        if cfg.memory_limit:
            if cfg.memory_limit < 4 << 20:
                raise errors.InvalidArgument(f"memory limit {cfg.memory_limit} bytes is below "
                                             "the 4 MiB minimum", field="memory_limit")
            resources["memory"] = {"limit": cfg.memory_limit}
            if _swap_accounting():  # no swap on top of the limit: the limit means what it says
                resources["memory"]["swap"] = cfg.memory_limit
        if cfg.nano_cpus:
            period = 100_000
            resources["cpu"] = {"period": period,
                                "quota": max(1000, cfg.nano_cpus * period // 10**9)}
        if cfg.pids_limit:
            resources["pids"] = {"limit": cfg.pids_limit}
        namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
        if cfg.netns_path:
            if not os.path.exists(cfg.netns_path):
                raise errors.FailedPrecondition(f"network namespace {cfg.netns_path} does not "
                                                "exist", field="networks")
            namespaces.append({"type": "network", "path": cfg.netns_path})
        elif not cfg.host_network:
            # A task never shares the node's network: without a network attachment it gets a
            # namespace of its own with only loopback (two tasks may both listen on :80).
            namespaces.append({"type": "network"})
        return {
            "ociVersion": "1.0.2",
            "process": {"terminal": False,
                        "user": {"uid": uid, "gid": gid, "additionalGids": extra_gids},
                        "args": argv, "env": env, "cwd": cwd, "capabilities": caps,
                        "noNewPrivileges": True},
            "root": {"path": "rootfs", "readonly": False},
            "hostname": hostname,
            "mounts": BASE_MOUNTS + self._mounts(cfg, path),
            "annotations": {**cfg.labels, "shoal.container.name": cfg.name},
            "linux": {"namespaces": namespaces, "cgroupsPath": cgroup, "resources": resources,
                      "maskedPaths": MASKED_PATHS, "readonlyPaths": READONLY_PATHS},
        }

    def _mounts(self, cfg: ContainerConfig, path: Path) -> list[dict]:
        out: list[dict] = []
        for i, m in enumerate(cfg.mounts):
            m = m if isinstance(m, Mount) else Mount(**m)
            target = _check_target(m.target)
            ro = "ro" if m.read_only else "rw"
            if m.type == "bind":
                if not m.source.startswith("/") or not os.path.exists(m.source):
                    raise errors.InvalidArgument(
                        f"bind mount source {m.source!r} does not exist on this node (it must be "
                        "an absolute path to an existing file or directory)", field="mounts")
                out.append({"destination": target, "type": "bind", "source": m.source,
                            "options": ["rbind", "rprivate", ro]})
            elif m.type == "volume":
                if m.source:
                    if not _VOLUME_RE.match(m.source):
                        raise errors.InvalidArgument(f"volume name {m.source!r}: letters, "
                                                     "digits, '_', '.', '-' only", field="mounts")
                    src = self.volumes_dir / m.source
                else:  # anonymous: lives and dies with the container
                    src = path / "volumes" / str(i)
                src.mkdir(parents=True, exist_ok=True, mode=0o755)
                out.append({"destination": target, "type": "bind", "source": str(src),
                            "options": ["rbind", "rprivate", ro]})
            elif m.type == "tmpfs":
                out.append({"destination": target, "type": "tmpfs", "source": "tmpfs",
                            "options": ["nosuid", "nodev", "mode=1777", ro]})
            else:
                raise errors.InvalidArgument(f"mount type {m.type!r}: bind, volume or tmpfs",
                                             field="mounts")
        for src, dst, readonly in cfg.extra_binds:
            out.append({"destination": _check_target(dst), "type": "bind", "source": str(src),
                        "options": ["rbind", "rprivate", "ro" if readonly else "rw"]})
        # As Docker: the container's own /etc/hostname, /etc/hosts and /etc/resolv.conf (a copy
        # of the host's), unless the caller binds its own (as the overlay network's DNS does).
        taken = {m["destination"] for m in out}
        etc = path / "etc"
        etc.mkdir(exist_ok=True)
        hostname = cfg.hostname or cfg.id[:12]
        files = {"hostname": f"{hostname}\n",
                 "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                          f"127.0.1.1\t{hostname}\n",
                 "resolv.conf": _host_resolv_conf()}
        for name, text in files.items():
            if f"/etc/{name}" in taken:
                continue
            (etc / name).write_text(text)
            out.append({"destination": f"/etc/{name}", "type": "bind",
                        "source": str(etc / name), "options": ["rbind", "rprivate", "rw"]})
        # Parents before children, whatever order the service listed them in.
        return sorted(out, key=lambda m: m["destination"].rstrip("/").count("/"))

    # ---- exit watching ----------------------------------------------------------------------
    def _arm(self, c: _Container) -> None:
        """Watch the init's exit and tail its logs (idempotent)."""
        if c.removed:
            return
        if c.tailer is None:
            try:
                c.tail = _LogTail(c.dir)
            except FileNotFoundError:  # the directory is going away
                c.tail_done.set()
                return
            c.tail_done.clear()
            c.tailer = asyncio.create_task(self._tail(c, c.tail), name=f"logs-{c.id[:12]}")
        if c.watched:
            return
        c.watched = True
        if c.exited.is_set():
            if c.exit_info is None:
                self._collect(c)  # exited unseen: reap it if it is our zombie, else unknown
            return
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(c.pid)
        except ProcessLookupError:
            loop.call_soon(self._collect, c)
            return
        if _start_time(c.pid) != c.pid_start:  # the pid was reused: ours is long gone
            os.close(fd)
            loop.call_soon(self._collect, c)
            return
        c.pidfd = fd
        loop.add_reader(fd, self._collect, c)

    def _collect(self, c: _Container) -> None:
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
                    loop.call_later(0.01, self._collect, c)
                    return
                status = st if pid == c.pid else None
            except ChildProcessError:
                status = None  # not our child (adopted after a restart): its status went elsewhere
        if c.pidfd is not None:
            os.close(c.pidfd)
            c.pidfd = None
        self._record_exit(c, status)

    def _record_exit(self, c: _Container, status: Optional[int]) -> None:
        limit = c.config.get("memory_limit", 0)
        oom = self._oom_kills(c) > 0
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

    def _oom_kills(self, c: _Container) -> int:
        cg = c.meta.get("cgroup", "")
        if not cg:
            return 0
        for mnt, fstype, opts in cgroup_mounts():
            try:
                if fstype == "cgroup" and "memory" in opts.split(","):
                    text = (Path(mnt + cg) / "memory.oom_control").read_text()
                elif fstype == "cgroup2" and mnt == "/sys/fs/cgroup":
                    text = (Path(mnt + cg) / "memory.events").read_text()
                else:
                    continue
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

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
                self._reap_orphans()

    def _reap_orphans(self) -> None:
        inits = {c.pid for c in self._containers.values() if not c.exited.is_set()}
        for pid in _orphan_zombies():
            if pid not in inits:
                with _suppress_os():
                    os.waitpid(pid, os.WNOHANG)

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
            self._reap_orphans()  # a killed init that was still our child
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
                self._reap_orphans()
            raise ExecTimeout(f"{argv[0]} in container {cid} timed out after {timeout:g}s "
                              "and was killed", field="timeout")
        finally:
            pid_file.unlink(missing_ok=True)
        return rc, out.decode(errors="replace")

    # ---- logs -------------------------------------------------------------------------------
    async def _tail(self, c: _Container, tail: "_LogTail") -> None:
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

    async def logs(self, cid: str, tail: Optional[int] = None, follow: bool = False,
                   timestamps: bool = True, run: Optional[int] = None) -> AsyncIterator[LogLine]:
        """The container's log lines, oldest first (the last `tail` ones if given); with
        `follow`, keeps yielding new lines until the container has exited and its output is
        all read. With `run`, the lines end where that run's output ends (a restarted
        container's log holds every run). Every LogLine carries its timestamp: `timestamps`
        only tells a formatter whether to show it (kept in the signature for the API layer's
        convenience)."""
        c = self._get(cid)
        self._arm(c)
        if c.tail is not None:
            with _suppress_os():
                # what the container wrote up to now, not 250 ms ago (all of it once it exited)
                c.tail.pump(c.exited.is_set())
        tail_done = c.tail_done  # following ends with this run: a restart makes a new event
        my_run = c.run if run is None else run
        ended_before = my_run < c.run
        path = c.dir / "container.log"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            offset = 0 if tail is None else _tail_offset(fd, tail)
            pending = b""
            while True:
                done = ended_before or tail_done.is_set()
                end = c.log_ends.get(my_run) if follow or run is not None else None
                size = 1 << 16 if end is None else min(1 << 16, end - offset)
                chunk = os.pread(fd, size, offset) if size > 0 else b""
                if chunk:
                    offset += len(chunk)
                    data = pending + chunk
                    lines = data.split(b"\n")
                    pending = lines.pop()
                    for raw in lines:
                        line = _parse_record(raw)
                        if line is not None:
                            yield line
                    continue
                if not follow or done:
                    return
                await asyncio.sleep(0.1)
        finally:
            os.close(fd)

    # ---- runc -------------------------------------------------------------------------------
    def _runtime_path(self) -> str:
        found = shutil.which(self.runtime)
        if found is None:
            raise errors.FailedPrecondition(f"the container runtime {self.runtime!r} is not "
                                            f"installed on this node (apt-get install "
                                            f"{self.runtime})")
        return found

    async def _runc(self, *args: str, timeout: float = 30.0) -> tuple[int, str, str]:
        runtime = self._runtime_path()

        async def run() -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                runtime, "--root", str(self.state_dir), *args,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), timeout)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                return -1, "", f"{self.runtime} {args[0]} timed out"
            return (proc.returncode or 0, out.decode(errors="replace"),
                    err.decode(errors="replace"))

        return await finish_then_cancel(run())


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


# ---- helpers: users, env, paths -------------------------------------------------------------
def in_rootfs(rootfs: Path, path: str, max_links: int = 40) -> Path:
    """`path` inside the container's root, resolving symlinks as the container would see
    them (an absolute link points into the rootfs, never at the host)."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = rootfs.joinpath(*resolved, part)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > max_links:
                raise errors.InvalidArgument(f"too many symlinks resolving {path} in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return rootfs.joinpath(*resolved)


def _read_db(rootfs: Path, name: str) -> list[list[str]]:
    try:
        text = in_rootfs(rootfs, f"/etc/{name}").read_text(errors="replace")
    except (OSError, errors.ShoalError):
        return []
    return [line.split(":") for line in text.splitlines()
            if line and not line.startswith("#") and line.count(":") >= 2]


def resolve_user(rootfs: Path, user: str) -> tuple[int, int, list[int], str]:
    """uid, gid, supplementary gids and home for "", "uid", "uid:gid", "name", "name:group"
    (names looked up in the image's /etc/passwd and /etc/group, as Docker does)."""
    name, _, group = (user or "0").partition(":")
    if len(user.split(":")) > 2 or not all(_USER_PART.match(p) for p in (name, group) if p) \
            or any(_is_id(p) and int(p) > MAX_ID for p in (name, group)):
        # The image's config comes from outside too: its User is held to the API's rule.
        raise errors.InvalidArgument(f"user {user!r} is not USER, UID, USER:GROUP or UID:GID",
                                     field="user")
    passwd = [e for e in _read_db(rootfs, "passwd") if len(e) >= 6]
    groups = [e for e in _read_db(rootfs, "group") if len(e) >= 3]
    entry = None
    if _is_id(name):
        uid = int(name)
        entry = next((e for e in passwd if e[2] == name), None)
    else:
        entry = next((e for e in passwd if e[0] == name), None)
        if entry is None:
            raise errors.InvalidArgument(f"user {name!r} is not in the image's /etc/passwd",
                                         field="user")
        if not _is_id(entry[2]) or int(entry[2]) > MAX_ID:
            raise errors.InvalidArgument(f"the image's /etc/passwd gives user {name!r} the uid "
                                         f"{entry[2]!r}, which is not a number", field="user")
        uid = int(entry[2])
    gid = int(entry[3]) if entry and _is_id(entry[3]) and int(entry[3]) <= MAX_ID else 0
    if group:
        if _is_id(group):
            gid = int(group)
        else:
            g = next((e for e in groups if e[0] == group), None)
            if g is None:
                raise errors.InvalidArgument(f"group {group!r} is not in the image's "
                                             "/etc/group", field="user")
            if not _is_id(g[2]) or int(g[2]) > MAX_ID:
                raise errors.InvalidArgument(f"the image's /etc/group gives group {group!r} the "
                                             f"gid {g[2]!r}, which is not a number", field="user")
            gid = int(g[2])
    extra = []
    if entry is not None and not group:
        extra = sorted({int(g[2]) for g in groups
                        if len(g) >= 4 and entry[0] in g[3].split(",") and _is_id(g[2])}
                       - {gid})
    home = entry[5] if entry and entry[5] else "/"
    return uid, gid, extra, home


_USER_PART = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}\Z")
MAX_ID = 2**32 - 2


def _is_id(text: str) -> bool:
    """A decimal id: str.isdigit() alone also takes '²', which int() refuses."""
    return text.isascii() and text.isdigit()


def merge_env(*layers: list[str]) -> list[str]:
    """Later layers override earlier ones by variable name; order of first appearance kept."""
    merged: dict[str, str] = {}
    for layer in layers:
        for item in layer:
            key = item.split("=", 1)[0]
            merged[key] = item if "=" in item else f"{item}="
    return list(merged.values())


def _host_resolv_conf() -> str:
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""


def _check_target(target: str) -> str:
    if not target.startswith("/") or ".." in target.split("/") or target.rstrip("/") == "":
        raise errors.InvalidArgument(f"mount target {target!r} must be an absolute path other "
                                     "than /", field="mounts")
    return target


def _plain_config(cfg: ContainerConfig) -> dict:
    d = asdict(cfg)
    d["extra_binds"] = [list(b) for b in cfg.extra_binds]
    return d


def _signal(name: str) -> signals.Signals:
    text = str(name).strip().upper()
    try:
        if text.isdigit():
            return signals.Signals(int(text))
        return signals.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise errors.InvalidArgument(f"unknown signal {name!r}", field="stop_signal")


# ---- helpers: processes, cgroups, mounts ----------------------------------------------------
def _start_time(pid: int) -> int:
    """The process's start time, 0 when it is gone: state.json keeps 0 for "unknown"."""
    return linux.pid_start_time(pid) or 0


def _alive(pid: int, start: int) -> bool:
    return linux.pid_alive(pid, start or None)  # start 0: not known, so not compared


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


def cgroup_prefix_for(executor_root: Path) -> str:
    """Unique per daemon (data root), so lab daemons on one machine never share cgroups."""
    tag = hashlib.sha256(str(executor_root.resolve()).encode()).hexdigest()[:10]
    return f"shoal-{tag}-"


def cgroup_mounts() -> list[tuple[str, str, str]]:
    return [(m.mount_point, m.fs_type, m.super_options) for m in linux.mountinfo()
            if m.fs_type in ("cgroup", "cgroup2")]


def _swap_accounting() -> bool:
    for mnt, fstype, opts in cgroup_mounts():
        if fstype == "cgroup" and "memory" in opts.split(","):
            return os.path.exists(f"{mnt}/memory.memsw.limit_in_bytes")
        if fstype == "cgroup2" and mnt == "/sys/fs/cgroup":
            return True
    return False


def _overlay_path(path: Path) -> str:
    # overlayfs splits its options at ',' and lowerdir at ':', and takes a backslash as an
    # escape: a data root holding any of the three would be cut up or lose its backslashes.
    return re.sub(r"([\\,:])", r"\\\1", str(path))


def _mount_overlay(target: Path, lowers: list[Path], upper: Path, work: Path) -> None:
    # overlayfs wants the top layer first; our list is lowest first.
    lower = ":".join(_overlay_path(p) for p in reversed(lowers))
    dirs = f"upperdir={_overlay_path(upper)},workdir={_overlay_path(work)}"
    opts = f"lowerdir={lower},{dirs},index=off"
    fds: list[int] = []
    try:
        if len(opts) >= 4000:  # mount data is one page: name deep stacks through short fd links
            fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in reversed(lowers)]
            lower = ":".join(f"/proc/self/fd/{fd}" for fd in fds)
            opts = f"lowerdir={lower},{dirs},index=off"
        try:
            linux.mount("overlay", target, "overlay", 0, opts)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                with contextlib.suppress(OSError):
                    linux.mount("overlay", target, "overlay", 0, opts.replace(",index=off", ""))
                    return  # a kernel that does not know index=
            raise errors.Unavailable(f"cannot mount the container's root filesystem (overlay on "
                                     f"{target}): {os.strerror(exc.errno)}")
    finally:
        for fd in fds:
            os.close(fd)


def _unmount(target: Path) -> None:
    for _ in range(10):  # stacked mounts, if any
        try:
            linux.umount(target)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return  # EINVAL: not a mount point (any more); ENOENT: gone
            with contextlib.suppress(OSError):
                linux.umount(target, linux.MNT_DETACH)


def _suppress_os() -> contextlib.suppress:
    """For best-effort steps (a pid file that is not there yet, a cgroup already gone)."""
    return contextlib.suppress(OSError, ValueError)


# ---- helpers: files -------------------------------------------------------------------------
def _write_small(path: Path, obj, durable: bool = True) -> None:
    """A small JSON file, replaced atomically; never recreates a deleted container dir."""
    if not path.parent.is_dir():
        return
    if durable:
        write_json(path, obj)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


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


async def _read_limited(stream: asyncio.StreamReader, limit: int) -> bytes:
    buf = bytearray()
    while chunk := await stream.read(1 << 16):
        if len(buf) < limit:
            buf += chunk[:limit - len(buf)]
    return bytes(buf)


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
