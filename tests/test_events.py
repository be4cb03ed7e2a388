"""The cluster event stream on a bare store (real Store, real WatchHub, no raft): diffs, task
state changes with their errors, filters, since/until, the history's bound, agreement between
two replicas, and no secret data in any event. Junk filters and times (Hypothesis) get errors
naming the flag."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import codec, errors
from common.model import (Cluster, Config, ConfigSpec, Node, NodeDescription, RegistryAuth,
                          Secret, SecretSpec, Service, ServiceMode, ServiceSpec, Task)
from common.timespec import parse_time
from manager.events import filters as event_filters
from manager.events import recorder as event_recorder
from manager.events.diff import events_of
from manager.events.model import ClusterEvent
from manager.events.recorder import EventRecorder
from manager.state.store import Event, Store, Transaction
from manager.state.watch import WatchHub
from shoal import eventsapi
from tests.store_manager import StoreManager, api_client


class HubManager(StoreManager):
    """A bare store with the WatchHub a manager has (manager/manager.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.hub: WatchHub | None = None
        self.state = None

    def watch(self, accept=None) -> asyncio.Queue:
        if self.hub is None:
            self.hub = WatchHub(self.store, asyncio.get_running_loop())
        return self.hub.watch(accept)

    def unwatch(self, queue) -> None:
        self.hub.unwatch(queue)


async def settle() -> None:
    for _ in range(5):   # the hub hops each batch onto the loop
        await asyncio.sleep(0)


def _node(node_id: str, host: str) -> Node:
    return Node(id=node_id, description=NodeDescription(hostname=host))


def _service(name: str = "web", image: str = "busybox:1", replicas: int = 1) -> Service:
    svc = Service(id=f"svc-{name}-0123456789", spec=ServiceSpec(
        name=name, labels={"tier": "front"}, mode=ServiceMode(replicas=replicas)))
    svc.spec.task_template.container.image = image
    return svc


def _task(svc: Service, slot: int, node: str = "n1") -> Task:
    t = Task(id=f"t{slot}-{svc.spec.name}", service_id=svc.id, service_name=svc.spec.name,
             slot=slot, node_id=node, spec=codec.clone(svc.spec.task_template))
    t.status.state = "running"
    return t


def _update(store: Store, table: str, obj_id: str, change) -> Transaction:
    obj = store.get(table, obj_id)
    change(obj)
    return Transaction().update(table, obj)


def _plain(evs: list[ClusterEvent]) -> list[dict]:
    return [e.to_plain() for e in evs]


# ---- diffs ----------------------------------------------------------------------------------
def test_a_service_update_names_the_changed_fields_and_its_progress_is_a_state_event():
    async def scenario():
        m = HubManager()
        rec = event_recorder.attach(m)
        m.commit(Transaction().create("nodes", _node("n1", "alpha")))
        svc = _service()
        txn = Transaction().create("services", svc)
        m.commit(txn)

        def change(s: Service) -> None:
            s.spec.task_template.container.image = "busybox:2"
            s.spec.mode.replicas = 3
            s.update_status.state, s.update_status.message = "updating", "update in progress"
        upd = _update(m.store, "services", svc.id, change)
        m.commit(upd)

        def pause(s: Service) -> None:
            s.update_status.state = "paused"
            s.update_status.message = "update paused due to failure of task t1: no such image"
        m.commit(_update(m.store, "services", svc.id, pause))
        await settle()
        return list(rec.history), txn, upd

    history, txn, upd = asyncio.run(scenario())
    assert [(e.type, e.action) for e in history] == [
        ("node", "create"), ("service", "create"), ("service", "update"), ("service", "state"),
        ("service", "state")]
    create, update, started, paused = history[1:]
    assert create.time == txn.time and create.index == 2
    assert create.name == "web" and create.attributes["image"] == "busybox:1"
    assert update.time == started.time == upd.time and update.index == started.index == 3
    # in the order of the model's fields
    assert [c.to_plain() for c in update.changes] == [
        {"path": "spec.task_template.container.image", "old": "busybox:1", "new": "busybox:2"},
        {"path": "spec.mode.replicas", "old": 1, "new": 3}]
    assert started.state.to_plain() == {"old": "", "new": "updating",
                                        "message": "update in progress"}
    assert paused.state.old == "updating" and paused.state.new == "paused"
    assert "no such image" in paused.state.message


def test_task_state_changes_carry_old_and_new_state_and_the_error():
    async def scenario():
        m = HubManager()
        rec = event_recorder.attach(m)
        m.commit(Transaction().create("nodes", _node("n1", "alpha")))
        svc = _service()
        t = _task(svc, 1)
        t.status.state = "assigned"
        m.commit(Transaction().create("services", svc).create("tasks", t))

        def reject(task: Task) -> None:
            task.status.state = "rejected"
            task.status.message = "preparing"
            task.status.err = "pull busybox:nope: manifest unknown"
            task.status.timestamp = time.time()
        m.commit(_update(m.store, "tasks", t.id, reject))

        def shut(task: Task) -> None:
            task.desired_state = "shutdown"
        m.commit(_update(m.store, "tasks", t.id, shut))
        m.commit(Transaction().delete("tasks", t.id))
        await settle()
        return [e for e in rec.history if e.type == "task"]

    created, rejected, shut, removed = asyncio.run(scenario())
    assert (created.action, created.state.new, created.node_name) == ("create", "assigned", "alpha")
    assert created.service == "web" and created.name.startswith("web.1.")
    assert rejected.action == "state"
    assert rejected.state.to_plain() == {"old": "assigned", "new": "rejected",
                                         "message": "preparing",
                                         "error": "pull busybox:nope: manifest unknown"}
    assert "status.timestamp" not in [c.path for c in rejected.changes]
    assert shut.action == "update" and [c.to_plain() for c in shut.changes] == [
        {"path": "desired_state", "old": "running", "new": "shutdown"}]
    assert removed.action == "remove" and removed.id == created.id


def test_node_availability_is_an_update_and_its_status_a_state_event():
    old = _node("n1", "alpha")
    old.status.state = "ready"
    new = codec.clone(old)
    new.spec.availability = "drain"
    new.status.state = "down"
    new.status.message = "heartbeat failure"
    update, state = events_of(Event("update", "nodes", new, old, 5, 9.0), 9.0, str)
    assert (update.action, update.name, update.node) == ("update", "alpha", "n1")
    assert [c.to_plain() for c in update.changes] == [
        {"path": "spec.availability", "old": "active", "new": "drain"}]
    assert state.state.to_plain() == {"old": "ready", "new": "down",
                                      "message": "heartbeat failure"}


def test_standalone_containers_are_their_own_type_and_other_tables_make_no_events():
    t = Task(id="c1", container_name="box")
    [ev] = events_of(Event("create", "tasks", t, None, 1, 1.0), 1.0, str)
    assert ev.type == "container" and ev.name == "box"
    for table, obj in (("clusters", Cluster(id="c")),
                       ("registry_auths", RegistryAuth(id="s", password="pw"))):
        assert events_of(Event("create", table, obj, None, 2, 1.0), 1.0, str) == []


def test_large_values_are_named_without_their_values():
    old, new = _service(), _service()
    new.spec.task_template.container.args = ["x" * 500]
    [ev] = events_of(Event("update", "services", new, old, 2, 1.0), 1.0, str)
    assert ev.changes[0].to_plain() == {"path": "spec.task_template.container.args"}


# ---- no secret data -------------------------------------------------------------------------
_SECRET = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=12, max_size=40)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=_SECRET, env=_SECRET, password=_SECRET)
def test_no_secret_data_in_any_event(payload, env, password):
    async def scenario():
        m = HubManager()
        rec = event_recorder.attach(m)
        secret = Secret(id="s1", spec=SecretSpec(name="db", data=payload.encode()))
        config = Config(id="c1", spec=ConfigSpec(name="conf", data=payload.encode()))
        svc = _service()
        svc.spec.task_template.container.env = [f"PASSWORD={env}"]
        m.commit(Transaction().create("secrets", secret).create("configs", config)
                 .create("services", svc)
                 .create("registry_auths", RegistryAuth(id=svc.id, username="u",
                                                        password=password)))
        m.commit(_update(m.store, "configs", "c1",
                         lambda c: setattr(c.spec, "data", (payload + "2").encode())))
        m.commit(_update(m.store, "services", svc.id, lambda s: setattr(
            s.spec.task_template.container, "env", [f"PASSWORD={env}x"])))
        m.commit(_update(m.store, "registry_auths", svc.id,
                         lambda a: setattr(a, "password", password + "y")))
        m.commit(Transaction().delete("secrets", "s1").delete("configs", "c1"))
        await settle()
        return list(rec.history)

    history = asyncio.run(scenario())
    text = json.dumps(_plain(history))
    for value in (payload, env, password):
        assert value not in text
    changed = [c for e in history for c in e.changes]
    assert {c.path for c in changed} == {"spec.data", "spec.task_template.container.env"}
    assert not any(c.shown for c in changed)


