"""Issue 18: definite answers across a failover (manager/controlapi/forwarding.py).

Raft and the store are real (pysyncobj on loopback). The retry policy of `deliver` is driven by
`ScriptedLeadership`, a fake of what a manager knows about its leader: the sequences it needs
(a leader lost mid-request, then a new one; a manager cut off) cannot be produced on demand
with real raft in a unit test; integration/test_failover_answers.py runs them for real.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from common import errors
from common.httpclient import ConnectionLost
from common.httpserver import CTX, error_middleware
from common.model import Config, ConfigSpec, Secret, SecretSpec
from manager.controlapi import data_objects, forwarding
from manager.controlapi.middleware import forward_middleware
from manager.state import requestids
from manager.state.raft.node import RaftNode
from manager.state.store import Store, Transaction
from test_raft import free_ports, wait_for
from tests.dockerapi_harness import DockerTestManager, FakeDaemon, run as run_docker


def secret_txn(obj_id: str, name: str, txn_id: str) -> Transaction:
    txn = Transaction(id=txn_id)
    return txn.create("secrets", Secret(id=obj_id, spec=SecretSpec(name=name, data=b"x")))


# ---- the store's dedup by transaction id, for real ---------------------------------------------
def test_store_keeps_its_dedup_record_through_a_snapshot():
    store = Store()
    first = store.apply(secret_txn("a", "one", "req-1").encode())
    assert first["ok"]
    again = Store()
    again.restore(store.snapshot())
    # The same id with another object: the first result, nothing created.
    assert again.apply(secret_txn("b", "one", "req-1").encode()) == first
    assert again.get("secrets", "b") is None and again.outcome("req-1").index == first["index"]
    assert again.outcome("never") is None


def test_a_transaction_id_applies_once_across_leaders_and_after_a_snapshot(tmp_path):
    async def scenario():
        addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]

        def start(i):
            return RaftNode(Store(), addrs[i], addrs, tmp_path / str(i), b"k" * 32)
        nodes = [start(i) for i in range(3)]
        try:
            await wait_for(lambda: any(n.is_leader for n in nodes))
            leader = next(n for n in nodes if n.is_leader)
            first = await leader.commit(secret_txn("a", "s", "req-1"))
            assert first.ok
            await wait_for(lambda: all(n.store.get("secrets", "a") for n in nodes))
            leader.close()
            rest = [n for n in nodes if n is not leader]
            await wait_for(lambda: any(n.is_leader for n in rest), 5)
            new_leader = next(n for n in rest if n.is_leader)
            # The retry of the same request on the new leader: the first result, no second secret.
            again = await new_leader.commit(secret_txn("b", "s", "req-1"))
            assert again == first
            # A snapshot, then a member restarted from it: the record is still there.
            for n in rest:
                n.compact()
            follower = next(n for n in rest if n is not new_leader)
            await asyncio.sleep(0.5)  # pysyncobj writes the snapshot on its thread
            i = nodes.index(follower)
            follower.close()
            nodes[i] = start(i)
            await wait_for(lambda: nodes[i].store.get("secrets", "a") is not None)
            assert nodes[i].store.outcome("req-1").index == first.index
            assert (await new_leader.commit(secret_txn("c", "s", "req-1"))) == first
            await asyncio.sleep(0.3)
            for n in (new_leader, nodes[i]):
                assert {s.id for s in n.store.list("secrets")} == {"a"}
        finally:
            for n in nodes:
                n.close()
    asyncio.run(scenario())


# ---- transaction ids from a request ------------------------------------------------------------
def test_a_request_names_its_transactions_but_not_its_barriers():
    with requestids.request_scope("r1"):
        a, b, barrier = secret_txn("a", "a", "x"), secret_txn("b", "b", "y"), Transaction()
        for txn in (a, barrier, b):
            requestids.assign(txn)
    assert (a.id, b.id) == ("r1", "r1.2") and barrier.id not in ("r1", "r1.2")
    outside = secret_txn("c", "c", "z")
    requestids.assign(outside)
    assert outside.id == "z"


# ---- the leader's side on a real one-member raft -----------------------------------------------
class NoDiskLimit:
    """The disk guard's place (manager/diskguard.py): these tests never fill a disk."""

    def check(self) -> None:
        pass


