"""A Docker API socket's application over a raft-less manager (tests/store_manager.py), with a
small cluster in its store: what tests of shoal/dockerapi need without a lab."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Optional

from aiohttp.test_utils import TestClient, TestServer

from common.model import (Cluster, ManagerStatus, Network, NetworkAttachment,
                          NetworkAttachmentConfig, Node,
                          NodeDescription, NodeStatus, Platform, PortConfig, Resources, Service,
                          ServiceMode, ServiceSpec, Task, TaskStatus, NODE_ROLE_MANAGER)
from common import codec
from common.nodestate import NodeState
from manager.allocator.allocator import Allocator
from manager.state.store import Transaction
from shoal.dockerapi.app import make_app
from tests.store_manager import StoreManager

NOW = 1_700_000_000.25


class DockerTestManager(StoreManager):
    """What the Docker API reads of a manager, beyond the store."""

    def __init__(self) -> None:
        super().__init__()
        self.leader_raft = "10.0.0.1:2378"
        # What the writes use: the real allocator on the store, a disk that never fills.
        self.allocator = Allocator(self.store)
        self.disk_guard = _RoomyDisk()

    def require_leader(self) -> None:
        pass

    def reachability(self) -> dict[str, str]:
        return {"10.0.0.1:2378": "leader", "10.0.0.2:2378": "reachable"}

    def manager_nodes(self) -> list[Node]:
        return [n for n in self.store.list("nodes") if n.role == NODE_ROLE_MANAGER]

    def cluster(self) -> Optional[Cluster]:
        clusters = self.store.list("clusters")
        return clusters[0] if clusters else None


class _RoomyDisk:
    def check(self) -> None:
        pass


class FakeFiles:
    def __init__(self, root: Path) -> None:
        self.root = root


class FakeDaemon:
    """The part of shoal.daemon.Daemon the Docker API reads."""

    def __init__(self, manager: Optional[DockerTestManager], *, in_swarm: bool = True,
                 locked: bool = False, root: Path = Path("/nonexistent")) -> None:
        self.manager = manager
        self.state = NodeState()
        if in_swarm:
            self.state.node_id, self.state.cluster_id = "n1", "c1"
            self.state.role = "manager" if manager is not None else "worker"
            self.state.advertise_addr = "10.0.0.1"
            self.state.managers = ["10.0.0.1:2377"]
        self.locked = locked
        self.role_lock = asyncio.Lock()
        self.hostname = "m1"
        self.files = FakeFiles(root)
        self.executor = None
        self.images = None
        self.agent = None


def _node(nid: str, host: str, addr: str, role: str = "worker", labels=None) -> Node:
    n = Node(id=nid, role=role,
             description=NodeDescription(hostname=host,
                                         platform=Platform(os="linux", architecture="x86_64"),
                                         resources=Resources(nano_cpus=2_000_000_000,
                                                             memory_bytes=1 << 30),
                                         engine_version="0.1.0"),
             status=NodeStatus(state="ready", addr=addr))
    n.spec.desired_role = role
    n.spec.labels = dict(labels or {})
    n.meta.created_at = n.meta.updated_at = NOW
    if role == NODE_ROLE_MANAGER:
        n.manager_status = ManagerStatus(raft_addr=f"{addr}:2378", api_addr=f"{addr}:2377")
    return n


def populate(manager: DockerTestManager) -> None:
    """Two managers, one worker, a network, a 2-replica and a global service with tasks."""
    txn = Transaction()
    cluster = Cluster(id="c1")
    cluster.root_ca.cert_pem = b"-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n"
    cluster.root_ca.key_pem = b"SECRET-CA-KEY"
    cluster.join_tokens.worker, cluster.join_tokens.manager = "SHLTKN-w", "SHLTKN-m"
    cluster.unlock_keys.current = "SHLKEY-SECRET"
    cluster.meta.created_at = cluster.meta.updated_at = NOW
    txn.create("clusters", cluster)
    txn.create("nodes", _node("n1", "m1", "10.0.0.1", NODE_ROLE_MANAGER, {"zone": "a"}))
    txn.create("nodes", _node("n2", "m2", "10.0.0.2", NODE_ROLE_MANAGER))
    txn.create("nodes", _node("n3", "w1", "10.0.0.3", "worker", {"zone": "b"}))
    net = Network(id="net1", vni=4097, subnet="10.0.1.0/24", gateway="10.0.1.1")
    net.spec.name = "backend"
    txn.create("networks", net)
    web = Service(id="svcweb1", spec=ServiceSpec(name="web", labels={"tier": "front"},
                                                  mode=ServiceMode(replicas=2)))
    web.spec.task_template.container.image = "busybox:latest"
    web.spec.task_template.container.args = ["sleep", "1000"]
    web.spec.task_template.networks = [NetworkAttachmentConfig(target="net1")]
    web.spec.endpoint_spec.ports = [PortConfig(target_port=80, published_port=8080)]
    web.endpoint.ports = [PortConfig(target_port=80, published_port=8080)]
    web.meta.created_at = web.meta.updated_at = NOW
    txn.create("services", web)
    agent = Service(id="svcagent", spec=ServiceSpec(name="agent",
                                                     mode=ServiceMode(mode="global")))
    agent.spec.task_template.container.image = "busybox"
    txn.create("services", agent)
    for slot, node in ((1, "n1"), (2, "n3")):
        t = Task(id=f"task{slot}", service_id="svcweb1", service_name="web", slot=slot,
                 node_id=node, spec=web.spec.task_template,
                 status=TaskStatus(state="running", timestamp=NOW, container_id=f"c{slot}"),
                 networks=[NetworkAttachment(network_id="net1", address=f"10.0.1.{slot + 1}/24")])
        t.meta.created_at = NOW
        txn.create("tasks", t)
    older = codec.clone(web.spec.task_template)
    older.container.image = "busybox:1.35"
    old = Task(id="task0", service_id="svcweb1", service_name="web", slot=1, node_id="n3",
               spec=older, desired_state="shutdown",
               status=TaskStatus(state="failed", err="exit 1", exit_code=1, timestamp=NOW - 5))
    txn.create("tasks", old)
    for node in ("n1", "n2", "n3"):
        txn.create("tasks", Task(id=f"g{node}", service_id="svcagent", service_name="agent",
                                 node_id=node, spec=agent.spec.task_template,
                                 status=TaskStatus(state="running", timestamp=time.time())))
    manager.commit(txn)


async def docker_client(daemon: FakeDaemon) -> TestClient:
    client = TestClient(TestServer(make_app(daemon)))
    await client.start_server()
    return client


async def session(daemon: FakeDaemon, calls: list[tuple[str, str, Any]]) -> list[tuple[int, Any]]:
    client = await docker_client(daemon)
    out = []
    try:
        for method, path, body in calls:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            resp = await client.request(method, path, data=data)
            raw = await resp.read()
            out.append((resp.status, json.loads(raw) if raw else None))
    finally:
        await client.close()
    return out


def run(daemon: FakeDaemon, *calls: tuple[str, str, Any]) -> list[tuple[int, Any]]:
    """Each (method, path, body) on one client in turn: [(status, parsed body)]."""
    return asyncio.run(session(daemon, list(calls)))
