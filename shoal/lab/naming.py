"""Names, addresses and paths of a lab and its hosts, and which labs exist."""
from __future__ import annotations

import os
import re
from pathlib import Path

from shoal.lab.errors import LabError

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

NAME_RE = re.compile(r"[a-z0-9]{1,8}\Z")
HOST_RE = re.compile(r"(manager|worker)([1-9][0-9]{0,2})\Z")
ROLES = ("manager", "worker")


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


def host_order(item: tuple[str, dict]) -> tuple[int, int]:
    """Sort key of a (name, host record) pair: managers first, then by index."""
    name, h = item
    return (ROLES.index(h["role"]), h["index"])


def docker_socket_path(socket: str) -> str:
    """The host's Docker API socket, beside its shoal socket (HOST.sock -> HOST.docker.sock):
    derived, so a daemon argv factory that knows only `socket` can still place it."""
    base = socket[:-len(".sock")] if socket.endswith(".sock") else socket
    return f"{base}.docker.sock"


def new_host_record(lab: str, state_dir: Path, run_dir: Path, hosts: dict,
                    role: str) -> tuple[str, dict]:
    """The next free managerN/workerN of `role`, added to `hosts` (lab.json's) and returned."""
    if role not in ROLES:
        raise LabError(f"invalid role {role!r}: use manager or worker")
    used = [h["index"] for h in hosts.values() if h["role"] == role]
    index = max(used, default=0) + 1
    limit = MAX_MANAGERS if role == "manager" else MAX_WORKERS
    if index > limit:
        raise LabError(f"a lab holds at most {limit} {role}s (addresses run out)")
    name = f"{role}{index}"
    h = {
        "role": role, "index": index,
        "namespace": host_namespace(lab, name),
        "address": host_address(role, index),
        "peer": peer_ifname(name),
        "data_root": str(state_dir / name),
        "log": str(state_dir / name / "shoald.log"),
        "socket": str(run_dir / f"{name}.sock"),
        "docker_socket": docker_socket_path(str(run_dir / f"{name}.sock")),
        "pid": None, "daemon": "created", "partitioned": False, "argv": None,
    }
    hosts[name] = h
    return name, h


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def lab_namespaces(lab: str) -> list[str]:
    prefix = f"shoal-{lab}-"
    return [ns for ns in list_namespaces() if ns.startswith(prefix)]


_LAB_NS_RE = re.compile(r"shoal-([a-z0-9]{1,8})-(?:net|(?:manager|worker)[0-9]+)\Z")


def labs(lab_root: Path = LAB_ROOT) -> list[str]:
    """Names of existing labs (a state directory or namespaces of the lab's shape)."""
    names = set()
    try:
        for entry in os.listdir(lab_root):
            if NAME_RE.match(entry) and (lab_root / entry).is_dir():
                names.add(entry)
    except FileNotFoundError:
        pass
    for ns in list_namespaces():
        m = _LAB_NS_RE.match(ns)
        if m:
            names.add(m.group(1))
    return sorted(names)