class RaftBacked:
    """The part of manager.manager.Manager the control API's secrets and forwarding use, on a real
    one-member raft: propose is Manager.propose's code."""

    def __init__(self, raft: RaftNode) -> None:
        self.raft = raft
        self.store = raft.store
        self.disk_guard = NoDiskLimit()

    @property
    def is_leader(self) -> bool:
        return self.raft.is_leader

    async def propose(self, txn, timeout=1.5):
        result = await self.raft.commit(txn, timeout)
        if not result.ok:
            raise forwarding.refusal_of(result)
        return result


@dataclass
class Ctx:
    manager: object
    state: object = None


@pytest.fixture
def one_member(tmp_path):
    """A RaftBacked manager on a one-member raft, and a runner for coroutines on its loop."""
    loop = asyncio.new_event_loop()

    async def start():
        (port,) = free_ports(1)
        raft = RaftNode(Store(), f"127.0.0.1:{port}", [], tmp_path / "raft", b"k" * 32)
        await wait_for(lambda: raft.is_leader)
        return RaftBacked(raft)
    manager = loop.run_until_complete(start())
    try:
        yield manager, loop.run_until_complete
    finally:
        manager.raft.close()
        loop.close()


def create_secret(manager, name: str, calls: list):
    async def run():
        calls.append(name)
        obj = await data_objects.create_object(
            data_objects.SECRETS, manager,
            {"name": name, "data": base64.b64encode(b"v").decode()})
        return {"id": obj.id}
    return run


async def replayed(result):
    return {"replayed": result.index}


def test_a_retry_of_an_applied_request_is_answered_from_the_store(one_member):
    manager, run = one_member
    calls: list = []
    first = run(forwarding.serve_on_leader(manager, "req-a", False,
                                           create_secret(manager, "s1", calls), replayed))
    # The retry (the forwarder lost the answer): the handler does not run again, which would
    # have said "already exists".
    retry = run(forwarding.serve_on_leader(manager, "req-a", True,
                                           create_secret(manager, "s1", calls), replayed))
    version = manager.store.get("secrets", first["id"]).meta.version
    assert calls == ["s1"] and retry == {"replayed": version}
    # A retry of a request that never reached the store runs it (after the barrier).
    fresh = run(forwarding.serve_on_leader(manager, "req-b", True,
                                           create_secret(manager, "s2", calls), replayed))
    assert calls == ["s1", "s2"] and manager.store.get("secrets", fresh["id"]) is not None


def test_an_attempt_that_lost_the_race_answers_with_the_applied_one(one_member):
    """Two attempts of one request both ran their handler (one still in pysyncobj's queue on a
    deposed leader): the store applies the first; the second learns it at commit."""
    manager, run = one_member
    store = manager.store

    async def both():
        with requestids.request_scope("req-c"):
            await manager.propose(secret_txn("first", "dup", "ignored"))
        with requestids.request_scope("req-c"):
            with pytest.raises(requestids.Replayed) as caught:
                await manager.propose(secret_txn("second", "dup-2", "ignored"))
        return caught.value.result
    result = run(both())
    assert result.ok and store.get("secrets", "first") and store.get("secrets", "second") is None


def test_a_retry_waits_for_the_attempt_still_running_on_the_leader(one_member):
    manager, run = one_member
    calls: list = []
    gate = asyncio.Event()

    def slow():
        inner = create_secret(manager, "slow", calls)

        async def go():
            await gate.wait()
            return await inner()
        return go

    async def both():
        first = asyncio.ensure_future(forwarding.serve_on_leader(
            manager, "req-d", False, slow(), replayed))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(forwarding.serve_on_leader(
            manager, "req-d", True, slow(), replayed))
        await asyncio.sleep(0.05)
        gate.set()
        return await first, await second
    a, b = run(both())
    assert a == b and calls == ["slow"]


