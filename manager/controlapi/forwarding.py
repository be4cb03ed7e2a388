"""Writes delivered to the leader with a definite answer, across a failover.

Every write gets a request id (`Shoal-Request-Id`; the manager that first receives it makes
one). The leader runs the handler inside `requestids.request_scope`, so the transactions it
proposes are named by that id and the store applies them once, whichever attempt gets there.

The manager holding the client's connection delivers the request (`deliver`): to the leader it
knows, or by running the handler when it is the leader. When an attempt may have reached a
leader and no answer came back (the connection closed or timed out, the leader's commit timed
out or its leader changed), the outcome is unknown; the manager waits for a leader (the same or
a new one) and sends the request again with the same id and `Shoal-Retry`. A leader that gets a
retry first commits a barrier (after it, everything an earlier leader committed is applied on
this one) and then looks the id up: applied, it answers from what was applied (`replay`) and
does not run the handler again; not applied, it never will be (a leader of a later term has
committed past it), so it runs the handler. A leader that still runs the first attempt makes
the retry wait for that attempt's answer.

Only when no leader answers before the deadline, or this manager cannot reach a majority of
managers (so no leader can appear: fail fast), is the answer "the outcome is unknown"
(OutcomeUnknown: 504, code unknown_outcome). A plain refusal (503) is given only when no
attempt could have reached a leader.

A forwarded request (it carries a request id already) gets one attempt on the manager that
receives it: the retries are the forwarder's, so waits do not pile up hop after hop.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import weakref
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Awaitable, Callable, Optional, TypeVar

from aiohttp import web

from common import errors
from common.httpclient import ConnectionLost
from manager.state import requestids
from manager.state.store import TxnResult

log = logging.getLogger("shoal.forwarding")

REQUEST_ID_HEADER = "Shoal-Request-Id"
RETRY_HEADER = "Shoal-Retry"
WARNING_HEADER = "Shoal-Warning"
# In the body of a NoLeader answer: the request was not applied and may go to the next leader.
NO_LEADER_FLAG = "no_leader"

# How long a write may wait for a leader (a failover takes ~1 s: election timeouts 0.25-0.5 s).
DELIVER_DEADLINE = 10.0
# A healthy cluster has a new leader this long after it last heard the old one.
ELECTION_GRACE = 1.5
# Between two attempts: the raft state the next one reads moves on its own thread.
RETRY_PAUSE = 0.1
# How long a forward may wait for the leader's answer.
FORWARD_TIMEOUT = 30.0

T = TypeVar("T")

_STORE_ERRORS = {"conflict": errors.Conflict, "not_found": errors.NotFound,
                 "exists": errors.Conflict, "invalid": errors.InvalidArgument}


@dataclass
class Answer:
    """An HTTP answer as bytes, so that a second request for the same id can get it too."""
    status: int
    body: bytes
    content_type: str = "application/json"
    # The handler's own response, for the request that ran it (a stream cannot be copied).
    original: Optional[web.StreamResponse] = field(default=None, compare=False)

    def response(self) -> web.StreamResponse:
        if self.original is not None:
            return self.original
        return web.Response(status=self.status, body=self.body, content_type=self.content_type)

    @classmethod
    def of(cls, response: web.StreamResponse) -> "Answer":
        body = response.body if isinstance(response, web.Response) else None
        if not isinstance(body, bytes) or response.prepared:
            return cls(response.status, b"", original=response)
        return cls(response.status, body, response.content_type or "application/json",
                   original=response)

    def _parsed(self) -> dict:
        try:
            parsed = json.loads(self.body) if self.body else None
        except ValueError:
            return {"message": self.body.decode("utf-8", "replace")}
        return parsed if isinstance(parsed, dict) else {}

    def message(self) -> str:
        return str(self._parsed().get("message", ""))

    @property
    def unknown_outcome(self) -> bool:
        return (self.status == errors.OutcomeUnknown.status
                and self._parsed().get("code") == errors.OutcomeUnknown.code)

    @property
    def leadership_lost(self) -> bool:
        """A 503 from a manager that no longer led (NoLeader): nothing applied, try again."""
        return self.status == NoLeader.status and self._parsed().get(NO_LEADER_FLAG) is True


def no_leader_body(exc: "NoLeader") -> bytes:
    return json.dumps({**exc.to_dict(), NO_LEADER_FLAG: True}).encode()


def new_request_id() -> str:
    return uuid.uuid4().hex


# ---- which leader ----------------------------------------------------------------------------
def leader_to_forward_to(ctx, manager) -> str | None:
    """None when this manager is the leader; else the leader's API address, once it is known
    and connected (Unavailable otherwise)."""
    if manager.is_leader:
        return None
    leader = manager.leader_api_addr()
    if leader is None or leader == ctx.state.api_addr:
        raise errors.Unavailable(manager.no_leader_reason())
    if not manager.leader_connected():
        raise errors.Unavailable(manager.leader_unreachable_reason())
    return leader


def could_elect(manager) -> bool:
    """Whether a leader can appear: this manager's raft reaches a majority (itself included),
    or heard from a leader so recently that its links may still be settling (a link idle for
    long is dropped at its next use and made again). A manager cut off from the others loses
    those connections within raft's connection timeout (1.5 s); after a leader's death the
    followers stay connected to each other and elect one within about a second."""
    raft = manager.raft
    if raft is None:
        return False
    members = raft.members()
    if sum(1 for m in members if m.connected) > len(members) // 2:
        return True
    heard = raft.leader_heard_at
    return heard is not None and time.time() - heard < ELECTION_GRACE


# ---- the forwarder's side --------------------------------------------------------------------
async def send_to_leader(ctx, manager, leader: str, method: str, path_qs: str, raw: bytes,
                         headers: dict[str, str]) -> Answer:
    """One attempt: the leader's answer. ConnectionLost when it may have got the request and
    no answer came (its connection closed or raft lost it), Unavailable when it could not."""
    client = ctx.peer_client(leader)
    # Fail fast when the leader is cut off: a new connection gives up after 1 s; a pooled one to
    # a leader that has just been cut off would wait for the whole timeout, so the attempt also
    # ends once raft loses that leader.
    client.connect_timeout = 1.0
    forward = asyncio.ensure_future(client.request_raw(
        method, path_qs, raw=raw, timeout=FORWARD_TIMEOUT, headers=headers))
    try:
        while not (await asyncio.wait({forward}, timeout=0.25))[0]:
            if manager.is_leader:
                continue  # this leader asked its own API (shoal.dockerapi's retries)
            if not manager.leader_connected() or manager.leader_api_addr() != leader:
                raise ConnectionLost(f"{manager.leader_unreachable_reason()} (lost while "
                                     f"forwarding this request)")
        status, data = forward.result()
        return Answer(status, data)
    finally:
        forward.cancel()  # done: no effect; abandoned: closes its connection


async def deliver(manager, ctx, *, local: Callable[[bool], Awaitable[T]],
                  remote: Callable[[str, bool], Awaitable[T]],
                  answer_of: Callable[[T], Optional[Answer]] = lambda a: None,
                  deadline: float, maybe_applied: bool = False) -> T:
    """Run a write where the leader is until one attempt gives a definite answer.

    `local(maybe_applied)` runs it on this manager as leader, `remote(leader, maybe_applied)`
    sends it to the leader; `maybe_applied` tells either that an earlier attempt may have been
    applied. `answer_of` shows a remote answer's status, to retry a leader's own "unknown" or
    "lost leadership" answer. The handler's own errors pass through. Raises OutcomeUnknown
    when the deadline passes (or no leader can appear) after an attempt that may have been
    applied; NoLeader when none could have been."""
    last: Optional[BaseException] = None
    last_answer: Optional[T] = None
    while True:
        lost = False  # this attempt may have reached a leader and no answer came
        try:
            leader = leader_to_forward_to(ctx, manager)
        except errors.Unavailable as exc:  # no leader, or not connected to it: nothing sent
            last, last_answer = exc, None
        else:
            if leader is None:
                try:
                    return await local(maybe_applied)
                except errors.OutcomeUnknown as exc:
                    lost, last, last_answer = True, exc, None
                except errors.Unavailable as exc:
                    if manager.is_leader:
                        raise  # the handler's own refusal, not about leadership
                    last, last_answer = exc, None  # lost leadership before proposing
            else:
                try:
                    result = await remote(leader, maybe_applied)
                except ConnectionLost as exc:
                    lost, last, last_answer = True, exc, None
                except errors.Unavailable as exc:  # could not connect: not sent
                    last, last_answer = exc, None
                else:
                    answer = answer_of(result)
                    if answer is None or not (answer.unknown_outcome or answer.leadership_lost):
                        return result
                    lost = answer.unknown_outcome
                    last, last_answer = errors.Unavailable(answer.message()), result
        maybe_applied = maybe_applied or lost
        if time.monotonic() >= deadline or not could_elect(manager):
            break
        if lost:
            log.info("a write's leader was lost mid-request (%s): sending it again with its "
                     "request id", _reason(last))
        await asyncio.sleep(RETRY_PAUSE)
    if maybe_applied:
        raise errors.OutcomeUnknown(
            f"the change may or may not have been applied: the leader was lost while the "
            f"request was under way and no leader confirmed it in time ({_reason(last)}); "
            f"check whether it is there before sending it again")
    if last_answer is not None:
        return last_answer
    raise NoLeader(_reason(last) + "; the change was not made")


class NoLeader(errors.Unavailable):
    """No leader took the request: it was not applied (a forwarder may try again)."""


def _reason(exc: Optional[BaseException]) -> str:
    if isinstance(exc, errors.ShoalError):
        return exc.message.removesuffix("; the change may or may not have been applied")
    return str(exc) if exc is not None else "no leader"


# ---- the leader's side -----------------------------------------------------------------------
# Requests under way on this leader, by request id: a retry of one waits for its answer.
_IN_FLIGHT: "weakref.WeakKeyDictionary[object, dict[str, asyncio.Future]]" = \
    weakref.WeakKeyDictionary()


async def serve_on_leader(manager, request_id: str, maybe_applied: bool,
                          run: Callable[[], Awaitable[T]],
                          replay: Callable[[TxnResult], Awaitable[T]]) -> T:
    """`run()` (the handler) with its transactions named by `request_id`, applied once.

    On a retry (`maybe_applied`), an attempt that was applied is answered by `replay(result)`
    and the handler does not run again."""
    flights = _IN_FLIGHT.setdefault(manager, {})
    pending = flights.get(request_id)
    if pending is not None:
        answer = await asyncio.shield(pending)
        # The first request sends the handler's response; this one a copy of its bytes.
        return replace(answer, original=None) if isinstance(answer, Answer) else answer
    mine: asyncio.Future = asyncio.get_running_loop().create_future()
    flights[request_id] = mine
    try:
        answer = await _serve(manager, request_id, maybe_applied, run, replay)
    except BaseException as exc:
        mine.set_exception(exc)
        mine.exception()  # retrieved: no warning when no retry waited for it
        raise
    else:
        mine.set_result(answer)
        return answer
    finally:
        if flights.get(request_id) is mine:
            del flights[request_id]


async def _serve(manager, request_id: str, maybe_applied: bool, run, replay):
    with requestids.request_scope(request_id) as scope:
        if maybe_applied:
            # Once this barrier is applied, so is everything committed before it, whoever led.
            await manager.raft.barrier()
            done = manager.store.outcome(request_id)
            if done is not None:
                return await replay(done)
        try:
            return await run()
        except requestids.Replayed as exc:
            return await replay(exc.result)
        except errors.OutcomeUnknown:
            raise
        except errors.Unavailable as exc:
            if scope.proposed and not manager.is_leader:
                # Leadership went between two of the handler's commits: the first may stand.
                raise errors.OutcomeUnknown(exc.message) from None
            raise


def refusal_of(result: TxnResult) -> errors.ShoalError:
    """An attempt applied as a refusal (the store's checks failed): the same refusal again."""
    return _STORE_ERRORS.get(result.code, errors.ShoalError)(result.message)


# ---- reads while no leader -------------------------------------------------------------------
def stale_warning(manager) -> Optional[str]:
    """Why a read from this manager's replica may be out of date, or None when it follows (or
    is) a leader with a quorum."""
    raft = manager.raft
    if raft is None:
        return None
    members = raft.members()
    up = sum(1 for m in members if m.connected)
    reach = f"it reaches {up} of {len(members)} managers"
    if manager.is_leader:
        if raft.has_quorum:
            return None
        return f"stale: this manager leads without a quorum ({reach}); data may be out of date"
    if raft.leader_addr is not None and manager.leader_connected():
        return None
    heard = raft.leader_heard_at
    since = (datetime.fromtimestamp(heard, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
             if heard else "its start")
    return f"stale: this manager has no leader since {since}; data may be out of date ({reach})"
