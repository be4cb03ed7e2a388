"""Issue 19, the event stream, on real shoald processes: 3 managers and 1 worker with busybox.

`shoal events --format json` is followed from a follower while a service is created, scaled,
updated to an image that exists nowhere (its task is rejected, with the error), a node is
drained and the leader is SIGKILLed (a new leader is elected). Then another manager's history
(`--since <before> --until <now>`) must hold the same events: every manager records what its
own replica applies, with the index and time of the raft entry.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from integration.helpers import busybox_lab, leader_of, needs_root, wait_until
from integration.test_docker_cli import DOCKER

pytestmark = [needs_root, pytest.mark.lab]

MANAGERS = ["manager1", "manager2", "manager3"]


@pytest.fixture(scope="module")
def lab():
    with busybox_lab("evt", managers=3, workers=1) as lab:
        yield lab


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _key(ev: dict) -> tuple:
    """What two managers' records of one event share: a leader event is each manager's own
    sight of the election, so its time is its own."""
    if ev["action"] == "leader":
        return ("leader", ev["id"], ev["attributes"]["term"])
    return (ev["index"], ev["time"], ev["type"], ev["action"], ev["id"],
            json.dumps(ev.get("changes"), sort_keys=True),
            json.dumps(ev.get("state"), sort_keys=True))


class Follow:
    """`shoal events ARGS` running inside a host, its output in a file; stopped by its PID."""

    def __init__(self, lab, host: str, *args: str) -> None:
        cmd, env = lab.command(host, ["shoal", "events", *args])
        self.out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def events(self) -> list[dict]:
        self.out.seek(0)
        return _lines(self.out.read().decode())

    def wait_for(self, what: str, match, timeout: float = 60) -> dict:
        def seen():
            assert self.proc.poll() is None, f"shoal events exited: {self.events()}"
            return next((e for e in self.events() if match(e)), None)
        return wait_until(seen, timeout=timeout, interval=0.3, what=what)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_events_followed_on_a_follower_and_the_same_history_after_failover(lab):
    leader = wait_until(lambda: leader_of(lab, "manager1"), what="a leader")
    follower, other = [m for m in MANAGERS if m != leader]
    follow = Follow(lab, follower, "--format", "json")
    try:
        time.sleep(1.5)   # connected: what comes now is live
        assert follow.proc.poll() is None, follow.events()
        before = time.time()
        lab.cli(leader, "service", "create", "-d", "--name", "evs", "--replicas", "1",
                "--label", "team=ev", "busybox:1", "sleep", "1000", timeout=60)
        created = follow.wait_for("the service's create", lambda e: e["type"] == "service"
                                  and e["action"] == "create" and e["name"] == "evs")
        assert created["labels"] == {"team": "ev"} and created["attributes"]["replicas"] == "1"
        follow.wait_for("a task running", lambda e: e["type"] == "task"
                        and e["service"] == "evs" and e["action"] == "state"
                        and e["state"]["new"] == "running")

        lab.cli(leader, "service", "scale", "-d", "evs=2", timeout=60)
        scaled = follow.wait_for("the scale", lambda e: e["type"] == "service"
                                 and e["action"] == "update" and e["name"] == "evs")
        assert {"path": "spec.mode.replicas", "old": 1, "new": 2} in scaled["changes"]

        lab.cli(leader, "service", "update", "-d", "--image", "busybox:nope",
                "--update-failure-action", "pause", "evs", timeout=60)
        image = follow.wait_for("the image update", lambda e: e["type"] == "service"
                                and e["action"] == "update" and any(
                                    c["path"] == "spec.task_template.container.image"
                                    for c in e.get("changes", [])))
        assert {"path": "spec.task_template.container.image", "old": "busybox:1",
                "new": "busybox:nope"} in image["changes"]
        follow.wait_for("the update started", lambda e: e["type"] == "service"
                        and e["action"] == "state" and e["state"]["new"] == "updating")
        rejected = follow.wait_for("a task rejected with its error", lambda e:
                                   e["type"] == "task" and e["service"] == "evs"
                                   and e["action"] == "state"
                                   and e["state"]["new"] == "rejected", timeout=90)
        assert "busybox:nope" in rejected["state"]["error"], rejected
        assert rejected["node_name"] and rejected["attributes"]["image"] == "busybox:nope"

        lab.cli(leader, "node", "update", "--availability", "drain", "worker1", timeout=60)
        drained = follow.wait_for("the drain", lambda e: e["type"] == "node"
                                  and e["action"] == "update" and e["name"] == "worker1")
        assert {"path": "spec.availability", "old": "active", "new": "drain"} \
            in drained["changes"]

        old_terms = {e["attributes"]["term"] for e in follow.events() if e["action"] == "leader"}
        lab.kill(leader)
        elected = follow.wait_for("a leader elected", lambda e: e["action"] == "leader"
                                  and e["attributes"]["term"] not in old_terms, timeout=60)
        assert elected["type"] == "node" and elected["name"] in (follower, other)
        assert elected["name"] != leader
        # The old leader's node goes down in the new leader's eyes.
        follow.wait_for("the old leader down", lambda e: e["type"] == "node"
                        and e["action"] == "state" and e["name"] == leader
                        and e["state"]["new"] == "down", timeout=60)
        until = time.time()
        time.sleep(1.0)   # what was applied by `until` reaches the stream
    finally:
        follow.stop()
    live = [e for e in follow.events() if before <= e["time"] <= until]
    assert no_secret_in(live)

    # Another manager's history over the same window, after the failover: the same events.
    res = lab.cli(other, "events", "--since", f"{before:.9f}", "--until", f"{until:.9f}",
                  "--format", "json", timeout=30)
    past = _lines(res.stdout)
    assert past and all(before <= e["time"] <= until for e in past)
    assert [_key(e) for e in past] == [_key(e) for e in live]

    # Filters and the readable form, from the history of the third manager.
    res = lab.cli(other, "events", "--since", f"{before:.9f}", "--until", "0s",
                  "--filter", "service=evs", "--filter", "event=state",
                  "--filter", "type=task", timeout=30)
    lines = res.stdout.splitlines()
    assert lines and all(" task state evs." in line for line in lines), lines
    assert any("-> rejected" in line and "busybox:nope" in line for line in lines), lines
    res = lab.cli(other, "events", "--since", "10m", "--until", "0s", "--filter",
                  "node=worker1", "--filter", "event=update", timeout=30)
    assert any("node update worker1" in line and "spec.availability: active -> drain" in line
               for line in res.stdout.splitlines()), res.stdout
    bad = lab.cli(other, "events", "--since", "last tuesday", check=False)
    assert bad.returncode != 0 and "--since" in bad.stderr and "RFC 3339" in bad.stderr
    bad = lab.cli(other, "events", "--until", "0s", "--filter", "type=widget", check=False)
    assert bad.returncode != 0 and "type=widget" in bad.stderr and "one of" in bad.stderr
    on_worker = lab.cli("worker1", "events", "--until", "0s", check=False)
    assert on_worker.returncode != 0 and "not a swarm manager" in on_worker.stderr
    # Docker's /events reads the same history: one Docker event per change of a service.
    if os.path.exists(DOCKER):
        cfg = tempfile.mkdtemp(prefix="shoal-docker-cfg-")
        try:
            res = lab.exec(other, ["env", f"DOCKER_CONFIG={cfg}", DOCKER, "events", "--since",
                                   f"{before:.9f}", "--until", f"{until:.9f}", "--filter",
                                   "type=service", "--format", "{{json .}}"], timeout=30)
        finally:
            shutil.rmtree(cfg, ignore_errors=True)
        assert res.returncode == 0, res.stderr
        docker_events = [(e["Action"], e["Actor"]["ID"]) for e in _lines(res.stdout)]
        ours = []
        for e in past:
            if e["type"] == "service" and (not ours or ours[-1][2] != (e["index"], e["id"])):
                ours.append(({"state": "update"}.get(e["action"], e["action"]), e["id"],
                             (e["index"], e["id"])))
        assert docker_events == [(a, i) for a, i, _ in ours]
        assert ("create", created["id"]) in docker_events
        [imaged] = [e["Actor"]["Attributes"] for e in _lines(res.stdout)
                    if "image.new" in e["Actor"]["Attributes"]]
        assert (imaged["name"], imaged["image.old"], imaged["image.new"],
                imaged["updatestate.new"]) == ("evs", "busybox:1", "busybox:nope", "updating")
    print(f"\n{len(live)} events followed on {follower}, the same {len(past)} from {other}'s "
          f"history after {leader} was killed; e.g.:\n" + "\n".join(lines[:3]))
    lab.cli(other, "service", "rm", "evs", check=False)


def no_secret_in(events: list[dict]) -> bool:
    text = json.dumps(events)
    return "password" not in text.lower() and "SHLKEY" not in text and "SHLTKN" not in text
