"""Stopping asyncio tasks for sure.

On Python before 3.12, `asyncio.wait_for` can swallow a cancellation that arrives as the awaited
future completes (CPython gh-86296): the cancelled task gets the result instead of
CancelledError and, in a `while True` loop, simply goes on. One `cancel()` then leaves whoever
awaits the task waiting forever; a manager once hung like that while stopping its loops.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Iterable

log = logging.getLogger("shoal.aio")

_RECANCEL_EVERY = 2.0  # long enough for a cancelled task's own cleanup


async def cancel_and_wait(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel `tasks` and wait until every one has ended, cancelling again any that goes on.
    Their exceptions are not raised here: they end with their loop's own logging."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    for t in pending:
        t.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=_RECANCEL_EVERY)
        for t in pending:
            log.warning("task %s went on after cancel(); cancelling it again", t.get_name())
            t.cancel()
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" noise at exit
