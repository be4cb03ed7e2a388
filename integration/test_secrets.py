"""Secrets end to end, in a lab of 3 managers + 3 workers: a task reads its secret from a tmpfs at
/run/secrets/NAME; the bytes reach no worker's disk, no log, no API answer; a node that runs no
task using the secret never receives it; `service rm` takes the tmpfs away; `secret rm` of a
secret in use is refused, naming the service.
"""
from __future__ import annotations

import base64
import json
import os
import secrets as pysecrets
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from integration.helpers import busybox_lab, needs_root, wait_until
from tests import imagebuild
from worker.secrets import run_dir_for

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(), reason="busybox-static is not installed")]

IMAGE = "busybox:1"
VALUE = "shoal-secret-" + pysecrets.token_hex(16)
B64 = base64.b64encode(VALUE.encode()).decode()

# The dispatcher's answer as a node sees it: POST /dispatcher/assignments with its certificate.
ASSIGNMENTS_PROBE = textwrap.dedent("""
    import json, ssl, sys, urllib.request
    certdir = sys.argv[1]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(certdir + "/ca.crt")
    ctx.load_cert_chain(certdir + "/node.crt", certdir + "/node.key")
    req = urllib.request.Request("https://172.31.0.11:2377/dispatcher/assignments",
                                 data=json.dumps({"since": 0, "wait": 0}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        sys.stdout.write(r.read().decode())
""")


@pytest.fixture(scope="module")
def lab():
    with busybox_lab("sec", managers=3, workers=3, tags=[IMAGE]) as lab:
        yield lab


def assignments(lab, host: str) -> dict:
    certdir = f"{lab.host(host).data_root}/certificates"
    r = lab.exec(host, [sys.executable, "-c", ASSIGNMENTS_PROBE, certdir], check=True)
    return json.loads(r.stdout)


def files_containing(root: str, needle: bytes) -> list[str]:
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except OSError:
                continue
    return hits


def host_mounts() -> list[list[str]]:
    with open("/proc/self/mounts") as f:
        return [line.split() for line in f]


