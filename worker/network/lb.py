"""Load balancing for service VIPs and the ingress routing mesh.

One interface, two kernels' worth of implementation:
 - ``IpvsBackend``: IPVS through pyroute2's generic-netlink API (what Swarm does), NAT forwarding,
   round robin. Published ports (``Frontend.ip is None``) are fwmark services: a small nftables
   table marks packets for the port on any local address and masquerades them.
 - ``NftablesBackend``: DNAT through ``numgen inc mod N`` maps, for kernels without IPVS (like
   the development machine). Each change replaces the whole table in one ``nft -f -``
   transaction, so a packet sees either the old or the new backend set, never a mix.

``pick_backend`` chooses IPVS when the kernel has it in the target namespace; ``make_lb`` builds
either, on request or automatically.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Literal, Optional

from worker.network import nsutil

Protocol = Literal["tcp", "udp"]
INGRESS_MARK = 0x5301          # ct mark of ingress connections: masquerade them on the way out
FWMARK_BASE = 0x53000000       # IPVS fwmark services for published ports: base | proto | port


class LBError(Exception):
    pass


@dataclass(frozen=True)
class Frontend:
    """What clients connect to: a VIP and port, or (ip None) a port published on every address.

    A VIP with port 0 stands for every TCP and UDP port of the VIP, as a service VIP does
    (backends then keep the port the client asked for)."""
    protocol: Protocol
    ip: Optional[str]
    port: int

    def __post_init__(self) -> None:
        if self.protocol not in ("tcp", "udp"):
            raise ValueError(f"protocol must be tcp or udp, not {self.protocol!r}")
        if not (0 < self.port < 65536 or (self.port == 0 and self.ip is not None)):
            raise ValueError(f"port {self.port} out of range")
        if self.ip is not None:
            ipaddress.IPv4Address(self.ip)

    @property
    def ingress(self) -> bool:
        return self.ip is None

    def sort_key(self) -> tuple:
        # stable rule order, so an unchanged service set renders an identical ruleset
        return (self.protocol, self.ip or "", self.port)


@dataclass(frozen=True, order=True)
class Backend:
    ip: str
    port: int


class LoadBalancer(ABC):
    """A namespace's service table; every call leaves the kernel matching the wanted state."""

    @abstractmethod
    def ensure_service(self, frontend: Frontend, backends: list[Backend]) -> None: ...

    @abstractmethod
    def remove_service(self, frontend: Frontend) -> None: ...

    @abstractmethod
    def flush(self) -> None:
        """Remove every rule/service this balancer installed."""


# ----------------------------------------------------------------------------------------------
# nftables

def _nft(netns: Optional[str], script: str) -> None:
    nsutil.nft(netns, script, LBError)


def _service_rules(services: dict[Frontend, list[Backend]]) -> list[str]:
    """The body of the ``services`` chain: one DNAT rule per frontend."""
    lines = []
    for fe in sorted(services, key=Frontend.sort_key):
        if fe.ip and not fe.port:
            match = f"ip daddr {fe.ip} meta l4proto {{ tcp, udp }}"
        elif fe.ip:
            match = f"ip daddr {fe.ip} {fe.protocol} dport {fe.port}"
        else:
            # any local address but loopback: DNAT of 127/8 to a remote host is martian
            match = f"fib daddr type local ip daddr != 127.0.0.0/8 {fe.protocol} dport {fe.port}"
        backends = sorted(set(services[fe]))
        if not backends:
            # refuse rather than let the packet reach whatever listens locally on the VIP
            lines.append(f"    {match} reject")
            continue
        mark = f" ct mark set {INGRESS_MARK:#x}" if fe.ingress else ""
        if fe.port:
            elems = ", ".join(f"{i} : {b.ip} . {b.port}" for i, b in enumerate(backends))
            target = "ip to"
        else:
            elems = ", ".join(f"{i} : {b.ip}" for i, b in enumerate(backends))
            target = "to"
        lines.append(f"    {match}{mark} dnat {target} numgen inc mod {len(backends)} "
                     f"map {{ {elems} }}")
    return lines