# ---- filters ----------------------------------------------------------------------------------
def _ev(**kw) -> ClusterEvent:
    base = dict(index=1, time=1.0, type="task", action="state", id="abcdef123",
                service="web", service_id="svc123456", node="node9876", node_name="alpha",
                labels={"tier": "front"})
    base.update(kw)
    return ClusterEvent(**base)


def test_filters_or_within_a_key_and_across_keys():
    f = event_filters.parse(["type=task", "type=service", "event=state"])
    assert f.match(_ev()) and f.match(_ev(type="service"))
    assert not f.match(_ev(type="node")) and not f.match(_ev(action="update"))
    assert event_filters.parse(["service=web"]).match(_ev())
    assert event_filters.parse(["service=svc12"]).match(_ev())       # an id prefix
    assert not event_filters.parse(["service=we"]).match(_ev())      # names match whole
    assert event_filters.parse(["node=alpha"]).match(_ev())
    assert event_filters.parse(["node=node98"]).match(_ev())
    assert not event_filters.parse(["node=beta"]).match(_ev())
    assert not event_filters.parse(["node=alpha"]).match(_ev(node="", node_name=""))
    assert event_filters.parse(["label=tier"]).match(_ev())
    assert event_filters.parse(["label=tier=front"]).match(_ev())
    assert not event_filters.parse(["label=tier=back"]).match(_ev())
    assert event_filters.parse([]).match(_ev())


