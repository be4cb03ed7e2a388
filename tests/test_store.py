import threading

from common import codec
from common.model import Node, NodeSpec, Service, ServiceSpec, Task
from manager.state.store import Store, Transaction


def commit(store: Store, txn: Transaction) -> dict:
    return store.apply(txn.encode())


def test_create_sets_version_to_index():
    s = Store()
    r = commit(s, Transaction().create("nodes", Node(id="a")).create("nodes", Node(id="b")))
    assert r["ok"] and r["index"] == 1
    assert s.get("nodes", "a").meta.version == 1
    assert s.count("nodes") == 2


def test_transaction_is_atomic():
    s = Store()
    commit(s, Transaction().create("nodes", Node(id="a")))
    r = commit(s, Transaction().create("nodes", Node(id="b")).create("nodes", Node(id="a")))
    assert not r["ok"] and r["code"] == "exists"
    assert s.get("nodes", "b") is None
    assert s.index == 1


def test_stale_update_is_refused():
    s = Store()
    commit(s, Transaction().create("nodes", Node(id="a")))
    first, second = s.get("nodes", "a"), s.get("nodes", "a")
    first.spec.labels["x"] = "1"
    assert commit(s, Transaction().update("nodes", first))["ok"]
    second.spec.labels["y"] = "2"
    r = commit(s, Transaction().update("nodes", second))
    assert r["code"] == "conflict" and "changed since it was read" in r["message"]
    assert s.get("nodes", "a").spec.labels == {"x": "1"}


def test_get_returns_a_private_copy():
    s = Store()
    commit(s, Transaction().create("nodes", Node(id="a")))
    s.get("nodes", "a").spec.labels["x"] = "mutated"
    assert s.get("nodes", "a").spec.labels == {}


def test_update_and_delete_of_missing_object():
    s = Store()
    assert commit(s, Transaction().update("nodes", Node(id="zz")))["code"] == "not_found"
    assert commit(s, Transaction().delete("nodes", "zz"))["code"] == "not_found"


def test_unique_names_and_rename():
    s = Store()
    commit(s, Transaction().create("services", Service(id="s1", spec=ServiceSpec(name="web"))))
    r = commit(s, Transaction().create("services", Service(id="s2", spec=ServiceSpec(name="web"))))
    assert r["code"] == "exists" and "web" in r["message"]
    svc = s.get("services", "s1")
    svc.spec.name = "api"
    assert commit(s, Transaction().update("services", svc))["ok"]
    assert s.by_name("services", "web") is None and s.by_name("services", "api").id == "s1"
    assert commit(s, Transaction().create("services", Service(id="s2", spec=ServiceSpec(name="web"))))["ok"]


def test_indexes_follow_updates_and_deletes():
    s = Store()
    t = Task(id="t1", service_id="svc", slot=1, node_id="n1")
    commit(s, Transaction().create("tasks", t))
    assert [x.id for x in s.by_index("tasks", "node_id", "n1")] == ["t1"]
    moved = s.get("tasks", "t1")
    moved.node_id = "n2"
    commit(s, Transaction().update("tasks", moved))
    assert s.by_index("tasks", "node_id", "n1") == []
    assert [x.id for x in s.by_index("tasks", "slot", ("svc", 1))] == ["t1"]
    commit(s, Transaction().delete("tasks", "t1"))
    assert s.by_index("tasks", "service_id", "svc") == []


def test_retried_transaction_applies_once():
    s = Store()
    txn = Transaction().create("nodes", Node(id="a"))
    first = commit(s, txn)
    again = commit(s, txn)
    assert first == again and s.index == 1