def render_nftables(table: str, services: dict[Frontend, list[Backend]]) -> str:
    """A node's table (VIPs and the routing mesh's published ports) for the given services, as
    one transaction replacing the previous one."""
    lines = [
        *nsutil.nft_reset(table).splitlines(),
        f"table ip {table} {{",
        # prerouting: clients in other namespaces/nodes; output: clients on this one
        "  chain prerouting { type nat hook prerouting priority dstnat; policy accept; "
        "jump services; }",
        "  chain output { type nat hook output priority -100; policy accept; jump services; }",
        # ingress replies must return through this node (its conntrack entry undoes the DNAT)
        "  chain postrouting { type nat hook postrouting priority srcnat; policy accept; "
        f"ct mark {INGRESS_MARK:#x} masquerade; }}",
        "  chain services {",
        *_service_rules(services),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_task_nftables(table: str, services: dict[Frontend, list[Backend]],
                         redirects: tuple[tuple[str, int, int], ...] = ()) -> str:
    """A task namespace's table: its networks' service VIPs, balanced for the task's own
    connections, and ``redirects`` (ip, udp port, local port): local datagrams to ip:port go to
    the local port instead (the resolver at 127.0.0.11:53 really listens elsewhere, so that a
    task may run its own DNS server on port 53).

    Only the output hook: nothing is routed through a task and nothing in it is published, so
    the node's prerouting and masquerading chains would be NAT hooks every packet of the task
    passes for nothing."""
    lines = [
        *nsutil.nft_reset(table).splitlines(),
        f"table ip {table} {{",
        "  chain output { type nat hook output priority -100; policy accept; "
        + "".join(f"ip daddr {ip} udp dport {port} dnat to {ip}:{to}; " for ip, port, to in redirects)
        + "jump services; }",
        "  chain services {",
        *_service_rules(services),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


class NftablesBackend(LoadBalancer):
    """A node's balancer: VIPs for local clients and published ports for everybody."""

    def __init__(self, netns: Optional[str] = None, table: str = "shoal") -> None:
        self.netns = netns
        self.table = table
        self.services: dict[Frontend, list[Backend]] = {}

    def _render(self, services: dict[Frontend, list[Backend]]) -> Optional[str]:
        return render_nftables(self.table, services) if services else None

    def _apply(self, services: dict[Frontend, list[Backend]]) -> None:
        script = self._render(services)
        if script:
            _nft(self.netns, script)
        else:
            _nft(self.netns, nsutil.nft_reset(self.table))
        self.services = services

    def ensure_service(self, frontend: Frontend, backends: list[Backend]) -> None:
        if self.services.get(frontend) == list(backends):
            return
        self._apply({**self.services, frontend: list(backends)})

    def remove_service(self, frontend: Frontend) -> None:
        if frontend in self.services:
            self._apply({k: v for k, v in self.services.items() if k != frontend})

    def replace_all(self, services: dict[Frontend, list[Backend]], force: bool = False) -> None:
        """Exactly these services, in one nftables transaction."""
        wanted = {fe: list(bes) for fe, bes in services.items()}
        if wanted != self.services or force:
            self._apply(wanted)

    def flush(self) -> None:
        self._apply({})

    def ruleset(self) -> str:
        return nsutil.run(self.netns, ["nft", "list", "table", "ip", self.table]).stdout


class TaskNftables(NftablesBackend):
    """A task namespace's VIPs and resolver redirect (see render_task_nftables)."""

    def __init__(self, netns: Optional[str], table: str = "shoal",
                 redirects: tuple[tuple[str, int, int], ...] = ()) -> None:
        super().__init__(netns, table)
        self.redirects = tuple(redirects)

    def _render(self, services: dict[Frontend, list[Backend]]) -> Optional[str]:
        if services and any(fe.ingress for fe in services):
            raise LBError("a task namespace balances VIPs only, not published ports")
        return render_task_nftables(self.table, services, self.redirects)


# ----------------------------------------------------------------------------------------------
# IPVS

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
FWD_MASQ = 0                   # IP_VS_CONN_F_MASQ: NAT. pyroute2's default (3) is direct routing


@dataclass(frozen=True)
class Op:
    """One IPVS change: kind is add_service | del_service | add_dest | set_dest | del_dest."""
    kind: str
    frontend: Frontend
    backend: Optional[Backend] = None
    weight: int = 1


def plan_ipvs(current: dict[Frontend, dict[Backend, int]],
              wanted: dict[Frontend, dict[Backend, int]]) -> list[Op]:
    """Operations turning ``current`` (frontend -> backend -> weight) into ``wanted``.

    Adds come before deletes within a service so it never has zero real servers mid-change.
    Weight changes use 'set': pyroute2 maps 'update' to a delete.
    """
    ops: list[Op] = []
    for fe in sorted(wanted, key=Frontend.sort_key):
        have = current.get(fe)
        if have is None:
            ops.append(Op("add_service", fe))
            have = {}
        want = wanted[fe]
        for be in sorted(want):
            if be not in have:
                ops.append(Op("add_dest", fe, be, want[be]))
            elif have[be] != want[be]:
                ops.append(Op("set_dest", fe, be, want[be]))
        for be in sorted(have):
            if be not in want:
                ops.append(Op("del_dest", fe, be, have[be]))
    for fe in sorted(current, key=Frontend.sort_key):
        if fe not in wanted:
            ops.append(Op("del_service", fe))   # the kernel drops its real servers with it
    return ops


def fwmark_for(frontend: Frontend) -> int:
    return FWMARK_BASE | (IPPROTO[frontend.protocol] << 16) | frontend.port


def service_spec(frontend: Frontend) -> dict:
    """Keyword arguments of pyroute2's IPVSService for the frontend."""
    if frontend.ingress:
        return {"fwmark": fwmark_for(frontend), "af": socket.AF_INET, "sched_name": "rr",
                "netmask": "255.255.255.255"}
    return {"addr": frontend.ip, "port": frontend.port, "protocol": IPPROTO[frontend.protocol],
            "sched_name": "rr"}


def dest_spec(backend: Backend, weight: int = 1) -> dict:
    return {"addr": backend.ip, "port": backend.port, "fwd_method": FWD_MASQ, "weight": weight}


def render_ipvs_marks(table: str, frontends: list[Frontend]) -> str:
    """nftables side of IPVS published ports: fwmark them for IPVS, masquerade the result."""
    lines = [*nsutil.nft_reset(table).splitlines(), f"table ip {table} {{",
             "  chain mark_pre { type filter hook prerouting priority mangle; policy accept; "
             "jump ingress_mark; }",
             "  chain mark_out { type route hook output priority mangle; policy accept; "
             "jump ingress_mark; }",
             # not "mark": that is a keyword of nft's grammar and the whole script is refused
             "  chain ingress_mark {"]
    for fe in sorted((f for f in frontends if f.ingress), key=Frontend.sort_key):
        lines.append(f"    fib daddr type local ip daddr != 127.0.0.0/8 {fe.protocol} dport "
                     f"{fe.port} meta mark set {fwmark_for(fe):#x} ct mark set {INGRESS_MARK:#x}")
    lines += ["  }",
              "  chain postrouting { type nat hook postrouting priority srcnat; policy accept; "
              f"ct mark {INGRESS_MARK:#x} masquerade; }}",
              "}"]
    return "\n".join(lines) + "\n"


class IpvsBackend(LoadBalancer):
    """IPVS services in ``netns``; real servers diffed against what the kernel has."""

    def __init__(self, netns: Optional[str] = None, table: str = "shoal-ipvs") -> None:
        self.netns = netns
        self.table = table
        self.frontends: set[Frontend] = set()

    def _ipvs(self):
        from pyroute2 import IPVS
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            if self.netns is None:
                return IPVS()
            # flags=0: never create a missing namespace; the socket keeps its namespace
            return IPVS(netns=nsutil.pyroute2_path(self.netns), flags=0)
        except NetlinkError as exc:
            # the generic netlink family is missing: no ip_vs in this kernel
            raise LBError(f"IPVS is not available here ({exc}); use the nftables "
                          f"load balancer (make_lb('nftables'))") from exc

    def _current(self, ipvs, frontend: Frontend) -> dict[Backend, int]:
        from pyroute2.ipvs import IPVSDest, IPVSService
        svc = IPVSService(**service_spec(frontend))
        try:
            dests = ipvs.dest("dump", service=svc)
        except Exception:           # no such service
            return {}
        out: dict[Backend, int] = {}
        for msg in dests:
            d = IPVSDest.from_message(msg)
            out[Backend(d["addr"], d["port"])] = d.get("weight", 1)
        return out

    def execute(self, ipvs, ops: list[Op]) -> None:
        from pyroute2.ipvs import IPVSDest, IPVSService
        for op in ops:
            svc = IPVSService(**service_spec(op.frontend))
            if op.kind == "add_service":
                ipvs.service("add", service=svc)
            elif op.kind == "del_service":
                ipvs.service("del", service=svc)
            else:
                dest = IPVSDest(**dest_spec(op.backend, op.weight))
                verb = {"add_dest": "add", "set_dest": "set", "del_dest": "del"}[op.kind]
                ipvs.dest(verb, service=svc, dest=dest)

    def ensure_service(self, frontend: Frontend, backends: list[Backend]) -> None:
        with self._ipvs() as ipvs:
            have = self._service_exists(ipvs, frontend)
            current = {frontend: self._current(ipvs, frontend)} if have else {}
            self.execute(ipvs, plan_ipvs(current, {frontend: {b: 1 for b in backends}}))
        if frontend.ingress and frontend not in self.frontends:
            self._marks_with(lambda: self.frontends.add(frontend),
                             lambda: self.frontends.discard(frontend))
        self.frontends.add(frontend)

    def _service_exists(self, ipvs, frontend: Frontend) -> bool:
        from pyroute2.ipvs import IPVSService
        try:
            ipvs.service("get", service=IPVSService(**service_spec(frontend)))
            return True
        except Exception:
            return False

    def remove_service(self, frontend: Frontend) -> None:
        with self._ipvs() as ipvs:
            if self._service_exists(ipvs, frontend):
                self.execute(ipvs, [Op("del_service", frontend)])
        if frontend in self.frontends:
            if frontend.ingress:
                self._marks_with(lambda: self.frontends.discard(frontend),
                                 lambda: self.frontends.add(frontend))
            else:
                self.frontends.discard(frontend)

    def flush(self) -> None:
        for fe in list(self.frontends):
            self.remove_service(fe)
        _nft(self.netns, nsutil.nft_reset(self.table))

    def _marks_with(self, change: Callable[[], None], undo: Callable[[], None]) -> None:
        """Make a change to the frontends and rewrite the mark table for it; undone when the
        table cannot be written, so that the caller's retry writes it again."""
        change()
        try:
            self._apply_marks()
        except BaseException:
            undo()
            raise

    def _apply_marks(self) -> None:
        # IPVS skips netfilter's conntrack unless told otherwise, and then the masquerade rule
        # never sees the balanced connections: replies would bypass this node (docker sets it too)
        nsutil.call_in(self.netns, _enable_ipvs_conntrack)
        ingress = [f for f in self.frontends if f.ingress]
        if ingress:
            _nft(self.netns, render_ipvs_marks(self.table, ingress))
        else:
            _nft(self.netns, nsutil.nft_reset(self.table))


# ----------------------------------------------------------------------------------------------

def _enable_ipvs_conntrack() -> None:
    with open("/proc/sys/net/ipv4/vs/conntrack", "w") as f:
        f.write("1")


def pick_backend(netns: Optional[str] = None) -> str:
    """"ipvs" when the kernel has IPVS in that namespace, else "nftables"."""
    # /proc/net is per network namespace of the reader: look from inside
    return "ipvs" if nsutil.call_in(netns, lambda: os.path.exists("/proc/net/ip_vs")) else \
        "nftables"


def make_lb(kind: str = "auto", netns: Optional[str] = None) -> LoadBalancer:
    if kind == "auto":
        kind = pick_backend(netns)
    if kind == "ipvs":
        return IpvsBackend(netns)
    if kind == "nftables":
        return NftablesBackend(netns)
    raise ValueError(f"unknown load balancer {kind!r}: use auto, ipvs or nftables")
