"""GET /version and GET /info: this node, and its view of the swarm."""
from __future__ import annotations

import os
import platform
from typing import Optional

from aiohttp import web

from common.version import __version__
from shoal.dockerapi.access import daemon_of
from shoal.dockerapi.errors import json_answer
from shoal.dockerapi.translate.swarm import cluster_info
from shoal.dockerapi.versioning import API_VERSION, MIN_API_VERSION, swarm_state

# Go's names for the machine, which /version's Arch uses (/info's Architecture is uname's).
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def _goarch() -> str:
    machine = platform.machine()
    return _GOARCH.get(machine, machine)


async def version(request: web.Request, params: dict[str, str]) -> web.Response:
    details = {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux",
               "Arch": _goarch(), "KernelVersion": platform.release(),
               "Experimental": "false", "GitCommit": "", "GoVersion": "",
               "BuildTime": ""}
    return json_answer({
        "Platform": {"Name": f"shoal {__version__}"},
        "Components": [{"Name": "Engine", "Version": __version__, "Details": details}],
        "Version": __version__, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
        "Os": "linux", "Arch": _goarch(), "KernelVersion": platform.release(),
        "GitCommit": "", "GoVersion": "",
    })


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def _swarm_section(daemon) -> dict:
    st = daemon.state
    state = swarm_state(daemon).split("/")[0]
    out: dict = {"NodeID": st.node_id, "NodeAddr": st.advertise_addr,
                 "LocalNodeState": state, "ControlAvailable": False, "Error": "",
                 "RemoteManagers": None}
    if state != "active":
        return out
    m = daemon.manager
    if m is None:
        # A worker knows its managers' addresses, not their node ids.
        out["RemoteManagers"] = [{"NodeID": "", "Addr": a} for a in st.managers]
        return out
    managers = m.manager_nodes()
    out.update(ControlAvailable=True, Nodes=m.store.count("nodes"), Managers=len(managers),
               RemoteManagers=[{"NodeID": n.id, "Addr": n.manager_status.api_addr}
                               for n in managers if n.manager_status is not None])
    cluster = m.cluster()
    if cluster is not None:
        out["Cluster"] = cluster_info(cluster)
    return out


def _containers(daemon) -> tuple[int, int, int]:
    """(all, running, stopped) of this node's containers."""
    executor = daemon.executor
    if executor is None:
        return 0, 0, 0
    states = [c.state for c in executor.list()]
    running = sum(1 for s in states if s == "running")
    return len(states), running, len(states) - running


def _images(daemon) -> int:
    images = daemon.images
    return len(images.list()) if images is not None else 0


async def info(request: web.Request, params: dict[str, str]) -> web.Response:
    daemon = daemon_of(request)
    total, running, stopped = _containers(daemon)
    node_id: Optional[str] = daemon.state.node_id or None
    return json_answer({
        "ID": node_id or daemon.hostname,
        "Containers": total, "ContainersRunning": running, "ContainersPaused": 0,
        "ContainersStopped": stopped, "Images": _images(daemon),
        "Driver": "overlay", "DockerRootDir": str(daemon.files.root),
        "LoggingDriver": "json-file",
        "Plugins": {"Volume": ["local"], "Network": ["overlay"], "Authorization": None,
                    "Log": ["json-file"]},
        "Swarm": _swarm_section(daemon),
        "Name": daemon.hostname, "ServerVersion": __version__,
        "OSType": "linux", "OperatingSystem": _os_name(), "KernelVersion": platform.release(),
        "Architecture": platform.machine(), "NCPU": os.cpu_count() or 0,
        "MemTotal": _mem_total(), "IndexServerAddress": "", "Labels": None,
        # Tasks outlive a restart of shoald (the agent adopts them): Docker's live restore.
        "ExperimentalBuild": False, "LiveRestoreEnabled": True,
        "Runtimes": {"runc": {"path": "runc"}},
        "DefaultRuntime": "runc", "InitBinary": "docker-init", "Isolation": "",
        "Warnings": None,
    })
