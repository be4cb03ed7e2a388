"""Issue 5 (rolling updates and rollback) on real containers in a lab of 3 managers + 3 workers."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from integration.helpers import needs_root, unique_lab_name, wait_until
from shoal.lab.netlab import Lab
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(), reason="busybox-static is not installed")]


@pytest.fixture(scope="module")
def lab():
    tmp = Path(tempfile.mkdtemp(prefix="shoal-upd-"))
    lab = Lab(unique_lab_name("upd"))
    try:
        v1 = imagebuild.build_busybox_oci_layout(tmp / "v1", tag="1")
        v2 = imagebuild.build_busybox_oci_layout(tmp / "v2", tag="1", extra_files={"/VERSION": b"2\n"})
        lab.up(managers=3, workers=3)
        lab.cli("manager1", "swarm", "update", "--dispatcher-heartbeat", "1s")
        for h in lab.hosts():
            lab.cli(h.name, "image", "import", str(v1), "app:1", timeout=120)
            lab.cli(h.name, "image", "import", str(v2), "app:2", timeout=120)
        yield lab
    finally:
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)


def running(lab, name: str) -> int:
    return sum(1 for t in lab.cli_json("manager1", "service", "ps", name)
               if t["desired_state"] == "running" and t["status"]["state"] == "running")


def live_images(lab, name: str) -> set[str]:
    return {t["spec"]["container"]["image"] for t in lab.cli_json("manager1", "service", "ps", name)
            if t["desired_state"] == "running"}


def inspect(lab, name: str) -> dict:
    return json.loads(lab.cli("manager1", "service", "inspect", name).stdout)[0]


class Sampler:
    """Counts running tasks of a service over and over while an update goes on."""

    def __init__(self, lab, name: str) -> None:
        self.lab, self.name, self.samples = lab, name, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(running(self.lab, self.name))
            except Exception:
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("order,floor", [("stop-first", 4), ("start-first", 6)])
def test_rolling_update_keeps_capacity(lab, order, floor):
    name = f"roll{order[:5]}"
    lab.cli("manager1", "service", "create", "--name", name, "--replicas", "6",
            "--stop-grace-period", "1s", "app:1", "sleep", "100000", timeout=120)
    with Sampler(lab, name) as sampler:
        # The delay stretches the update (it is done in ~2 s otherwise) over enough samples:
        # each one is a CLI process, ~0.5 s here.
        out = lab.cli("manager1", "service", "update", "--image", "app:2", "--update-parallelism", "2",
                      "--update-order", order, "--update-monitor", "1s", "--update-delay", "1s", name,
                      timeout=300).stdout
    assert "completed" in out
    assert live_images(lab, name) == {"app:2"} and running(lab, name) == 6
    assert len(sampler.samples) >= 5, "too few samples to judge"
    assert min(sampler.samples) >= floor, f"{order}: dropped to {min(sampler.samples)} running tasks"
    lab.cli("manager1", "service", "rm", name)


# A new connection per request to each target's published port in turn until SIGTERM; prints
# {"versions": {status line or body: n}, "failures": [...]}.
MESH_CLIENT = r"""
import collections, json, signal, socket, sys, time
t0 = time.monotonic()
port, targets = int(sys.argv[1]), sys.argv[2:]
versions, failures, going = collections.Counter(), [], [True]
signal.signal(signal.SIGTERM, lambda *_: going.clear())
i = 0
while going:
    ip = targets[i % len(targets)]
    i += 1
    try:
        s = socket.create_connection((ip, port), timeout=3)
        s.sendall(b"GET /VERSION HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1."):
            failures.append(f"{time.monotonic() - t0:.2f}s {ip}: answer {data[:60]!r}")
        else:  # app:1 has no /VERSION (404), app:2 answers "2"
            versions[body.decode().strip() if b" 200 " in head.split(b"\r\n")[0] else "404"] += 1
    except OSError as exc:
        failures.append(f"{time.monotonic() - t0:.2f}s {ip}: {exc}")