def test_events_carry_old_and_new():
    s = Store()
    seen = []
    unsubscribe = s.subscribe(seen.extend)
    commit(s, Transaction().create("nodes", Node(id="a")))
    n = s.get("nodes", "a")
    n.spec.availability = "drain"
    commit(s, Transaction().update("nodes", n))
    commit(s, Transaction().delete("nodes", "a"))
    assert [(e.action, e.index) for e in seen] == [("create", 1), ("update", 2), ("delete", 3)]
    assert seen[1].old.spec.availability == "active" and seen[1].obj.spec.availability == "drain"
    unsubscribe()
    commit(s, Transaction().create("nodes", Node(id="b")))
    assert len(seen) == 3


def test_failed_transaction_emits_nothing():
    s = Store()
    seen = []
    s.subscribe(seen.extend)
    commit(s, Transaction().delete("nodes", "nope"))
    assert seen == []


def test_snapshot_round_trip_keeps_indexes_and_dedup():
    s = Store()
    txn = Transaction().create("nodes", Node(id="a", spec=NodeSpec(labels={"k": "v"})))
    commit(s, txn)
    commit(s, Transaction().create("tasks", Task(id="t", service_id="x", node_id="a")))
    restored = Store()
    restored.restore(s.snapshot())
    assert restored.index == 2
    assert restored.get("nodes", "a").spec.labels == {"k": "v"}
    assert [t.id for t in restored.by_index("tasks", "node_id", "a")] == ["t"]
    assert commit(restored, txn)["index"] == 1  # still recognised as already applied


def _packed_from_scratch(s: Store) -> bytes:
    """What Store.snapshot wrote before it kept objects' bytes between snapshots."""
    return codec.pack({"index": s.index,
                       "tables": {t: list(objs.values()) for t, objs in s._tables.items()},
                       "recent": list(s._recent.items())})


def test_a_snapshot_repacks_what_changed_since_the_last_one_and_drops_what_went():
    s = Store()
    commit(s, Transaction().create("nodes", Node(id="a", spec=NodeSpec(labels={"k": "1"})))
           .create("nodes", Node(id="b")))
    commit(s, Transaction().create("tasks", Task(id="t", service_id="x", node_id="a")))
    assert s.snapshot() == _packed_from_scratch(s)
    node = s.get("nodes", "a")
    node.spec.labels["k"] = "2"
    commit(s, Transaction().update("nodes", node).delete("nodes", "b"))
    task = s.get("tasks", "t")
    task.node_id = "b"
    commit(s, Transaction().update("tasks", task))
    second = s.snapshot()
    assert second == _packed_from_scratch(s)
    restored = Store()
    restored.restore(second)
    assert restored.get("nodes", "a").spec.labels == {"k": "2"}
    assert restored.get("nodes", "b") is None
    assert restored.get("tasks", "t").node_id == "b"
    assert set(s._packed) == {("nodes", "a"), ("tasks", "t")}


def test_find_by_prefix_and_name():
    s = Store()
    commit(s, Transaction().create("services", Service(id="abcdef", spec=ServiceSpec(name="web")))
           .create("services", Service(id="abcxyz", spec=ServiceSpec(name="api"))))
    assert s.find("services", "web").id == "abcdef"
    assert s.find("services", "abcd").id == "abcdef"
    assert s.find("services", "abc") is None  # ambiguous
    assert s.find("services", "") is None


def test_reads_during_concurrent_applies():
    s = Store()
    stop = threading.Event()
    errors = []

    def reader():
        while not stop.is_set():
            try:
                for n in s.list("nodes"):
                    assert n.id
            except Exception as exc:  # pragma: no cover - the assertion is that none happen
                errors.append(exc)

    th = threading.Thread(target=reader)
    th.start()
    for i in range(2000):
        commit(s, Transaction().create("nodes", Node(id=f"n{i}")))
    stop.set()
    th.join()
    assert errors == [] and s.count("nodes") == 2000


def test_unknown_table_is_refused_without_effect():
    from manager.state.store import Op
    s = Store()
    r = s.apply(Transaction(ops=[Op("delete", "bogus", id="x")]).encode())
    assert not r["ok"] and r["code"] == "invalid" and s.index == 0
