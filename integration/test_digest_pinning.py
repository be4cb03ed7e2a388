"""Digest pinning as Swarm does it (issue 17, Must show 2), in a lab of 1 manager + 2 workers
with a plain-HTTP docker-registry (Debian's) run inside manager1:

- v1 pushed as app:latest, a service of 4 replicas pins v1's digest and spreads over the nodes;
- v2 pushed as app:latest, `service update --image REG/app:latest`: every task runs v2's digest
  (its spec and the files its container sees), and `service inspect` shows the pin;
- the same update again, nothing re-pushed: no task is replaced; `--force` replaces them all;
- a local-only image (busybox:1 imported on every node) is created unpinned, with the warning.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest

from integration.helpers import busybox_lab, registry_in_lab, wait_until
from tests import imagebuild as ib

REGISTRY_BIN = "/usr/bin/docker-registry"
REG = "172.31.0.11:5000"   # manager1 on the lab's underlay
IMAGE = f"{REG}/app:latest"

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(not os.access(REGISTRY_BIN, os.X_OK) or not ib.busybox_available(),
                                 reason="needs Debian's docker-registry and busybox-static")]

PUSH = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from tests.imagebuild import push_layout
    print(asyncio.run(push_layout(sys.argv[1], Path(sys.argv[2]), "app", "latest")))
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("pinning")
    v1 = ib.build_busybox_oci_layout(base / "v1", "1", extra_files={"etc/version": b"v1\n"})
    v2 = ib.build_busybox_oci_layout(base / "v2", "1", extra_files={"etc/version": b"v2\n"})
    with busybox_lab("pin", managers=1, workers=2,
                     daemon_args=["--insecure-registry", REG]) as lab:
        with registry_in_lab(lab, "manager1", REG, base):
            yield lab, v1, v2


def push(lab, layout) -> str:
    """Push `layout` as REG/app:latest from manager1; its manifest digest."""
    def once():
        res = lab.exec("manager1", [sys.executable, "-c", PUSH, f"http://{REG}", str(layout)])
        return res.stdout.strip() if res.returncode == 0 else None
    return wait_until(once, timeout=30, what="a push to the lab's registry")


def live_tasks(lab, service: str) -> list[dict]:
    return [t for t in lab.cli_json("manager1", "service", "ps", service)
            if t["desired_state"] == "running"]


def running(lab, service: str, image: str, count: int) -> list[dict]:
    """The service's `count` running tasks, once each runs `image` and nothing else is live."""
    def check():
        tasks = live_tasks(lab, service)
        ok = len(tasks) == count and all(t["status"]["state"] == "running"
                                         and t["spec"]["container"]["image"] == image
                                         for t in tasks)
        return tasks if ok else None
    return wait_until(check, timeout=90, what=f"{count} tasks of {service} running {image}")


def version_seen(lab, task: dict) -> str:
    return lab.cli(task["node_hostname"], "container", "exec", task["id"], "--",
                   "cat", "/etc/version").stdout.strip()


def test_a_re_pushed_tag_rolls_out_by_digest_and_an_unchanged_one_rolls_nothing(setup):
    lab, v1, v2 = setup
    d1 = push(lab, v1)
    created = lab.cli("manager1", "service", "create", "--detach", "--name", "app",
                      "--replicas", "4", "--update-parallelism", "0", IMAGE, "sleep", "1000",
                      timeout=90)
    assert "NOT pinned" not in created.stderr, created.stderr
    first = running(lab, "app", f"{IMAGE}@{d1}", 4)
    assert len({t["node_hostname"] for t in first}) >= 2, first
    assert {version_seen(lab, t) for t in first} == {"v1"}

    d2 = push(lab, v2)
    assert d2 != d1
    upd = lab.cli("manager1", "service", "update", "--image", IMAGE, "app", timeout=180)
    assert "NOT pinned" not in upd.stderr, upd.stderr
    second = running(lab, "app", f"{IMAGE}@{d2}", 4)
    assert not {t["id"] for t in second} & {t["id"] for t in first}
    assert {version_seen(lab, t) for t in second} == {"v2"}
    # every node that runs a task holds exactly the pinned manifest (pulled by digest)
    for node in {t["node_hostname"] for t in second}:
        refs = {r for i in lab.cli_json(node, "image", "ls") for r in [i["ref"]]}
        assert f"{REG}/app@{d2}" in refs, (node, refs)

    inspected = json.loads(lab.cli("manager1", "service", "inspect", "app").stdout)
    assert inspected[0]["spec"]["task_template"]["container"]["image"] == f"{IMAGE}@{d2}"
    pretty = lab.cli("manager1", "service", "inspect", "--pretty", "app").stdout
    assert f"{IMAGE}@{d2}" in pretty, pretty

    # nothing re-pushed: the digest resolves the same, the spec is the same, no task goes
    version = inspected[0]["meta"]["version"]
    lab.cli("manager1", "service", "update", "--image", IMAGE, "app", timeout=120)
    lab.cli("manager1", "service", "update", "app", timeout=120)  # --resolve-image always
    assert {t["id"] for t in live_tasks(lab, "app")} == {t["id"] for t in second}
    again = json.loads(lab.cli("manager1", "service", "inspect", "app").stdout)[0]
    assert again["spec"] == inspected[0]["spec"], (version, again["meta"])

    # --force still replaces every task, with the same pin
    lab.cli("manager1", "service", "update", "--force", "app", timeout=180)
    third = running(lab, "app", f"{IMAGE}@{d2}", 4)
    assert not {t["id"] for t in third} & {t["id"] for t in second}
    lab.cli("manager1", "service", "rm", "app")


def test_a_local_only_image_runs_unpinned_with_the_warning(setup):
    lab, _, _ = setup
    res = lab.cli("manager1", "service", "create", "--detach", "--name", "local",
                  "--replicas", "2", "busybox:1", "sleep", "1000", timeout=60)
    assert "busybox:1 was NOT pinned to a digest" in res.stderr, res.stderr
    assert "names no registry" in res.stderr, res.stderr
    running(lab, "local", "busybox:1", 2)
    spec = json.loads(lab.cli("manager1", "service", "inspect", "local").stdout)[0]["spec"]
    assert spec["task_template"]["container"]["image"] == "busybox:1"
    lab.cli("manager1", "service", "rm", "local")


def test_a_stack_pins_and_redeploys_only_on_a_new_digest(setup, tmp_path):
    lab, v1, v2 = setup
    d2 = push(lab, v2)
    compose = tmp_path / "stack.yml"
    compose.write_text(f"services:\n  web:\n    image: {IMAGE}\n"
                       "    command: [sleep, '1000']\n")

    def deploy() -> str:
        return lab.cli("manager1", "stack", "deploy", "-d", "-c", str(compose), "pin",
                       timeout=90).stdout

    def image() -> str:
        spec = json.loads(lab.cli("manager1", "service", "inspect", "pin_web").stdout)[0]["spec"]
        return spec["task_template"]["container"]["image"]
    try:
        deploy()
        assert image() == f"{IMAGE}@{d2}"
        out = deploy()
        assert "Unchanged: pin_web" in out and "Updating service" not in out, out
        d1 = push(lab, v1)
        out = deploy()
        assert "Updating service pin_web" in out, out
        assert image() == f"{IMAGE}@{d1}"
    finally:
        lab.cli("manager1", "stack", "rm", "pin", check=False, timeout=60)
