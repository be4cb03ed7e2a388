"""Service-discovery DNS responder.

Parsing/encoding tests run anywhere; the live test (root) runs the responder on 127.0.0.11:53
inside a namespace the test creates and removes, with a fake upstream in that namespace too, and
queries it both with our own encoder and with busybox nslookup.
"""
from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from worker.network import dns

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def _table() -> dns.ServiceTable:
    t = dns.ServiceTable()
    t.set_service("web", vips=["10.0.0.2"], task_ips=["10.0.0.5", "10.0.0.6"])
    t.set_service("db", task_ips=["10.0.0.7", "10.0.0.8"], mode="dnsrr")
    return t


def test_table_lookup():
    t = _table()
    assert t.lookup("web") == ["10.0.0.2"]
    assert t.lookup("WEB.") == ["10.0.0.2"]
    assert sorted(t.lookup("tasks.web")) == ["10.0.0.5", "10.0.0.6"]
    assert sorted(t.lookup("db")) == ["10.0.0.7", "10.0.0.8"]
    assert t.lookup("example.org") is None
    t.remove_service("web")
    assert t.lookup("tasks.web") is None


def test_handle_answers_and_refuses_leaks():
    server = dns.DnsServer(_table())

    async def ask(name, qtype=dns.QTYPE_A):
        return dns.parse_a_answers(await server.handle(dns.build_query(name, 0x1234, qtype)))

    assert asyncio.run(ask("web")) == (0, ["10.0.0.2"])
    rcode, ips = asyncio.run(ask("tasks.web"))
    assert rcode == 0 and sorted(ips) == ["10.0.0.5", "10.0.0.6"]
    assert asyncio.run(ask("web", qtype=28)) == (0, [])          # AAAA: NODATA, not forwarded
    assert asyncio.run(ask("nowhere.invalid")) == (dns.RCODE_SERVFAIL, [])  # no upstreams


def test_response_keeps_id_and_flags():
    q = dns.build_query("web", 0xBEEF)
    resp = asyncio.run(dns.DnsServer(_table()).handle(q))
    assert resp[:2] == b"\xbe\xef"
    flags = int.from_bytes(resp[2:4], "big")
    assert flags & 0x8000 and flags & 0x0100 and flags & 0x0080   # QR, RD echoed, RA
    assert asyncio.run(dns.DnsServer(_table()).handle(b"\x00")) is None
    assert dns.parse_header(asyncio.run(dns.DnsServer(_table()).handle(
        q[:12] + b"\x05ab"))).flags & 0xF == dns.RCODE_FORMERR


def test_truncates_to_512_bytes():
    t = dns.ServiceTable()
    t.set_service("big", task_ips=[f"10.1.{i // 250}.{i % 250 + 1}" for i in range(100)],
                  mode="dnsrr")
    resp = asyncio.run(dns.DnsServer(t).handle(dns.build_query("big", 1)))
    assert len(resp) <= 512
    assert int.from_bytes(resp[2:4], "big") & 0x0200                 # TC


class _FakeUpstream(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        q = dns.parse_question(data)
        self.transport.sendto(dns.build_response(data, q, 0, ["192.0.2.7"]), addr)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_live_query_in_namespace(tmp_path):
    from worker.network import nsutil
    ns = str(tmp_path / "ns" / "ctr")
    try:
        nsutil.create(ns)      # loopback only

        async def scenario():
            loop = asyncio.get_running_loop()
            up_sock = dns._udp_socket(ns)
            up_sock.bind(("127.0.0.53", 5353))
            up_sock.setblocking(False)
            up_tr, _ = await loop.create_datagram_endpoint(_FakeUpstream, sock=up_sock)
            table = _table()
            server = dns.DnsServer(table, "127.0.0.11", 53, netns=ns,
                                   upstreams=[("127.0.0.53", 5353)], upstream_netns=ns)
            await server.start()
            try:
                cli = dns._udp_socket(ns)
                cli.setblocking(False)
                tr, proto = await loop.create_datagram_endpoint(dns._Forward, sock=cli)
                tr.sendto(dns.build_query("tasks.web", 7), ("127.0.0.11", 53))
                rcode, ips = dns.parse_a_answers(await asyncio.wait_for(proto.reply, 3))
                tr.close()
                assert rcode == 0 and sorted(ips) == ["10.0.0.5", "10.0.0.6"]

                # an independent client; run it off the loop so the server can answer
                r = await asyncio.to_thread(
                    nsutil.run, ns, [BUSYBOX, "nslookup", "web", "127.0.0.11"])
                assert "10.0.0.2" in r.stdout, r.stdout + r.stderr
                r = await asyncio.to_thread(
                    nsutil.run, ns, [BUSYBOX, "nslookup", "example.org", "127.0.0.11"])
                assert "192.0.2.7" in r.stdout, r.stdout + r.stderr   # forwarded upstream

                # the agent updates the table: answers follow at once (TTL 0)
                table.set_service("web", vips=["10.0.0.3"])
                r = await asyncio.to_thread(
                    nsutil.run, ns, [BUSYBOX, "nslookup", "web", "127.0.0.11"])
                assert "10.0.0.3" in r.stdout and "10.0.0.2" not in r.stdout, r.stdout
            finally:
                await server.stop()
                up_tr.close()

        asyncio.run(scenario())
    finally:
        nsutil.remove(ns)
        nsutil.release_dir(str(tmp_path / "ns"))


def test_a_task_with_its_own_nameservers_forwards_to_them():
    """As Docker's embedded DNS: `--dns` (compose `dns:`) are the upstreams of the task's resolver
    on an overlay; IPv6 ones are skipped (the resolver forwards over IPv4); none: the node's."""
    from common.model import ContainerSpec, DNSConfig, Task, TaskSpec
    from worker.network.node import _task_upstreams
    task = Task(id="t", spec=TaskSpec(container=ContainerSpec(
        dns_config=DNSConfig(nameservers=["10.9.8.7", "fd00::1", "1.1.1.1"]))))
    assert _task_upstreams(task) == [("10.9.8.7", 53), ("1.1.1.1", 53)]
    plain = Task(id="u")
    assert _task_upstreams(plain) == dns.upstreams_from_resolv_conf()
