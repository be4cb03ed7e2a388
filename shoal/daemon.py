"""shoald: the node daemon. Every node runs one; it composes the roles the node has.

- the local API on a root-only Unix socket (what the CLI talks to),
- the Docker Engine API on a second root-only Unix socket (shoal/dockerapi/),
- once in a swarm: the 2377 endpoint with mutual TLS, the agent (heartbeats, role changes,
  certificate renewal), and on managers the raft-backed manager,
- once in a swarm and with --docker-tcp: the remote API over TLS with client certificates
  (shoal/dockerapi/remote.py).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import resource
import signal
import socket
import ssl
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

from aiohttp import web

from common import errors, pki
from common.aio import cancel_and_wait
from common.tuning import shrink_tls_buffers, tune_gc
from common.httpclient import DEFAULT_SOCKET, SERVER_KEEPALIVE, ApiClient, Endpoint
from common.model import NODE_ROLE_MANAGER, NODE_ROLE_WORKER
from common.httpserver import CTX, error_middleware
from common.nodestate import API_PORT, NodeFiles, NodeState
from manager import controlapi
from manager.controlapi import autolock as manager_autolock
from manager.controlapi.middleware import auth_middleware, forward_middleware
from manager.manager import Manager
from shoal import autolock
from shoal.metrics_server import MetricsServer, api_middlewares, parse_metrics_addr
from worker.agent import Agent

log = logging.getLogger("shoal.daemon")

# How long a stopping daemon lets in-flight requests finish. Not aiohttp's 60 s: agents hold
# /dispatcher/assignments open for up to 25 s waiting for changes, so a manager stopping with
# any agent attached (its own, at least) sat out that wait before it could exit. An agent
# whose long poll is cut simply asks again, of another manager if this one is gone.
SHUTDOWN_GRACE = 2.0

DEFAULT_DOCKER_SOCKET = "/run/shoal/docker.sock"


class Daemon:
    def __init__(self, data_root: Path, advertise_addr: str, listen_addr: str, socket_path: str,
                 hostname: str, docker_socket_path: Optional[str] = None) -> None:
        self.files = NodeFiles(data_root)
        self.default_advertise_addr = advertise_addr
        self.default_listen_addr = listen_addr
        self.socket_path = socket_path
        self.docker_socket_path = docker_socket_path  # None: no Docker API
        self.docker_tcp: Optional[str] = None  # HOST:PORT of the remote API; None: none
        self._remote = None  # shoal.dockerapi.remote.RemoteListener while it serves
        self.hostname = hostname
        self.state = NodeState()
        self.manager: Optional[Manager] = None
        self.agent: Optional[Agent] = None
        self._server_ctx: Optional[ssl.SSLContext] = None
        self._client_ctx: Optional[ssl.SSLContext] = None
        self._clients: dict[str, ApiClient] = {}
        self._tcp_runner: Optional[web.AppRunner] = None
        self._unix_runner: Optional[web.AppRunner] = None
        self._docker_runner: Optional[web.AppRunner] = None
        self.images = None
        self.executor = None
        self.volumes = None
        self.insecure_registries: frozenset[str] = frozenset()
        self.lb_backend = "auto"      # the routing mesh's load balancer: auto | ipvs | nftables
        self.role_lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.locked = False  # autolock: a restarted manager waits for `shoal swarm unlock`
        self._key_sync: Optional[asyncio.Task] = None
        self.metrics_addr: Optional[str] = None  # --metrics-addr; None: no metrics listener
        self.metrics: Optional[MetricsServer] = None

    # ---- lifecycle --------------------------------------------------------------------------
    async def run(self) -> None:
        self.files.prepare()
        self.state = self.files.load_state()
        from worker.executor import Executor
        from worker.images import ImageStore
        self.images = ImageStore(self.files.root / "images")
        self.executor = Executor(self.files.root / "executor", self.images)
        self.volumes = self.executor.volumes
        if self.metrics_addr:  # before the roles: a manager starting is attached to it
            self.metrics = MetricsServer(self, self.metrics_addr)
            await self.metrics.start()
        if self.state.in_swarm and not autolock.comes_up_locked(self):
            await self.start_roles()
        # The Docker socket first: the lab and scripts wait on shoal's socket as the sign of
        # readiness, and both should answer by then.
        await self._serve_docker()
        await self._serve_unix()
        if self.docker_tcp and self._remote is None:
            # It serves with the node's certificate, which a node gets by init or join.
            log.info("--docker-tcp %s: not serving yet; the remote API starts once this node "
                     "is in a swarm%s", self.docker_tcp,
                     " and unlocked" if self.state.in_swarm else "")
        log.info("shoald ready on unix://%s (data root %s)", self.socket_path, self.files.root)
        await self.stopping.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        from shoal.dashboard import api as dashboardapi
        await dashboardapi.stop(self)  # before the roles: it reads through this node's API
        await self.stop_roles()
        if self._unix_runner is not None:
            await self._unix_runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        if self._docker_runner is not None:
            await self._docker_runner.cleanup()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.docker_socket_path)
        if self.metrics is not None:
            await self.metrics.stop()

    async def _serve_docker(self) -> None:
        if not self.docker_socket_path:
            return
        from shoal.dockerapi import app as dockerapi
        self._docker_runner = await dockerapi.serve(self, self.docker_socket_path,
                                                    SHUTDOWN_GRACE)
        log.info("Docker Engine API on unix://%s", self.docker_socket_path)

    async def _serve_unix(self) -> None:
        from shoal import localapi, standaloneapi, workerapi
        app = web.Application(middlewares=[*api_middlewares(self, "local"), error_middleware,
                                           autolock.locked_middleware, forward_middleware])
        app[CTX] = self
        app.add_routes(localapi.routes() + controlapi.routes()
                       + workerapi.local_routes() + standaloneapi.routes())
        app.add_routes(autolock.local_routes())
        from shoal import execapi
        app.add_routes(execapi.local_routes())  # container and service exec: websockets
        from shoal import recoveryapi
        app.add_routes(recoveryapi.routes())  # force-new-cluster, backup, restore: local only
        self._unix_runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE)
        await self._unix_runner.setup()
        Path(self.socket_path).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        old = os.umask(0o177)  # root only, from the moment it exists
        try:
            await web.UnixSite(self._unix_runner, self.socket_path).start()
        finally:
            os.umask(old)

    async def start_roles(self) -> None:
        """Bring up what the node's saved state says it is (after init, join or a restart)."""
        ca, cert, key = self.files.load_certs()
        self._server_ctx = pki.server_ssl_context(ca, cert, key)
        self._client_ctx = pki.client_ssl_context(ca, cert, key)
        if self.state.role == NODE_ROLE_MANAGER:
            await self._start_manager()
        await self._serve_tcp()
        await self._serve_remote(ca, cert, key)
        from worker.taskrunner import TaskRunner
        self.agent = Agent(self)
        self.agent.runner = TaskRunner(self.executor, self.images, self.hostname,
                                       self.agent.send_reports, self.insecure_registries)
        from worker.network.node import NodeNetworks
        self.agent.runner.networks = NodeNetworks(self.files.root, self.state.advertise_addr,
                                                  self.lb_backend)
        self.agent.start()

    async def stop_roles(self) -> None:
        if self.agent is not None:
            await self.agent.stop()
            self.agent = None
        if self._tcp_runner is not None:
            await self._tcp_runner.cleanup()
            self._tcp_runner = None
        if self._remote is not None:
            remote, self._remote = self._remote, None
            await remote.stop()
        await self._stop_manager()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    async def _start_manager(self) -> None:
        host = self.state.listen_addr.rsplit(":", 1)[0]
        bind = None if host in ("0.0.0.0", "") else host
        self.manager = Manager(self.files, self.state, bind_addr=bind)
        await self.manager.start()
        if self.metrics is not None:
            self.metrics.attach_manager(self.manager)
        self._key_sync = asyncio.create_task(manager_autolock.keep_sealed(self.files, self.manager),
                                             name="autolock-reseal")

    async def _stop_manager(self) -> None:
        if self._key_sync is not None:
            await cancel_and_wait([self._key_sync])
            self._key_sync = None
        if self.manager is not None:
            manager, self.manager = self.manager, None
            await manager.stop()

    async def _serve_tcp(self) -> None:
        app = web.Application(middlewares=[
            *api_middlewares(self, "cluster"), error_middleware,
            auth_middleware(lambda: self.state.cluster_id), forward_middleware])
        app[CTX] = self
        from shoal import workerapi
        app.add_routes(controlapi.routes() + controlapi.node_routes() + workerapi.cluster_routes())
        from shoal import execapi
        app.add_routes(execapi.cluster_routes())  # exec relayed by a manager (manager certs only)
        from shoal import recoveryapi
        app.add_routes(recoveryapi.cluster_routes())  # a recovered swarm's manager tells its nodes
        app.router.add_get("/_ping", lambda _: web.Response(text="OK"))
        self._tcp_runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE,
                                         keepalive_timeout=SERVER_KEEPALIVE)
        await self._tcp_runner.setup()
        host, port = self.state.listen_addr.rsplit(":", 1)
        try:
            await web.TCPSite(self._tcp_runner, host, int(port), ssl_context=self._server_ctx,
                              reuse_address=True).start()
        except OSError as exc:
            await self._tcp_runner.cleanup()
            self._tcp_runner = None
            raise errors.FailedPrecondition(
                f"cannot listen on {self.state.listen_addr}: {exc.strerror}; pick another "
                "--listen-addr") from None

    async def _serve_remote(self, ca: bytes, cert: bytes, key: bytes) -> None:
        if not self.docker_tcp:
            return
        from shoal.dockerapi.remote import RemoteListener
        remote = RemoteListener(self, self.docker_tcp, SHUTDOWN_GRACE)
        try:
            await remote.start(ca, cert, key)
        except errors.ShoalError as exc:
            # The node's cluster roles matter more than remote access: say so and go on.
            log.error("remote API not served: %s", exc.message)
            return
        self._remote = remote

    # ---- peers ------------------------------------------------------------------------------
    def peer_client(self, addr: str) -> ApiClient:
        client = self._clients.get(addr)
        if client is None:
            client = ApiClient(Endpoint(addr=addr, ssl_context=self._client_ctx))
            self._clients[addr] = client
        return client

    async def install_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        ca, _, _ = self.files.load_certs()
        pki.verify_issued_by(cert_pem, ca)
        self.files.save_certs(ca, cert_pem, key_pem)
        # Same context objects: the listening server and pooled clients pick it up from the
        # next handshake on.
        pki.load_cert_chain(self._server_ctx, cert_pem, key_pem)
        pki.load_cert_chain(self._client_ctx, cert_pem, key_pem)
        pki.retrust_server(self._server_ctx, ca, cert_pem, key_pem)
        if self._remote is not None:
            self._remote.reload_certificate(cert_pem, key_pem)
        for client in self._clients.values():
            await client.close()

    async def install_trust(self, bundle_pem: bytes) -> None:
        """Trust these roots alone from now on (a root rotation adds a root, then drops one)."""
        _, cert, key = self.files.load_certs()
        pki.verify_issued_by(cert, bundle_pem)  # never trust roots our own certificate fails
        self.files.save_certs(bundle_pem, cert)
        # A context's trust only grows: fresh contexts, the listener's through its handshake hook.
        pki.retrust_server(self._server_ctx, bundle_pem, cert, key)
        self._client_ctx = pki.client_ssl_context(bundle_pem, cert, key)
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()

    async def on_role_change(self, role: str) -> None:
        async with self.role_lock:
            if role == self.state.role:
                return
            if role == NODE_ROLE_MANAGER:
                await self.agent.renew_certificate()
                info = await self.peer_client(self.agent.leader or self.state.managers[0]).request(
                    "POST", "/raft/join", {}, timeout=30)
                self.files.save_raft_secret(bytes.fromhex(info["secret"]))
                # Saved first: on a full disk nothing changes here and the next heartbeat retries.
                self.files.save_state(replace(self.state, raft_members=info["members"],
                                              role=NODE_ROLE_MANAGER))
                self.state.raft_members = info["members"]
                self.state.role = NODE_ROLE_MANAGER
                await self._start_manager()
                log.info("promoted: this node is a manager now")
            elif role == NODE_ROLE_WORKER:
                self.files.save_state(replace(self.state, role=NODE_ROLE_WORKER, raft_members=[]))
                self.state.role = NODE_ROLE_WORKER
                self.state.raft_members = []
                await self._stop_manager()
                self.files.wipe_raft()
                await self.agent.renew_certificate()
                log.info("demoted: this node is a worker now")


