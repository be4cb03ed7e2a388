"""Transaction ids that follow a user's request across managers, so a retried write applies once.

A write that reached the leader through a follower (or the leader's own sockets) carries a
request id. While its handler runs, every transaction it proposes takes an id derived from it
(the first the id itself, later ones `id.2`, `id.3`, ...) instead of a fresh random one. When the
leader goes away mid-request, the manager that holds the client's connection sends the same
request, with the same id, to the next leader (manager/controlapi/forwarding.py): the store
applies a transaction id once (Store.apply keeps the recent ids and their results, in its
snapshots too), so whichever attempt reached the log first is the one that counts.

The handler of a retry may have built different objects (fresh ids) than the attempt that was
applied: `check_own` notices when the store answered a create with the result of another
attempt, and raises `Replayed` so the leader answers from what was applied instead.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

from manager.state.store import Store, Transaction, TxnResult


@dataclass
class RequestTxns:
    request_id: str
    proposed: int = 0

    def next_id(self) -> str:
        self.proposed += 1
        return self.request_id if self.proposed == 1 else f"{self.request_id}.{self.proposed}"


class Replayed(Exception):
    """The request's transaction had been applied by an earlier attempt (`result`)."""

    def __init__(self, request_id: str, result: TxnResult) -> None:
        super().__init__(f"request {request_id} was applied earlier (index {result.index})")
        self.request_id = request_id
        self.result = result


_CURRENT: contextvars.ContextVar[Optional[RequestTxns]] = contextvars.ContextVar(
    "shoal_request_txns", default=None)


@contextmanager
def request_scope(request_id: str) -> Iterator[RequestTxns]:
    """Transactions proposed inside (and in tasks started inside) take ids from `request_id`."""
    scope = RequestTxns(request_id)
    token = _CURRENT.set(scope)
    try:
        yield scope
    finally:
        _CURRENT.reset(token)


def assign(txn: Transaction) -> None:
    """Give `txn` the request's next transaction id, when a request is being served. Barriers
    (no ops) keep their own: they change nothing and must not use up the request's id."""
    scope = _CURRENT.get()
    if scope is not None and txn.ops:
        txn.id = scope.next_id()


def check_own(store: Store, txn: Transaction, result: TxnResult) -> None:
    """Raise Replayed when `result` is an earlier attempt's: its creates are not in the store."""
    scope = _CURRENT.get()
    if scope is None or not result.ok or not txn.id.startswith(scope.request_id):
        return
    for op in txn.ops:
        if op.action == "create" and op.obj is not None and store.get(op.table, op.obj.id) is None:
            raise Replayed(scope.request_id, result)
