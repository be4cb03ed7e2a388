"""The dispatcher: every node's agent heartbeats here (on the leader); nodes go Ready on their
first heartbeat and Down when they miss three periods.

Heartbeat times live in memory only (writing each one through raft would be pure churn). A new
leader knows nobody's last heartbeat, so it gives every node a full grace period before it
judges, as SwarmKit does.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from common import codec
from common.model import NODE_STATE_DOWN, NODE_STATE_READY
from manager.store import Transaction

if TYPE_CHECKING:
    from manager.manager import Manager

log = logging.getLogger("shoal.dispatcher")

GRACE_MULTIPLIER = 3


class Dispatcher:
    def __init__(self, manager: "Manager") -> None:
        self.manager = manager
        self._last_seen: dict[str, float] = {}
        self._started = time.monotonic()

    @property
    def period(self) -> float:
        cluster = self.manager.cluster()
        return cluster.spec.dispatcher.heartbeat_period if cluster else 5.0

    async def heartbeat(self, node_id: str, addr: str, description: dict | None) -> dict:
        self._last_seen[node_id] = time.monotonic()
        store = self.manager.store
        node = store.get("nodes", node_id)
        if node is None:
            from common.errors import NotFound
            raise NotFound(f"node {node_id} is not part of this swarm (it was removed); "
                           f"run 'shoal swarm leave --force' on it and join again")
        changed = False
        if node.status.state != NODE_STATE_READY or node.status.addr != addr:
            node.status.state, node.status.message, node.status.addr = NODE_STATE_READY, "", addr
            changed = True
        if description:
            from common.model import NodeDescription
            desc = codec.from_plain(NodeDescription, description)
            if desc != node.description:
                node.description = desc
                changed = True
        if changed:
            node.meta.updated_at = time.time()
            await self.manager.propose(Transaction().update("nodes", node, check_version=False))
        return {
            "period": self.period,
            "role": node.role,
            "managers": self.manager.manager_api_addrs(),
            "leader": self.manager.leader_api_addr(),
        }

    async def run(self) -> None:
        """Mark nodes Down that missed their heartbeats (leader only)."""
        while True:
            period = self.period
            await asyncio.sleep(min(period / 2, 1.0))
            now = time.monotonic()
            deadline = period * GRACE_MULTIPLIER
            if now - self._started < deadline:
                continue
            for node in self.manager.store.list("nodes"):
                if node.status.state == NODE_STATE_DOWN:
                    continue
                if node.id == self.manager.node_id:
                    continue  # the leader is alive by definition
                seen = self._last_seen.get(node.id, self._started)
                if now - seen > deadline:
                    await self._mark_down(node.id, now - seen)

    async def _mark_down(self, node_id: str, silent_for: float) -> None:
        node = self.manager.store.get("nodes", node_id)
        if node is None or node.status.state == NODE_STATE_DOWN:
            return
        node.status.state = NODE_STATE_DOWN
        node.status.message = f"heartbeat failure: no heartbeat for {silent_for:.1f}s"
        node.meta.updated_at = time.time()
        try:
            await self.manager.propose(Transaction().update("nodes", node))
            log.info("node %s (%s) is down: %s", node.id, node.description.hostname,
                     node.status.message)
        except Exception as exc:  # conflict or lost leadership: the next round decides again
            log.debug("marking %s down failed: %s", node_id, exc)
