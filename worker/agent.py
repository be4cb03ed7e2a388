"""The agent: the node's one session with the managers.

It heartbeats to the leader (any manager forwards), learns the manager list and the leader
from every answer, moves to another manager when one stops answering, notices role changes
(promotion, demotion) and renews its certificate before it expires.
"""
from __future__ import annotations

import asyncio
import logging
import os
import platform
import random
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol

from common import errors, pki, tokens
from common.aio import cancel_and_wait
from common.fsutil import free_bytes
from common.httpclient import ApiClient, Endpoint
from common.model import NODE_ROLE_MANAGER
from common.nodestate import NodeFiles, NodeState
from common.version import __version__
from worker import certsync

if TYPE_CHECKING:
    from worker.taskrunner import TaskRunner

log = logging.getLogger("shoal.agent")


class AgentHost(Protocol):
    """What the agent needs from the daemon that runs it."""

    state: NodeState
    files: NodeFiles
    hostname: str

    def peer_client(self, addr: str) -> ApiClient: ...
    async def on_role_change(self, role: str) -> None: ...
    async def install_certificate(self, cert_pem: bytes, key_pem: bytes) -> None: ...
    async def install_trust(self, bundle_pem: bytes) -> None: ...


def describe_node(hostname: str) -> dict:
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return {"hostname": hostname,
            "platform": {"os": "linux", "architecture": platform.machine()},
            "resources": {"nano_cpus": (os.cpu_count() or 1) * 10**9, "memory_bytes": mem},
            "engine_version": __version__}


@dataclass
class Joined:
    """What a join brings back: the node's identity, its certificate and key, the CA."""

    node_id: str
    cluster_id: str
    role: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    managers: list[str]
    raft: Optional[dict]  # the raft secret and members, for a manager joiner


async def request_join(remote: str, token: str, advertise: str, description: dict) -> Joined:
    """The join handshake (`swarm join`, and the simulated nodes of `shoal sim nodes`): fetch
    the CA without trusting anyone, trust it only if the token pins it, then post a CSR with
    the token over TLS verified against that CA. Nothing is saved here."""
    parsed = tokens.parse_token(token)
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    async with ApiClient(Endpoint(addr=remote, ssl_context=unverified)) as client:
        status, ca_pem = await client.request_raw("GET", "/join/ca", timeout=10)
    if status != 200:
        raise errors.Unavailable(f"{remote} did not hand out its CA (HTTP {status}): "
                                 f"{ca_pem[:200].decode(errors='replace')}")
    if not pki.pinned_ca_matches(ca_pem, parsed.ca_digest):
        raise errors.Unauthorized(
            f"the manager at {remote} presented a CA that does not match the join token: the "
            "token is for another swarm, or its root CA was rotated since ('shoal swarm ca "
            "--rotate': get a current token with 'shoal swarm join-token'), or someone is in "
            "the middle; check both")
    key = pki.generate_key()
    csr = pki.make_csr(key, "joining")
    async with ApiClient(Endpoint(addr=remote, ssl_context=pki.client_ssl_context(ca_pem))) as client:
        answer = await client.request("POST", "/join", {
            "token": token, "csr": csr.decode(), "advertise_addr": advertise,
            "description": description}, timeout=30)
    cert = answer["cert"].encode()
    pki.verify_issued_by(cert, ca_pem)
    return Joined(node_id=answer["node_id"], cluster_id=answer["cluster_id"], role=answer["role"],
                  cert_pem=cert, key_pem=key, ca_pem=ca_pem,
                  managers=sorted(answer.get("managers") or [remote]), raft=answer.get("raft"))


def stream_wait(period: float) -> float:
    """How long the assignment stream's request may wait for news: 20 s, or two heartbeat
    periods in a swarm large enough to be given long ones (the managers hold it at most 120 s)."""
    return min(max(20.0, 2 * period), 120.0)


def next_heartbeat_in(period: float) -> float:
    """A little early, at random: agents that (re)connected together drift apart rather than
    reach the leader in one wave each period; never late, so never near the grace."""
    return period * random.uniform(0.9, 1.0)


