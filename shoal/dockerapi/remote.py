"""Remote access (`shoald --docker-tcp ADDR:PORT`): the Docker Engine API app and, under
/shoal/, shoal's own API, over TLS that requires a certificate from the cluster's CA.

Who may call (checked on every request, against this manager's replica):
- a client certificate (`shoal swarm client-cert`) while its record is in the store and not
  revoked: every call;
- a manager's node certificate: every call (managers are trusted);
- a worker's node certificate: nothing. A worker runs other people's containers; its key is
  the easiest to steal and must not become a way to control the cluster.
A certificate from another CA, or none, fails the handshake itself.

shoal's own API is the local socket's application, reached through that socket: one app, one
set of middlewares (errors, autolock, forwarding to the leader), streams included.
"""
from __future__ import annotations

import logging
import ssl
import time
from typing import Any, Optional

import aiohttp
from aiohttp import web

from common import errors, pki
from common.httpserver import CTX
from common.model import NODE_ROLE_MANAGER
from manager.controlapi import clientcerts
from shoal.dockerapi.app import make_app
from shoal.dockerapi.errors import answer

log = logging.getLogger("shoal.dockerapi.remote")

DEFAULT_PORT = 2376
SHOAL_PREFIX = "/shoal"
# Headers of shoal's answer that describe its body; the rest are the hop's own.
# Shoal-Warning: a stale read on a manager without a leader says so to remote CLIs too.
_PASSED_HEADERS = ("Content-Type", "Content-Disposition", "Shoal-Warning")
# The session of the proxy to the local socket, in the app.
_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("shoal.remote.session",
                                                        aiohttp.ClientSession)


def refusal(daemon: Any, ssl_object: Optional[ssl.SSLObject]) -> Optional[tuple[int, str]]:
    """(status, message) when the caller behind this verified TLS connection may not call, or
    None when it may."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return 401, ("a client certificate is required: get one with 'shoal swarm client-cert "
                     "NAME -o DIR' on a manager")
    try:
        ident = pki.peer_certificate_identity(der)
    except errors.ShoalError as exc:
        return 401, exc.message
    if ident.cluster_id != daemon.state.cluster_id:
        return 401, "the certificate belongs to another swarm"
    if isinstance(ident, pki.NodeIdentity):
        return _node_refusal(daemon, ident)
    if daemon.locked:
        return 503, ("this manager is locked ('shoal swarm unlock'): it cannot check client "
                     "certificates until it is unlocked")
    manager = daemon.manager
    if manager is None:
        return 503, ("this node is not a swarm manager, so it cannot check client "
                     "certificates: connect to a manager (DOCKER_HOST / -H tcp://MANAGER:2376)")
    why = clientcerts.refusal(manager, ident, time.time())
    return (401, why) if why else None


def _node_refusal(daemon: Any, ident: pki.NodeIdentity) -> Optional[tuple[int, str]]:
    if not ident.is_manager:
        return 403, (f"node {ident.node_id} holds a worker certificate, which is never accepted "
                     "for control calls; use a client certificate from 'shoal swarm "
                     "client-cert NAME -o DIR'")
    manager = daemon.manager
    if manager is not None and not daemon.locked:
        # A demoted or removed manager keeps its certificate until it expires.
        node = manager.store.get("nodes", ident.node_id)
        if node is None or node.role != NODE_ROLE_MANAGER:
            return 403, (f"node {ident.node_id} holds a manager certificate but is no longer a "
                         "manager of this swarm")
    return None


@web.middleware
async def remote_auth(request: web.Request, handler) -> web.StreamResponse:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    refused = refusal(request.app[CTX], ssl_object)
    if refused is not None:
        status, message = refused
        log.info("remote %s %s refused (%d): %s", request.method, request.path, status, message)
        return answer(status, message)
    return await handler(request)


async def shoal_api(request: web.Request) -> web.StreamResponse:
    """The request, minus /shoal, to the local socket; its answer streamed back as it comes."""
    target = request.raw_path[len(SHOAL_PREFIX):]
    if not target.startswith("/"):
        return answer(404, f"no such endpoint: {request.method} {request.path}")
    body = await request.read() if request.body_exists else None
    headers = {"Content-Type": request.headers["Content-Type"]} \
        if "Content-Type" in request.headers else {}
    session = request.app[_SESSION]
    async with session.request(request.method, "http://localhost" + target, data=body,
                               headers=headers, allow_redirects=False) as upstream:
        response = web.StreamResponse(status=upstream.status)
        for name in _PASSED_HEADERS:
            if name in upstream.headers:
                response.headers[name] = upstream.headers[name]
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def make_remote_app(daemon: Any) -> web.Application:
    app = make_app(daemon, listener="docker-remote")
    # Outermost: a refused caller reaches neither API.
    app.middlewares.insert(0, remote_auth)
    # More specific than the Docker app's catch-all, so the router tries it first.
    app.router.add_route("*", SHOAL_PREFIX + "/{tail:.*}", shoal_api)

    async def session_ctx(app: web.Application):
        app[_SESSION] = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=daemon.socket_path),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        yield
        await app[_SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    return app


class RemoteListener:
    """The TLS listener, with its own context so that a renewed node certificate reaches it."""

    def __init__(self, daemon: Any, addr: str, shutdown_timeout: float) -> None:
        self.daemon = daemon
        self.addr = addr
        self.shutdown_timeout = shutdown_timeout
        self.ssl_context: Optional[ssl.SSLContext] = None
        self._runner: Optional[web.AppRunner] = None

    async def start(self, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
        self.ssl_context = pki.remote_server_ssl_context(ca_pem, cert_pem, key_pem)
        runner = web.AppRunner(make_remote_app(self.daemon), access_log=None,
                               shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        host, port = self.addr.rsplit(":", 1)
        try:
            await web.TCPSite(runner, host, int(port), ssl_context=self.ssl_context,
                              reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            raise errors.FailedPrecondition(
                f"cannot listen on {self.addr} for --docker-tcp: {exc.strerror}; pick another "
                "address or port") from None
        self._runner = runner
        log.info("remote API (Docker Engine API and shoal's under %s/) on tls://%s, client "
                 "certificates required", SHOAL_PREFIX, self.addr)

    def reload_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        if self.ssl_context is not None:
            pki.load_cert_chain(self.ssl_context, cert_pem, key_pem)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
