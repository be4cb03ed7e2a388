"""Paths with a tab, a backslash and a non-ASCII character (issue 14, must-show 5): a secret's
tmpfs and target, a bind-mount source, and a worker's data root on real runc. The lab's data
root is in test_netlab.py (test_a_data_root_with_a_tab_a_backslash_and_non_ascii).

Each once failed in a helper of its own: the secrets' mount check unescaped only \\040 (a tab
left the tmpfs mounted), the network helper decoded UTF-8 as Latin-1, and the overlay options
took the data root's backslash for an escape. Root only.
"""
from __future__ import annotations

import asyncio
import base64
import os
import shutil
from pathlib import Path

import pytest

import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from common import linux
from common.model import ContainerSpec, Mount, SecretReference, Task, TaskSpec, TaskStatus

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts)")

AWKWARD = "tab\there back\\slash é"


def _task(tid: str, refs: list[SecretReference]) -> Task:
    return Task(id=tid, node_id="n1", service_id="svc", service_name="web", slot=1,
                spec=TaskSpec(container=ContainerSpec(image="busybox:1", secrets=refs)),
                desired_state="running", status=TaskStatus(state="running"))


def _mounts_under(path: Path) -> list[str]:
    return [m.mount_point for m in linux.mountinfo()
            if m.mount_point == str(path) or m.mount_point.startswith(f"{path}/")]


def _secret_cache():
    from worker.secrets import SecretCache
    cache = SecretCache()
    cache.update([{"id": "s1", "name": "pw", "data": base64.b64encode(b"hunter2").decode()}],
                 full=True)
    return cache


def test_secret_tmpfs_under_an_awkward_path(tmp_path):
    from worker.secrets import SecretMounts
    root = tmp_path / AWKWARD
    mounts = SecretMounts(root / "data", run_root=root / "run")
    target = f"/run/secrets/{AWKWARD}"
    binds = mounts.prepare(_task("task1", [SecretReference(
        secret_id="s1", secret_name="pw", target=target, mode=0o400)]), _secret_cache())
    host, got_target, read_only = binds[0]
    assert (got_target, read_only) == (target, True)
    assert Path(host).read_bytes() == b"hunter2"
    assert _mounts_under(root) == [str(root / "run" / "task1")]
    mounts.cleanup("task1")
    assert _mounts_under(root) == []  # the old check missed the tab: the tmpfs stayed
    assert not (root / "run" / "task1").exists()
    mounts.cleanup_all()
    assert not (root / "run").exists()


def test_the_api_takes_such_a_bind_source_and_secret_target():
    from manager.specs.services import parse_service_spec
    spec = parse_service_spec({"name": "web", "task_template": {"container": {
        "image": "busybox:1",
        "mounts": [{"type": "bind", "source": f"/srv/{AWKWARD}", "target": f"/{AWKWARD}"}]}}})
    assert spec.task_template.container.mounts[0].source == f"/srv/{AWKWARD}"


# ---- a real container ---------------------------------------------------------------------------
needs_runc = pytest.mark.skipif(shutil.which("runc") is None or not ib.busybox_available(),
                                reason="needs runc and busybox-static")


@pytest.fixture
def no_subreaper_afterwards():
    """The executor makes this process a child subreaper; later tests should not inherit it."""
    yield
    linux.become_subreaper(False)


@needs_runc
def test_bind_source_secret_and_data_root_with_awkward_names(tmp_path, no_subreaper_afterwards):
    from worker.executor import ContainerConfig, Executor
    from worker.images import ImageStore
    from worker.secrets import SecretMounts
    base = tmp_path / AWKWARD
    # the data root also holds overlayfs' own separators (',' between options, ':' between
    # layers): the overlay options must escape them, and the backslash
    data_root = base / "data,root:x"
    source = base / "bind source"
    source.mkdir(parents=True)
    (source / "from-host").write_text("hi from the host\n")
    layout = ib.build_busybox_oci_layout(base / "oci", "1")
    secrets = SecretMounts(data_root, run_root=base / "secrets")
    binds = secrets.prepare(_task("c1", [SecretReference(
        secret_id="s1", secret_name="pw", target=f"/run/secrets/{AWKWARD}")]), _secret_cache())

    async def scenario():
        store = ImageStore(data_root / "images")
        await store.import_archive(layout, "busybox:1")
        ex = Executor(data_root / "executor", store)
        try:
            await ex.create(ContainerConfig(
                id="c1", image="busybox:1", command=[
                    "sh", "-c", 'cat /data/from-host; echo written > /data/by-container; '
                                'cat "$1"; echo', "sh", f"/run/secrets/{AWKWARD}"],
                mounts=[Mount(type="bind", source=str(source), target="/data")],
                extra_binds=binds))
            await ex.start("c1")
            info = await ex.wait("c1")
            lines = [e.line async for e in ex.logs("c1")]
            assert info.exit_code == 0, lines
            assert lines == ["hi from the host", "hunter2"]
            assert (source / "by-container").read_text() == "written\n"
            await ex.remove("c1")
        finally:
            for c in await ex.adopt():
                await ex.remove(c.id)
            await ex.close()
    try:
        asyncio.run(scenario())
    finally:
        secrets.cleanup_all()
    assert _mounts_under(base) == []
    assert not (data_root / "executor" / "containers" / "c1").exists()