def test_secret_end_to_end(lab):
    # create from stdin: the value never sits in a file on the host
    r = lab.exec("manager1", ["shoal", "secret", "create", "--label", "team=a", "dbpw", "-"],
                 input=VALUE, check=True)
    secret_id = r.stdout.strip()
    ls = lab.cli_json("manager1", "secret", "ls")
    assert [s["spec"]["name"] for s in ls] == ["dbpw"] and ls[0]["id"] == secret_id

    # a missing secret is named, with the fix
    r = lab.cli("manager1", "service", "create", "--detach", "--name", "nope", "--secret", "ghost",
                IMAGE, "sleep", "600", check=False)
    assert r.returncode != 0
    assert "secret 'ghost' not found: create it with 'shoal secret create ghost FILE'" in r.stderr

    lab.cli("manager1", "service", "create", "--detach", "--name", "app",
            "--constraint", "node.hostname==worker1", "--secret", "dbpw",
            "--secret", "source=dbpw,target=/etc/app/pw,uid=1000,gid=1000,mode=0400",
            IMAGE, "sleep", "3600", timeout=60)

    def running_task():
        ts = [t for t in lab.cli_json("manager1", "service", "ps", "app")
              if t["desired_state"] == "running" and t["status"]["state"] == "running"]
        return ts[0] if ts else None
    task = wait_until(running_task, timeout=60, what="the app task running")
    assert task["node_hostname"] == "worker1"
    cname = next(c["name"] for c in lab.cli_json("worker1", "container", "ls") if c["id"] == task["id"])

    # 1. the task reads the secret at /run/secrets/dbpw (and at its custom target, with its owner/mode)
    r = lab.cli("worker1", "container", "exec", cname, "--", "cat", "/run/secrets/dbpw")
    assert r.stdout == VALUE
    r = lab.cli("worker1", "container", "exec", cname, "--", "cat", "/etc/app/pw")
    assert r.stdout == VALUE
    r = lab.cli("worker1", "container", "exec", cname, "--", "stat", "-c", "%u %g %a", "/etc/app/pw",
                "/run/secrets/dbpw")
    assert r.stdout.split("\n")[:2] == ["1000 1000 400", "0 0 444"]
    # writing is refused (read-only bind)
    r = lab.cli("worker1", "container", "exec", cname, "--", "sh", "-c", "echo x > /run/secrets/dbpw",
                check=False)
    assert r.returncode != 0

    # 2. it is a tmpfs: inside the container and on the host, under /run, not the data root
    r = lab.cli("worker1", "container", "exec", cname, "--", "cat", "/proc/mounts")
    inside = {line.split()[1]: line.split()[2] for line in r.stdout.splitlines()}
    assert inside.get("/run/secrets/dbpw") == "tmpfs" and inside.get("/etc/app/pw") == "tmpfs"
    task_dir = run_dir_for(lab.host("worker1").data_root) / task["id"]
    on_host = [m for m in host_mounts() if m[1] == str(task_dir)]
    assert on_host and on_host[0][2] == "tmpfs" and "mode=700" in on_host[0][3]
    assert not str(task_dir).startswith(str(lab.state_dir))

    # 3. the other nodes run no task using it: the dispatcher never hands it over; worker1 gets it
    for other in ("worker2", "worker3", "manager2"):
        seen = assignments(lab, other)
        assert seen["secrets"] == [] and VALUE not in json.dumps(seen) and B64 not in json.dumps(seen), other
    w1 = assignments(lab, "worker1")
    assert [(s["id"], s["data"]) for s in w1["secrets"]] == [(secret_id, B64)]

    # 4. the bytes are on no worker's disk, in no daemon log, in no API answer
    for h in lab.hosts():
        w, root = h.name, h.data_root
        assert files_containing(root, VALUE.encode()) == [], f"secret on {w}'s disk"
        assert files_containing(root, B64.encode()) == [], f"secret (base64) on {w}'s disk"
    for h in lab.hosts():
        log = Path(h.log).read_bytes()
        assert VALUE.encode() not in log and B64.encode() not in log, f"secret in {h.name}'s log"
    answers = [
        lab.cli("manager1", "secret", "inspect", "dbpw").stdout,
        lab.cli("manager1", "secret", "inspect", "--pretty", "dbpw").stdout,
        lab.cli("worker1", "secret", "ls", check=False).stdout,
        lab.cli("manager1", "secret", "ls", "--format", "json").stdout,
        lab.cli("manager1", "service", "inspect", "app").stdout,
        lab.cli("manager1", "service", "ps", "app", "--format", "json").stdout,
        lab.cli("manager1", "node", "ps", "worker1", "--format", "json").stdout,
        lab.cli("worker1", "container", "inspect", cname, check=False).stdout,
        lab.cli("worker1", "container", "ls", "--format", "json").stdout,
    ]
    for text in answers:
        assert VALUE not in text and B64 not in text
    info = lab.cli_json("manager1", "secret", "ls")[0]
    assert "data" not in info["spec"] and info["spec"]["labels"] == {"team": "a"}
    refs = json.loads(answers[4])
    refs = (refs[0] if isinstance(refs, list) else refs)["spec"]["task_template"]["container"]["secrets"]
    assert refs[0]["secret_id"] == secret_id and refs[0]["target"] == "/run/secrets/dbpw"

    # 5. secret rm of a secret in use: refused, naming the service
    r = lab.cli("manager1", "secret", "rm", "dbpw", check=False)
    assert r.returncode != 0 and "app" in r.stderr and "in use" in r.stderr

    # 6. service rm: the container and its tmpfs go
    lab.cli("manager1", "service", "rm", "app")
    wait_until(lambda: not any(c["service"] == "app" for c in lab.cli_json("worker1", "container", "ls")),
               timeout=30, what="app's container gone")
    wait_until(lambda: not any(m[1] == str(task_dir) for m in host_mounts()) and not task_dir.exists(),
               timeout=15, what="the secrets tmpfs gone")
    assert lab.cli("manager1", "secret", "rm", "dbpw").stdout.strip() == "dbpw"
    assert lab.cli_json("manager1", "secret", "ls") == []
