"""Issue 19 in a lab of 1 manager + 1 worker, real shoald processes and runc containers:
`service logs --since/--until/--raw/--details` and by task id, gathered by the manager from the
worker; `container top | stats | kill | logs --since` on the worker of a task, and a killed
task replaced by its restart policy; bad input refused in one line."""
from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime

import pytest

from integration.helpers import busybox_lab, needs_root, wait_until
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(),
                                 reason="busybox-static is not installed")]

SCRIPT = 'i=0; while true; do echo "line $i"; i=$((i+1)); sleep 0.3; done'


def running_task(lab, service: str) -> dict | None:
    items = lab.cli_json("manager1", "service", "ps", service)
    up = [t for t in items if t["desired_state"] == "running"
          and t["status"]["state"] == "running"]
    return up[0] if len(up) == 1 else None


def stamped(lines: list[str]) -> list[tuple[float, str]]:
    """`service logs -t --raw` lines: (Unix time, text)."""
    out = []
    for line in lines:
        stamp, _, text = line.partition(" ")
        whole, _, frac = stamp.rstrip("Z").partition(".")
        ts = datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + (frac or "0"))
        out.append((ts, text))
    return out


def one_line_error(res, *words: str) -> None:
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("Usage:"), res.stderr
    for word in words:
        assert word in res.stderr, (word, res.stderr)


def test_container_commands_and_service_logs(tmp_path):
    with busybox_lab("cc", managers=1, workers=1) as lab:
        lab.cli("manager1", "service", "create", "--detach", "--name", "stamped",
                "--constraint", "node.role==worker", "--restart-condition", "any",
                "busybox:1", "sh", "-c", SCRIPT, timeout=60)
        task = wait_until(lambda: running_task(lab, "stamped"), timeout=60,
                          what="the task running")
        tid = task["id"]

        def logged(n: int):
            res = lab.cli("manager1", "service", "logs", "-t", "--raw", "stamped")
            lines = res.stdout.strip().splitlines()
            return lines if len(lines) >= n else None
        lines = wait_until(lambda: logged(12), timeout=30, what="a dozen lines logged")

        # --raw: the lines alone; the default prefixes each with task@node
        assert all(text.startswith("line ") for _, text in stamped(lines))
        plain = lab.cli("manager1", "service", "logs", "stamped").stdout.splitlines()
        assert plain and all("@" in line and "    | line " in line for line in plain)

        # --since / --until, in Unix seconds and RFC 3339, on the manager's gathering
        times = stamped(lines)
        mid = times[len(times) // 2][0]
        since = stamped(lab.cli("manager1", "service", "logs", "-t", "--raw", "--since",
                                f"{mid:.6f}", "stamped").stdout.splitlines())
        assert since and all(ts >= mid - 1e-6 for ts, _ in since)
        assert since[0][1] == times[len(times) // 2][1]
        until_text = datetime.utcfromtimestamp(mid).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        until = stamped(lab.cli("manager1", "service", "logs", "-t", "--raw", "--until",
                                until_text, "stamped").stdout.splitlines())
        assert until and all(ts <= mid + 1e-6 for ts, _ in until)
        assert [text for _, text in until] == [text for _, text in times[:len(until)]]
        recent = lab.cli("manager1", "service", "logs", "--raw", "--since", "1s",
                         "stamped").stdout.splitlines()
        assert 0 < len(recent) < len(lab.cli("manager1", "service", "logs", "--raw",
                                             "stamped").stdout.splitlines())

        # --details: docker's com.docker.swarm.* attributes before each line
        details = lab.cli("manager1", "service", "logs", "--raw", "--details", "--tail", "2",
                          "stamped").stdout.splitlines()
        svc_id = lab.cli_json("manager1", "service", "ls")[0]["id"]
        assert len(details) == 2 and all(
            f"com.docker.swarm.service.id={svc_id},com.docker.swarm.task.id={tid} line " in d
            and d.startswith("com.docker.swarm.node.id=") for d in details)

        # a task's logs by its id
        by_task = lab.cli("manager1", "service", "logs", "--raw", "--tail", "3", tid)
        assert len(by_task.stdout.splitlines()) == 3

        # container logs --since on the worker, across its log (default rotation)
        clogs = lab.cli("worker1", "container", "logs", "-t", "--since", f"{mid:.6f}", tid)
        assert clogs.stdout.splitlines()[0].endswith(times[len(times) // 2][1])
        cuntil = lab.cli("worker1", "container", "logs", "--until", until_text, "--tail", "all",
                         tid).stdout.splitlines()
        assert cuntil == [text for _, text in until]

        # top: the task's processes, as a ps table
        top = lab.cli("worker1", "container", "top", tid).stdout.splitlines()
        assert top[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
        assert any(line.endswith(f"sh -c {SCRIPT}") for line in top[1:]), top
        assert len(top) <= 3  # sh, and perhaps its sleep: nothing of the host
        aux = lab.cli("worker1", "container", "top", tid, "aux").stdout.splitlines()
        assert aux[0].split()[:2] == ["USER", "PID"]

        # stats: one sample, as JSON and as the table
        sample = json.loads(lab.cli("worker1", "container", "stats", "--no-stream", "--format",
                                    "json", tid).stdout.splitlines()[0])
        assert sample["id"] == tid and sample["mem_usage"] > 0 and sample["pids"] >= 1
        table = lab.cli("worker1", "container", "stats", "--no-stream").stdout.splitlines()
        assert table[0].split()[:3] == ["CONTAINER", "ID", "NAME"] and tid[:12] in table[1]
        # without --no-stream: a sample a second until interrupted
        cmd, env = lab.command("worker1", ["shoal", "container", "stats", "--format", "json",
                                           tid])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        try:
            first, second = (json.loads(proc.stdout.readline()) for _ in range(2))
            assert second["read"] - first["read"] >= 0.5 and second["id"] == tid
        finally:
            proc.kill()
            proc.wait()

        # bad input: one line each
        one_line_error(lab.cli("worker1", "container", "kill", "-s", "NOPE", tid, check=False),
                       "unknown signal", "--signal")
        one_line_error(lab.cli("worker1", "container", "top", "no-such-thing", check=False),
                       "no such container")
        one_line_error(lab.cli("manager1", "service", "logs", "--since", "soon", "stamped",
                               check=False), "--since", "RFC 3339")
        one_line_error(lab.cli("manager1", "service", "logs", "no-such-thing", check=False),
                       "no such service or task")

        # kill: the task fails and its restart policy replaces it
        assert lab.cli("worker1", "container", "kill", tid).stdout.strip() == tid
        replacement = wait_until(
            lambda: (t := running_task(lab, "stamped")) and t["id"] != tid and t,
            timeout=60, what="a replacement of the killed task")
        history = lab.cli_json("manager1", "service", "ps", "stamped")
        killed = [t for t in history if t["id"] == tid][0]
        assert killed["status"]["state"] == "failed", killed["status"]
        assert "137" in json.dumps(killed["status"]) or "SIGKILL" in json.dumps(killed["status"])
        assert replacement["id"] != tid
        again = lab.cli("worker1", "container", "kill", tid, check=False)
        one_line_error(again)  # its container stopped, or already removed with the task
        assert "not running" in again.stderr or "no such container" in again.stderr
