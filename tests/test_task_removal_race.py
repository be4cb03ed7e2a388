"""A task removed while its container is still being created leaves nothing behind.

`runc create` is always run to its end, even when the task asking for it is cancelled (see
worker/images/trees.py finish_then_cancel): a cut-short runtime command leaves half-made
containers. So a controller that is closed meanwhile must wait for that creation to finish
before it stops and removes the container; otherwise the container appears after the removal
and stays, rootfs mount and all (seen once after `stack rm` on a loaded machine).

Real runc and a real executor; the test only holds the creation at its start, uncancellably
as the real one is, to make the interleaving certain.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common import codec
from common.model import ContainerSpec, Task, TaskSpec
import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from worker.executor import Executor
from worker.images import ImageStore
from worker.images.trees import finish_then_cancel
from worker.taskrunner import TaskRunner

from test_health import needs_runc  # noqa: E402


@pytest.fixture(scope="module")
def images_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("images")
    layout = ib.build_busybox_oci_layout(base / "oci", "1")
    asyncio.run(ImageStore(base / "store").import_archive(layout, "busybox:1"))
    return base / "store"


def _task(tid: str, desired: str = "running") -> Task:
    spec = TaskSpec(container=ContainerSpec(image="busybox:1", command=["sleep", "60"],
                                            stop_grace_period=0.5))
    return Task(id=tid, service_id="svc", service_name="web", slot=1, node_id="n1", spec=spec,
                desired_state=desired)


class HeldCreate:
    """Wraps the executor's create: it starts, then waits for `release`, then runs for real,
    never cut short (as runc create)."""

    def __init__(self, ex: Executor) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self._create = ex.create
        ex.create = self  # type: ignore[method-assign]

    async def __call__(self, cfg) -> None:
        async def held() -> None:
            self.entered.set()
            await self.release.wait()
            await self._create(cfg)
        await finish_then_cancel(held())


async def _scenario(images_root: Path, root: Path, how: str) -> list[str]:
    async def send(_batch) -> None:
        pass
    images = ImageStore(images_root)
    ex = Executor(root, images)
    held = HeldCreate(ex)
    runner = TaskRunner(ex, images, "node1", send)
    await runner.start()
    try:
        await runner.apply({"tasks": [codec.to_plain(_task("t1"))], "full": True})
        await asyncio.wait_for(held.entered.wait(), 20)
        if how == "removed":    # the task is gone from the assignments: close(remove=True)
            change = asyncio.ensure_future(runner.apply({"tasks": [], "full": True}))
        else:                   # told to shut down: the controller stops what it started
            change = asyncio.ensure_future(runner.apply(
                {"tasks": [codec.to_plain(_task("t1", "shutdown"))], "full": True}))
        await asyncio.sleep(0.5)
        held.release.set()
        await asyncio.wait_for(change, 30)
        await asyncio.sleep(0.5)    # anything still running late would land by now
        return [f"{c.id}:{c.state}" for c in ex.list() if c.state != "stopped" or how == "removed"]
    finally:
        await runner.apply({"tasks": [], "full": True})
        await runner.stop()
        await ex.close()


@needs_runc
@pytest.mark.parametrize("how", ["removed", "shutdown"])
def test_task_closed_during_its_container_creation_leaves_no_container(images_root, tmp_path, how):
    left = asyncio.run(_scenario(images_root, tmp_path / "ex", how))
    assert left == [], f"containers left after the task was {how}: {left}"
