"""Issue 19, the event stream, on the package's lab (3 managers + 3 workers).

`shoal events` is followed from a follower (all events, and `--filter type=task`) while a
service's container is killed on its worker (its task goes running -> failed with exit code 137,
and its replacement runs), another service is created, scaled, updated to an image that exists
nowhere (its task is rejected, with the error), a node is drained and the leader is SIGKILLed (a
new leader is elected). Afterwards the surviving managers' histories (`--since <before>`) hold
the same events, in order and without duplicates. The killed leader, started again, rebuilds
its history from its raft journal past the raft snapshot it starts from: a part of the same
events, in the same order, without duplicates.

This module kills a manager: it starts it again and waits until it is Reachable and every node
is active again, so the lab is whole after it. It also runs last (by its name), so a failure
here cannot spoil the other modules.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from integration.helpers import leader_of, needs_root, node_table, wait_until
from integration.observability.support import (IMAGE, MANAGERS, Follow, create_service,
                                               event_lines, lab_settled, services,
                                               wait_running)
from integration.test_docker_cli import DOCKER

pytestmark = [needs_root, pytest.mark.lab]

EVS, KILLED = "evs", "evkill"


@pytest.fixture(scope="module")
def obs(lab):
    lab_settled(lab)
    with services(lab, EVS, KILLED):
        try:
            yield lab
        finally:   # the lab whole again for whatever runs after: every manager up, no drain
            for host in MANAGERS:
                if lab.host(host).state in ("killed", "exited", "stopped"):
                    lab.start(host)
            lab.cli("manager1", "node", "update", "--availability", "active", "worker1",
                    check=False)
    lab_settled(lab)


def _key(ev: dict) -> tuple:
    """What two managers' records of one event share: a leader event is each manager's own
    sight of the election, so its time is its own."""
    if ev["action"] == "leader":
        return ("leader", ev["id"], ev["attributes"]["term"])
    return (ev["index"], ev["time"], ev["type"], ev["action"], ev["id"],
            json.dumps(ev.get("changes"), sort_keys=True),
            json.dumps(ev.get("state"), sort_keys=True))


def same_events(a: list[dict], b: list[dict]) -> bool:
    """The same store events in the same order, and the same elections. A leader event is each
    manager's own sight of an election (a follower polls for it), so where it falls among the
    store events applied meanwhile differs from one manager to another (seen: one follower
    recorded it before index 145, the other after)."""
    def split(events: list[dict]) -> tuple[list, list]:
        keys = [_key(e) for e in events]
        return [k for k in keys if k[0] != "leader"], sorted(k for k in keys if k[0] == "leader")
    return split(a) == split(b)


def in_order_without_duplicates(events: list[dict]) -> bool:
    keys = [_key(e) for e in events]
    indexes = [e["index"] for e in events if e["action"] != "leader"]
    return len(set(keys)) == len(keys) and indexes == sorted(indexes)


def history(lab, host: str, since: float, until: float, *filters: str) -> list[dict]:
    args = [a for f in filters for a in ("--filter", f)]
    res = lab.cli(host, "events", "--since", f"{since:.9f}", "--until", f"{until:.9f}",
                  *args, "--format", "json", timeout=30)
    return event_lines(res.stdout)


def history_like(lab, host: str, since: float, until: float, want: list[tuple],
                 timeout: float = 60) -> list[dict]:
    """The host's task history over the window once it equals `want` (a restarted manager
    applies its journal's entries once the leader tells it how far they are committed); on a
    timeout, what differs."""
    deadline = time.monotonic() + timeout
    while True:
        got = history(lab, host, since, until, "type=task")
        keys = [_key(e) for e in got]
        if keys == want:
            return got
        if time.monotonic() > deadline:
            missing = [k for k in want if k not in keys]
            extra = [k for k in keys if k not in want]
            raise AssertionError(
                f"{host}'s task history over the window differs from the followed one: "
                f"{len(keys)} events, {len(want)} wanted; missing {missing[:5]}; extra "
                f"{extra[:5]}; first {keys[:2]}" + "\n" + lab.log(host, lines=60))
        time.sleep(0.5)


def kill_sequence(events: list[dict], killed_id: str) -> list[dict]:
    """Among task events: the killed task running, then failed, then a replacement in its slot
    running, in that order (each the first of its kind); [] while not all there."""
    def first(match, after: int = -1) -> dict | None:
        return next((e for e in events if e["index"] > after and match(e)), None)
    up = first(lambda e: e["id"] == killed_id and e["action"] == "state"
               and e["state"]["new"] == "running")
    if up is None:
        return []
    failed = first(lambda e: e["id"] == killed_id and e["action"] == "state"
                   and e["state"]["new"] == "failed", up["index"])
    if failed is None:
        return []
    slot = up["attributes"]["slot"]
    replaced = first(lambda e: e.get("service") == KILLED and e["id"] != killed_id
                     and e["attributes"].get("slot") == slot and e["action"] == "state"
                     and e["state"]["new"] == "running", failed["index"])
    return [up, failed, replaced] if replaced else []


def test_events_followed_on_a_follower_and_the_same_history_after_failover(obs):
    lab = obs
    leader = wait_until(lambda: leader_of(lab, "manager1"), what="a leader")
    follower, other = [m for m in MANAGERS if m != leader]
    before = time.time()
    # --since: the history from `before`, then live, in one stream with no gap between them,
    # so nothing done after `before` can be missed however long the stream took to connect
    follow = Follow(lab, follower, "--since", f"{before:.9f}", "--format", "json")
    tasks = Follow(lab, follower, "--since", f"{before:.9f}", "--filter", "type=task",
                   "--format", "json")
    try:
        # A container killed on its worker: its task fails with the exit code, and its
        # restart policy runs a replacement.
        create_service(lab, KILLED, "--constraint", "node.hostname==worker2",
                       "--restart-condition", "any", IMAGE, "sleep", "100000", via=leader)
        [victim] = wait_running(lab, KILLED, 1)
        assert lab.cli("worker2", "container", "kill", victim["id"]).stdout.strip() \
            == victim["id"]
        up, failed, replaced = wait_until(lambda: kill_sequence(tasks.events(), victim["id"]),
                                          timeout=90, what="running -> failed -> replacement")
        assert failed["state"]["old"] == "running" and failed["state"]["exit_code"] == 137, \
            failed
        assert failed["node_name"] == "worker2" and failed["name"].startswith(f"{KILLED}.1.")
        assert replaced["node_name"] == "worker2" and replaced["id"] != victim["id"]
        assert {e["type"] for e in tasks.events()} == {"task"}   # the filter held

        lab.cli(leader, "service", "create", "-d", "--name", EVS, "--replicas", "1",
                "--label", "team=ev", "--constraint", "node.role==worker", IMAGE, "sleep",
                "1000", timeout=60)
        created = follow.wait_for("the service's create", lambda e: e["type"] == "service"
                                  and e["action"] == "create" and e["name"] == EVS)
        assert created["labels"] == {"team": "ev"} and created["attributes"]["replicas"] == "1"
        follow.wait_for("a task running", lambda e: e["type"] == "task"
                        and e["service"] == EVS and e["action"] == "state"
                        and e["state"]["new"] == "running")

        lab.cli(leader, "service", "scale", "-d", f"{EVS}=2", timeout=60)
        scaled = follow.wait_for("the scale", lambda e: e["type"] == "service"
                                 and e["action"] == "update" and e["name"] == EVS)
        assert {"path": "spec.mode.replicas", "old": 1, "new": 2} in scaled["changes"]

        lab.cli(leader, "service", "update", "-d", "--image", "busybox:nope",
                "--update-failure-action", "pause", EVS, timeout=60)
        image = follow.wait_for("the image update", lambda e: e["type"] == "service"
                                and e["action"] == "update" and any(
                                    c["path"] == "spec.task_template.container.image"
                                    for c in e.get("changes", [])))
        assert {"path": "spec.task_template.container.image", "old": IMAGE,
                "new": "busybox:nope"} in image["changes"]
        follow.wait_for("the update started", lambda e: e["type"] == "service"
                        and e["action"] == "state" and e["state"]["new"] == "updating")
        rejected = follow.wait_for("a task rejected with its error", lambda e:
                                   e["type"] == "task" and e["service"] == EVS
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
        killed_at = time.time()
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
        # A write after `until`, seen by the stream and by the other manager: all that was
        # applied by `until` is in both (each manager applies and records in raft order).
        lab.cli(other, "node", "update", "--label-add", "obs.after=1", "worker3", timeout=60)

        def after_mark(e: dict) -> bool:
            return (e["type"] == "node" and e["name"] == "worker3" and e["action"] == "update"
                    and any(c["path"] == "spec.labels.obs.after" for c in e.get("changes", [])))
        follow.wait_for("the write after `until`", after_mark)
        wait_until(lambda: any(after_mark(e) for e in history(lab, other, before, time.time())),
                   what=f"the write after `until` in {other}'s history")
    finally:
        follow.stop()
        tasks.stop()
    live = [e for e in follow.events() if before <= e["time"] <= until]
    assert no_secret_in(live)
    assert in_order_without_duplicates(live)

    # Another manager's history over the same window, after the failover: the same events.
    past = history(lab, other, before, until)
    assert past and all(before <= e["time"] <= until for e in past)
    assert same_events(past, live), ([_key(e) for e in past], [_key(e) for e in live])
    assert in_order_without_duplicates(past)

    # The task events from before the SIGKILL, with --since afterwards: the surviving managers
    # hold every one, in order, without duplicates.
    followed = [e for e in tasks.events() if before <= e["time"] <= until]
    assert in_order_without_duplicates(followed)
    assert kill_sequence(followed, victim["id"]) == [up, failed, replaced]
    want = [_key(e) for e in followed]
    for host in (other, follower):
        got = history_like(lab, host, before, until, want)
        assert in_order_without_duplicates(got), host
        assert kill_sequence(got, victim["id"]) == [up, failed, replaced], host
        assert all(e["time"] < killed_at for e in kill_sequence(got, victim["id"])), host

    # The killed leader, started again, rebuilds its history from its raft journal, but only
    # past the raft snapshot it starts from (manager/events/recorder.py: a snapshot's restore
    # leaves a gap), and pysyncobj takes one every 60 s. So its history is a part of the
    # followed one, in the same order and without duplicates, that holds every event of the
    # entries its journal held after that snapshot.
    snapshot = Path(lab.host(leader).data_root) / "raft" / "snapshot"
    snapshot_at = snapshot.stat().st_mtime if snapshot.exists() else 0.0
    restarted_at = time.time()
    lab.start(leader)
    wait_until(lambda: node_table(lab, other)[leader]["manager_status"] == "reachable"
               and node_table(lab, other)[leader]["status"] == "ready", timeout=90,
               what=f"{leader} Reachable again")
    journal_part = [_key(e) for e in followed if snapshot_at < e["time"] < killed_at]

    def rebuilt() -> list[dict] | None:
        got = history(lab, leader, before, until, "type=task")
        keys = [_key(e) for e in got]
        return got if set(journal_part) <= set(keys) else None
    got = wait_until(rebuilt, timeout=60,
                     what=f"{leader}'s history past its snapshot rebuilt from its journal")
    keys = [_key(e) for e in got]
    assert in_order_without_duplicates(got)
    assert keys == [k for k in want if k in set(keys)], "not a part of the followed history"
    # ... and it records again: a write after its restart is in its history
    lab.cli(other, "node", "update", "--label-rm", "obs.after", "worker3", timeout=60)
    wait_until(lambda: any(e["name"] == "worker3" and e["action"] == "update"
                           for e in history(lab, leader, restarted_at, time.time(),
                                            "type=node")),
               what=f"a write after {leader}'s restart in its history")
    coverage = (f"{leader} restarted: {len(keys)} of those {len(want)} in its history "
                + (f"(it started from a raft snapshot taken {snapshot_at - before:+.1f} s from "
                   "the window's start)" if snapshot_at else "(it had no raft snapshot)"))
    # the same, read by a person
    text = lab.cli(other, "events", "--since", f"{before:.9f}", "--until", f"{until:.9f}",
                   "--filter", "type=task", "--filter", f"service={KILLED}",
                   timeout=30).stdout.splitlines()
    assert any(f"({victim['id'][:12]})" in line and "running -> failed" in line
               for line in text), text

    # Filters and the readable form, from the history of the third manager.
    res = lab.cli(other, "events", "--since", f"{before:.9f}", "--until", "0s",
                  "--filter", f"service={EVS}", "--filter", "event=state",
                  "--filter", "type=task", timeout=30)
    lines = res.stdout.splitlines()
    assert lines and all(f" task state {EVS}." in line for line in lines), lines
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
        docker_events = [(e["Action"], e["Actor"]["ID"]) for e in event_lines(res.stdout)]
        ours = []
        for e in past:
            if e["type"] == "service" and (not ours or ours[-1][2] != (e["index"], e["id"])):
                ours.append(({"state": "update"}.get(e["action"], e["action"]), e["id"],
                             (e["index"], e["id"])))
        assert docker_events == [(a, i) for a, i, _ in ours]
        assert ("create", created["id"]) in docker_events
        [imaged] = [e["Actor"]["Attributes"] for e in event_lines(res.stdout)
                    if "image.new" in e["Actor"]["Attributes"]]
        assert (imaged["name"], imaged["image.old"], imaged["image.new"],
                imaged["updatestate.new"]) == (EVS, IMAGE, "busybox:nope", "updating")
    print(f"\n{len(live)} events followed on {follower}, the same {len(past)} from {other}'s "
          f"history after {leader} was killed; {len(followed)} task events the same on both "
          f"surviving managers; {coverage}; e.g.:\n" + "\n".join(text[:3]))


def no_secret_in(events: list[dict]) -> bool:
    text = json.dumps(events)
    return "password" not in text.lower() and "SHLKEY" not in text and "SHLTKN" not in text