class Agent:
    def __init__(self, host: AgentHost, runner: Optional["TaskRunner"] = None,
                 description: Optional[dict] = None) -> None:
        self.host = host
        self.runner = runner
        self.leader: Optional[str] = None
        self.period = 1.0
        self.connected = asyncio.Event()
        # A simulated node (worker/sim) describes itself as one.
        self._description = description or describe_node(host.hostname)
        self._sent_description = False
        self._state_unsaved = False  # the manager list could not be saved (a full disk)
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="agent")]
        if self.runner is not None:
            self._tasks.append(asyncio.create_task(self._assignments(), name="assignments"))

    async def stop(self) -> None:
        await cancel_and_wait(getattr(self, "_tasks", []))
        self._tasks = []
        if self.runner is not None:
            await self.runner.stop()

    async def _assignments(self) -> None:
        """Follow this node's assignments; tasks keep running while no manager answers."""
        await self.runner.start()
        since, net_digest = 0, ""
        while True:
            addr = self.leader or (self._candidates() or [self.host.state.api_addr])[0]
            try:
                wait = stream_wait(self.period)
                answer = await self.host.peer_client(addr).request(
                    "POST", "/dispatcher/assignments",
                    {"since": since, "wait": wait, "net_digest": net_digest}, timeout=wait + 10)
            except errors.ShoalError as exc:
                log.debug("assignments from %s: %s", addr, exc.message)
                await asyncio.sleep(0.5)
                continue
            # Networks first: the tasks of this answer attach to them.
            if "network" in answer:
                try:
                    await self.runner.apply_network_state(answer["network"])
                    net_digest = answer.get("net_digest", "")
                except errors.ShoalError as exc:
                    log.warning("%s; asking again", exc.message)
                    net_digest = ""
                    await asyncio.sleep(1.0)
            try:
                await self.runner.apply(answer)
            except Exception:  # e.g. a root filesystem busy at removal: the same answer comes
                # again from `since`, and what was left undone is done then, not given up.
                log.exception("applying the assignments failed; asking again")
                await asyncio.sleep(1.0)
                continue
            since = answer["index"]

    async def send_reports(self, updates: list[dict]) -> None:
        await self._request_leader("POST", "/dispatcher/status", {"updates": updates})

    async def request_managers(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        """One dispatcher call as this node (its certificate), to the leader or any manager."""
        return await self._request_leader(method, path, body)

    def _candidates(self) -> list[str]:
        known = list(self.host.state.managers)
        if self.leader and self.leader in known:
            known.remove(self.leader)
        return ([self.leader] if self.leader else []) + known

    async def _run(self) -> None:
        failures = 0
        while True:
            candidates = self._candidates() or [self.host.state.api_addr]
            addr = candidates[failures % len(candidates)]
            try:
                answer = await self._heartbeat(addr)
            except (errors.NotFound, errors.PermissionDenied) as exc:
                # Removed from the swarm (`node rm`): say so, and keep asking slowly.
                log.warning("%s", exc.message)
                self.connected.clear()
                await asyncio.sleep(5)
                continue
            except errors.ShoalError as exc:
                failures += 1
                if self.connected.is_set():
                    log.warning("lost the session with %s: %s", addr, exc.message)
                self.connected.clear()
                self.leader = None
                await asyncio.sleep(min(0.2 * failures, 1.0))
                continue
            failures = 0
            self.connected.set()
            await self._follow(answer)
            await asyncio.sleep(next_heartbeat_in(self.period))

    async def _heartbeat(self, addr: str) -> dict:
        body: dict = {"addr": self.host.state.advertise_addr}
        raft_dir = self.host.files.raft_dir
        if self.host.state.role == NODE_ROLE_MANAGER and raft_dir.is_dir():
            # The leader refuses changes while a manager's raft log is short of disk.
            body["raft_disk"] = {"free": free_bytes(raft_dir), "path": str(raft_dir)}
        if not self._sent_description:
            body["description"] = self._description
        try:
            body["tls"] = certsync.report(self.host.files)
        except (OSError, ValueError) as exc:  # certsync.sync says why after the heartbeat
            log.debug("no certificate report with this heartbeat: %s", exc)
        # A short timeout: a dead manager must not delay the move to another one.
        answer = await self.host.peer_client(addr).request(
            "POST", "/dispatcher/heartbeat", body, timeout=min(max(2.0, self.period), 10.0))
        self._sent_description = True
        return answer

    async def _follow(self, answer: dict) -> None:
        self.period = float(answer.get("period") or 5.0)
        self.leader = answer.get("leader") or None
        managers = sorted(answer.get("managers") or [])
        state = self.host.state
        if managers and (self._state_unsaved or managers != sorted(state.managers)):
            state.managers = managers
            self._state_unsaved = not self.host.files.try_save_state(state)
        role = answer.get("role")
        if role and role != state.role:
            log.info("the swarm changed this node's role: %s -> %s", state.role, role)
            try:
                await self.host.on_role_change(role)
            except errors.ShoalError as exc:
                log.warning("role change to %s not done yet: %s", role, exc.message)
            except OSError as exc:  # e.g. a full disk: the next heartbeat tries again
                log.warning("role change to %s not done yet: %s", role, exc)
            return
        try:
            tls = answer.get("tls")
            await certsync.sync(self, tls if isinstance(tls, dict) else None)
        except errors.ShoalError as exc:  # the next heartbeat tries again
            log.warning("certificate upkeep not done yet: %s", exc.message)
        except (OSError, ValueError) as exc:
            log.warning("certificate upkeep not done yet: %s", exc)

    async def renew_certificate(self) -> None:
        key = pki.generate_key()
        csr = pki.make_csr(key, self.host.state.node_id)
        answer = await self._request_leader("POST", "/certificates/renew", {"csr": csr.decode()})
        await self.host.install_certificate(answer["cert"].encode(), key)
        log.info("node certificate renewed (role %s)", answer.get("role"))

    async def _request_leader(self, method: str, path: str, body: Optional[dict]) -> dict:
        last: Exception | None = None
        for addr in self._candidates() or [self.host.state.api_addr]:
            try:
                return await self.host.peer_client(addr).request(method, path, body, timeout=15)
            except errors.Unavailable as exc:
                last = exc
        raise last or errors.Unavailable("no manager known")


