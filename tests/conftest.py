"""Fixtures shared by the test modules: an executor root for those that run real runc
containers, and `run` for those that prove the managers' decisions on a real raft manager."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from worker.executor import Executor
from worker.images import ImageStore


@pytest.fixture(scope="module", autouse=True)
def _no_subreaper_afterwards():
    """An executor makes this process a child subreaper (as shoald must be); the next test
    module should not inherit that."""
    yield
    from common import linux
    linux.become_subreaper(False)


@pytest.fixture
def ex_root(tmp_path, images_root) -> Path:
    """The executor's root; whatever a (failed) test leaves running there is removed. Each
    module provides its own `images_root` (the images its tests need)."""
    root = tmp_path / "ex"
    yield root
    if not root.exists():
        return

    async def cleanup():
        ex = Executor(root, ImageStore(images_root))
        for c in await ex.adopt():
            await ex.remove(c.id)
        await ex.close()
    asyncio.run(cleanup())


@pytest.fixture
def run(tmp_path):
    """`run(scenario)`: `await scenario(harness)` on a one-member raft manager (tests.raft_harness)."""
    from tests.raft_harness import run_scenario
    return lambda scenario: run_scenario(tmp_path, scenario)


@pytest.fixture
def loops():
    """`loops(scenario)`: the same scenarios on the leader's loops without raft (tests.loops_harness)."""
    from tests.loops_harness import run_scenario
    return run_scenario


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Debian's docker-registry on 127.0.0.1 (plain HTTP), one per module that asks."""
    import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
    if not ib.LocalRegistry.available():
        pytest.skip("needs Debian's docker-registry package")
    reg = ib.LocalRegistry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()
