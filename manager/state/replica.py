"""What a leader loop may touch of the replicated state: the store, its change events, and
proposals. Each loop is built from a `Replica` and what else its constructor names, never from
the whole manager, so it can be run (and tested) on a store with a fake replica around it."""
from __future__ import annotations

import asyncio
from typing import Callable, Optional, Protocol

from common.model import Cluster
from manager.state.store import Event, Store, Transaction, TxnResult


class Replica(Protocol):
    store: Store

    def watch(self, accept: Optional[Callable[[Event], bool]] = None) -> asyncio.Queue: ...

    def unwatch(self, queue: asyncio.Queue) -> None: ...

    async def propose(self, txn: Transaction, timeout: float = 1.5) -> TxnResult: ...


def current_cluster(store: Store) -> Optional[Cluster]:
    """The swarm's one cluster object (None before `swarm init` replicated it)."""
    clusters = store.list("clusters")
    return clusters[0] if clusters else None
