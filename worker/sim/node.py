"""One simulated node: the real agent and task runner on a host whose executor is simulated.

It joins through the real join handshake (worker.agent.request_join: the CA pinned by the
token, a CSR, its own certificate), then runs the real `Agent` (heartbeats, the assignment
long-poll, certificate upkeep) and `TaskRunner` (a controller per task, batched status
reports) over mutual TLS with its own key. What differs from shoald: the executor, image store
and secret mounts (worker/sim/executor.py), no listening port, and certificates kept in
memory (a thousand nodes in one process would otherwise fsync four files each to join).
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Optional

from common import errors, pki
from common.httpclient import ApiClient, Endpoint
from common.model import SIMULATED_NODE_MARK
from common.nodestate import NodeState
from common.version import __version__
from worker.agent import Agent, describe_node, request_join
from worker.sim.executor import (SimBehaviour, SimulatedExecutor, SimulatedImages,
                                 SimulatedSecretMounts)
from worker.taskrunner import TaskRunner

log = logging.getLogger("shoal.sim")


class SimulatedFiles:
    """The part of NodeFiles the agent and certificate upkeep use, in memory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.raft_dir = root / "raft"  # never made: a simulated node is never a manager
        self._ca = self._cert = self._key = b""

    def save_certs(self, ca_pem: bytes, cert_pem: bytes, key_pem: Optional[bytes] = None) -> None:
        self._ca, self._cert = ca_pem, cert_pem
        if key_pem is not None:
            self._key = key_pem

    def load_certs(self) -> tuple[bytes, bytes, bytes]:
        return self._ca, self._cert, self._key

    def save_state(self, state: NodeState) -> None:
        return None  # the manager list lives as long as the process

    def try_save_state(self, state: NodeState) -> bool:
        return True


def simulated_description(hostname: str) -> dict:
    """This machine's description, marked simulated where `node inspect` shows it."""
    return {**describe_node(hostname), "engine_version": f"{__version__} {SIMULATED_NODE_MARK}"}


class SimulatedNode:
    """An AgentHost (worker.agent) whose tasks run in a SimulatedExecutor."""

    def __init__(self, hostname: str, workdir: Path, behaviour: SimBehaviour,
                 runs: Counter[str]) -> None:
        self.hostname = hostname
        self.files = SimulatedFiles(workdir / hostname)
        self.state = NodeState()
        self.executor = SimulatedExecutor(behaviour, runs)
        self.agent: Optional[Agent] = None
        self._client_ctx = None
        self._clients: dict[str, ApiClient] = {}

    @property
    def node_id(self) -> str:
        return self.state.node_id

    async def join(self, manager: str, token: str, advertise: str) -> None:
        joined = await request_join(manager, token, advertise, simulated_description(self.hostname))
        if joined.role != "worker":
            raise errors.InvalidArgument(
                "simulated nodes join as workers only: use the worker join token "
                "('shoal swarm join-token worker'), not the manager one", field="token")
        self.files.save_certs(joined.ca_pem, joined.cert_pem, joined.key_pem)
        self._client_ctx = pki.client_ssl_context(joined.ca_pem, joined.cert_pem, joined.key_pem)
        # No port is listened on: listen_addr only names the port managers would dial.
        self.state = NodeState(node_id=joined.node_id, cluster_id=joined.cluster_id,
                               role=joined.role, advertise_addr=advertise,
                               managers=joined.managers)

    def start(self) -> None:
        self.agent = Agent(self, description=simulated_description(self.hostname))
        self.agent.runner = TaskRunner(self.executor, SimulatedImages(), self.hostname,  # type: ignore[arg-type]
                                       self.agent.send_reports,
                                       secret_mounts=SimulatedSecretMounts())  # type: ignore[arg-type]
        # Managers stop forwarding to a removed task only after this: no drain to wait out.
        self.agent.runner.backend_drain = 0.0
        self.agent.start()

    async def stop(self) -> None:
        if self.agent is not None:
            await self.agent.stop()
            self.agent = None
        await self.executor.close()
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()

    # ---- AgentHost ----------------------------------------------------------------------------
    def peer_client(self, addr: str) -> ApiClient:
        client = self._clients.get(addr)
        if client is None:
            client = ApiClient(Endpoint(addr=addr, ssl_context=self._client_ctx))
            self._clients[addr] = client
        return client

    async def on_role_change(self, role: str) -> None:
        raise errors.FailedPrecondition(
            f"{self.hostname} is a simulated node and cannot become a {role}: demote it again "
            "('shoal node demote')")

    async def install_certificate(self, cert_pem: bytes, key_pem: bytes) -> None:
        ca, _, _ = self.files.load_certs()
        pki.verify_issued_by(cert_pem, ca)
        self.files.save_certs(ca, cert_pem, key_pem)
        self._client_ctx = pki.client_ssl_context(ca, cert_pem, key_pem)
        await self._drop_clients()

    async def install_trust(self, bundle_pem: bytes) -> None:
        _, cert, key = self.files.load_certs()
        pki.verify_issued_by(cert, bundle_pem)  # never trust roots our own certificate fails
        self.files.save_certs(bundle_pem, cert)
        self._client_ctx = pki.client_ssl_context(bundle_pem, cert, key)
        await self._drop_clients()

    async def _drop_clients(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()