def _parse_addr(value: str, default_port: int) -> str:
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, str(default_port)
    ipaddress.ip_address(host)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {value!r}")
    return f"{host}:{port}"


def raise_open_files_limit() -> None:
    """A manager holds two connections per node (heartbeats, the assignment stream): the usual
    soft limit of 1,024 descriptors ends a swarm at about 500 nodes. Go daemons (dockerd,
    containerd) raise the soft limit to the hard one at start; shoald does the same (its
    systemd unit sets both high)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if hard == resource.RLIM_INFINITY:  # the kernel still caps descriptors at fs.nr_open
        with contextlib.suppress(OSError, ValueError):
            want = int(Path("/proc/sys/fs/nr_open").read_text())
    if want != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="shoald", description="shoal node daemon")
    parser.add_argument("--data-root", default="/var/lib/shoal", help="state directory")
    parser.add_argument("--advertise-addr", default="",
                        help="IP address other nodes reach this node at")
    parser.add_argument("--listen-addr", default=f"0.0.0.0:{API_PORT}",
                        help="IP:PORT for cluster traffic (default 0.0.0.0:2377)")
    parser.add_argument("--socket", default=os.environ.get("SHOAL_SOCKET", DEFAULT_SOCKET),
                        help="path of the local API socket")
    parser.add_argument("--docker-socket", default=DEFAULT_DOCKER_SOCKET, metavar="PATH",
                        help="path of the Docker Engine API socket (root only); an empty "
                             "value serves none")
    parser.add_argument("--docker-tcp", default="", metavar="IP:PORT",
                        help="serve the Docker Engine API and shoal's API (under /shoal/) "
                             "over TLS requiring a client certificate from the swarm's CA "
                             "(e.g. 0.0.0.0:2376); starts once the node is in a swarm; "
                             "default: off")
    parser.add_argument("--metrics-addr", default="", metavar="IP:PORT",
                        help="serve Prometheus metrics at http://IP:PORT/metrics (plain HTTP, "
                             "no authentication, as dockerd's; loopback only unless "
                             "--metrics-addr-insecure), e.g. 127.0.0.1:9323; default: off")
    parser.add_argument("--metrics-addr-insecure", action="store_true",
                        help="allow --metrics-addr on a non-loopback address, where anyone who "
                             "reaches it reads the metrics")
    parser.add_argument("--hostname", default=socket.gethostname(), help="node name to report")
    parser.add_argument("--insecure-registry", action="append", default=[], metavar="HOST:PORT",
                        help="registry reached over plain HTTP (repeatable)")
    parser.add_argument("--lb-backend", default="auto", choices=["auto", "ipvs", "nftables"],
                        help="load balancer of the routing mesh (auto: IPVS where the kernel "
                             "has it, else nftables)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        listen = _parse_addr(args.listen_addr, API_PORT)
        if args.advertise_addr:
            ipaddress.ip_address(args.advertise_addr)
    except ValueError as exc:
        parser.error(f"--listen-addr/--advertise-addr: {exc}")
    try:
        docker_tcp = _parse_addr(args.docker_tcp, 2376) if args.docker_tcp else None
    except ValueError as exc:
        parser.error(f"--docker-tcp {args.docker_tcp!r}: {exc}; give IP:PORT, e.g. "
                     "0.0.0.0:2376")
    try:
        metrics_addr = (parse_metrics_addr(args.metrics_addr, args.metrics_addr_insecure)
                        if args.metrics_addr else None)
    except ValueError as exc:
        parser.error(str(exc))
    if args.metrics_addr_insecure and not args.metrics_addr:
        parser.error("--metrics-addr-insecure needs --metrics-addr IP:PORT")
    if os.geteuid() != 0:
        parser.error("shoald must run as root (it manages namespaces, mounts and containers)")
    os.umask(0o022)
    tune_gc()
    shrink_tls_buffers()
    raise_open_files_limit()
    daemon = Daemon(Path(args.data_root), args.advertise_addr, listen, args.socket, args.hostname,
                    args.docker_socket or None)
    daemon.insecure_registries = frozenset(args.insecure_registry)
    daemon.docker_tcp = docker_tcp
    daemon.metrics_addr = metrics_addr
    daemon.lb_backend = args.lb_backend

    async def run() -> None:
        loop = asyncio.get_running_loop()
        main_pid = os.getpid()

        # Not loop.add_signal_handler: its wakeup socket is inherited by the short-lived
        # children pyroute2 forks to enter network namespaces, and when pyroute2 ends such a
        # child with SIGTERM the signal number lands in *our* loop, which then shuts down.
        def on_signal(signum: int, _frame) -> None:
            if os.getpid() != main_pid:
                os._exit(0)          # a forked helper being told to end
            loop.call_soon_threadsafe(daemon.stopping.set)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        await daemon.run()

    try:
        asyncio.run(run())
    except errors.ShoalError as exc:
        print(f"shoald: {exc.message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
