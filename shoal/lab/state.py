"""The lab's record of itself, lab.json: read, and updated under a lock, and hosts' states."""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from common.fsutil import read_json, write_json
from shoal.lab.errors import LabError
from shoal.lab.naming import HOST_RE, host_order, lab_namespaces, labs


@dataclass
class HostInfo:
    name: str
    role: str
    namespace: str
    address: str
    pid: int | None
    # "running" | "stopped" | "killed" | "partitioned" (daemon running, host cut off)
    # | "exited" (recorded as running but the process is gone) | "created" (never started)
    state: str
    partitioned: bool = False
    index: int = 0
    data_root: str = ""
    socket: str = ""
    docker_socket: str = ""     # the Docker Engine API (shoal/dockerapi)
    log: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class LabFile:
    """``STATE_DIR/lab.json`` of the lab ``name`` (its lab root is the state dir's parent)."""

    def __init__(self, name: str, state_dir: Path) -> None:
        self.name = name
        self.state_dir = state_dir
        self.path = state_dir / "lab.json"
        self._lock = threading.RLock()

    def no_such_lab(self) -> LabError:
        if lab_namespaces(self.name):
            return LabError(f"lab {self.name!r} has namespaces but no state ({self.path} "
                            f"is missing, a crash?): clean up with `shoal lab down --name "
                            f"{self.name}`")
        others = [n for n in labs(self.state_dir.parent) if n != self.name]
        hint = f" (existing labs: {', '.join(others)}; pick one with --name)" if others else ""
        return LabError(f"no lab named {self.name!r}{hint}: create it with "
                        f"`shoal lab up --name {self.name}`")

    def read(self) -> dict:
        data = read_json(self.path)
        if data is None:
            raise self.no_such_lab()
        return data

    @contextlib.contextmanager
    def txn(self):
        """Read-modify-write of lab.json under a lock (threads and other processes)."""
        with self._lock:
            try:
                fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            except FileNotFoundError:
                raise self.no_such_lab() from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                data = self.read()
                yield data
                write_json(self.path, data)
            finally:
                os.close(fd)


def host_record(data: dict, name: str, lab: str) -> dict:
    """The record of host `name` in lab.json's `data`; a LabError naming the hosts if none."""
    h = data["hosts"].get(name)
    if h is None:
        known = ", ".join(n for n, _ in sorted(data["hosts"].items(), key=host_order))
        if not isinstance(name, str) or not HOST_RE.match(name):
            problem = f"invalid host name {name!r}"
        else:
            problem = f"no host {name!r} in lab {lab!r}"
        raise LabError(f"{problem}: use one of {known or '(none)'}"
                       f" (see `shoal lab ls --name {lab}`)")
    return h


def host_info(name: str, h: dict, alive: Callable[[int | None, dict], bool]) -> HostInfo:
    """What a host's record says, with its daemon checked: `alive(pid, record)`."""
    daemon = h.get("daemon", "created")
    pid = h.get("pid")
    if daemon == "running" and not alive(pid, h):
        daemon = "exited"
    state = daemon
    if daemon == "running" and h.get("partitioned"):
        state = "partitioned"
    return HostInfo(name=name, role=h["role"], namespace=h["namespace"],
                    address=h["address"], pid=pid, state=state,
                    partitioned=bool(h.get("partitioned")), index=h["index"],
                    data_root=h["data_root"], socket=h["socket"],
                    docker_socket=h.get("docker_socket", ""), log=h["log"])
