"""The service progress display's reading of tasks: each slot's latest error, and when the wait
is hopeless (every slot rejected for the same reason several times in a row)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.cli import progress
from shoal.cli.progress import REJECTIONS_BEFORE_GIVING_UP as N

REASON = "image busybox:nothere not found on this node"


def task(slot: int, n: int, state: str, err: str = "", desired: str = "shutdown",
         node: str = "worker1") -> dict:
    return {"slot": slot, "node_id": f"id-{node}", "node_hostname": node,
            "desired_state": desired, "meta": {"created_at": float(n)},
            "status": {"state": state, "err": err, "message": state}}


def rejected_slot(slot: int, times: int, err: str = REASON, then_pending: bool = True) -> list[dict]:
    tasks = [task(slot, i, "rejected", err) for i in range(times)]
    if then_pending:
        tasks.append(task(slot, times, "pending", desired="running"))
    return tasks


def test_every_slot_rejected_n_times_for_one_reason_is_stuck_and_names_it():
    tasks = rejected_slot(1, N) + rejected_slot(2, N)
    found = progress.stuck(tasks, 2)
    assert found is not None and found.reasons == ((REASON, "worker1"),)
    assert REASON in found.describe() and "worker1" in found.describe()


def test_fewer_rejections_a_missing_slot_or_a_running_task_is_not_stuck():
    assert progress.stuck(rejected_slot(1, N - 1), 1) is None
    assert progress.stuck(rejected_slot(1, N), 2) is None  # slot 2 has not tried yet
    running = rejected_slot(1, N) + [task(1, 99, "running", desired="running")]
    assert progress.stuck(running, 1) is None
    assert progress.stuck([], 0) is None


def test_changing_reasons_or_a_failure_among_the_last_attempts_is_not_stuck():
    mixed = rejected_slot(1, N - 1) + [task(1, N - 1, "rejected", "another reason")]
    assert progress.stuck(mixed, 1) is None
    failed = rejected_slot(1, N - 1, then_pending=False) + [task(1, N, "failed", REASON)]
    assert progress.stuck(failed, 1) is None


def test_each_slot_may_be_stuck_on_its_own_reason():
    tasks = rejected_slot(1, N) + rejected_slot(2, N, err="no such network")
    found = progress.stuck(tasks, 2)
    assert found is not None and {r for r, _ in found.reasons} == {REASON, "no such network"}


def test_a_global_service_groups_by_node():
    tasks = [dict(task(0, i, "rejected", REASON, node=node), slot=0)
             for node in ("w1", "w2") for i in range(N)]
    assert progress.stuck(tasks, 2) is not None
    assert progress.stuck(tasks[:N], 2) is None


def test_a_new_attempt_shows_the_error_that_ended_the_last_one():
    lines = progress.slot_lines(rejected_slot(1, 2) + [task(2, 0, "running", desired="running")], 2)
    assert [line.label for line in lines] == ["1/2", "2/2"]
    assert lines[0].state == "pending" and f"last attempt: rejected: {REASON}" in lines[0].text()
    assert "last attempt" not in lines[1].text()


def test_an_attempt_that_ended_shows_its_state_with_its_error():
    """What a run without a terminal prints once per slot: "rejected: REASON", whether the poll
    saw the rejected attempt itself or the next one (it printed only the reason when the next
    attempt was rejected between two polls, and the test of it depended on the timing)."""
    now = progress.slot_lines([task(1, 0, "rejected", REASON, desired="running")], 1)
    after = progress.slot_lines(rejected_slot(1, 1), 1)
    assert now[0].error == after[0].error == f"rejected: {REASON}"


_states = st.sampled_from(["new", "pending", "assigned", "running", "failed", "rejected",
                           "complete", "shutdown"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), _states, st.sampled_from(["", "a", "b"]),
                          st.sampled_from(["running", "shutdown"])), max_size=20),
       st.integers(0, 4))
def test_stuck_only_when_every_slot_ends_in_n_identical_rejections(rows, expected):
    tasks = [task(slot, i, state, err, desired) for i, (slot, state, err, desired) in enumerate(rows)]
    found = progress.stuck(tasks, expected)
    lines = progress.slot_lines(tasks, expected)
    assert all(line.text() for line in lines)
    if found is None:
        return
    slots = {t["slot"] for t in tasks}
    assert len(slots) >= expected > 0
    for slot in slots:
        mine = [t for t in tasks if t["slot"] == slot]
        assert not any(t["status"]["state"] == "running" for t in mine)
        ended = [t for t in mine if t["status"]["state"] not in ("new", "pending", "assigned")]
        last = ended[-N:]
        assert len(last) == N and {t["status"]["state"] for t in last} == {"rejected"}
        assert len({t["status"]["err"] for t in last}) == 1