def test_the_control_api_answers_a_retried_create_and_update_as_done(one_member):
    """Through forward_middleware as shoald mounts it: the retry of an applied create gets the
    created id (not "already exists"), the retry of an applied update gets the object."""
    manager, run = one_member

    async def scenario():
        app = web.Application(middlewares=[error_middleware, forward_middleware])
        app[CTX] = Ctx(manager)
        app.add_routes(data_objects.routes())
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            body = {"name": "web-key", "data": base64.b64encode(b"v").decode()}
            hdrs = {forwarding.REQUEST_ID_HEADER: "req-e"}
            r1 = await client.post("/secrets/create", json=body, headers=hdrs)
            made = await r1.json()
            assert r1.status == 201, made
            r2 = await client.post("/secrets/create", json=body,
                                   headers={**hdrs, forwarding.RETRY_HEADER: "1"})
            assert r2.status == 201 and (await r2.json()) == {
                "id": made["id"], "replayed": True,
                "index": manager.store.get("secrets", made["id"]).meta.version}
            # The same create as a new request is a refusal, as before.
            r3 = await client.post("/secrets/create", json=body,
                                   headers={forwarding.REQUEST_ID_HEADER: "req-f"})
            assert r3.status == 409
            version = manager.store.get("secrets", made["id"]).meta.version
            update = {"name": "web-key", "labels": {"a": "b"}}
            hdrs = {forwarding.REQUEST_ID_HEADER: "req-g"}
            path = f"/secrets/{made['id']}/update?version={version}"
            u1 = await client.post(path, json=update, headers=hdrs)
            assert u1.status == 200, await u1.text()
            u2 = await client.post(path, json=update,
                                   headers={**hdrs, forwarding.RETRY_HEADER: "1"})
            view = await u2.json()
            assert u2.status == 200 and view["replayed"] is True, view
            assert view["spec"]["labels"] == {"a": "b"}
            # Reads from a manager with a leader carry no warning.
            read = await client.get("/secrets")
            assert forwarding.WARNING_HEADER not in read.headers
        finally:
            await client.close()
    run(scenario())


# ---- the forwarder's retry policy --------------------------------------------------------------
@dataclass
class Member:
    addr: str
    connected: bool


@dataclass
class ScriptedRaft:
    members_up: int = 3
    size: int = 3
    has_quorum: bool = True
    leader_addr: str | None = "r1"
    leader_heard_at: float | None = None

    def members(self):
        return [Member(f"r{i}", i < self.members_up) for i in range(self.size)]


@dataclass
class ScriptedLeadership:
    """A fake of a manager's view of its leader, moved by the test between attempts."""
    leader: str | None = "m1:2377"
    connected: bool = True
    leading: bool = False
    raft: ScriptedRaft = field(default_factory=ScriptedRaft)

    @property
    def is_leader(self) -> bool:
        return self.leading

    def leader_api_addr(self):
        return self.leader

    def leader_connected(self) -> bool:
        return self.connected

    def no_leader_reason(self) -> str:
        return "no quorum: no leader is elected"

    def leader_unreachable_reason(self) -> str:
        return "the leader is unreachable from this manager"


@dataclass
class State:
    api_addr: str = "m0:2377"


def drive(manager, remote, local=None, deadline=1.0, maybe_applied=False):
    async def no_local(maybe):
        raise AssertionError("not the leader")
    return asyncio.run(forwarding.deliver(
        manager, Ctx(manager, State()), local=local or no_local, remote=remote,
        answer_of=lambda a: a if isinstance(a, forwarding.Answer) else None,
        deadline=time.monotonic() + deadline, maybe_applied=maybe_applied))


def ok(body: dict, status: int = 200) -> forwarding.Answer:
    return forwarding.Answer(status, json.dumps(body).encode())


def test_a_write_cut_by_a_failover_goes_to_the_new_leader_marked_as_a_retry():
    manager = ScriptedLeadership()
    sent = []

    async def remote(leader, maybe_applied):
        sent.append((leader, maybe_applied))
        if len(sent) == 1:
            manager.leader = "m2:2377"  # the old one died with the request
            raise ConnectionLost("m1:2377 closed the connection")
        return ok({"id": "x"}, 201)
    answer = drive(manager, remote)
    assert answer.status == 201 and sent == [("m1:2377", False), ("m2:2377", True)]


def test_no_leader_in_time_after_a_lost_attempt_is_an_unknown_outcome_not_a_refusal():
    manager = ScriptedLeadership()

    async def remote(leader, maybe_applied):
        manager.leader = None
        raise ConnectionLost("m1:2377 closed the connection")
    t0 = time.monotonic()
    with pytest.raises(errors.OutcomeUnknown, match="may or may not have been applied"):
        drive(manager, remote, deadline=0.5)
    assert time.monotonic() - t0 >= 0.5  # it waited for a leader until the deadline


