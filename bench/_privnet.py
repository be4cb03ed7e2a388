"""The build benchmark's private network: two network namespaces made here and always removed,
and veth pairs with addresses assigned here, nothing else.

    host ns   sbh<id> 10.250.17.1/30 ---- sbr0 10.250.17.2/30   registry ns (docker-registry
                                           sbr1 10.250.17.5/30   listens on 10.250.17.2)
    tools ns  sbt0    10.250.17.6/30 ----'
              (dockerd, buildah; route to 10.250.17.2 via 10.250.17.5)

The registry sits one veth away from both sides: shoal's push (in the host namespace, as
shoald runs) and dockerd's (in the tools namespace) cross the same kind of link to the same
registry. No namespace has a default route, none forwards, no NAT: traffic stays between these
addresses. The host namespace only gains the one /30 on sbh<id>, gone with the namespaces.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

CLONE_NEWNET = 0x40000000
HOST_ADDR = "10.250.17.1"
REGISTRY_ADDR = "10.250.17.2"
REGISTRY_TOOLS_SIDE = "10.250.17.5"
TOOLS_ADDR = "10.250.17.6"


class NetUnavailable(Exception):
    pass


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise NetUnavailable(f"ip {' '.join(args)}: {r.stderr.strip()}")


def netns_entry(netns: str) -> tuple[int, Callable[[], None]]:
    """An fd of the namespace and a preexec_fn entering it (network only: `ip netns exec`
    would also remount /sys, hiding the cgroup mounts runc needs). Close the fd after the
    Popen."""
    fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)

    def enter() -> None:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            os._exit(127)
    return fd, enter


def spawn(netns: str, argv: list[str], log: Path, env: Optional[dict] = None,
          cwd: Optional[Path] = None) -> subprocess.Popen:
    """A long-running process inside `netns`, output to `log`; the caller stops it by PID."""
    fd, enter = netns_entry(netns)
    out = open(log, "wb")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, pass_fds=(fd,),
                                preexec_fn=enter, cwd=cwd)
    finally:
        out.close()
        os.close(fd)


def run(netns: str, argv: list[str], env: Optional[dict] = None, timeout: float = 300
        ) -> subprocess.CompletedProcess:
    """A command inside `netns`, to its end."""
    fd, enter = netns_entry(netns)
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env=env, pass_fds=(fd,), preexec_fn=enter, timeout=timeout)
    finally:
        os.close(fd)


@dataclass
class BenchNet:
    tag: str = field(default_factory=lambda: str(os.getpid()))
    made: list[str] = field(default_factory=list)

    @property
    def tools(self) -> str:
        return f"shoal-bench-{self.tag}"

    @property
    def registry(self) -> str:
        return f"shoal-breg-{self.tag}"

    @property
    def host_link(self) -> str:
        return f"sbh{self.tag}"[:15]

    def up(self) -> "BenchNet":
        taken = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        if "10.250.17." in taken:
            raise NetUnavailable("10.250.17.0/29 is in use on this host (another bench run?)")
        for ns in (self.tools, self.registry):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", "sbr0", "netns",
            self.registry)
        _ip("addr", "add", f"{HOST_ADDR}/30", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        _ip("-n", self.registry, "addr", "add", f"{REGISTRY_ADDR}/30", "dev", "sbr0")
        _ip("-n", self.registry, "link", "set", "sbr0", "up")
        _ip("-n", self.tools, "link", "add", "sbt0", "type", "veth", "peer", "name", "sbr1",
            "netns", self.registry)
        _ip("-n", self.tools, "addr", "add", f"{TOOLS_ADDR}/30", "dev", "sbt0")
        _ip("-n", self.tools, "link", "set", "sbt0", "up")
        _ip("-n", self.registry, "addr", "add", f"{REGISTRY_TOOLS_SIDE}/30", "dev", "sbr1")
        _ip("-n", self.registry, "link", "set", "sbr1", "up")
        _ip("-n", self.tools, "route", "add", f"{REGISTRY_ADDR}/32", "via", REGISTRY_TOOLS_SIDE)
        return self

    def down(self) -> None:
        # deleting a namespace deletes the veths with an end in it, the host's end too
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        self.made.clear()
        subprocess.run(["ip", "link", "delete", self.host_link], capture_output=True)

    def __enter__(self) -> "BenchNet":
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc) -> None:
        self.down()
