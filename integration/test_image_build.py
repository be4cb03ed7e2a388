"""`shoal image build` end to end (issue 17, Must show 3), in a lab of 1 manager + 2 workers with
a plain-HTTP docker-registry (Debian's) run inside manager1 by the test:

- on manager1, `shoal image build -t REG/app:1 --push CONTEXT` of a two-stage Dockerfile (stage 1
  makes a file with RUN; stage 2 copies it with COPY --from, sets ENV, USER, WORKDIR, HEALTHCHECK,
  ENTRYPOINT/CMD);
- a service of 2 replicas constrained to the workers, which never had the image: each task pulls
  it from the registry and shows the built file, the env value, the user and the workdir, and
  becomes healthy by the image's own HEALTHCHECK;
- the same build again: every step CACHED; one copied file changed: only from its COPY on do the
  steps run again.
"""
from __future__ import annotations

import os
import re
import shutil
import textwrap

import pytest

from integration.helpers import busybox_lab, registry_in_lab, wait_until
from tests import imagebuild as ib

REGISTRY_BIN = "/usr/bin/docker-registry"
REG = "172.31.0.11:5000"   # manager1 on the lab's underlay
IMAGE = f"{REG}/app:1"

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc"),
              pytest.mark.skipif(not os.access(REGISTRY_BIN, os.X_OK) or not ib.busybox_available(),
                                 reason="needs Debian's docker-registry and busybox-static")]

DOCKERFILE = textwrap.dedent("""\
    FROM busybox:1 AS build
    RUN mkdir -p /out && echo "made by RUN in stage one" > /out/built.txt
    COPY data.txt /out/data.txt
    RUN cat /out/data.txt >> /out/built.txt

    FROM busybox:1
    COPY --from=build /out /srv/app
    ENV GREETING="hello from the image"
    USER nobody
    WORKDIR /srv/app
    HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD test -f /srv/app/built.txt
    ENTRYPOINT ["sh", "-c"]
    CMD ["cat built.txt; echo env=$GREETING; echo uid=$(id -u); exec sleep 100000"]
""")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("imgbuild")
    ctx = base / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "data.txt").write_text("data v1\n")
    with busybox_lab("bld", managers=1, workers=2,
                     daemon_args=["--insecure-registry", REG]) as lab:
        with registry_in_lab(lab, "manager1", REG, base):
            yield lab, ctx


def build(lab, ctx, *extra: str) -> str:
    res = lab.cli("manager1", "image", "build", "-t", IMAGE, *extra, str(ctx), check=False,
                  timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def step_results(out: str) -> dict[str, str]:
    """Dockerfile step (`[stage-1 2/5] COPY ...`) -> CACHED | DONE, from docker's plain output."""
    names: dict[str, str] = {}
    results: dict[str, str] = {}
    for line in out.splitlines():
        m = re.match(r"#(\d+) (\[.*)$", line)
        if m:
            names[m.group(1)] = m.group(2)
            continue
        m = re.match(r"#(\d+) (CACHED|DONE)\b", line)
        if m and m.group(1) in names:
            results[names[m.group(1)]] = m.group(2)
    return results


def test_build_push_run_on_workers_healthy_then_cached_and_partial_rebuild(setup):
    lab, ctx = setup
    # the registry answers before anything is pushed to it
    wait_until(lambda: lab.exec("manager1", ["wget", "-q", "-O", "-", f"http://{REG}/v2/"]
                                ).returncode == 0 or None, timeout=30, what="the registry")

    out = build(lab, ctx, "--push")
    first = step_results(out)
    non_from = {k: v for k, v in first.items() if " FROM " not in k}
    assert len(non_from) == 10 and set(non_from.values()) == {"DONE"}, out

    # the workers never had the image: they pull it from the registry
    for w in ("worker1", "worker2"):
        refs = {i["ref"] for i in lab.cli_json(w, "image", "ls")}
        assert not any(r.startswith(f"{REG}/app") for r in refs), (w, refs)

    lab.cli("manager1", "service", "create", "--detach", "--name", "built", "--replicas", "2",
            "--constraint", "node.role==worker", IMAGE, timeout=90)

    def healthy():
        tasks = [t for t in lab.cli_json("manager1", "service", "ps", "built")
                 if t["desired_state"] == "running"]
        ok = (len(tasks) == 2 and all(t["status"]["state"] == "running"
                                      and t["status"]["health"] == "healthy" for t in tasks))
        return tasks if ok else None
    tasks = wait_until(healthy, timeout=90, what="2 healthy tasks of the built image")
    assert {t["node_hostname"] for t in tasks} == {"worker1", "worker2"}, tasks
    for t in tasks:
        assert t["spec"]["container"]["image"].startswith(f"{IMAGE}@sha256:"), t["spec"]
        node = t["node_hostname"]
        seen = lab.cli(node, "container", "exec", t["id"], "--", "sh", "-c",
                       "cat built.txt; echo env=$GREETING; echo uid=$(id -u); pwd").stdout
        assert "made by RUN in stage one\ndata v1\n" in seen, seen
        assert "env=hello from the image" in seen and "uid=65534" in seen, seen
        assert seen.rstrip().endswith("/srv/app"), seen
        refs = {i["ref"] for i in lab.cli_json(node, "image", "ls")}
        assert any(r.startswith(f"{REG}/app") for r in refs), (node, refs)
    logs = lab.cli("manager1", "service", "logs", "built", timeout=30).stdout
    assert logs.count("env=hello from the image") == 2 and logs.count("uid=65534") == 2, logs

    # the same context again: every step from the cache
    again = step_results(build(lab, ctx))
    assert {k: v for k, v in again.items() if " FROM " not in k} == \
        {k: "CACHED" for k in non_from}, again

    # one copied file changed: its COPY and every step after it run again, none before it
    (ctx / "data.txt").write_text("data v2\n")
    third = step_results(build(lab, ctx))
    order = list(non_from)                     # the build's steps, in the order it ran them
    assert [k for k in third if " FROM " not in k] == order, third
    changed = next(i for i, k in enumerate(order) if k.endswith("COPY data.txt /out/data.txt"))
    assert changed == 1, order
    assert {k: third[k] for k in order} == \
        {k: ("CACHED" if i < changed else "DONE") for i, k in enumerate(order)}, third
    lab.cli("manager1", "service", "rm", "built")
