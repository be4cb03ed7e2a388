"""Process-wide settings for shoald and `shoal sim nodes`: processes that hold a large store,
thousands of connections, or thousands of agents."""
from __future__ import annotations

import asyncio.sslproto
import gc
import logging
import time

log = logging.getLogger("shoal.gc")

# Python collects its youngest generation every 700 net allocations. A manager holds the whole
# store in memory (millions of objects with 20,000 tasks) and every raft entry it applies
# allocates thousands more: measured, half of applying 20,000 tasks onto a store of 20,000 was
# the collector, on the raft thread, which holds the GIL meanwhile (no heartbeats, no votes).
# With these thresholds the collector's share is halved or better (bench/store_apply_bench.py),
# and the 1,000-node scale preset stopped losing its leader (issue 20). Nothing is kept from
# being collected; collections come less often. A rare full collection still pauses ~0.3 s.
GC_THRESHOLDS = (50_000, 50, 100)


# A collection that stops every thread of the process this long is said in the log: a manager's
# raft thread sends no heartbeat meanwhile, so this is where a lost leadership can come from.
LONG_GC_PAUSE = 0.3


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    if _watch_pauses not in gc.callbacks:
        gc.callbacks.append(_watch_pauses)


_started = 0.0


def _watch_pauses(phase: str, info: dict) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    paused = time.perf_counter() - _started
    if paused >= LONG_GC_PAUSE:
        log.warning("garbage collection (generation %d) paused this process for %.2f s "
                    "(%d objects freed)", info.get("generation", -1), paused,
                    info.get("collected", 0))


# asyncio gives every TLS connection a read buffer of 256 KiB (SSLProtocol.max_size) for its
# whole life. A manager holds two connections per node: with 5,000 nodes that was 2.5 GB of
# buffers, and allocating them was 15 % of a manager's time while agents reconnected (issue
# 20). 32 KiB holds two full TLS records; a larger message takes a few more reads.
TLS_READ_BUFFER = 32 * 1024


def shrink_tls_buffers() -> None:
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER
