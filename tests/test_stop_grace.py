"""The worker's stop deadline is always finite (issue 13, defect 4): whatever grace period a task
spec carries, the executor sends SIGKILL after at most an hour. tests/test_executor.py stops a
real container with such periods."""
from __future__ import annotations

import pytest

from worker import executor


@pytest.mark.parametrize("given, used", [
    (0, 0.0), (2.5, 2.5), (10, 10.0), (3600, 3600.0),
    (float("nan"), 10.0), (float("inf"), 10.0), (float("-inf"), 10.0), (-1, 10.0),
    (1e30, 3600.0), (10**400, 3600.0), (-10**400, 10.0),
    (True, 10.0), ("5", 10.0), (None, 10.0), ([1], 10.0),
])
def test_stop_grace_is_finite_and_bounded(given, used):
    assert executor.stop_grace(given) == used