def test_a_manager_cut_off_answers_at_once():
    # Lost mid-request, and this manager reaches 1 of 3: no leader can appear, no wait.
    manager = ScriptedLeadership()

    async def remote(leader, maybe_applied):
        manager.connected, manager.raft.members_up = False, 1
        raise ConnectionLost("lost while forwarding")
    t0 = time.monotonic()
    with pytest.raises(errors.OutcomeUnknown):
        drive(manager, remote, deadline=5.0)
    # not a wait for a leader: that would take the whole 5 s deadline (a loaded machine may
    # still take a moment, hence half of it)
    assert time.monotonic() - t0 < 2.5
    # Nothing was sent (no leader known): a refusal, at once.
    manager = ScriptedLeadership(leader=None, raft=ScriptedRaft(members_up=1))
    t0 = time.monotonic()
    with pytest.raises(forwarding.NoLeader, match="not made"):
        drive(manager, remote, deadline=5.0)
    # not a wait for a leader: that would take the whole 5 s deadline (a loaded machine may
    # still take a moment, hence half of it)
    assert time.monotonic() - t0 < 2.5


def test_a_leaders_unknown_or_lost_leadership_answer_is_retried():
    manager = ScriptedLeadership()
    answers = [forwarding.Answer(504, json.dumps({"message": "commit timed out", "code":
                                                  "unknown_outcome"}).encode()),
               forwarding.Answer(503, forwarding.no_leader_body(forwarding.NoLeader("deposed"))),
               ok({"id": "y"}, 201)]
    flags = []

    async def remote(leader, maybe_applied):
        flags.append(maybe_applied)
        return answers[len(flags) - 1]
    assert drive(manager, remote).status == 201 and flags == [False, True, True]


def test_the_handlers_own_refusals_are_final():
    manager = ScriptedLeadership(leading=True)
    calls = []

    async def local(maybe_applied):
        calls.append(maybe_applied)
        raise errors.Unavailable("the worker holding that container is unreachable")
    with pytest.raises(errors.Unavailable, match="worker"):
        drive(manager, lambda *a: None, local=local)
    assert calls == [False]

    async def conflict(maybe_applied):
        raise errors.Conflict("secret 's' already exists")
    with pytest.raises(errors.Conflict):
        drive(manager, lambda *a: None, local=conflict)
    # A 409 from the leader is returned as is, not retried.
    manager = ScriptedLeadership()

    async def remote(leader, maybe_applied):
        return forwarding.Answer(409, b'{"message": "exists", "code": "conflict"}')
    assert drive(manager, remote).status == 409


def test_a_leader_deposed_before_it_proposed_sends_the_write_on():
    manager = ScriptedLeadership(leading=True)

    async def local(maybe_applied):
        manager.leading, manager.leader = False, "m2:2377"
        raise errors.Unavailable("no quorum")

    async def remote(leader, maybe_applied):
        return ok({"leader": leader, "retry": maybe_applied})
    answer = drive(manager, remote, local=local)
    assert json.loads(answer.body) == {"leader": "m2:2377", "retry": False}


def test_reads_without_a_leader_say_they_may_be_stale():
    heard = time.time() - 30
    manager = ScriptedLeadership(leader=None, connected=False,
                                 raft=ScriptedRaft(members_up=1, leader_addr=None,
                                                   leader_heard_at=heard))
    warning = forwarding.stale_warning(manager)
    assert warning.startswith("stale: this manager has no leader since ")
    assert time.strftime("%Y-%m-%dT%H:%M", time.gmtime(heard)) in warning
    assert "reaches 1 of 3 managers" in warning
    assert forwarding.stale_warning(ScriptedLeadership()) is None
    alone = ScriptedLeadership(leading=True, raft=ScriptedRaft(members_up=1, has_quorum=False))
    assert "without a quorum" in forwarding.stale_warning(alone)