@pytest.mark.parametrize("raw,words", [
    ("colour=red", ["--filter 'colour=red'", "type, event, service, node, label"]),
    ("type=widget", ["type must be one of", "service, node, task"]),
    ("event=explode", ["event must be one of", "create, update, remove, state"]),
    ("type", ["KEY=VALUE"]), ("service=", ["service needs a value"]),
    ("label==x", ["label needs a key"])])
def test_bad_filters_name_the_flag_and_the_fix(raw, words):
    with pytest.raises(errors.InvalidArgument) as err:
        event_filters.parse([raw])
    assert err.value.field == "filter"
    for word in words:
        assert word in err.value.message


@settings(max_examples=200, deadline=None)
@given(raw=st.text(max_size=60))
def test_any_filter_string_is_taken_or_refused_clearly(raw):
    try:
        f = event_filters.parse([raw])
    except errors.InvalidArgument as exc:
        assert exc.message.startswith("invalid --filter") and exc.field == "filter"
    else:
        key, _, value = raw.partition("=")
        assert key.strip() in event_filters.KEYS and value
        f.match(_ev())   # and matching never raises


# ---- times ------------------------------------------------------------------------------------
def test_times_as_rfc3339_unix_seconds_and_durations_ago():
    now = 1_800_000_000.0
    assert parse_time("1700000000", "--since", now) == 1_700_000_000.0
    assert parse_time("1700000000.25", "--since", now) == 1_700_000_000.25
    assert parse_time("10m", "--since", now) == now - 600
    assert parse_time("1h30m", "--since", now) == now - 5400
    assert parse_time("1.5s", "--until", now) == now - 1.5
    assert parse_time("0s", "--until", now) == now
    assert parse_time("2023-11-14T22:13:20Z", "--since", now) == 1_700_000_000.0
    assert parse_time("2023-11-14T23:13:20.5+01:00", "--since", now) == 1_700_000_000.5
    assert parse_time("2023-11-14T22:13:20.123456789Z", "--since", now) == \
        pytest.approx(1_700_000_000.123456789)


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.text(max_size=30), st.from_regex(r"[0-9.:TZ+-]{1,25}", fullmatch=True),
                     st.from_regex(r"[0-9.]{1,8}(ns|us|ms|s|m|h|d|y)?", fullmatch=True)))
