"""Issue 19 on the package's lab, real runc containers: `service logs --since/--until/--raw/
--details` and by task id, gathered by a manager from the worker; `container top | stats | kill
| logs --since` on the task's worker, and a killed task replaced by its restart policy; bad input
refused in one line. Then the log driver's rotation under a task printing 1 MB/s, read on the
worker's disk, and `service logs --since 10s`."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from integration.helpers import needs_root, wait_until
from integration.observability.support import (IMAGE, create_service, lab_settled, services,
                                               tasks_of, wait_running)
from tests import imagebuild

pytestmark = [needs_root, pytest.mark.lab,
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed"),
              pytest.mark.skipif(not imagebuild.busybox_available(),
                                 reason="busybox-static is not installed")]

STAMPED, CHATTY, TICKER = "stamped", "chatty", "ticker"
SCRIPT = 'i=0; while true; do echo "line $i"; i=$((i+1)); sleep 0.3; done'
# About 1 MB a second: 1000 lines of ~1 kB, then a pause of a second.
CHATTY_SCRIPT = ('pad=$(head -c 1000 /dev/zero | tr "\\0" x); i=0; '
                 'while true; do i=$((i+1)); yes "$i $pad" | head -n 1000; sleep 1; done')
TICK_SCRIPT = 'i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.5; done'
# Docker's max-size is decimal: 1m is 10^6 bytes.
MAX_SIZE, MAX_FILE = 1_000_000, 3


@pytest.fixture(scope="module")
def obs(lab):
    lab_settled(lab)
    with services(lab, STAMPED, CHATTY, TICKER):
        yield lab


def running_task(lab, service: str) -> dict | None:
    up = [t for t in tasks_of(lab, service) if t["desired_state"] == "running"
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


def test_container_commands_and_service_logs(obs):
    lab = obs
    create_service(lab, STAMPED, "--constraint", "node.hostname==worker1",
                   "--restart-condition", "any", IMAGE, "sh", "-c", SCRIPT)
    task = wait_until(lambda: running_task(lab, STAMPED), timeout=60, what="the task running")
    tid = task["id"]

    def logged(n: int):
        res = lab.cli("manager1", "service", "logs", "-t", "--raw", STAMPED)
        lines = res.stdout.strip().splitlines()
        return lines if len(lines) >= n else None
    lines = wait_until(lambda: logged(12), timeout=30, what="a dozen lines logged")

    # --raw: the lines alone; the default prefixes each with task@node
    assert all(text.startswith("line ") for _, text in stamped(lines))
    plain = lab.cli("manager1", "service", "logs", STAMPED).stdout.splitlines()
    assert plain and all("@worker1" in line and "    | line " in line for line in plain)

    # --since / --until, in Unix seconds and RFC 3339, on the manager's gathering
    times = stamped(lines)
    mid = times[len(times) // 2][0]
    since = stamped(lab.cli("manager1", "service", "logs", "-t", "--raw", "--since",
                            f"{mid:.6f}", STAMPED).stdout.splitlines())
    assert since and all(ts >= mid - 1e-6 for ts, _ in since)
    assert since[0][1] == times[len(times) // 2][1]
    until_text = datetime.utcfromtimestamp(mid).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    until = stamped(lab.cli("manager1", "service", "logs", "-t", "--raw", "--until",
                            until_text, STAMPED).stdout.splitlines())
    assert until and all(ts <= mid + 1e-6 for ts, _ in until)
    assert [text for _, text in until] == [text for _, text in times[:len(until)]]
    recent = lab.cli("manager1", "service", "logs", "--raw", "--since", "1s",
                     STAMPED).stdout.splitlines()
    assert 0 < len(recent) < len(lab.cli("manager1", "service", "logs", "--raw",
                                         STAMPED).stdout.splitlines())

    # --details: docker's com.docker.swarm.* attributes before each line
    details = lab.cli("manager1", "service", "logs", "--raw", "--details", "--tail", "2",
                      STAMPED).stdout.splitlines()
    [svc_id] = [s["id"] for s in lab.cli_json("manager1", "service", "ls")
                if s["spec"]["name"] == STAMPED]
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
    assert table[0].split()[:3] == ["CONTAINER", "ID", "NAME"]
    assert any(tid[:12] in row for row in table[1:]), table
    # without --no-stream: a sample a second until interrupted
    cmd, env = lab.command("worker1", ["shoal", "container", "stats", "--format", "json", tid])
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
    one_line_error(lab.cli("manager1", "service", "logs", "--since", "soon", STAMPED,
                           check=False), "--since", "RFC 3339")
    one_line_error(lab.cli("manager1", "service", "logs", "no-such-thing", check=False),
                   "no such service or task")

    # kill: the task fails and its restart policy replaces it
    assert lab.cli("worker1", "container", "kill", tid).stdout.strip() == tid
    replacement = wait_until(
        lambda: (t := running_task(lab, STAMPED)) and t["id"] != tid and t,
        timeout=60, what="a replacement of the killed task")
    history = tasks_of(lab, STAMPED)
    killed = [t for t in history if t["id"] == tid][0]
    assert killed["status"]["state"] == "failed", killed["status"]
    assert "137" in json.dumps(killed["status"]) or "SIGKILL" in json.dumps(killed["status"])
    assert replacement["id"] != tid
    again = lab.cli("worker1", "container", "kill", tid, check=False)
    one_line_error(again)  # its container stopped, or already removed with the task
    assert "not running" in again.stderr or "no such container" in again.stderr


def log_files(cdir: Path) -> dict[str, tuple[int, int]]:
    """The container's log files on the worker's disk: name -> (size, bytes allocated)."""
    out = {}
    for path in cdir.iterdir():
        if path.name.startswith(("container.log", "stdout.log", "stderr.log")):
            with_stat = path.stat()
            out[path.name] = (with_stat.st_size, with_stat.st_blocks * 512)
    return out


def test_a_task_printing_1_mb_a_second_keeps_its_logs_bounded(obs):
    lab = obs
    # 1m x 3 rather than the default 10m x 3: the bound is reached, and held, within seconds
    # instead of the half-minute 30 MB would take at 1 MB/s; the rule tested is the same.
    create_service(lab, CHATTY, "--constraint", "node.hostname==worker2",
                   "--log-driver", "json-file", "--log-opt", f"max-size={MAX_SIZE // 10**6}m",
                   "--log-opt", f"max-file={MAX_FILE}", IMAGE, "sh", "-c", CHATTY_SCRIPT)
    [task] = wait_running(lab, CHATTY, 1)
    assert task["node_hostname"] == "worker2"
    cdir = Path(lab.host("worker2").data_root) / "executor" / "containers" / task["id"]
    assert cdir.is_dir(), cdir

    # Watch the files while the task writes several times what the bound allows.
    written = 0
    samples = 0
    deadline = time.monotonic() + 120
    while written < 4 * MAX_SIZE * MAX_FILE:
        assert time.monotonic() < deadline, f"only {written} bytes written: {log_files(cdir)}"
        files = log_files(cdir)
        kept = {n: s for n, s in files.items() if n.startswith("container.log")}
        assert set(kept) <= {"container.log", *(f"container.log.{k}" for k in
                                                range(1, MAX_FILE))}, files
        assert all(size <= MAX_SIZE for size, _ in kept.values()), files
        assert sum(size for size, _ in kept.values()) <= MAX_SIZE * MAX_FILE, files
        written = files.get("stdout.log", (0, 0))[0]
        samples += 1
        time.sleep(0.5)   # a sampling period, not a wait for anything
    files = log_files(cdir)
    assert f"container.log.{MAX_FILE - 1}" in files, files   # it did rotate, to the last file
    # What container.log copied is freed from the raw file behind it (hole-punched): its
    # apparent size is all the task wrote, its blocks a small part of that.
    size, allocated = files["stdout.log"]
    assert size >= 4 * MAX_SIZE * MAX_FILE and allocated <= MAX_SIZE * MAX_FILE, files
    on_disk = sum(a for n, (_, a) in files.items())
    print(f"\n{CHATTY}: {size / 1e6:.1f} MB written; {samples} samples of {cdir.name}'s files, "
          f"never above {MAX_FILE} x {MAX_SIZE / 1e6:.0f} MB; now {on_disk / 1e6:.2f} MB "
          f"on disk: " + ", ".join(f"{n}={s}" for n, (s, _) in sorted(files.items())))

    # --since 10s on the chatty task: nothing older than 10 s (it keeps about 3 s anyway)
    asked = time.time()
    got = stamped(lab.cli("manager1", "service", "logs", "-t", "--raw", "--since", "10s",
                          CHATTY, timeout=60).stdout.splitlines())
    assert got and min(ts for ts, _ in got) >= asked - 10


def test_service_logs_since_10s_shows_only_the_last_10_seconds(obs):
    lab = obs
    create_service(lab, TICKER, "--constraint", "node.hostname==worker3", IMAGE, "sh", "-c",
                   TICK_SCRIPT)
    wait_running(lab, TICKER, 1)

    def history() -> list[tuple[float, str]]:
        return stamped(lab.cli("manager1", "service", "logs", "-t", "--raw", TICKER)
                       .stdout.splitlines())
    # enough history that a window of 10 s leaves some out
    wait_until(lambda: (h := history()) and h[-1][0] - h[0][0] >= 16, timeout=60,
               interval=1.0, what=f"{TICKER}: 16 s of log")
    asked = time.time()
    got = stamped(lab.cli("manager1", "service", "logs", "-t", "--raw", "--since", "10s",
                          TICKER).stdout.splitlines())
    answered = time.time()
    everything = history()
    assert got, "nothing in the last 10 s"
    # only the last 10 s: nothing older than the window that began 10 s before it was asked
    assert min(ts for ts, _ in got) >= asked - 10
    # ... and all of it: the first line is within a tick (0.5 s, and the time the command
    # took) of the window's start, and every line of the window is there, in order
    assert min(ts for ts, _ in got) <= answered - 10 + 1.0
    start = min(ts for ts, _ in got)
    assert [t for _, t in got] == [t for ts, t in everything if start <= ts <= got[-1][0]]
    older = [ts for ts, _ in everything if ts < asked - 10]
    assert len(older) >= 8, "the full log reaches further back"
    print(f"\n{TICKER}: --since 10s gave {len(got)} lines over "
          f"{got[-1][0] - start:.1f} s; the full log {len(everything)} over "
          f"{everything[-1][0] - everything[0][0]:.1f} s")