# ---- the CLI's client ----------------------------------------------------------------------------
def _serve_once(path: str, answer: bytes | None) -> threading.Thread:
    """A Unix socket that reads one request, then answers `answer` or closes without one."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        conn.recv(65536)
        if answer is not None:
            conn.sendall(answer)
        conn.close()
        srv.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_the_cli_client_says_unknown_for_a_write_whose_answer_never_came(tmp_path, capsys):
    from common.unixhttp import UnixClient
    path = str(tmp_path / "s.sock")
    # Nothing listening: nothing was sent, a refusal.
    with pytest.raises(errors.Unavailable) as refused:
        UnixClient(path).request("POST", "/secrets/create", {"name": "a"})
    assert not isinstance(refused.value, errors.OutcomeUnknown)
    # Sent, and the daemon went away before answering: unknown for a write...
    t = _serve_once(path, None)
    with pytest.raises(errors.OutcomeUnknown, match="may or may not have been applied"):
        UnixClient(path).request("POST", "/secrets/create", {"name": "a"})
    t.join()
    # ... and a plain failure for a read.
    os.unlink(path)
    t = _serve_once(path, None)
    with pytest.raises(errors.Unavailable) as read:
        UnixClient(path).request("GET", "/secrets")
    assert not isinstance(read.value, errors.OutcomeUnknown)
    t.join()
    # A manager's 504 unknown_outcome, and a stale read's warning on stderr.
    os.unlink(path)
    body = json.dumps({"message": "the change may or may not have been applied: ...",
                       "code": "unknown_outcome"}).encode()
    t = _serve_once(path, b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with pytest.raises(errors.OutcomeUnknown):
        UnixClient(path).request("POST", "/secrets/create", {"name": "a"})
    t.join()
    os.unlink(path)
    t = _serve_once(path, b"HTTP/1.1 200 OK\r\nShoal-Warning: stale: this manager has no leader "
                          b"since 2026-01-01T00:00:00Z\r\nContent-Length: 2\r\n\r\n[]")
    assert UnixClient(path).request("GET", "/secrets") == []
    t.join()
    assert "Warning: stale: this manager has no leader since" in capsys.readouterr().err


# ---- the Docker API's writes (shoal/dockerapi/leader.py) ---------------------------------------
class ScriptedLeaderClient:
    """The leader's control API as a follower reaches it, scripted per attempt: each entry is an
    exception to raise or (status, body) to answer; it records the headers of every attempt."""

    def __init__(self, script: list, on_attempt=None) -> None:
        self.script, self.headers, self.on_attempt = script, [], on_attempt
        self.connect_timeout = None

    async def request_raw(self, method, path_qs, raw=b"", timeout=None, headers=None):
        self.headers.append(dict(headers))
        step = self.script[len(self.headers) - 1]
        if self.on_attempt is not None:
            self.on_attempt(len(self.headers))
        if isinstance(step, BaseException):
            raise step
        status, body = step
        return status, json.dumps(body).encode()


def docker_follower(script, on_attempt=None):
    manager = DockerTestManager()
    manager.is_leader = False
    view = ScriptedLeadership()
    manager.leader_api_addr = view.leader_api_addr
    manager.leader_connected = view.leader_connected
    manager.leader_unreachable_reason = view.leader_unreachable_reason
    manager.no_leader_reason = view.no_leader_reason
    manager.raft = view.raft
    daemon = FakeDaemon(manager)
    client = ScriptedLeaderClient(script, on_attempt)
    daemon.peer_client = lambda addr: client
    return daemon, view, client


def test_a_docker_write_cut_by_a_failover_is_sent_again_and_answered_once():
    def failover(attempt):
        if attempt == 1:
            view.leader = "m2:2377"
        else:  # the follower's replica gets the config the new leader answers with
            daemon.manager.commit(Transaction().create(
                "configs", Config(id="cfg1", spec=ConfigSpec(name="app-conf", data=b"x"))))
    daemon, view, client = docker_follower(
        [ConnectionLost("m1:2377 closed the connection"), (201, {"id": "cfg1", "replayed": True})],
        failover)
    body = {"Name": "app-conf", "Data": base64.b64encode(b"x").decode()}
    [(status, answer)] = run_docker(daemon, ("POST", "/v1.41/configs/create", body))
    assert status == 201 and answer == {"ID": "cfg1"}, answer
    first, second = client.headers
    assert first[forwarding.REQUEST_ID_HEADER] == second[forwarding.REQUEST_ID_HEADER]
    assert forwarding.RETRY_HEADER not in first and second[forwarding.RETRY_HEADER] == "1"


def test_a_docker_write_whose_leader_never_came_back_is_an_unknown_outcome():
    def cut_off(attempt):
        view.connected, view.raft.members_up = False, 1
    daemon, view, client = docker_follower([ConnectionLost("lost while forwarding")], cut_off)
    body = {"Name": "app-conf", "Data": base64.b64encode(b"x").decode()}
    [(status, answer)] = run_docker(daemon, ("POST", "/v1.41/configs/create", body))
    assert status == 504 and answer["message"].startswith(
        "the change may or may not have been applied"), answer
    assert len(client.headers) == 1
