"""Store events on the event loop: each watcher gets an asyncio queue of event batches.

The store calls its listeners on the raft thread; this is the hop onto the loop.
"""
from __future__ import annotations

import asyncio
from typing import Callable, Optional

from manager.state.store import Event, Store


class WatchHub:
    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queues: list[tuple[asyncio.Queue, Optional[Callable[[Event], bool]]]] = []
        self._unsubscribe = store.subscribe(self._from_raft_thread)

    def _from_raft_thread(self, events: list[Event]) -> None:
        self._loop.call_soon_threadsafe(self._fan_out, events)

    def _fan_out(self, events: list[Event]) -> None:
        for queue, accept in self._queues:
            chosen = events if accept is None else [e for e in events if accept(e)]
            if chosen:
                queue.put_nowait(chosen)

    def watch(self, accept: Optional[Callable[[Event], bool]] = None) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._queues.append((queue, accept))
        return queue

    def unwatch(self, queue: asyncio.Queue) -> None:
        self._queues = [(q, a) for q, a in self._queues if q is not queue]

    def close(self) -> None:
        self._unsubscribe()
        self._queues.clear()
