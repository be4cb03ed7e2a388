"""The namespace lab: a multi-host shoal cluster on one Linux machine.

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
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from common import linux
from common.fsutil import read_json, write_json

LAB_ROOT = Path("/var/lib/shoal-lab")
RUN_ROOT = Path("/run/shoal-lab")
NETNS_DIR = Path("/run/netns")
SUBNET = "172.31.0"
PREFIXLEN = 24
CLUSTER_PORT = 2377

MANAGER_BASE = 10   # managerI -> 172.31.0.(10+I)
WORKER_BASE = 100   # workerI  -> 172.31.0.(100+I)
MAX_MANAGERS = 89
MAX_WORKERS = 154

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 20

NAME_RE = re.compile(r"[a-z0-9]{1,8}\Z")
HOST_RE = re.compile(r"(manager|worker)([1-9][0-9]{0,2})\Z")
ROLES = ("manager", "worker")

# argv factory: called with keyword arguments host, address, data_root, socket
DaemonArgv = Callable[..., list]
Progress = Callable[[str], None]


class LabError(Exception):
    """A lab operation failed; the message names the problem and, where there is one, the fix."""


class LabCommandError(LabError):
    """A command run inside a lab host exited non-zero (``check=True``)."""

    def __init__(self, message: str, result: subprocess.CompletedProcess) -> None:
        super().__init__(message)
        self.result = result


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
    log: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# names and paths

def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise LabError(f"invalid lab name {name!r}: use 1 to 8 lowercase letters or digits "
                       f"(e.g. --name lab2)")
    return name


def underlay_namespace(lab: str) -> str:
    return f"shoal-{lab}-net"


def host_namespace(lab: str, host: str) -> str:
    return f"shoal-{lab}-{host}"


def host_address(role: str, index: int) -> str:
    return f"{SUBNET}.{(MANAGER_BASE if role == 'manager' else WORKER_BASE) + index}"


def peer_ifname(host: str) -> str:
    return f"v-{host}"  # <= 15 chars: host names are at most "manager999"/"worker999"


def default_daemon_argv(*, host: str, address: str, data_root: str, socket: str) -> list[str]:
    return [sys.executable, "-m", "shoal.daemon", "--data-root", data_root,
            "--advertise-addr", address, "--socket", socket, "--hostname", host]


def map_argv(argv: Iterable[str]) -> list[str]:
    """`shoal ...` / `shoald ...` run this interpreter's CLI / daemon, not whatever is on PATH."""
    argv = list(argv)
    if argv and argv[0] == "shoal":
        return [sys.executable, "-m", "shoal.cli", *argv[1:]]
    if argv and argv[0] == "shoald":
        return [sys.executable, "-m", "shoal.daemon", *argv[1:]]
    return argv


def _source_root() -> str:
    """The directory holding the `shoal` package, so `-m shoal.cli` works from any cwd."""
    return str(Path(__file__).resolve().parent.parent.parent)


def _child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    root = _source_root()
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        parts.insert(0, root)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("shoal lab needs root (it creates network namespaces): run it with sudo")


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _lab_namespaces(lab: str) -> list[str]:
    prefix = f"shoal-{lab}-"
    return [ns for ns in list_namespaces() if ns.startswith(prefix)]


_LAB_NS_RE = re.compile(r"shoal-([a-z0-9]{1,8})-(?:net|(?:manager|worker)[0-9]+)\Z")


def labs() -> list[str]:
    """Names of existing labs (a state directory or namespaces of the lab's shape)."""
    names = set()
    try:
        for entry in os.listdir(LAB_ROOT):
            if NAME_RE.match(entry) and (LAB_ROOT / entry).is_dir():
                names.add(entry)
    except FileNotFoundError:
        pass
    for ns in list_namespaces():
        m = _LAB_NS_RE.match(ns)
        if m:
            names.add(m.group(1))
    return sorted(names)


# ----------------------------------------------------------------------------------------------
# processes

def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _ppid_map() -> dict[int, int]:
    result = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := linux.proc_stat(int(entry))) is not None:
            result[int(entry)] = st.ppid
    return result


