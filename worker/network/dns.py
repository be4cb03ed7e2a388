"""Service discovery: a small asyncio DNS responder for containers.

Answers A queries for ``SERVICE`` (the service VIPs, or the task IPs in dnsrr mode) and
``tasks.SERVICE`` (the task IPs) from a table the agent updates; any other name is forwarded
verbatim to the node's upstream resolvers. The listening socket is created inside the network
namespace the containers use (so they can reach e.g. 127.0.0.11 there), the forwarding socket in
the node's namespace where the upstreams are reachable: a socket keeps the namespace it was
created in.

Only what this needs of RFC 1035 is implemented: one question, no compression in questions,
answers pointing back to the question name.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal, Optional

log = logging.getLogger(__name__)

QTYPE_A = 1
QCLASS_IN = 1
RCODE_OK, RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP = 0, 1, 2, 3, 4
TTL = 0          # answers change with every task placement; don't let clients cache them
FORWARD_TIMEOUT = 2.0
MAX_UDP = 512


class DnsFormatError(ValueError):
    pass


@dataclass(frozen=True)
class Question:
    name: str          # lower case, no trailing dot
    qtype: int
    qclass: int
    end: int           # offset just past the question in the packet


@dataclass(frozen=True)
class Header:
    id: int
    flags: int
    qdcount: int

    @property
    def is_query(self) -> bool:
        return not self.flags & 0x8000

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


def parse_header(data: bytes) -> Header:
    if len(data) < 12:
        raise DnsFormatError("short packet")
    ident, flags, qd, _an, _ns, _ar = struct.unpack("!6H", data[:12])
    return Header(ident, flags, qd)


def parse_question(data: bytes, offset: int = 12) -> Question:
    labels = []
    while True:
        if offset >= len(data):
            raise DnsFormatError("truncated name")
        n = data[offset]
        if n & 0xC0:
            raise DnsFormatError("compressed name in question")
        offset += 1
        if n == 0:
            break
        label = data[offset:offset + n]
        if len(label) != n:
            raise DnsFormatError("truncated label")
        labels.append(label.decode("ascii", "replace").lower())
        offset += n
    if offset + 4 > len(data):
        raise DnsFormatError("truncated question")
    qtype, qclass = struct.unpack("!HH", data[offset:offset + 4])
    return Question(".".join(labels), qtype, qclass, offset + 4)


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def build_query(name: str, ident: int, qtype: int = QTYPE_A, rd: bool = True) -> bytes:
    return (struct.pack("!6H", ident, 0x0100 if rd else 0, 1, 0, 0, 0)
            + encode_name(name) + struct.pack("!HH", qtype, QCLASS_IN))


def build_response(query: bytes, q: Optional[Question], rcode: int,
                   addresses: list[str] = ()) -> bytes:
    """Answer ``query``: its id, opcode and RD bit, AA+RA, the question and A records."""
    header = parse_header(query)
    flags = 0x8000 | (header.flags & 0x7900) | 0x0400 | 0x0080 | rcode  # QR opcode RD, AA, RA
    question = query[12:q.end] if q else b""
    answers = b"".join(
        struct.pack("!HHHIH", 0xC00C, QTYPE_A, QCLASS_IN, TTL, 4)
        + ipaddress.IPv4Address(a).packed for a in addresses)
    # keep to 512 bytes without EDNS: 16 bytes per answer; drop the excess (and say TC)
    room = (MAX_UDP - 12 - len(question)) // 16
    if len(addresses) > room:
        answers = answers[:room * 16]
        addresses = addresses[:room]
        flags |= 0x0200
    return struct.pack("!6H", header.id, flags, 1 if q else 0, len(addresses), 0, 0) + \
        question + answers


def parse_a_answers(resp: bytes) -> tuple[int, list[str]]:
    """(rcode, A addresses) of a response to a one-question query (for tests and health checks)."""
    header = parse_header(resp)
    _, _, qd, an, _, _ = struct.unpack("!6H", resp[:12])
    offset = 12
    for _ in range(qd):
        offset = parse_question(resp, offset).end
    out = []
    for _ in range(an):
        # name: a pointer or labels
        while True:
            n = resp[offset]
            if n & 0xC0:
                offset += 2
                break
            offset += 1 + n
            if n == 0:
                break
        rtype, _rclass, _ttl, rdlen = struct.unpack("!HHIH", resp[offset:offset + 10])
        offset += 10
        if rtype == QTYPE_A and rdlen == 4:
            out.append(str(ipaddress.IPv4Address(resp[offset:offset + 4])))
        offset += rdlen
    return header.flags & 0xF, out


# ----------------------------------------------------------------------------------------------

@dataclass
class ServiceRecord:
    vips: list[str] = field(default_factory=list)
    task_ips: list[str] = field(default_factory=list)
    mode: Literal["vip", "dnsrr"] = "vip"


class ServiceTable:
    """Names this responder is authoritative for; the agent replaces records as tasks move."""

    def __init__(self) -> None:
        self._records: dict[str, ServiceRecord] = {}

    def set_service(self, name: str, *, vips: list[str] = (), task_ips: list[str] = (),
                    mode: Literal["vip", "dnsrr"] = "vip") -> None:
        self._records[name.lower().rstrip(".")] = ServiceRecord(list(vips), list(task_ips), mode)

    def remove_service(self, name: str) -> None:
        self._records.pop(name.lower().rstrip("."), None)

    def lookup(self, name: str) -> Optional[list[str]]:
        """Addresses for the name, [] for a known name without any, None when not ours."""
        name = name.lower().rstrip(".")
        rec = self._records.get(name)
        if rec is not None:
            ips = rec.task_ips if rec.mode == "dnsrr" else rec.vips
            return random.sample(ips, len(ips))      # spread dnsrr clients over the tasks
        if name.startswith("tasks."):
            rec = self._records.get(name[len("tasks."):])
            if rec is not None:
                return random.sample(rec.task_ips, len(rec.task_ips))
        return None


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, server: "DnsServer") -> None:
        self.server = server
        self.transport: Optional[asyncio.DatagramTransport] = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        task = asyncio.get_running_loop().create_task(self.server._answer(data, addr))
        self.server._tasks.add(task)
        task.add_done_callback(self.server._tasks.discard)


class _Forward(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


def _udp_socket(netns: Optional[str]) -> socket.socket:
    if netns is None:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    from pyroute2 import netns as pr_netns

    from worker.network.nsutil import pyroute2_path
    # flags=0: never create the namespace by accident
    return pr_netns.create_socket(pyroute2_path(netns), socket.AF_INET, socket.SOCK_DGRAM,
                                  flags=0)


class DnsServer:
    """The responder for one namespace: ``await start()``, ``await stop()``."""

    def __init__(self, table: ServiceTable, address: str = "127.0.0.11", port: int = 53, *,
                 netns: Optional[str] = None, upstreams: list[tuple[str, int]] = (),
                 upstream_netns: Optional[str] = None) -> None:
        self.table = table
        self.address, self.port = address, port
        self.netns = netns                    # where containers reach us
        self.upstreams = list(upstreams)      # e.g. from the node's /etc/resolv.conf
        self.upstream_netns = upstream_netns  # where upstreams are reachable (None: ours)
        self._transport: Optional[asyncio.DatagramTransport] = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        sock = _udp_socket(self.netns)
        try:
            sock.bind((self.address, self.port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Listener(self),
                                                                 sock=sock)

    @property
    def bound(self) -> tuple[str, int]:
        return self._transport.get_extra_info("sockname")

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _answer(self, data: bytes, addr) -> None:
        reply = await self.handle(data)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    async def handle(self, data: bytes) -> Optional[bytes]:
        try:
            header = parse_header(data)
        except DnsFormatError:
            return None                     # not even an id to answer to
        if not header.is_query:
            return None
        if header.opcode != 0 or header.qdcount != 1:
            return build_response(data, None, RCODE_NOTIMP)
        try:
            q = parse_question(data)
        except DnsFormatError:
            return build_response(data, None, RCODE_FORMERR)
        addrs = self.table.lookup(q.name) if q.qclass == QCLASS_IN else None
        if addrs is not None:
            # ours: A gets the addresses; other types get an empty NOERROR (no upstream leak)
            return build_response(data, q, RCODE_OK, addrs if q.qtype == QTYPE_A else [])
        return await self.forward(data, q)

    async def forward(self, data: bytes, q: Question) -> bytes:
        loop = asyncio.get_running_loop()
        for upstream in self.upstreams:
            sock = _udp_socket(self.upstream_netns)
            sock.setblocking(False)
            transport, proto = await loop.create_datagram_endpoint(_Forward, sock=sock)
            try:
                transport.sendto(data, upstream)
                reply = await asyncio.wait_for(proto.reply, FORWARD_TIMEOUT)
                if reply[:2] == data[:2]:    # same id: it answers this query
                    return reply
            except (asyncio.TimeoutError, OSError) as exc:
                log.debug("upstream %s for %s: %s", upstream, q.name, exc)
            finally:
                transport.close()
        return build_response(data, q, RCODE_SERVFAIL)


def upstreams_from_resolv_conf(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The node's IPv4 nameservers. Loopback ones are kept: forwarding happens from the node's
    namespace, where a local stub resolver is reachable."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    with contextlib.suppress(ValueError):
                        ip = ipaddress.IPv4Address(parts[1])
                        out.append((str(ip), 53))
    except FileNotFoundError:
        pass
    return out