print(json.dumps({"versions": versions, "failures": failures}))
"""


def test_rolling_update_through_the_mesh_fails_no_request(lab):
    """Issue 5, must show 7: a client loop through the routing mesh (to a node with no task and
    to one with a task) sees zero failed requests while a published service rolls to a new
    image. What makes it hold: a new task joins the balancers only once healthy, an old one
    leaves them as soon as it is told to stop and keeps serving a moment before its container
    stops (the agent's backend drain), and stop-first never runs a slot twice."""
    check = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 80 | grep -q HTTP"
    lab.cli("manager1", "service", "create", "--name", "mesh", "--replicas", "3", "--publish", "8088:80",
            "--constraint", "node.role==worker", "--stop-grace-period", "1s",
            "--health-cmd", check, "--health-interval", "250ms", "--health-retries", "20",
            # a server that goes at once on SIGTERM, as most do (httpd as PID 1 would ignore it
            # and serve on through the stop grace, hiding a missing drain)
            "app:1", "sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 -h / & wait", timeout=180)
    targets = ["172.31.0.11", "172.31.0.101", "172.31.0.103"]
    # The service is up once every task passed its check and joined the balancers.
    wait_until(lambda: all(t["status"]["health"] == "healthy" for t in lab.cli_json("manager1", "service", "ps", "mesh")
                           if t["desired_state"] == "running"), timeout=60, what="3 healthy tasks")
    argv, env = lab.command("manager2", [sys.executable, "-c", MESH_CLIENT, "8088", *targets])
    client = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(2)  # requests before the update too
        lab.cli("manager1", "service", "update", "--image", "app:2", "--update-parallelism", "1",
                "mesh", timeout=300)
        time.sleep(2)
    finally:
        client.send_signal(signal.SIGTERM)
        out, _ = client.communicate(timeout=30)
    seen = json.loads(out)
    assert seen["failures"] == [], f"{len(seen['failures'])} failed requests: {seen['failures'][:5]}"
    # the client really ran across the update: old and new version both answered
    assert seen["versions"].get("404", 0) > 20 and seen["versions"].get("2", 0) > 20, seen["versions"]
    assert live_images(lab, "mesh") == {"app:2"}
    lab.cli("manager1", "service", "rm", "mesh")


def test_failing_update_rolls_back_by_itself(lab):
    lab.cli("manager1", "service", "create", "--name", "app", "--replicas", "4",
            "--stop-grace-period", "1s", "app:1", "sleep", "100000", timeout=120)
    r = lab.cli("manager1", "service", "update", "--args", "sh -c 'exit 1'", "--update-parallelism", "1",
                "--update-failure-action", "rollback", "--update-monitor", "2s", "app", timeout=300,
                check=False)
    status = inspect(lab, "app")["update_status"]
    assert status["state"] == "rollback_completed", status
    assert "failed" in status["message"]
    wait_until(lambda: running(lab, "app") == 4, timeout=60, what="4 running again")
    assert {tuple(t["spec"]["container"]["args"]) for t in lab.cli_json("manager1", "service", "ps", "app")
            if t["desired_state"] == "running"} == {("sleep", "100000")}
    assert r.returncode == 0


def test_failing_update_pauses_with_the_reason(lab):
    r = lab.cli("manager1", "service", "update", "--args", "sh -c 'exit 1'", "--update-parallelism", "1",
                "--update-failure-action", "pause", "--update-monitor", "2s", "app", timeout=300,
                check=False)
    assert r.returncode == 1 and "update paused" in r.stderr and "failed" in r.stderr
    status = inspect(lab, "app")["update_status"]
    assert status["state"] == "paused" and "failed" in status["message"]
    pretty = lab.cli("manager1", "service", "inspect", "--pretty", "app").stdout
    assert "Update Status:  paused" in pretty


def test_manual_rollback_swaps_back_and_forth(lab):
    lab.cli("manager1", "service", "rollback", "app", timeout=300)  # undo the paused update
    spec = inspect(lab, "app")["spec"]
    assert spec["task_template"]["container"]["args"] == ["sleep", "100000"]
    lab.cli("manager1", "service", "update", "--image", "app:2", "app", timeout=300)
    lab.cli("manager1", "service", "rollback", "app", timeout=300)
    assert inspect(lab, "app")["spec"]["task_template"]["container"]["image"] == "app:1"
    wait_until(lambda: live_images(lab, "app") == {"app:1"}, timeout=60, what="back on app:1")
    lab.cli("manager1", "service", "rollback", "app", timeout=300)
    assert inspect(lab, "app")["spec"]["task_template"]["container"]["image"] == "app:2"
    wait_until(lambda: live_images(lab, "app") == {"app:2"}, timeout=60, what="forward to app:2")


def test_raft_files_hold_no_secret_or_env_in_plaintext(lab):
    """Issue 5: the managers' raft journal and snapshots contain neither a secret's bytes nor a
    service's env values in plaintext."""
    marker = "at-rest-" + __import__("secrets").token_hex(8)
    lab.exec("manager1", ["shoal", "secret", "create", "atrest", "-"], input=marker, check=True)
    lab.cli("manager1", "service", "create", "--detach", "--name", "envsvc", "--env", f"TOKEN={marker}",
            "--secret", "atrest", "app:1", "sleep", "100000")
    wait_until(lambda: running(lab, "envsvc") == 1, timeout=60, what="envsvc running")
    for m in ("manager1", "manager2", "manager3"):
        raft_dir = Path(lab.host(m).data_root) / "raft"
        files = [p for p in raft_dir.rglob("*") if p.is_file()]
        assert files, f"{m} has no raft files"
        leaked = [str(p) for p in files if marker.encode() in p.read_bytes()]
        assert leaked == [], f"plaintext in {leaked}"
    lab.cli("manager1", "service", "rm", "envsvc")


def test_secret_and_config_add_and_rm_roll_the_tasks(lab):
    """`service update --secret-add/--secret-rm/--config-add/--config-rm`: a rolling update
    whose new tasks see exactly the secrets and configs the service now names."""
    lab.exec("manager1", ["shoal", "secret", "create", "s-one", "-"], input="one", check=True)
    lab.exec("manager1", ["shoal", "secret", "create", "s-two", "-"], input="two", check=True)
    lab.exec("manager1", ["shoal", "config", "create", "c-one", "-"], input="conf", check=True)
    lab.cli("manager1", "service", "create", "--detach", "--name", "sec", "--secret", "s-one",
            "--constraint", "node.hostname==worker1", "--stop-grace-period", "1s",
            "app:1", "sleep", "100000")
    wait_until(lambda: running(lab, "sec") == 1, timeout=60, what="sec running")

    def read(path: str) -> str:
        task = next(t for t in lab.cli_json("manager1", "service", "ps", "sec")
                    if t["desired_state"] == "running" and t["status"]["state"] == "running")
        name = next(c["name"] for c in lab.cli_json("worker1", "container", "ls") if c["id"] == task["id"])
        r = lab.cli("worker1", "container", "exec", name, "--", "sh", "-c", f"cat {path} 2>/dev/null || echo missing",
                    check=False)
        return r.stdout.strip()

    assert read("/run/secrets/s-one") == "one"
    lab.cli("manager1", "service", "update", "--secret-rm", "s-one", "--secret-add",
            "source=s-two,target=two.txt,mode=0400", "--config-add", "source=c-one,target=/etc/c.conf",
            "sec", timeout=120)
    wait_until(lambda: running(lab, "sec") == 1, timeout=60, what="sec running again")
    spec = inspect(lab, "sec")["spec"]["task_template"]["container"]
    assert [(s["secret_name"], s["target"], s["mode"]) for s in spec["secrets"]] == \
        [("s-two", "/run/secrets/two.txt", 0o400)]
    assert [(c["config_name"], c["target"]) for c in spec["configs"]] == [("c-one", "/etc/c.conf")]
    assert read("/run/secrets/s-one") == "missing"
    assert read("/run/secrets/two.txt") == "two" and read("/etc/c.conf") == "conf"
    lab.cli("manager1", "service", "update", "--config-rm", "c-one", "sec", timeout=120)
    assert inspect(lab, "sec")["spec"]["task_template"]["container"]["configs"] == []
    # removing what the service does not use names it
    r = lab.cli("manager1", "service", "update", "--secret-rm", "s-one", "sec", check=False)
    assert r.returncode == 2 and "the service uses no secret 's-one'" in r.stderr
    lab.cli("manager1", "service", "rm", "sec")
