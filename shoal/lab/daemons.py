"""One shoald per host: its argv, starting it in the host's namespace, waiting for its socket."""
from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from common import linux
from common.errors import ShoalError
from common.unixhttp import UnixClient
from shoal.lab.errors import LabError
from shoal.lab.naming import NETNS_DIR, docker_socket_path
from shoal.lab.processes import Children, child_env, tail

READY_TIMEOUT = 20.0

# argv factory: called with keyword arguments host, address, data_root, socket
DaemonArgv = Callable[..., list]


# Opt-in: with SHOAL_LAB_DOCKER_TCP=PORT set when a lab's hosts are made, each serves the
# remote API (shoald --docker-tcp) on its address and PORT. Off by default: other labs and
# their tests see the daemons they always had.
DOCKER_TCP_ENV = "SHOAL_LAB_DOCKER_TCP"


def docker_tcp_port() -> int | None:
    value = os.environ.get(DOCKER_TCP_ENV, "")
    if not value:
        return None
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise LabError(f"{DOCKER_TCP_ENV}={value!r}: give a TCP port (e.g. 2376) or leave it "
                       "unset")
    return int(value)


def default_daemon_argv(*, host: str, address: str, data_root: str, socket: str) -> list[str]:
    argv = [sys.executable, "-m", "shoal.daemon", "--data-root", data_root,
            "--advertise-addr", address, "--socket", socket,
            "--docker-socket", docker_socket_path(socket), "--hostname", host]
    port = docker_tcp_port()
    if port is not None:
        argv += ["--docker-tcp", f"{address}:{port}"]
    return argv


def daemon_argv_for(factory: DaemonArgv | None, name: str, h: dict) -> list[str]:
    """The argv recorded for the host, unless the lab was given its own `factory`."""
    if factory is None and h.get("argv"):
        return list(h["argv"])
    factory = factory or default_daemon_argv
    return [str(a) for a in factory(host=name, address=h["address"],
                                    data_root=h["data_root"], socket=h["socket"])]


def spawn(lab: str, name: str, h: dict, argv: list[str], children: Children) -> int:
    """Start the host's daemon detached and record it in `h` (lab.json's record, to be written
    by the caller) and `children`. Does not wait for readiness."""
    for key in ("socket", "docker_socket"):
        with contextlib.suppress(FileNotFoundError, KeyError):
            os.unlink(h[key])
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
            env=child_env({"SHOAL_LAB": lab, "SHOAL_LAB_HOST": name}))
    children[proc.pid] = proc
    h.update(pid=proc.pid, argv=argv, daemon="running", started=time.time())
    return proc.pid


def ping(socket_path: str, timeout: float = 1.0) -> bool:
    """True when the daemon at ``socket_path`` answers ``GET /_ping`` (the readiness probe)."""
    try:
        UnixClient(socket_path).request("GET", "/_ping", timeout=timeout)
    except (ShoalError, OSError, http.client.HTTPException):
        return False
    return True


def wait_ready(names: list[str], deadline: float, read: Callable[[], dict],
               children: Children) -> None:
    """Until each named host's daemon answers /_ping (`read` gives lab.json); a LabError with
    the end of its log when one exits or the deadline passes."""
    pending = list(names)
    while pending:
        data = read()
        for name in list(pending):
            h = data["hosts"][name]
            if ping(h["socket"], timeout=1.0):
                pending.remove(name)
                continue
            pid = h.get("pid")
            child = children.get(pid)
            code = child.poll() if child is not None else None
            if code is not None or not linux.pid_alive(pid):
                how = f"exited with code {code}" if code is not None else "exited"
                raise LabError(
                    f"{name}: shoald {how} before answering GET /_ping on {h['socket']}; "
                    f"see {h['log']}; last lines:\n{tail(h['log'])}")
        if not pending:
            break
        if time.monotonic() >= deadline:
            name = pending[0]
            h = data["hosts"][name]
            raise LabError(
                f"{name}: shoald did not answer GET /_ping on {h['socket']} in time "
                f"(also waiting: {', '.join(pending[1:]) or 'none'}); see {h['log']}; "
                f"last lines:\n{tail(h['log'])}")
        time.sleep(0.05)
