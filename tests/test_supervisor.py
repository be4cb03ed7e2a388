"""A leader loop that raises is logged, counted and started again, fresh, after a backoff; the
leader keeps scheduling meanwhile (issue 13: "a leader loop that dies must also be restarted,
and loudly")."""
from __future__ import annotations

import asyncio
import logging

from manager.orchestrator.orchestrator import Orchestrator
from manager.state.store import Transaction
from tests.raft_harness import wait
from tests.test_orchestration import service


def test_backoff_doubles_up_to_its_limit_and_starts_over_after_a_healthy_run():
    from manager.supervisor import Backoff
    b = Backoff(first=0.1, limit=10.0, healthy_after=60.0)
    waits, previous = [], None
    for _ in range(10):
        previous = b.next(previous, ran_for=0.5)
        waits.append(previous)
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    assert b.next(10.0, ran_for=60.0) == 0.1


def test_a_loop_that_raises_twice_is_restarted_fresh_and_its_failures_are_recorded(caplog):
    from manager.supervisor import Backoff, LoopFailure, LoopSupervisor

    class RecordingBackoff(Backoff):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.waits: list[float] = []

        def next(self, previous, ran_for):
            self.waits.append(super().next(previous, ran_for))
            return self.waits[-1]

    backoff = RecordingBackoff(first=0.05, limit=10.0)

    class Loop:
        made: list["Loop"] = []

        def __init__(self) -> None:
            Loop.made.append(self)
            self.ran = asyncio.Event()

        async def run(self) -> None:
            if len(Loop.made) <= 2:
                raise RuntimeError(f"bad round {len(Loop.made)}")
            self.ran.set()
            await asyncio.Event().wait()   # a healthy loop runs until cancelled

    async def main():
        failures: dict[str, LoopFailure] = {}
        task = LoopSupervisor("orchestrator", lambda: Loop().run(), failures, backoff=backoff).start()
        assert len(Loop.made) == 1  # the first loop object exists as soon as start returns
        await asyncio.wait_for(_made(Loop, 3), 5)
        await asyncio.wait_for(Loop.made[2].ran.wait(), 5)
        f = failures["orchestrator"]
        assert (f.count, f.last_error, f.restarting) == (2, "RuntimeError: bad round 2", False)
        assert f.last_at > 0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled() and len(Loop.made) == 3  # cancelled means gone, not restarted
    with caplog.at_level(logging.ERROR, logger="shoal.manager"):
        asyncio.run(main())
    assert backoff.waits == [0.05, 0.1]
    logged = [r for r in caplog.records if "leader loop orchestrator failed" in r.getMessage()]
    assert len(logged) == 2 and all(r.exc_info for r in logged)   # with the traceback
    assert "bad round 1" in caplog.text


async def _made(cls, n: int) -> None:
    while len(cls.made) < n:
        await asyncio.sleep(0.01)


def test_a_loop_that_returns_is_restarted_too():
    from manager.supervisor import Backoff, LoopFailure, LoopSupervisor
    async def main():
        failures: dict[str, LoopFailure] = {}
        runs = []

        async def run() -> None:
            runs.append(1)
            if len(runs) > 1:
                await asyncio.Event().wait()
        task = LoopSupervisor("scheduler", run, failures, backoff=Backoff(first=0.01)).start()
        await asyncio.wait_for(_until(lambda: len(runs) == 2), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert failures["scheduler"].count == 1
        assert failures["scheduler"].last_error == "ended by itself"
    asyncio.run(main())


async def _until(check) -> None:
    while not check():
        await asyncio.sleep(0.01)


def test_the_leader_keeps_scheduling_when_its_orchestrator_raises(run, monkeypatch):
    """Issue 13, must show 4: a loop made to raise does not stop a new service getting its tasks."""
    real = Orchestrator.reconcile
    calls = {"n": 0}

    async def flaky(self) -> None:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise TypeError("'<' not supported between instances of 'str' and 'int'")
        await real(self)
    monkeypatch.setattr(Orchestrator, "reconcile", flaky)

    async def scenario(h):
        await h.m.propose(Transaction().create("services", service("web", 3)))
        await wait(lambda: sum(h.on("web").values()) == 3, timeout=20)
        failure = h.m.loop_failures["orchestrator"]
        assert failure.count == 3 and "not supported between" in failure.last_error
        view = h.m.leader_loops_view()
        assert view["running"] and view["failures"][0]["loop"] == "orchestrator"
        assert set(h.m.loop_failures) == {"orchestrator"}   # the others never failed
    run(scenario)
