"""Configs end to end, in a lab of 1 manager + 1 worker: a task reads its config at /NAME (and at
a custom target, with its owner and mode), read-only; `config inspect` shows the data; `config rm`
of a config in use is refused, naming the service; after `service rm` it can go.
"""
from __future__ import annotations

import base64
import json
import shutil

import pytest

from integration.helpers import busybox_lab, needs_root, wait_until
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(), reason="busybox-static is not installed")]

IMAGE = "busybox:1"
CONTENT = "server {\n  listen 8080;\n}\n"


@pytest.fixture(scope="module")
def lab():
    with busybox_lab("cfg", managers=1, workers=1, tags=[IMAGE]) as lab:
        yield lab


def test_config_end_to_end(lab):
    r = lab.exec("manager1", ["shoal", "config", "create", "--label", "app=web", "site.conf", "-"],
                 input=CONTENT, check=True)
    config_id = r.stdout.strip()
    ls = lab.cli_json("manager1", "config", "ls")
    assert [c["spec"]["name"] for c in ls] == ["site.conf"] and ls[0]["id"] == config_id
    info = json.loads(lab.cli("manager1", "config", "inspect", "site.conf").stdout)
    info = info[0] if isinstance(info, list) else info
    assert base64.b64decode(info["spec"]["data"]).decode() == CONTENT
    assert info["spec"]["labels"] == {"app": "web"}
    assert CONTENT in lab.cli("manager1", "config", "inspect", "--pretty", "site.conf").stdout

    r = lab.cli("manager1", "service", "create", "--detach", "--name", "nope", "--config", "ghost",
                IMAGE, "sleep", "600", check=False)
    assert r.returncode != 0
    assert "config 'ghost' not found: create it with 'shoal config create ghost FILE'" in r.stderr

    lab.cli("manager1", "service", "create", "--detach", "--name", "web",
            "--constraint", "node.hostname==worker1", "--config", "site.conf",
            "--config", "source=site.conf,target=/etc/web/site.conf,uid=1000,gid=1000,mode=0440",
            IMAGE, "sleep", "3600", timeout=60)

    def running_task():
        ts = [t for t in lab.cli_json("manager1", "service", "ps", "web")
              if t["desired_state"] == "running" and t["status"]["state"] == "running"]
        return ts[0] if ts else None
    task = wait_until(running_task, timeout=60, what="the web task running")
    cname = next(c["name"] for c in lab.cli_json("worker1", "container", "ls") if c["id"] == task["id"])

    assert lab.cli("worker1", "container", "exec", cname, "--", "cat", "/site.conf").stdout == CONTENT
    assert lab.cli("worker1", "container", "exec", cname, "--", "cat",
                   "/etc/web/site.conf").stdout == CONTENT
    r = lab.cli("worker1", "container", "exec", cname, "--", "stat", "-c", "%u %g %a",
                "/etc/web/site.conf", "/site.conf")
    assert r.stdout.split("\n")[:2] == ["1000 1000 440", "0 0 444"]
    r = lab.cli("worker1", "container", "exec", cname, "--", "sh", "-c", "echo x > /site.conf",
                check=False)
    assert r.returncode != 0

    r = lab.cli("manager1", "config", "rm", "site.conf", check=False)
    assert r.returncode != 0 and "web" in r.stderr and "in use" in r.stderr

    lab.cli("manager1", "service", "rm", "web")
    wait_until(lambda: not any(c["service"] == "web" for c in lab.cli_json("worker1", "container", "ls")),
               timeout=30, what="web's container gone")
    assert lab.cli("manager1", "config", "rm", "site.conf").stdout.strip() == "site.conf"
    assert lab.cli_json("manager1", "config", "ls") == []
