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


STARVED_REPORT_EVERY = 60.0


class AllocatorLoop:
    def __init__(self, replica: Replica, allocator: Allocator) -> None:
        self.m = replica
        self.allocator = allocator
        self._starved_reported: tuple[int, float] = (0, 0.0)  # nodes without an address, when said

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
        starved: list[str] = []
        for node in store.list("nodes"):
            att = node.ingress_attachment
            if ingress is not None and (att is None or att.network_id != ingress.id):
                # A full ingress: the nodes past it go without an address (and without the
                # routing mesh) while the others keep theirs; the loop goes on with its other work.
                if starved or not alloc.has_free_address(ingress.id):
                    starved.append(node.description.hostname or node.id)
                    continue
                node = codec.clone(node)
                try:
                    alloc.allocate_node(node, ingress)
                except errors.ResourceExhausted:
                    starved.append(node.description.hostname or node.id)
                    continue
            elif ingress is None and att is not None:
                node = codec.clone(node)
                node.ingress_attachment = None
            else:
                continue
            node.meta.updated_at = time.time()
            txn.update("nodes", node)
            touched.append(node)
        self._report_starved(ingress, starved)
        if not txn.ops:
            return
        try:
            await self.m.propose(txn, timeout=5)
        except BaseException:
            for node in touched:
                alloc.release_node(node)
            raise

    def _report_starved(self, ingress, starved: list[str]) -> None:
        """Say so when nodes have no ingress address: once, then at most once a minute while
        their number changes."""
        now = time.monotonic()
        if not starved:
            self._starved_reported = (0, 0.0)
            return
        count, at = self._starved_reported
        if count == len(starved) or (count and now - at < STARVED_REPORT_EVERY):
            return
        self._starved_reported = (len(starved), now)
        log.warning(
            "network %s (%s) has no free address for %d node(s) (%s): the routing mesh does not "
            "reach them; give it a larger subnet: with no service publishing a port, 'shoal "
            "network rm %s' then 'shoal network create --driver overlay --ingress --subnet "
            "10.0.0.0/16 %s'", ingress.spec.name, ingress.subnet, len(starved),
            ", ".join(starved[:3]) + (", ..." if len(starved) > 3 else ""), ingress.spec.name,
            ingress.spec.name)
