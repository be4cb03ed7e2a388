"""What the executor keeps per container: the records callers see, and the _Container it tracks."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from common import linux
from common.fsutil import read_json, write_json
from common.model import DNSConfig, LogDriver, Mount, Ulimit


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
    # ContainerSpec's options, as Docker means them
    tty: bool = False
    open_stdin: bool = False
    init: bool = False
    read_only: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    ulimits: list[Ulimit] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    dns: Optional[DNSConfig] = None
    log_driver: Optional[LogDriver] = None    # None: json-file, no rotation


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
        self.tail = None  # the logs._LogTail copying its output, while there is one
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


def _plain_config(cfg: ContainerConfig) -> dict:
    d = asdict(cfg)
    d["extra_binds"] = [list(b) for b in cfg.extra_binds]
    return d


# ---- helpers: processes, files --------------------------------------------------------------
def _start_time(pid: int) -> int:
    """The process's start time, 0 when it is gone: state.json keeps 0 for "unknown"."""
    return linux.pid_start_time(pid) or 0


def _alive(pid: int, start: int) -> bool:
    return linux.pid_alive(pid, start or None)  # start 0: not known, so not compared


def _suppress_os() -> contextlib.suppress:
    """For best-effort steps (a pid file that is not there yet, a cgroup already gone)."""
    return contextlib.suppress(OSError, ValueError)


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
