"""shoald's process-wide settings (common/tuning.py) on real connections."""
import asyncio
import asyncio.sslproto
import os

from aiohttp import web

from common import pki, tuning
from common.httpclient import ApiClient, Endpoint


def test_tls_connections_with_small_read_buffers_carry_large_bodies(monkeypatch):
    """Each TLS connection had a 256 KiB read buffer for life (2.5 GB for a manager of 5,000
    nodes, issue 20): with 32 KiB, bodies of megabytes still go both ways intact."""
    monkeypatch.setattr(asyncio.sslproto.SSLProtocol, "max_size", asyncio.sslproto.SSLProtocol.max_size)
    tuning.shrink_tls_buffers()
    ca = pki.RootCA.generate("c1")
    key = pki.generate_key()
    cert = ca.issue(pki.make_csr(key, "n1"), "n1", pki.ROLE_WORKER, "c1", ip_sans=["127.0.0.1"])
    body = os.urandom(3 * 1024 * 1024)
    buffers = []

    async def echo(request: web.Request) -> web.Response:
        buffers.append(len(request.transport._ssl_protocol._ssl_buffer))
        return web.Response(body=await request.read())

    async def scenario():
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0,
                           ssl_context=pki.server_ssl_context(ca.cert_pem, cert, key))
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with ApiClient(Endpoint(addr=f"127.0.0.1:{port}",
                                          ssl_context=pki.client_ssl_context(ca.cert_pem, cert, key))) as client:
                for _ in range(2):
                    status, data = await client.request_raw("POST", "/echo", raw=body)
                    assert status == 200 and data == body
        finally:
            await runner.cleanup()
    asyncio.run(scenario())
    assert buffers == [tuning.TLS_READ_BUFFER] * 2


def test_a_long_garbage_collection_is_said_in_the_log(monkeypatch, caplog):
    """A full collection stops every thread, the raft thread too: a manager that lost its
    leadership for no visible reason had paused in one. Long pauses are logged."""
    import gc
    import logging

    monkeypatch.setattr(tuning, "LONG_GC_PAUSE", 0.0)
    threshold, had = gc.get_threshold(), tuning._watch_pauses in gc.callbacks
    try:
        tuning.tune_gc()
        tuning.tune_gc()            # idempotent: one watcher
        assert gc.callbacks.count(tuning._watch_pauses) == 1
        with caplog.at_level(logging.WARNING, logger="shoal.gc"):
            gc.collect()
    finally:
        gc.set_threshold(*threshold)
        if not had:
            gc.callbacks.remove(tuning._watch_pauses)
    assert any("garbage collection (generation 2) paused this process" in r.getMessage()
               for r in caplog.records)
