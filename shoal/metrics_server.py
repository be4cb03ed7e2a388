"""shoald's metrics listener (`--metrics-addr IP:PORT`, as dockerd's `metrics-addr`): GET
/metrics in Prometheus' text format, served by the daemon's own aiohttp on its event loop.

Plain HTTP without authentication, as Docker's: so it binds a loopback address only, unless
the operator acknowledges the exposure with `--metrics-addr-insecure` (then a warning is
logged). Scrape a loopback listener through a local agent or a tunnel.

Each daemon has a registry of its own (several daemons run in one test process): the node's
collectors (worker/metrics.py), the manager's (manager/metrics.py, empty on a worker), the
API latency by route (a middleware on the daemon's API apps) and the process' own figures.
"""
from __future__ import annotations

import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from common import errors
from manager.metrics import ManagerMetrics
from worker.metrics import register_node_metrics

if TYPE_CHECKING:
    from manager.manager import Manager

log = logging.getLogger("shoal.metrics")

DEFAULT_PORT = 9323  # Docker's customary metrics port
# Most answers take milliseconds; an agent's assignment long poll waits up to 25 s by design.
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DaemonParts(Protocol):
    """What the metrics read of shoal.daemon.Daemon, each at scrape time but the first two."""
    executor: Any
    images: Any
    agent: Any                 # its .runner while in a swarm
    manager: Any               # None on a worker
    metrics: Optional["MetricsServer"]


def parse_metrics_addr(value: str, insecure: bool) -> str:
    """`IP:PORT` (`[IPv6]:PORT`; the port defaults to 9323) as HOST:PORT to bind. ValueError
    says what is wrong and how to fix it, naming the flags."""
    host, sep, port = value.rpartition(":")
    if not sep or value.endswith("]") or _is_ip(value):
        host, port = value, str(DEFAULT_PORT)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--metrics-addr {value!r}: {host!r} is not an IP address; give "
                         f"IP:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics-addr {value!r}: bad port {port!r}; give IP:PORT, e.g. "
                         f"127.0.0.1:{DEFAULT_PORT}")
    if not ip.is_loopback and not insecure:
        raise ValueError(
            f"--metrics-addr {value!r} is not a loopback address, and the metrics are served "
            f"over plain HTTP without authentication: give 127.0.0.1:{port} and scrape it "
            f"through a local agent or a tunnel, or add --metrics-addr-insecure to serve them "
            f"unauthenticated on {host}")
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


# Where an app that routes by itself (the Docker API's one catch-all) leaves the pattern it
# matched, for route_of.
ROUTE_LABEL: web.RequestKey[str] = web.RequestKey("shoal.route_label", str)


def route_of(request: web.Request) -> str:
    """The route's pattern (`/services/{id}`), never the raw path: a label must not carry ids,
    names or whatever a caller puts in a URL."""
    label = request.get(ROUTE_LABEL)
    if label:
        return label
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def api_latency_middleware(histogram: Histogram, listener: str):
    @web.middleware
    async def observe_latency(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        try:
            return await handler(request)
        finally:
            method = request.method if request.method in _METHODS else "other"
            histogram.labels(listener, method, route_of(request)).observe(
                time.monotonic() - started)
    return observe_latency


def api_middlewares(daemon: DaemonParts, listener: str) -> list:
    """The middleware to put first on one of the daemon's API apps; none without metrics."""
    metrics: Optional[MetricsServer] = getattr(daemon, "metrics", None)
    return [metrics.api_middleware(listener)] if metrics is not None else []


class MetricsServer:
    def __init__(self, daemon: DaemonParts, addr: str) -> None:
        self.addr = addr
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        register_node_metrics(self.registry, daemon.executor, daemon.images,
                              lambda: getattr(daemon.agent, "runner", None))
        self.manager_metrics = ManagerMetrics(self.registry, lambda: daemon.manager)
        self.api_latency = Histogram(
            "shoal_api_request_duration_seconds",
            "Time the daemon took to answer an API request, by listener (local: the Unix "
            "socket, cluster: 2377, docker: the Docker API socket, docker-remote: its TCP "
            "listener) and route pattern", ["listener", "method", "route"],
            buckets=API_BUCKETS, registry=self.registry)
        self._runner: Optional[web.AppRunner] = None

    def api_middleware(self, listener: str):
        return api_latency_middleware(self.api_latency, listener)

    def attach_manager(self, manager: "Manager") -> None:
        self.manager_metrics.attach(manager)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        host, port = self.addr.rsplit(":", 1)
        try:
            await web.TCPSite(self._runner, host.strip("[]"), int(port),
                              reuse_address=True).start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise errors.FailedPrecondition(
                f"cannot serve metrics on --metrics-addr {self.addr}: {exc.strerror}; pick "
                "another --metrics-addr") from None
        ip = ipaddress.ip_address(host.strip("[]"))
        if not ip.is_loopback:
            log.warning("metrics on http://%s/metrics without authentication "
                        "(--metrics-addr-insecure)", self.addr)
        else:
            log.info("metrics on http://%s/metrics", self.addr)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        # The text format Prometheus asks for (its Accept header; the classic 0.0.4 text
        # otherwise). Synchronous, on the loop: the collectors read memory, the store under
        # its lock and a few small cgroup files, all bounded (bench/metrics_bench.py).
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})
