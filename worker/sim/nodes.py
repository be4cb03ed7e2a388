"""Many simulated nodes in one process, to measure managers at scale (issue 20).

Each joins through the real join path and keeps its own real session (worker/sim/node.py);
only the executor is simulated. Several processes can run side by side as long as their
`name_prefix` differs: hostnames are `f"{name_prefix}-{i:05d}"`.

    nodes = SimulatedNodes(1000, "172.31.0.2:2377", token, Path("/tmp/sim"))
    await nodes.start()      # all joined, sessions running
    ...
    nodes.task_runs()        # task id -> how many times it was started
    await nodes.stop()
"""
from __future__ import annotations

import asyncio
import logging
import random
import re
import resource
import socket
from collections import Counter
from pathlib import Path

from common import errors, tokens
from common.fsutil import write_json
from common.nodestate import API_PORT
from worker.sim.executor import SimBehaviour
from worker.sim.node import SimulatedNode

log = logging.getLogger("shoal.sim")

PREFIX_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9-]{0,40}$")
# How long a node keeps trying to join a manager that does not answer (overloaded, electing).
JOIN_PATIENCE = 600.0
# Sockets per node: the heartbeat/report connection, the assignment long-poll, a spare.
FDS_PER_NODE = 3


def parse_manager(value: str) -> str:
    """host:port of a manager (the port defaults to 2377); an InvalidArgument naming the fix."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, str(API_PORT)
    try:
        socket.inet_aton(host)
    except OSError:
        raise errors.InvalidArgument(
            f"manager must be a manager's IP address[:port], like 172.31.0.2:2377, got "
            f"{value!r}", field="manager") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.InvalidArgument(f"manager has a bad port in {value!r}: use 1-65535 "
                                     "(the cluster port is 2377)", field="manager")
    return f"{host}:{port}"


def local_address_towards(manager: str) -> str:
    """The address this process reaches `manager` from: the nodes' advertise address. A UDP
    connect picks the route and sends nothing."""
    host, port = manager.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, int(port)))
        except OSError as exc:
            raise errors.Unavailable(f"no route to manager {manager} from here: {exc.strerror}") from None
        return s.getsockname()[0]


def raise_fd_limit(count: int) -> None:
    """Each node holds a few sockets; ask for enough descriptors, or say how many are missing."""
    want = count * FDS_PER_NODE + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft < want:
        raise errors.FailedPrecondition(
            f"{count} simulated nodes need about {want} file descriptors, the hard limit is "
            f"{hard}: raise it (ulimit -Hn) or run fewer nodes per process (--count)")


class SimulatedNodes:
    def __init__(self, count: int, manager: str, token: str, workdir: Path, *,
                 start_delay: float = 0.5, fail_rate: float = 0.0, name_prefix: str = "sim",
                 concurrency: int = 50) -> None:
        if not isinstance(count, int) or count < 1:
            raise errors.InvalidArgument(f"count must be at least 1, got {count!r}", field="count")
        if not PREFIX_RE.match(name_prefix):
            raise errors.InvalidArgument(
                f"name_prefix {name_prefix!r} must be letters, digits and '-' (at most 41, "
                "starting with a letter or digit), like 'sim' or 'simB'", field="name_prefix")
        if concurrency < 1:
            raise errors.InvalidArgument(f"concurrency must be at least 1, got {concurrency!r}",
                                         field="concurrency")
        try:
            behaviour = SimBehaviour(start_delay=start_delay, fail_rate=fail_rate)
        except ValueError as exc:
            raise errors.InvalidArgument(str(exc), field=str(exc).split()[0]) from None
        tokens.parse_token(token)  # a malformed token fails here, not a thousand times
        self.count = count
        self.manager = parse_manager(manager)
        self.token = token
        self.workdir = Path(workdir)
        self.name_prefix = name_prefix
        self.concurrency = concurrency
        self.behaviour = behaviour
        self.node_ids: list[str] = []
        self._runs: Counter[str] = Counter()
        self._nodes = [SimulatedNode(f"{name_prefix}-{i:05d}", self.workdir, behaviour, self._runs)
                       for i in range(count)]

    @property
    def nodes(self) -> list[SimulatedNode]:
        return list(self._nodes)

    def task_runs(self) -> dict[str, int]:
        return dict(self._runs)

    async def start(self) -> None:
        """Join all nodes (at most `concurrency` joins at once) and start each one's session
        as soon as it joined; return once all have joined."""
        raise_fd_limit(self.count)
        advertise = local_address_towards(self.manager)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(node: SimulatedNode) -> None:
            async with gate:
                await self._join(node, advertise)
            node.start()

        jobs = [asyncio.create_task(one(n), name=f"join-{n.hostname}") for n in self._nodes]
        try:
            await asyncio.gather(*jobs)
        except BaseException:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            await self.stop()
            raise
        self.node_ids = [n.node_id for n in self._nodes]
        self.write_status()
        log.info("%d simulated nodes joined %s from %s", self.count, self.manager, advertise)

    async def _join(self, node: SimulatedNode, advertise: str) -> None:
        # A manager busy with many joins at once may time out or lose its leader: try again,
        # as an operator would, with a growing pause; a refusal (a bad token) is final.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + JOIN_PATIENCE
        attempt = 0
        while True:
            attempt += 1
            try:
                await node.join(self.manager, self.token, advertise)
                return
            except errors.Unavailable as exc:
                if loop.time() > deadline:
                    raise errors.Unavailable(f"{node.hostname} could not join within "
                                             f"{JOIN_PATIENCE:.0f} s ({attempt} attempts): "
                                             f"{exc.message}") from None
                log.info("%s: join attempt %d failed (%s); retrying", node.hostname, attempt,
                         exc.message)
                await asyncio.sleep(random.uniform(0.5, 1.0) * min(attempt, 10))

    async def stop(self) -> None:
        """End every session (the nodes go Down at the managers once the grace has passed)."""
        await asyncio.gather(*(n.stop() for n in self._nodes), return_exceptions=True)

    def connected(self) -> int:
        return sum(1 for n in self._nodes if n.agent is not None and n.agent.connected.is_set())

    def write_status(self) -> Path:
        """`workdir/status.json`: the nodes (hostname -> id) and the task runs, for a parent
        process (the bench, a test) to read; written atomically."""
        path = self.workdir / "status.json"
        write_json(path, {"nodes": {n.hostname: n.node_id for n in self._nodes if n.node_id},
                          "connected": self.connected(), "task_runs": self.task_runs()})
        return path