def test_any_time_string_is_a_time_or_an_error_naming_the_flag(raw):
    try:
        when = parse_time(raw, "--since", 1_800_000_000.0)
    except ValueError as exc:
        assert "--since" in str(exc) and "RFC 3339" in str(exc)
    else:
        assert isinstance(when, float) and when == when and abs(when) < 1e12


def test_the_cli_refuses_bad_times_and_filters_before_asking_the_daemon():
    from shoal.cli import main
    runner = CliRunner()
    res = runner.invoke(main, ["--socket", "/nonexistent.sock", "events", "--since", "yesterday"])
    assert res.exit_code != 0 and "--since" in res.output and "RFC 3339" in res.output
    res = runner.invoke(main, ["--socket", "/nonexistent.sock", "events", "--since", "1m",
                               "--until", "2m"])
    assert res.exit_code != 0 and "before --since" in res.output


# ---- the history ----------------------------------------------------------------------------
def test_the_history_is_bounded_and_keeps_the_newest():
    rec = EventRecorder(Store(), limit=50)
    for i in range(1, 121):
        svc = _service(f"s{i}")
        rec.take(Event("create", "services", svc, None, i, float(i)))
    assert len(rec.history) == 50
    assert [e.index for e in rec.history] == list(range(71, 121))
    assert [e.index for e in rec.past(100.0, 110.0)] == list(range(100, 111))


def test_a_snapshot_restore_resynchronises_without_creates():
    async def scenario():
        source = Store()
        source.apply(Transaction().create("services", _service("a")).encode())
        source.apply(Transaction().create("services", _service("b")).encode())
        m = HubManager()
        rec = event_recorder.attach(m)
        m.commit(Transaction().create("nodes", _node("n1", "alpha")))
        m.store.restore(source.snapshot())
        await settle()
        return list(rec.history)
    assert [(e.type, e.action) for e in asyncio.run(scenario())] == [("node", "create")]


def test_two_replicas_applying_the_same_entries_record_the_same_events():
    """What makes `--since` work across a failover: the events come from the entries."""
    entries: list[bytes] = []
    svc = _service()
    entries.append(Transaction().create("nodes", _node("n1", "alpha")).encode())
    entries.append(Transaction().create("services", svc).encode())
    t = _task(svc, 1)
    entries.append(Transaction().create("tasks", t).encode())
    moved = codec.clone(t)
    moved.status.state, moved.status.err = "failed", "exit 1"
    moved.meta.version = 3
    entries.append(Transaction().update("tasks", moved).encode())
    entries.append(Transaction().delete("services", svc.id).encode())

    def replay(delay: float) -> list[dict]:
        store = Store()
        rec = EventRecorder(store)
        store.subscribe(lambda evs: [rec.take(e) for e in evs])
        for entry in entries:
            time.sleep(delay)   # applied later on this replica: the times must not move
            assert store.apply(entry)["ok"]
        return _plain(list(rec.history))

    first, second = replay(0.0), replay(0.01)
    assert first == second and len(first) == 5


def test_a_leader_is_recorded_when_it_changes():
    rec = EventRecorder(Store())
    rec.saw_leader(2, "n1", "alpha", "10.0.0.1:2378")
    rec.saw_leader(2, "n1", "alpha", "10.0.0.1:2378")
    # a candidate's bumped term while raft still names the lost leader: no election
    rec.saw_leader(3, "n1", "alpha", "10.0.0.1:2378")
    rec.saw_leader(3, "n2", "beta", "10.0.0.2:2378")
    assert [(e.action, e.name, e.attributes["term"]) for e in rec.history] == [
        ("leader", "alpha", "2"), ("leader", "beta", "3")]


