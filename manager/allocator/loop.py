"""The allocator's loop (leader only): gives addresses back when their owners go, and keeps one
ingress address per node while an ingress network exists (published ports are forwarded from
it, so every node needs one whether or not it runs a task)."""
from __future__ import annotations

import asyncio
import logging
import time
from common import codec, errors
from manager.allocator.allocator import Allocator, ingress_network
from manager.state.replica import Replica
from manager.state.store import Transaction


log = logging.getLogger("shoal.allocator")


class AllocatorLoop:
    def __init__(self, replica: Replica, allocator: Allocator) -> None:
        self.m = replica
        self.allocator = allocator

    async def run(self) -> None:
        queue = self.m.watch(lambda e: e.table in ("tasks", "services", "nodes", "networks"))
        try:
            await self._node_addresses()
            while True:
                events = await queue.get()
                relevant = False
                for e in events:
                    self.allocator.observe(e)
                    relevant |= e.table in ("nodes", "networks")
                if relevant:
                    await self._node_addresses()
        finally:
            self.m.unwatch(queue)

    async def _node_addresses(self) -> None:
        for attempt in range(5):
            try:
                await self._assign_node_addresses()
                return
            except (errors.Conflict, errors.Unavailable) as exc:
                log.debug("node ingress addresses: %s", exc.message)
                await asyncio.sleep(0.2 * (attempt + 1))

    async def _assign_node_addresses(self) -> None:
        store, alloc = self.m.store, self.allocator
        ingress = ingress_network(store)
        txn = Transaction()
        touched = []
        for node in store.list("nodes"):
            att = node.ingress_attachment
            if ingress is not None and (att is None or att.network_id != ingress.id):
                node = codec.clone(node)
                alloc.allocate_node(node, ingress)
            elif ingress is None and att is not None:
                node = codec.clone(node)
                node.ingress_attachment = None
            else:
                continue
            node.meta.updated_at = time.time()
            txn.update("nodes", node)
            touched.append(node)
        if not txn.ops:
            return
        try:
            await self.m.propose(txn, timeout=5)
        except BaseException:
            for node in touched:
                alloc.release_node(node)
            raise
