"""Docker's restart policies for standalone containers: which exits restart, how many times,
after which delay."""
from __future__ import annotations

from common.model import ContainerRestartPolicy
from worker.restarts import FIRST_DELAY, MAX_DELAY, STEADY_RUN, Restarts


def policy(name: str, count: int = 0) -> ContainerRestartPolicy:
    return ContainerRestartPolicy(name=name, maximum_retry_count=count)


def test_no_policy_never_restarts():
    for p in (None, policy("no")):
        assert Restarts(p).after_exit(1, 0.0) is None


def test_on_failure_restarts_failures_only_and_at_most_its_count():
    r = Restarts(policy("on-failure", 2))
    assert r.after_exit(0, 0.0) is None  # success: done
    assert r.after_exit(3, 0.0) == FIRST_DELAY
    assert r.after_exit(None, 0.0) == 2 * FIRST_DELAY  # an unknown exit is a failure
    assert r.after_exit(3, 0.0) is None and r.count == 2
    assert r.describe() == "on-failure:2"
    # the count survives an agent restart: the executor keeps it with the container
    assert Restarts(policy("on-failure", 2), count=2).after_exit(1, 0.0) is None
    unlimited = Restarts(policy("on-failure"))
    assert all(unlimited.after_exit(1, STEADY_RUN) == FIRST_DELAY for _ in range(50))


def test_always_restarts_any_exit_with_docker_s_backoff():
    for name in ("always", "unless-stopped"):
        r = Restarts(policy(name))
        delays = [r.after_exit(0, 0.5) for _ in range(12)]
        assert delays[:4] == [FIRST_DELAY, 2 * FIRST_DELAY, 4 * FIRST_DELAY, 8 * FIRST_DELAY]
        assert max(delays) == MAX_DELAY == delays[-1]
        # a run that lasted long enough starts the backoff over
        assert r.after_exit(137, STEADY_RUN) == FIRST_DELAY
        assert r.count == 13 and r.describe() == name