def test_an_exec_is_recorded_with_who_and_what_and_filtered_as_exec():
    from shoal.cli.events import line
    store = Store()
    rec = EventRecorder(store)
    rec.saw_exec(who="root on the local socket of manager2", task_id="t1", task_name="web.1.t1",
                 service_id="svc1", node_id="n1", argv=["sh", "-c", "id"], tty=True,
                 when=1_700_000_000.0)
    [ev] = list(rec.history)
    assert (ev.type, ev.action, ev.id, ev.node) == ("task", "exec", "t1", "n1")
    assert ev.attributes == {"who": "root on the local socket of manager2",
                             "command": "sh -c id", "tty": "true"}
    assert event_filters.parse(["event=exec"]).match(ev)
    assert not event_filters.parse(["event=state"]).match(ev)
    text = line(ev.to_plain())
    assert "task exec web.1.t1" in text and "by root on the local socket of manager2: sh -c id (tty)" in text
    # not a store change: Docker's /events does not report it
    from shoal.dockerapi.translate.events import message
    assert message([ev]) is None


# ---- the stream -------------------------------------------------------------------------------
def _lines(raw: bytes) -> list[dict]:
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def test_the_stream_sends_history_then_live_events_filtered_and_ends_at_until():
    async def scenario():
        m = HubManager()
        event_recorder.attach(m)
        client = await api_client(m, eventsapi.routes())
        try:
            m.commit(Transaction().create("nodes", _node("n1", "alpha")))
            m.commit(Transaction().create("services", _service("old")))
            await settle()
            mark = time.time()
            await asyncio.sleep(0.02)
            m.commit(Transaction().create("services", _service("api")))
            await settle()
            live = await client.get("/events", params={
                "since": f"{mark:.9f}", "filters": json.dumps(["type=service"])})
            assert live.status == 200
            first = json.loads(await asyncio.wait_for(live.content.readline(), 5))
            m.commit(Transaction().create("nodes", _node("n2", "beta")))
            m.commit(_update(m.store, "services", "svc-api-0123456789",
                             lambda s: setattr(s.spec.mode, "replicas", 2)))
            second = json.loads(await asyncio.wait_for(live.content.readline(), 5))
            live.close()
            past = await client.get("/events", params={"since": "0",
                                                       "until": f"{time.time():.9f}"})
            history = _lines(await asyncio.wait_for(past.read(), 5))
            ago = await client.get("/events", params={"since": "1h", "until": "0s",
                                                      "filters": json.dumps(["node=beta"])})
            beta = _lines(await asyncio.wait_for(ago.read(), 5))
            bad = [await client.get("/events", params=p) for p in (
                {"since": "yesterday"}, {"since": "10", "until": "5"},
                {"until": "1", "filters": json.dumps(["colour=red"])},
                {"until": "1", "filters": "type=service"})]
            bad_bodies = [(r.status, await r.json()) for r in bad]
            return first, second, history, beta, bad_bodies
        finally:
            await client.close()
            m.hub.close()

    first, second, history, beta, bad = asyncio.run(scenario())
    assert (first["type"], first["action"], first["name"]) == ("service", "create", "api")
    assert (second["action"], second["changes"]) == (
        "update", [{"path": "spec.mode.replicas", "old": 1, "new": 2}])
    assert [(e["type"], e["name"]) for e in history] == [
        ("node", "alpha"), ("service", "old"), ("service", "api"), ("node", "beta"),
        ("service", "api")]
    assert [e["index"] for e in history] == [1, 2, 3, 4, 5]
    assert [(e["type"], e["name"]) for e in beta] == [("node", "beta")]
    assert all(status == 400 for status, _ in bad), bad
    assert "--since" in bad[0][1]["message"] and "RFC 3339" in bad[0][1]["message"]
    assert "before --since" in bad[1][1]["message"]
    assert "colour" in bad[2][1]["message"] and "JSON list" in bad[3][1]["message"]


def test_the_readable_line_shows_time_type_action_name_and_details():
    from shoal.cli.events import line
    ev = _ev(time=1_700_000_000.0, name="web.1.abcdef123")
    ev.state = __import__("manager.events.model", fromlist=["StateChange"]).StateChange(
        old="preparing", new="rejected", error="no such image: busybox:nope")
    text = line(ev.to_plain())
    assert text.startswith("2023-11-14T22:13:20.000000Z task state web.1.abcdef123 (abcdef123)")
    assert "preparing -> rejected" in text and "error: no such image: busybox:nope" in text
