"""The namespace lab: a multi-host shoal cluster on one Linux machine (the façade over its stages).

Every "host" is a network namespace ``shoal-NAME-HOST`` with one veth ``eth0`` (172.31.0.X/24)
whose peer ``v-HOST`` sits in the underlay namespace ``shoal-NAME-net`` on the bridge ``br0``.
Nothing routes out: no default route, no NAT, only the connected /24 between lab hosts.
One real ``shoald`` runs per host (``ip netns exec``); the lab forms the cluster through the CLI.

State lives in ``/var/lib/shoal-lab/NAME/lab.json`` (written atomically); each host's data root
and daemon log in ``/var/lib/shoal-lab/NAME/HOST/``; its API socket is
``/run/shoal-lab/NAME/HOST.sock``. :meth:`Lab.down` removes all of it, from ``lab.json`` and by
scanning namespace names, so it also cleans up after a crash of the lab itself.

Only processes the lab started are ever signalled: recorded daemon PIDs (after checking their
command line), processes inside the lab's own namespaces, and their descendants.

This module is the lab's interface (the CLI, the integration tests and the benchmarks use it);
the work is done by its stages, each imported here and importing none of this:

    naming     host names, addresses, paths; which labs exist
    state      lab.json, read and updated under a lock; a host's state
    processes  commands in hosts, signals by PID, liveness, reaping
    hostnet    the underlay bridge, each host's namespace and veth, partition and heal
    daemons    one shoald per host, waiting for it to answer GET /_ping
    forming    swarm init and joins across the hosts
    teardown   down: processes, containers, mounts, namespaces, directories
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Iterable

from common.fsutil import write_json
from shoal.lab import daemons, forming, hostnet, naming, processes, teardown
from shoal.lab.daemons import READY_TIMEOUT, DaemonArgv, default_daemon_argv, ping
from shoal.lab.errors import LabCommandError, LabError
from shoal.lab.forming import Progress
from shoal.lab.naming import (CLUSTER_PORT, HOST_RE, LAB_ROOT, MANAGER_BASE, MAX_MANAGERS,
                              MAX_WORKERS, NAME_RE, NETNS_DIR, PREFIXLEN, ROLES, RUN_ROOT, SUBNET,
                              WORKER_BASE, host_address, host_namespace, host_order,
                              lab_namespaces, list_namespaces, peer_ifname, underlay_namespace,
                              validate_name)
from shoal.lab.processes import LOG_TAIL_LINES, STOP_TIMEOUT, map_argv
from shoal.lab.state import HostInfo, LabFile, host_info, host_record

__all__ = [
    "Lab", "HostInfo", "LabError", "LabCommandError", "DaemonArgv", "Progress",
    "LAB_ROOT", "RUN_ROOT", "NETNS_DIR", "SUBNET", "PREFIXLEN", "CLUSTER_PORT", "MANAGER_BASE",
    "WORKER_BASE", "MAX_MANAGERS", "MAX_WORKERS", "READY_TIMEOUT", "STOP_TIMEOUT",
    "LOG_TAIL_LINES", "NAME_RE", "HOST_RE", "ROLES",
    "validate_name", "underlay_namespace", "host_namespace", "host_address", "peer_ifname",
    "default_daemon_argv", "map_argv", "require_root", "list_namespaces", "labs", "ping",
]


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("shoal lab needs root (it creates network namespaces): run it with sudo")


def labs() -> list[str]:
    """Names of existing labs (a state directory or namespaces of the lab's shape)."""
    return naming.labs(LAB_ROOT)


class Lab:
    """A lab of network-namespace hosts, each running one shoald.

    ``daemon_argv`` (tests): a callable ``f(*, host, address, data_root, socket) -> argv`` used
    instead of ``python -m shoal.daemon ...``. The argv each host was started with is recorded
    in lab.json, and :meth:`start` reuses it unless this Lab was given its own ``daemon_argv``.
    ``progress``: called with one line per step (the CLI prints them).
    """

    def __init__(self, name: str = "lab", *, daemon_argv: DaemonArgv | None = None,
                 progress: Progress | None = None, ready_timeout: float = READY_TIMEOUT) -> None:
        self.name = validate_name(name)
        self.daemon_argv = daemon_argv
        self.progress = progress
        self.ready_timeout = ready_timeout
        self.state_dir = LAB_ROOT / name
        self.run_dir = RUN_ROOT / name
        self.json_path = self.state_dir / "lab.json"
        self.underlay = underlay_namespace(name)
        self._file = LabFile(name, self.state_dir)
        self._children: processes.Children = {}

    def __repr__(self) -> str:
        return f"Lab({self.name!r})"

    # -- context manager --
    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> bool:
        self.down()
        return False

    # -- state --
    @classmethod
    def load(cls, name: str = "lab", **kwargs) -> "Lab":
        lab = cls(name, **kwargs)
        lab._read()  # raises when there is no such lab
        return lab

    def exists(self) -> bool:
        return self.state_dir.exists() or bool(lab_namespaces(self.name))

    def _read(self) -> dict:
        return self._file.read()

    def _txn(self):
        """Read-modify-write of lab.json under a lock (threads and other processes)."""
        return self._file.txn()

    def _say(self, msg: str) -> None:
        if self.progress:
            self.progress(msg)

    def _host_record(self, data: dict, name: str) -> dict:
        return host_record(data, name, self.name)

    def _info(self, name: str, h: dict) -> HostInfo:
        return host_info(name, h, self._alive)

    def hosts(self) -> list[HostInfo]:
        data = self._read()
        return [self._info(n, h) for n, h in sorted(data["hosts"].items(), key=host_order)]

    def host(self, name: str) -> HostInfo:
        data = self._read()
        return self._info(name, self._host_record(data, name))

    @property
    def formed(self) -> bool:
        return bool(self._read().get("formed"))

    def log(self, host: str, lines: int = 50) -> str:
        """The last lines of a host's shoald.log."""
        return processes.tail(self.host(host).log, lines)

    # -- processes --
    def _alive(self, pid: int | None, h: dict | None = None) -> bool:
        """Is `pid` alive and (when a host record is given) still that host's daemon?"""
        return processes.alive(self._children, pid, h)

    def _spawn(self, name: str) -> int:
        """Start the host's daemon detached; records its PID. Does not wait for readiness."""
        with self._txn() as data:
            h = self._host_record(data, name)
            argv = daemons.daemon_argv_for(self.daemon_argv, name, h)
            return daemons.spawn(self.name, name, h, argv, self._children)

    def _wait_ready(self, names: list[str], deadline: float) -> None:
        daemons.wait_ready(names, deadline, self._read, self._children)

    # -- building --
    def _add_hosts(self, roles: list[str]) -> list[str]:
        """Record, wire and start hosts (no readiness wait)."""
        names = []
        for role in roles:
            with self._txn() as data:
                name, h = naming.new_host_record(self.name, self.state_dir, self.run_dir,
                                                 data["hosts"], role)
            Path(h["data_root"]).mkdir(parents=True, exist_ok=True, mode=0o700)
            hostnet.create_host_net(self.underlay, h)
            names.append(name)
        for name in names:
            self._spawn(name)
        return names

    def up(self, managers: int = 3, workers: int = 2, *, form: bool = True,
           timeout: float = 60) -> None:
        """Create the underlay and the hosts, start a shoald on each, form the cluster.

        On any failure (or Ctrl-C) everything made so far is torn down and the error re-raised.
        """
        require_root()
        if managers < 0 or workers < 0 or managers + workers < 1:
            raise LabError("a lab needs at least one host: use --managers/--workers >= 0, "
                           "at least one in total")
        if form and managers < 1:
            raise LabError("forming a cluster needs at least one manager: use --managers 1 "
                           "or more")
        if managers > MAX_MANAGERS or workers > MAX_WORKERS:
            raise LabError(f"a lab holds at most {MAX_MANAGERS} managers and {MAX_WORKERS} "
                           f"workers")
        if self.exists():
            raise LabError(f"a lab named {self.name!r} already exists: remove it with "
                           f"`shoal lab down --name {self.name}` first (or use another --name)")
        deadline = time.monotonic() + timeout
        try:
            LAB_ROOT.mkdir(parents=True, exist_ok=True, mode=0o755)
            try:
                self.state_dir.mkdir(mode=0o755)
            except FileExistsError:
                raise LabError(f"a lab named {self.name!r} already exists: remove it with "
                               f"`shoal lab down --name {self.name}` first") from None
            RUN_ROOT.mkdir(parents=True, exist_ok=True, mode=0o755)
            self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_json(self.json_path, {
                "name": self.name, "version": 1, "state": "creating", "formed": False,
                "created": time.time(), "underlay": self.underlay,
                "subnet": f"{SUBNET}.0/{PREFIXLEN}", "hosts": {},
            })
            self._say(f"creating lab {self.name!r}: {managers} managers, {workers} workers "
                      f"on {SUBNET}.0/{PREFIXLEN}")
            hostnet.create_underlay(self.underlay)
            names = self._add_hosts(["manager"] * managers + ["worker"] * workers)
            self._say(f"waiting for {len(names)} daemons to answer /_ping")
            ready_deadline = min(deadline, time.monotonic()
                                 + max(self.ready_timeout, 2.0 * len(names)))
            self._wait_ready(names, ready_deadline)
            if form:
                with self._txn() as data:
                    data["state"] = "forming"
                self._form(deadline)
            with self._txn() as data:
                data["state"] = "up"
        except BaseException:
            try:
                self.down()
            except Exception as exc:  # keep the original error in front
                self._say(f"cleanup after the failed `up` also failed: {exc}")
            raise

    def _form(self, deadline: float) -> None:
        def mark_formed() -> None:
            with self._txn() as d:
                d["formed"] = True
        forming.form(self, self._read()["hosts"], deadline, say=self._say,
                     mark_formed=mark_formed, state_dir=self.state_dir)

    def add_host(self, role: str, *, join: bool = True, timeout: float = 60) -> str:
        """Add one more managerN/workerN, start its daemon and (if the lab is formed and
        `join`) join it to the cluster through a running manager. Returns its name."""
        require_root()
        if role not in ROLES:
            raise LabError(f"invalid role {role!r}: use --role manager or --role worker")
        deadline = time.monotonic() + timeout
        data = self._read()
        name = self._add_hosts([role])[0]
        self._say(f"{name}: waiting for shoald to answer /_ping")
        self._wait_ready([name], min(deadline, time.monotonic() + self.ready_timeout))
        if join and data.get("formed"):
            via = forming.pick_manager(self.name, self._read()["hosts"], self._alive)
            token = forming.join_token(self, via, role, deadline)
            hosts = self._read()["hosts"]
            remote = f"{hosts[via]['address']}:{CLUSTER_PORT}"
            forming.join(self, name, hosts[name]["address"], token, remote, deadline,
                         self._say)
            forming.wait_nodes(self, via, [name], self._read()["hosts"], deadline,
                               self.state_dir)
        return name

    # -- running commands --
    def command(self, host: str, argv: Iterable[str]) -> tuple[list[str], dict]:
        """The full argv and env that run `argv` inside `host` (`shoal` maps to this CLI)."""
        h = self._host_record(self._read(), host)
        return processes.host_command(self.name, host, h, argv)

    def exec(self, host: str, argv: list[str], *, check: bool = False, timeout: float = 60,
             input: bytes | str | None = None) -> subprocess.CompletedProcess:
        """Run argv in the host's namespace with SHOAL_SOCKET and DOCKER_HOST set; stdout/stderr
        as text."""
        require_root()
        full, env = self.command(host, argv)
        return processes.run(host, argv, full, env, check=check, timeout=timeout, input=input)

    def cli(self, host: str, *args: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess:
        """Run `shoal *args` (this interpreter's CLI) inside the host."""
        return self.exec(host, ["shoal", *args], check=check, timeout=timeout)

    def cli_json(self, host: str, *args: str, timeout: float = 30):
        res = self.cli(host, *args, "--format", "json", timeout=timeout)
        try:
            return json.loads(res.stdout)
        except ValueError as exc:
            raise LabError(f"{host}: `shoal {' '.join(args)} --format json` did not print JSON: "
                           f"{res.stdout[:200]!r}") from exc

    # -- fault injection --
    def _running_record(self, host: str, verb: str) -> tuple[dict, int]:
        data = self._read()
        h = self._host_record(data, host)
        pid = h.get("pid")
        if h.get("daemon") != "running" or not self._alive(pid, h):
            state = self._info(host, h).state
            raise LabError(f"{host}: cannot {verb}, its shoald is not running (state {state}): "
                           f"start it with `shoal lab start --name {self.name} {host}`")
        return h, pid

    def kill(self, host: str) -> None:
        """SIGKILL the host's shoald (by its recorded PID)."""
        require_root()
        h, pid = self._running_record(host, "kill")
        processes.kill(self._children, pid)
        with self._txn() as data:
            data["hosts"][host]["daemon"] = "killed"

    def stop(self, host: str, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGTERM the host's shoald, wait up to `timeout` s, then SIGKILL. True if SIGTERM was
        enough."""
        require_root()
        h, pid = self._running_record(host, "stop")
        graceful = processes.terminate(
            self._children, pid, timeout,
            lambda: self._say(f"{host}: shoald ignored SIGTERM for {timeout:.0f} s; "
                              f"sending SIGKILL"))
        with self._txn() as data:
            data["hosts"][host]["daemon"] = "stopped"
        return graceful

    def start(self, host: str, timeout: float | None = None) -> None:
        """Start the host's shoald again (same data root) and wait for /_ping."""
        require_root()
        data = self._read()
        h = self._host_record(data, host)
        if h.get("daemon") == "running" and self._alive(h.get("pid"), h):
            raise LabError(f"{host}: shoald is already running (pid {h['pid']}): stop or kill "
                           f"it first (`shoal lab stop --name {self.name} {host}`)")
        if not (NETNS_DIR / h["namespace"]).exists():
            raise LabError(f"{host}: its namespace {h['namespace']} is gone; recreate the lab "
                           f"(`shoal lab down --name {self.name}` then `up`)")
        self._spawn(host)
        self._wait_ready([host], time.monotonic() + (timeout or self.ready_timeout))

    def partition(self, host: str) -> None:
        """Cut the host off the underlay (its bridge port goes down). Idempotent."""
        require_root()
        self._set_peer(host, up=False)

    def heal(self, host: str) -> None:
        """Undo :meth:`partition`. Idempotent."""
        require_root()
        self._set_peer(host, up=True)

    def _set_peer(self, name: str, up: bool) -> None:
        with self._txn() as data:
            h = self._host_record(data, name)
            hostnet.set_peer(self.name, self.underlay, name, h, up)

    # -- teardown --
    def down(self) -> None:
        """Remove everything of this lab: processes, mounts, namespaces, directories.

        Works from lab.json and by scanning `shoal-NAME-*` namespaces; idempotent.
        """
        require_root()
        teardown.down(self.name, self.state_dir, self.run_dir, self.underlay, self._children)
