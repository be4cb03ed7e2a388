"""The one lab of the package: 3 managers + 3 workers, busybox on every host, and every shoald
serving Prometheus metrics on its own namespace's loopback (so one address serves on each)."""
from __future__ import annotations

from typing import Iterator

import pytest

from integration.helpers import busybox_lab, node_table, wait_until
from integration.observability.support import HOSTS, METRICS_ADDR


@pytest.fixture(scope="package")
def lab() -> Iterator:
    # 6 daemons to start and join one at a time on a machine that may be busy: the lab's
    # default minute for forming is too short a budget for that (seen: a join cut at 5 s).
    with busybox_lab("obs", managers=3, workers=3, up_timeout=240,
                     daemon_args=["--metrics-addr", METRICS_ADDR]) as lab:
        wait_until(lambda: sorted(n for n, v in node_table(lab, "manager1").items()
                                  if v["status"] == "ready") == sorted(HOSTS),
                   timeout=90, what="6 ready nodes")
        yield lab