def _descendants(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found and child not in roots:
                found.add(child)
                todo.append(child)
    return found


def _ancestors_of_self() -> set[int]:
    ppids = _ppid_map()
    result, pid = {os.getpid()}, os.getpid()
    while pid in ppids and ppids[pid] > 0:
        pid = ppids[pid]
        result.add(pid)
    return result


def _netns_pids(ns: str) -> set[int]:
    try:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {int(tok) for tok in out.split() if tok.isdigit()}


def _tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    text = "\n".join(data.splitlines()[-lines:])
    return text or "(log is empty)"


# ----------------------------------------------------------------------------------------------
# the daemon's readiness probe: GET /_ping over its unix socket

class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def ping(socket_path: str, timeout: float = 1.0) -> bool:
    """True when the daemon at ``socket_path`` answers ``GET /_ping`` with 200."""
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------------
# mounts

def _mounts_under(dirs: Iterable[Path]) -> list[str]:
    prefixes = [str(d).rstrip("/") for d in dirs]
    try:
        table = linux.mountinfo()
    except OSError:
        return []
    found = {m.mount_point for m in table
             if any(m.mount_point == p or m.mount_point.startswith(p + "/") for p in prefixes)}
    # deepest first
    return sorted(found, key=lambda p: (p.count("/"), p), reverse=True)


def _remove_runc_containers(state_root: Path) -> list[str]:
    problems = []
    if shutil.which("runc") is None:
        return problems
    for entry in sorted(p.name for p in state_root.iterdir() if p.is_dir()):
        r = subprocess.run(["runc", "--root", str(state_root), "delete", "--force", entry],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0 and (state_root / entry).exists():
            problems.append(f"runc could not remove container {entry}: {r.stderr.strip()}")
    return problems


def _remove_leftover_cgroups(executor_root: Path) -> list[str]:
    """A daemon killed between runc's create and its own bookkeeping leaves the container's
    cgroups behind with no runc state to find them by: remove them by the executor's prefix."""
    from worker.executor import cgroup_mounts, cgroup_prefix_for
    prefix = cgroup_prefix_for(executor_root)
    problems = []
    for mnt, _, _ in cgroup_mounts():
        for cgroup in Path(mnt).glob(f"{prefix}*"):
            try:
                cgroup.rmdir()  # an empty cgroup goes with rmdir, its control files with it
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"cannot remove cgroup {cgroup}: {exc}")
    return problems


def _umount_lazy(path: str) -> None:
    try:
        linux.umount(path, linux.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more); gone
            raise


# ----------------------------------------------------------------------------------------------

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
        self._lock = threading.RLock()
        self._children: dict[int, subprocess.Popen] = {}

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
        return self.state_dir.exists() or bool(_lab_namespaces(self.name))

    def _no_such_lab(self) -> LabError:
        if _lab_namespaces(self.name):
            return LabError(f"lab {self.name!r} has namespaces but no state ({self.json_path} "
                            f"is missing, a crash?): clean up with `shoal lab down --name "
                            f"{self.name}`")
        others = [n for n in labs() if n != self.name]
        hint = f" (existing labs: {', '.join(others)}; pick one with --name)" if others else ""
        return LabError(f"no lab named {self.name!r}{hint}: create it with "
                        f"`shoal lab up --name {self.name}`")

    def _read(self) -> dict:
        data = read_json(self.json_path)
        if data is None:
            raise self._no_such_lab()
        return data

    @contextlib.contextmanager
    def _txn(self):
        """Read-modify-write of lab.json under a lock (threads and other processes)."""
        with self._lock:
            try:
                fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            except FileNotFoundError:
                raise self._no_such_lab() from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                data = self._read()
                yield data
                write_json(self.json_path, data)
            finally:
                os.close(fd)

    def _say(self, msg: str) -> None:
        if self.progress:
            self.progress(msg)

    def _info(self, name: str, h: dict) -> HostInfo:
        daemon = h.get("daemon", "created")
        pid = h.get("pid")
        if daemon == "running" and not self._alive(pid, h):
            daemon = "exited"
        state = daemon
        if daemon == "running" and h.get("partitioned"):
            state = "partitioned"
        return HostInfo(name=name, role=h["role"], namespace=h["namespace"],
                        address=h["address"], pid=pid, state=state,
                        partitioned=bool(h.get("partitioned")), index=h["index"],
                        data_root=h["data_root"], socket=h["socket"], log=h["log"])

    @staticmethod
    def _sort_key(item):
        name, h = item
        return (ROLES.index(h["role"]), h["index"])

    def hosts(self) -> list[HostInfo]:
        data = self._read()
        return [self._info(n, h) for n, h in sorted(data["hosts"].items(), key=self._sort_key)]

    def host(self, name: str) -> HostInfo:
        data = self._read()
        return self._info(name, self._host_record(data, name))

    def _host_record(self, data: dict, name: str) -> dict:
        h = data["hosts"].get(name)
        if h is None:
            known = ", ".join(n for n, _ in sorted(data["hosts"].items(), key=self._sort_key))
            if not isinstance(name, str) or not HOST_RE.match(name):
                problem = f"invalid host name {name!r}"
            else:
                problem = f"no host {name!r} in lab {self.name!r}"
            raise LabError(f"{problem}: use one of {known or '(none)'}"
                           f" (see `shoal lab ls --name {self.name}`)")
        return h

    @property
    def formed(self) -> bool:
        return bool(self._read().get("formed"))

    def log(self, host: str, lines: int = 50) -> str:
        """The last lines of a host's shoald.log."""
        return _tail(self.host(host).log, lines)

    # -- processes --
    def _alive(self, pid: int | None, h: dict | None = None) -> bool:
        """Is `pid` alive and (when a host record is given) still that host's daemon?"""
        if not pid:
            return False
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            return False
        if not linux.pid_alive(pid):
            return False
        if h is not None and h.get("socket") not in _cmdline(pid):
            return False  # the PID was reused by something else
        return True

    def _reap(self, pid: int) -> None:
        child = self._children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(Exception):
                child.wait(timeout=1)
            return
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)

    def _wait_dead(self, pids: Iterable[int], timeout: float) -> set[int]:
        """Wait until every pid is gone (or a zombie); returns those still alive."""
        pending = set(pids)
        deadline = time.monotonic() + timeout
        while True:
            for pid in list(pending):
                child = self._children.get(pid)
                if child is not None and child.poll() is not None:
                    pending.discard(pid)
                elif not linux.pid_alive(pid):
                    pending.discard(pid)
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        for pid in set(pids) - pending:
            self._reap(pid)
        return pending

    def _daemon_argv_for(self, name: str, h: dict) -> list[str]:
        if self.daemon_argv is None and h.get("argv"):
            return list(h["argv"])
        factory = self.daemon_argv or default_daemon_argv
        return [str(a) for a in factory(host=name, address=h["address"],
                                        data_root=h["data_root"], socket=h["socket"])]

    def _spawn(self, name: str) -> int:
        """Start the host's daemon detached; records its PID. Does not wait for readiness."""
        with self._txn() as data:
            h = self._host_record(data, name)
            argv = self._daemon_argv_for(name, h)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(h["socket"])
            Path(h["data_root"]).mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(h["log"], "ab") as log:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                log.write(f"=== shoal lab {stamp}: starting {name} in {h['namespace']}: "
                          f"{' '.join(argv)}\n".encode())
                log.flush()
                # Only the network namespace: `ip netns exec` would also give the daemon a mount
                # namespace with a fresh /sys, hiding the cgroup hierarchy runc needs, and
                # would hide its container mounts from `lab down`. A real host has neither.
                proc = subprocess.Popen(
                    ["nsenter", f"--net={NETNS_DIR / h['namespace']}", "--", *argv],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True, cwd=h["data_root"],
                    env=_child_env({"SHOAL_LAB": self.name, "SHOAL_LAB_HOST": name}))
            self._children[proc.pid] = proc
            h.update(pid=proc.pid, argv=argv, daemon="running", started=time.time())
        return proc.pid

    def _wait_ready(self, names: list[str], deadline: float) -> None:
        pending = list(names)
        while pending:
            data = self._read()
            for name in list(pending):
                h = data["hosts"][name]
                if ping(h["socket"], timeout=1.0):
                    pending.remove(name)
                    continue
                pid = h.get("pid")
                child = self._children.get(pid)
                code = child.poll() if child is not None else None
                if code is not None or not linux.pid_alive(pid):
                    how = f"exited with code {code}" if code is not None else "exited"
                    raise LabError(
                        f"{name}: shoald {how} before answering GET /_ping on {h['socket']}; "
                        f"see {h['log']}; last lines:\n{_tail(h['log'])}")
            if not pending:
                break
            if time.monotonic() >= deadline:
                name = pending[0]
                h = data["hosts"][name]
                raise LabError(
                    f"{name}: shoald did not answer GET /_ping on {h['socket']} in time "
                    f"(also waiting: {', '.join(pending[1:]) or 'none'}); see {h['log']}; "
                    f"last lines:\n{_tail(h['log'])}")
            time.sleep(0.05)

    # -- network --
    def _create_underlay(self) -> None:
        from pyroute2 import IPRoute, netns  # lazy: every CLI command loads this module
        netns.create(self.underlay)
        # the underlay is a plain switch: no IPv6 link-local addresses on br0 or its ports
        subprocess.run(["ip", "netns", "exec", self.underlay, "sh", "-c",
                        "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && "
                        "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"],
                       check=False, capture_output=True, timeout=10)
        with IPRoute(netns=self.underlay, flags=0) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("add", ifname="br0", kind="bridge")
            br = ipr.link_lookup(ifname="br0")[0]
            ipr.link("set", index=br, state="up")

    def _create_host_net(self, name: str, h: dict) -> None:
        from pyroute2 import IPRoute, netns  # lazy: every CLI command loads this module
        ns = h["namespace"]
        netns.create(ns)
        with IPRoute(netns=ns, flags=0) as ipr:
            ipr.link("add", ifname="eth0", kind="veth",
                     peer={"ifname": h["peer"], "net_ns_fd": self.underlay})
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=h["address"], prefixlen=PREFIXLEN)
            ipr.link("set", index=eth0, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        with IPRoute(netns=self.underlay, flags=0) as ipr:
            br = ipr.link_lookup(ifname="br0")[0]
            peer = ipr.link_lookup(ifname=h["peer"])[0]
            ipr.link("set", index=peer, master=br)
            ipr.link("set", index=peer, state="down" if h.get("partitioned") else "up")

    def _set_peer(self, name: str, up: bool) -> None:
        from pyroute2 import IPRoute  # lazy: every CLI command loads this module
        with self._txn() as data:
            h = self._host_record(data, name)
            try:
                with IPRoute(netns=self.underlay, flags=0) as ipr:
                    idx = ipr.link_lookup(ifname=h["peer"])
                    if not idx:
                        raise LabError(f"{name}: its underlay port {h['peer']} is missing in "
                                       f"{self.underlay}; recreate the lab (`shoal lab down "
                                       f"--name {self.name}` then `up`)")
                    ipr.link("set", index=idx[0], state="up" if up else "down")
            except FileNotFoundError:
                raise LabError(f"the underlay namespace {self.underlay} is gone; recreate the "
                               f"lab (`shoal lab down --name {self.name}` then `up`)") from None
            h["partitioned"] = not up

    # -- building --
    def _new_host_record(self, data: dict, role: str) -> tuple[str, dict]:
        if role not in ROLES:
            raise LabError(f"invalid role {role!r}: use manager or worker")
        used = [h["index"] for h in data["hosts"].values() if h["role"] == role]
        index = max(used, default=0) + 1
        limit = MAX_MANAGERS if role == "manager" else MAX_WORKERS
        if index > limit:
            raise LabError(f"a lab holds at most {limit} {role}s (addresses run out)")
        name = f"{role}{index}"
        h = {
            "role": role, "index": index,
            "namespace": host_namespace(self.name, name),
            "address": host_address(role, index),
            "peer": peer_ifname(name),
            "data_root": str(self.state_dir / name),
            "log": str(self.state_dir / name / "shoald.log"),
            "socket": str(self.run_dir / f"{name}.sock"),
            "pid": None, "daemon": "created", "partitioned": False, "argv": None,
        }
        data["hosts"][name] = h
        return name, h

    def _add_hosts(self, roles: list[str]) -> list[str]:
        """Record, wire and start hosts (no readiness wait)."""
        names = []
        for role in roles:
            with self._txn() as data:
                name, h = self._new_host_record(data, role)
            Path(h["data_root"]).mkdir(parents=True, exist_ok=True, mode=0o700)
            self._create_host_net(name, h)
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
            self._create_underlay()
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

    def _pick_manager(self, data: dict) -> str:
        """A manager whose daemon runs and that is not partitioned (manager1 preferred)."""
        for name, h in sorted(data["hosts"].items(), key=self._sort_key):
            if h["role"] == "manager" and not h.get("partitioned") and self._alive(h.get("pid"), h):
                return name
        raise LabError(f"no running, connected manager in lab {self.name!r}: start or heal "
                       f"one (`shoal lab start|heal --name {self.name} managerN`)")

    def _form(self, deadline: float) -> None:
        data = self._read()
        names = [n for n, _ in sorted(data["hosts"].items(), key=self._sort_key)]
        first = "manager1"
        addr = data["hosts"][first]["address"]
        self._say(f"{first}: shoal swarm init --advertise-addr {addr}")
        self.cli(first, "swarm", "init", "--advertise-addr", addr,
                 timeout=self._left(deadline))
        with self._txn() as d:
            d["formed"] = True
        tokens = {role: self._token(first, role, deadline) for role in ROLES}
        joined = [first]
        others = [n for n in names if n != first]
        for name in [n for n in others if data["hosts"][n]["role"] == "manager"]:
            self._join(name, tokens["manager"], f"{addr}:{CLUSTER_PORT}", deadline)
            joined.append(name)
            self._wait_nodes(first, joined, deadline)  # one raft membership change at a time
        workers = [n for n in others if data["hosts"][n]["role"] == "worker"]
        if workers:
            with ThreadPoolExecutor(max_workers=min(8, len(workers))) as pool:
                futures = [pool.submit(self._join, n, tokens["worker"],
                                       f"{addr}:{CLUSTER_PORT}", deadline) for n in workers]
                for f in futures:
                    f.result()
        self._say(f"waiting until all {len(names)} nodes are ready")
        self._wait_nodes(first, names, deadline)

    @staticmethod
    def _left(deadline: float, floor: float = 5.0) -> float:
        return max(floor, deadline - time.monotonic())

    def _token(self, via: str, role: str, deadline: float) -> str:
        token = self.cli(via, "swarm", "join-token", "-q", role,
                         timeout=self._left(deadline)).stdout.strip()
        if not token:
            raise LabError(f"{via}: `shoal swarm join-token -q {role}` printed no token")
        return token

    def _join(self, name: str, token: str, remote: str, deadline: float) -> None:
        addr = self._read()["hosts"][name]["address"]
        self._say(f"{name}: shoal swarm join --advertise-addr {addr} {remote}")
        self.cli(name, "swarm", "join", "--token", token, "--advertise-addr", addr, remote,
                 timeout=self._left(deadline))

    def _wait_nodes(self, via: str, names: list[str], deadline: float) -> None:
        """Until `node ls` on `via` shows every name ready (managers also leader/reachable)."""
        roles = {n: h["role"] for n, h in self._read()["hosts"].items()}
        last = ""
        while True:
            try:
                res = self.exec(via, ["shoal", "node", "ls", "--format", "json"],
                                timeout=self._left(deadline))
                if res.returncode == 0:
                    nodes = json.loads(res.stdout)
                    missing = []
                    for name in names:
                        ok = any(
                            n.get("hostname") == name and n.get("status") == "ready"
                            and (roles.get(name) != "manager"
                                 or n.get("manager_status") in ("leader", "reachable"))
                            for n in nodes)
                        if not ok:
                            missing.append(name)
                    if not missing:
                        return
                    last = f"not ready yet: {', '.join(missing)}; node ls: {res.stdout.strip()}"
                else:
                    last = f"`shoal node ls` failed: {(res.stderr or res.stdout).strip()}"
            except (ValueError, LabError) as exc:
                last = f"`shoal node ls` gave no usable answer: {exc}"
            if time.monotonic() >= deadline:
                raise LabError(f"cluster did not become ready in time ({last}); daemon logs "
                               f"are in {self.state_dir}/HOST/shoald.log")
            time.sleep(0.5)

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
            via = self._pick_manager(self._read())
            token = self._token(via, role, deadline)
            remote = f"{self._read()['hosts'][via]['address']}:{CLUSTER_PORT}"
            self._join(name, token, remote, deadline)
            self._wait_nodes(via, [name], deadline)
        return name

    # -- running commands --
    def command(self, host: str, argv: Iterable[str]) -> tuple[list[str], dict]:
        """The full argv and env that run `argv` inside `host` (`shoal` maps to this CLI)."""
        data = self._read()
        h = self._host_record(data, host)
        argv = map_argv(argv)
        if not argv:
            raise LabError("no command given: e.g. `shoal lab exec manager1 -- shoal node ls`")
        env = _child_env({"SHOAL_SOCKET": h["socket"], "SHOAL_LAB": self.name,
                          "SHOAL_LAB_HOST": host})
        return ["ip", "netns", "exec", h["namespace"], *argv], env

    def exec(self, host: str, argv: list[str], *, check: bool = False, timeout: float = 60,
             input: bytes | str | None = None) -> subprocess.CompletedProcess:
        """Run argv in the host's namespace with SHOAL_SOCKET set; stdout/stderr as text."""
        require_root()
        full, env = self.command(host, argv)
        if isinstance(input, str):
            input = input.encode()
        try:
            raw = subprocess.run(full, env=env, capture_output=True, timeout=timeout,
                                 input=input, stdin=None if input is not None
                                 else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{host}: `{' '.join(argv)}` did not finish within {timeout:.0f} s") \
                from exc
        res = subprocess.CompletedProcess(
            list(argv), raw.returncode, raw.stdout.decode(errors="replace"),
            raw.stderr.decode(errors="replace"))
        if check and res.returncode != 0:
            out = (res.stderr.strip() or res.stdout.strip()).splitlines()
            raise LabCommandError(f"{host}: `{' '.join(argv)}` exited with {res.returncode}: "
                                  f"{out[-1] if out else '(no output)'}", res)
        return res

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
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self._wait_dead([pid], 5.0)
        with self._txn() as data:
            data["hosts"][host]["daemon"] = "killed"

    def stop(self, host: str, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGTERM the host's shoald, wait up to `timeout` s, then SIGKILL. True if SIGTERM was
        enough."""
        require_root()
        h, pid = self._running_record(host, "stop")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        graceful = not self._wait_dead([pid], timeout)
        if not graceful:
            self._say(f"{host}: shoald ignored SIGTERM for {timeout:.0f} s; sending SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_dead([pid], 5.0)
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

    # -- teardown --
    def down(self) -> None:
        """Remove everything of this lab: processes, mounts, namespaces, directories.

        Works from lab.json and by scanning `shoal-NAME-*` namespaces; idempotent.
        """
        from pyroute2 import netns  # lazy: every CLI command loads this module
        require_root()
        problems: list[str] = []
        data = read_json(self.json_path) or {}
        namespaces = _lab_namespaces(self.name)

        # 1. processes: in our namespaces, recorded daemons (if still ours), their descendants
        pids: set[int] = set()
        for ns in namespaces:
            pids |= _netns_pids(ns)
        for h in data.get("hosts", {}).values():
            pid = h.get("pid")
            if pid and linux.pid_alive(pid) and h.get("socket") in _cmdline(pid):
                pids.add(pid)
        pids |= {pid for pid in self._children if linux.pid_alive(pid)}
        # processes inside namespaces bound under our own directories (e.g. containers)
        pids |= self._pids_in_bound_namespaces()
        pids |= _descendants(pids)
        pids -= _ancestors_of_self()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        left = self._wait_dead(pids, 5.0)
        if left:
            problems.append(f"processes still alive after SIGKILL: {sorted(left)}")
        for pid in list(self._children):
            self._reap(pid)
        # Containers run in network namespaces of their own and outlive a killed daemon: ask
        # runc, whose state each host's executor keeps under its data root, to remove them.
        for state_root in self.state_dir.glob("*/executor/runc-state"):
            problems += _remove_runc_containers(state_root)
        for data_root in self.state_dir.glob("*"):
            if data_root.is_dir():
                problems += _remove_leftover_cgroups(data_root / "executor")

        # 2. mounts under the lab's directories, deepest first, lazily; and each host's
        # per-task secret tmpfs, which lives under /run (never on a data root's disk)
        from worker.secrets import run_dir_for
        secret_dirs = [run_dir_for(d) for d in self.state_dir.glob("*") if d.is_dir()]
        for mnt in _mounts_under([self.state_dir, self.run_dir, *secret_dirs]):
            try:
                _umount_lazy(mnt)
            except OSError as exc:
                problems.append(f"cannot unmount {mnt}: {exc}")

        # 3. namespaces (hosts first, the underlay last)
        for ns in sorted(namespaces, key=lambda n: n == self.underlay):
            try:
                netns.remove(ns)
            except Exception:
                path = NETNS_DIR / ns
                with contextlib.suppress(OSError):
                    _umount_lazy(str(path))
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    problems.append(f"cannot remove namespace {ns}: {exc}")

        # 4. directories
        for d in (self.run_dir, self.state_dir, *secret_dirs):
            try:
                shutil.rmtree(d)
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"cannot remove {d}: {exc}")
        if problems:
            raise LabError(f"lab {self.name!r} was not removed completely: "
                           f"{'; '.join(problems)}; run `shoal lab down --name {self.name}` "
                           f"again")

    def _pids_in_bound_namespaces(self) -> set[int]:
        """PIDs whose network namespace is an nsfs bind mount under the lab's directories."""
        inodes = set()
        for mnt in _mounts_under([self.state_dir, self.run_dir]):
            with contextlib.suppress(OSError):
                st = os.stat(mnt)
                inodes.add((st.st_dev, st.st_ino))
        if not inodes:
            return set()
        found = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    st = os.stat(f"/proc/{entry}/ns/net")
                    if (st.st_dev, st.st_ino) in inodes:
                        found.add(int(entry))
        return found
