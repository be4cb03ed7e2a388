"""Forming the swarm across the lab's hosts: init on manager1, joins, waiting for `node ls`."""
from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Protocol

from shoal.lab.errors import LabError
from shoal.lab.naming import CLUSTER_PORT, ROLES, host_order

Progress = Callable[[str], None]


class Shell(Protocol):
    """What forming needs of a lab: running commands (`shoal ...` too) inside its hosts."""

    def exec(self, host: str, argv: list[str], *, check: bool = False, timeout: float = 60,
             input: bytes | str | None = None) -> subprocess.CompletedProcess: ...

    def cli(self, host: str, *args: str, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess: ...


def left(deadline: float, floor: float = 5.0) -> float:
    return max(floor, deadline - time.monotonic())


def form(shell: Shell, hosts: dict, deadline: float, *, say: Progress,
         mark_formed: Callable[[], None], state_dir: Path) -> None:
    """`swarm init` on manager1, then managers join one at a time, then workers in parallel;
    returns when `node ls` shows every host ready. `hosts`: lab.json's host records."""
    names = [n for n, _ in sorted(hosts.items(), key=host_order)]
    first = "manager1"
    addr = hosts[first]["address"]
    say(f"{first}: shoal swarm init --advertise-addr {addr}")
    shell.cli(first, "swarm", "init", "--advertise-addr", addr, timeout=left(deadline))
    mark_formed()
    tokens = {role: join_token(shell, first, role, deadline) for role in ROLES}
    joined = [first]
    others = [n for n in names if n != first]
    remote = f"{addr}:{CLUSTER_PORT}"
    for name in [n for n in others if hosts[n]["role"] == "manager"]:
        join(shell, name, hosts[name]["address"], tokens["manager"], remote, deadline, say)
        joined.append(name)
        # one raft membership change at a time
        wait_nodes(shell, first, joined, hosts, deadline, state_dir)
    workers = [n for n in others if hosts[n]["role"] == "worker"]
    if workers:
        with ThreadPoolExecutor(max_workers=min(8, len(workers))) as pool:
            futures = [pool.submit(join, shell, n, hosts[n]["address"], tokens["worker"],
                                   remote, deadline, say) for n in workers]
            for f in futures:
                f.result()
    say(f"waiting until all {len(names)} nodes are ready")
    wait_nodes(shell, first, names, hosts, deadline, state_dir)


def join_token(shell: Shell, via: str, role: str, deadline: float) -> str:
    token = shell.cli(via, "swarm", "join-token", "-q", role,
                      timeout=left(deadline)).stdout.strip()
    if not token:
        raise LabError(f"{via}: `shoal swarm join-token -q {role}` printed no token")
    return token


def join(shell: Shell, name: str, address: str, token: str, remote: str, deadline: float,
         say: Progress) -> None:
    say(f"{name}: shoal swarm join --advertise-addr {address} {remote}")
    shell.cli(name, "swarm", "join", "--token", token, "--advertise-addr", address, remote,
              timeout=left(deadline))


def wait_nodes(shell: Shell, via: str, names: list[str], hosts: dict, deadline: float,
               state_dir: Path) -> None:
    """Until `node ls` on `via` shows every name ready (managers also leader/reachable)."""
    roles = {n: h["role"] for n, h in hosts.items()}
    last = ""
    while True:
        try:
            res = shell.exec(via, ["shoal", "node", "ls", "--format", "json"],
                             timeout=left(deadline))
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
                           f"are in {state_dir}/HOST/shoald.log")
        time.sleep(0.5)


def pick_manager(lab: str, hosts: dict, alive: Callable[[int | None, dict], bool]) -> str:
    """A manager whose daemon runs and that is not partitioned (manager1 preferred)."""
    for name, h in sorted(hosts.items(), key=host_order):
        if h["role"] == "manager" and not h.get("partitioned") and alive(h.get("pid"), h):
            return name
    raise LabError(f"no running, connected manager in lab {lab!r}: start or heal "
                   f"one (`shoal lab start|heal --name {lab} managerN`)")
