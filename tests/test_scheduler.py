from collections import Counter

import pytest

from common.errors import InvalidArgument
from common.model import (Node, NodeDescription, NodeSpec, NodeStatus, Placement, Platform,
                          ResourceRequirements, Resources, Task, TaskSpec)
from manager.scheduler.constraints import node_matches, parse_constraint, parse_preference
from manager.scheduler.scheduler import ASSIGNED, Decision, Scheduler

GB = 1 << 30


def node(id: str, *, state: str = "ready", availability: str = "active", role: str = "worker",
         labels: dict | None = None, hostname: str = "", os: str = "linux",
         arch: str = "x86_64", cpus: float = 0, mem: int = 0) -> Node:
    return Node(id=id, role=role,
                spec=NodeSpec(labels=dict(labels or {}), availability=availability),
                status=NodeStatus(state=state),
                description=NodeDescription(hostname=hostname or f"host-{id}",
                                            platform=Platform(os=os, architecture=arch),
                                            resources=Resources(int(cpus * 1e9), mem)))


def task(id: str, service: str = "s1", *, constraints=(), prefs=(), cpu: float = 0, mem: int = 0,
         max_replicas: int = 0, node_id: str = "") -> Task:
    spec = TaskSpec(resources=ResourceRequirements(reservations=Resources(int(cpu * 1e9), mem)),
                    placement=Placement(constraints=list(constraints), preferences=list(prefs),
                                        max_replicas=max_replicas))
    return Task(id=id, service_id=service, spec=spec, node_id=node_id)


def tasks(n: int, service: str = "s1", prefix: str = "", **kw) -> list[Task]:
    return [task(f"{prefix or service}-{i}", service, **kw) for i in range(n)]


def sched(*nodes: Node) -> Scheduler:
    s = Scheduler()
    for n in nodes:
        s.upsert_node(n)
    return s


def spread(decisions: list[Decision]) -> Counter:
    return Counter(d.node_id for d in decisions)


# ---- spread --------------------------------------------------------------------------------
def test_spread_evenly():
    s = sched(node("a"), node("b"), node("c"))
    ds = s.schedule(tasks(6))
    assert spread(ds) == {"a": 2, "b": 2, "c": 2}
    assert all(d.message == ASSIGNED for d in ds)
    assert [d.task_id for d in ds] == [f"s1-{i}" for i in range(6)]


def test_existing_service_load_is_respected():
    s = sched(node("a"), node("b"), node("c"))
    for i in range(2):
        t = task(f"old{i}", node_id="a")
        s.task_placed(t)
    assert spread(s.schedule(tasks(4))) == {"b": 2, "c": 2}


def test_ties_on_service_tasks_go_to_the_node_with_fewest_tasks_overall():
    s = sched(node("a"), node("b"), node("c"))
    s.task_placed(task("x1", "other", node_id="a"))
    s.task_placed(task("x2", "other", node_id="b"))
    assert [d.node_id for d in s.schedule(tasks(3))] == ["c", "a", "b"]


def test_decisions_of_one_batch_carry_into_the_next():
    s = sched(node("a"), node("b"))
    first = spread(s.schedule(tasks(3)))
    second = spread(s.schedule(tasks(3, prefix="more")))
    assert first + second == {"a": 3, "b": 3}


def test_a_task_handed_back_is_not_counted_twice():
    s = sched(node("a"), node("b"))
    ts = tasks(2)
    s.schedule(ts)
    s.schedule(ts)      # the manager failed to commit and retries the same tasks
    assert spread(s.schedule(tasks(2, prefix="x"))) == {"a": 1, "b": 1}


# ---- node state ----------------------------------------------------------------------------
def test_drained_paused_and_down_nodes_get_nothing():
    s = sched(node("ok"), node("d", availability="drain"), node("p", availability="pause"),
              node("x", state="down"), node("u", state="unknown"))
    assert spread(s.schedule(tasks(4))) == {"ok": 4}


def test_node_updates_and_removal():
    s = sched(node("a"), node("b"))
    s.upsert_node(node("b", availability="drain"))
    assert spread(s.schedule(tasks(2))) == {"a": 2}
    s.upsert_node(node("b"))
    assert spread(s.schedule(tasks(2, prefix="y"))) == {"b": 2}
    s.remove_node("b")
    assert spread(s.schedule(tasks(1, prefix="z"))) == {"a": 1}
    s.remove_node("nope")


def test_removed_node_keeps_its_tasks_counted_until_they_are_removed():
    s = sched(node("a"), node("b"))
    s.schedule(tasks(2))
    s.remove_node("b")
    s.upsert_node(node("b"))
    # b still holds s1-1, so both nodes are equal
    assert spread(s.schedule(tasks(2, prefix="n"))) == {"a": 1, "b": 1}


# ---- constraints ---------------------------------------------------------------------------
@pytest.mark.parametrize("expr, expected", [
    ("node.labels.zone==a", {"n1"}),
    ("node.labels.zone == A", {"n1"}),                 # values compare case-insensitively
    ("node.labels.zone!=a", {"n2", "n3"}),             # a missing label satisfies !=
    ("engine.labels.zone==b", {"n2"}),
    ("node.role==manager", {"n2"}),
    ("node.role!=manager", {"n1", "n3"}),
    ("node.hostname==web-3", {"n3"}),
    ("node.hostname!=web-3", {"n1", "n2"}),
    ("node.id==n2", {"n2"}),
    ("node.id!=n2", {"n1", "n3"}),
    ("node.platform.os==linux", {"n1", "n2"}),
    ("node.platform.os!=linux", {"n3"}),
    ("node.platform.arch==x86_64", {"n1", "n3"}),
    ("node.platform.arch==amd64", {"n1", "n3"}),       # Go's name for the same thing
    ("node.platform.arch!=x86_64", {"n2"}),
])
def test_each_constraint_operator(expr, expected):
    nodes = [node("n1", labels={"zone": "a"}, hostname="web-1"),
             node("n2", labels={"zone": "b"}, role="manager", hostname="web-2", arch="aarch64"),
             node("n3", hostname="web-3", os="windows")]
    assert {n.id for n in nodes if parse_constraint(expr).matches(n)} == expected
    s = sched(*nodes)
    assert set(spread(s.schedule(tasks(6, constraints=[expr])))) == expected


def test_constraints_combine_with_and():
    nodes = [node("n1", labels={"zone": "a", "ssd": "true"}), node("n2", labels={"zone": "a"}),
             node("n3", labels={"ssd": "true"})]
    cons = ["node.labels.zone==a", "node.labels.ssd==true"]
    assert spread(sched(*nodes).schedule(tasks(3, constraints=cons))) == {"n1": 3}
    assert node_matches(nodes[0], cons) and not node_matches(nodes[1], cons)
    assert not node_matches(nodes[0], ["node.labels.zone=a"])   # bad text matches nothing


@pytest.mark.parametrize("expr, why", [
    ("node.labels.zone=a", "no == or != operator"),
    ("node.labels.zone", "no == or != operator"),
    ("node.labels.zone==", "empty value"),
    ("node.labels.==a", "missing label name"),
    ("node.zone==a", "unknown key 'node.zone'"),
    ("node.role==boss", "node.role is worker or manager"),
    ("node.labels.zone===a", "more than one operator"),
    ("node.labels.zone==a!=b", "more than one operator"),
])
def test_bad_constraint_is_refused_with_a_useful_message(expr, why):
    with pytest.raises(InvalidArgument) as info:
        parse_constraint(expr)
    err = info.value
    assert err.field == "placement.constraints" and err.status == 400
    assert repr(expr) in err.message and why in err.message
    assert "KEY==VALUE or KEY!=VALUE" in err.message and "node.labels.<label>" in err.message


def test_bad_constraint_in_a_batch_fails_only_its_tasks():
    s = sched(node("a"))
    ds = s.schedule([task("bad", "s1", constraints=["zone=a"]), task("good", "s2")])
    assert ds[0].node_id is None and "invalid placement constraint 'zone=a'" in ds[0].message
    assert ds[1].node_id == "a"


@pytest.mark.parametrize("text", ["binpack=node.labels.zone", "spread=zone", "spread",
                                  "spread=node.labels."])
def test_bad_preference(text):
    with pytest.raises(InvalidArgument) as info:
        parse_preference(text)
    assert info.value.field == "placement.preferences"
    assert repr(text) in info.value.message and "spread=node.labels.<label>" in info.value.message


def test_preference_forms():
    assert parse_preference("spread=node.labels.zone").label == "zone"
    assert parse_preference(" spread = engine.labels.rack ").label == "rack"


# ---- resources -----------------------------------------------------------------------------
def test_memory_reservation_fills_a_node_then_the_next():
    s = sched(node("small", mem=1 * GB), node("big", mem=4 * GB))
    ds = s.schedule(tasks(6, mem=1 * GB))
    assert [d.node_id for d in ds[:3]] == ["big", "small", "big"]   # spread until small is full
    assert spread(ds[:5]) == {"small": 1, "big": 4}
    assert ds[5] == Decision("s1-5", None, "no suitable node (2 nodes lack memory)")


def test_cpu_and_memory_reasons():
    s = sched(node("a", cpus=1, mem=8 * GB), node("b", cpus=4, mem=1 * GB),
              node("c", cpus=0.5, mem=1 * GB))
    ds = s.schedule(tasks(1, cpu=2, mem=2 * GB))
    assert ds[0].message == ("no suitable node (1 node lacks CPU; 1 node lacks CPU and memory; "
                             "1 node lacks memory)")


def test_reservations_accumulate_with_existing_tasks():
    s = sched(node("a", cpus=2), node("b", cpus=2))
    s.task_placed(task("old", cpu=1.5, node_id="a"))
    ds = s.schedule(tasks(3, cpu=1))
    assert spread(ds) == {"b": 2, None: 1}


def test_tasks_without_reservations_still_go_to_full_nodes():
    s = sched(node("a", mem=1 * GB))
    s.task_placed(task("hog", "other", mem=2 * GB, node_id="a"))   # overcommitted
    assert s.schedule(tasks(1))[0].node_id == "a"


def test_task_removed_frees_capacity():
    s = sched(node("a", mem=2 * GB))
    first = s.schedule(tasks(3, mem=1 * GB))
    assert [d.node_id for d in first] == ["a", "a", None]
    s.task_removed(task("s1-0"))
    s.task_removed(task("s1-0"))      # idempotent
    s.task_removed(task("never-seen"))
    assert s.schedule([task("again", mem=1 * GB)])[0].node_id == "a"
    assert s.schedule([task("again2", mem=1 * GB)])[0].node_id is None


def test_task_placed_is_idempotent_and_recounts_a_move():
    s = sched(node("a", mem=2 * GB), node("b", mem=2 * GB))
    t = task("t", mem=2 * GB, node_id="a")
    s.task_placed(t)
    s.task_placed(t)
    assert s.schedule([task("x", mem=2 * GB)])[0].node_id == "b"
    t.node_id = "b"
    s.task_placed(t)      # moved: a is free again, b is full
    s.task_removed(task("x"))
    assert s.schedule([task("y", mem=2 * GB)])[0].node_id == "a"
    with pytest.raises(ValueError):
        s.task_placed(task("unbound"))


def test_tasks_may_arrive_before_their_node():
    s = Scheduler()
    s.task_placed(task("early", mem=2 * GB, node_id="a"))
    s.upsert_node(node("a", mem=2 * GB))
    s.upsert_node(node("b", mem=2 * GB))
    assert spread(s.schedule(tasks(2, mem=2 * GB))) == {"b": 1, None: 1}


# ---- host ports ----------------------------------------------------------------------------
def test_host_port_conflicts():
    s = sched(node("a"), node("b"), node("c"))
    s.task_placed(task("other", "web0", node_id="a"), host_ports=[("tcp", 80)])
    ports = {"web": [("tcp", 80)], "dns": [("udp", 80)]}
    batch = tasks(3, "web") + tasks(3, "dns")
    ds = s.schedule(batch, host_ports=lambda t: ports[t.service_id])
    web, dns = ds[:3], ds[3:]
    assert spread(web) == {"b": 1, "c": 1, None: 1}
    assert web[2].message == "no suitable node (host port 80/tcp already in use on 3 nodes)"
    assert spread(dns) == {"a": 1, "b": 1, "c": 1}     # udp/80 is another port


# ---- max replicas --------------------------------------------------------------------------
def test_max_replicas_per_node():
    s = sched(node("a"), node("b"))
    ds = s.schedule(tasks(5, max_replicas=2))
    assert spread(ds) == {"a": 2, "b": 2, None: 1}
    assert ds[4].message == "no suitable node (max replicas per node (2) reached on 2 nodes)"


def test_max_replicas_from_the_callable_and_existing_tasks():
    s = sched(node("a"), node("b"))
    s.task_placed(task("old", node_id="a"))
    ds = s.schedule(tasks(3), max_replicas=lambda t: 1)
    assert spread(ds) == {"b": 1, None: 2}


# ---- preferences ---------------------------------------------------------------------------
def test_preference_balances_zones_before_nodes():
    s = sched(node("a1", labels={"zone": "a"}), node("a2", labels={"zone": "a"}),
              node("b1", labels={"zone": "b"}))
    ds = s.schedule(tasks(4, prefs=["spread=node.labels.zone"]))
    assert spread(ds) == {"a1": 1, "a2": 1, "b1": 2}


def test_preference_counts_existing_tasks_per_zone_and_unlabelled_nodes_form_a_group():
    s = sched(node("a1", labels={"zone": "a"}), node("a2", labels={"zone": "a"}),
              node("b1", labels={"zone": "b"}), node("x"), node("y"))
    s.task_placed(task("old1", node_id="a1"))
    s.task_placed(task("old2", node_id="a2"))
    ds = s.schedule(tasks(4, prefs=["spread=node.labels.zone"]))
    # zone a has 2 already: b and the unlabelled group (x, y) take 2 each
    assert spread(ds) == {"b1": 2, "x": 1, "y": 1}


def test_hierarchical_preferences():
    nodes = [node(f"{z}{r}{i}", labels={"zone": z, "rack": f"{z}{r}"})
             for z, racks in (("a", "12"), ("b", "1")) for r in racks for i in range(2)]
    s = sched(*nodes)
    ds = s.schedule(tasks(8, prefs=["spread=node.labels.zone", "spread=node.labels.rack"]))
    by_zone = Counter(d.node_id[0] for d in ds)
    by_rack = Counter(d.node_id[:2] for d in ds)
    assert by_zone == {"a": 4, "b": 4}
    assert by_rack == {"a1": 2, "a2": 2, "b1": 4}
    assert set(spread(ds).values()) == {1, 2}       # a's nodes 1 each, b's nodes 2 each


def test_preference_overflows_when_a_zone_is_full():
    s = sched(node("a1", labels={"zone": "a"}, mem=1 * GB),
              node("b1", labels={"zone": "b"}, mem=8 * GB))
    ds = s.schedule(tasks(4, mem=1 * GB, prefs=["spread=node.labels.zone"]))
    assert spread(ds) == {"a1": 1, "b1": 3}


# ---- several services ----------------------------------------------------------------------
def test_interleaved_services():
    s = sched(node("a"), node("b"), node("c"))
    batch = [t for pair in zip(tasks(3, "web"), tasks(3, "db")) for t in pair]
    ds = s.schedule(batch)
    assert [d.task_id for d in ds] == [t.id for t in batch]
    web = spread(d for d, t in zip(ds, batch) if t.service_id == "web")
    db = spread(d for d, t in zip(ds, batch) if t.service_id == "db")
    assert web == {"a": 1, "b": 1, "c": 1} and db == {"a": 1, "b": 1, "c": 1}


def test_services_share_node_capacity():
    s = sched(node("a", mem=2 * GB), node("b", mem=2 * GB))
    batch = tasks(3, "web", mem=1 * GB) + tasks(3, "db", mem=1 * GB)
    ds = s.schedule(batch)
    assert sum(d.node_id is not None for d in ds) == 4
    assert [d.node_id for d in ds[3:]].count(None) == 2     # earlier groups win


def test_one_service_with_two_specs_is_spread_as_one():
    s = sched(node("a"), node("b"))
    old = tasks(2, "web", prefix="v1")
    new = tasks(2, "web", prefix="v2", constraints=["node.role==worker"])
    assert spread(s.schedule(old + new)) == {"a": 2, "b": 2}


# ---- pinned (global) tasks -----------------------------------------------------------------
def test_pinned_tasks_are_checked_against_their_node():
    s = sched(node("a"), node("b", availability="drain"),
              node("c", labels={"zone": "x"}, mem=1 * GB))
    ds = s.schedule([task("g-a", "g", node_id="a"), task("g-b", "g", node_id="b"),
                     task("g-c", "g", node_id="c", mem=2 * GB),
                     task("g-d", "g", node_id="d"),
                     task("g-c2", "g2", node_id="c", constraints=["node.labels.zone==y"])])
    assert ds[0].node_id == "a" and ds[0].message == ASSIGNED
    assert ds[1] == Decision("g-b", None, "no suitable node (node b drained)")
    assert ds[2] == Decision("g-c", None, "no suitable node (node c lacks memory)")
    assert ds[3].node_id is None and "node d is not known" in ds[3].message
    assert ds[4].message == "no suitable node (constraint node.labels.zone==y not satisfied on node c)"


# ---- messages ------------------------------------------------------------------------------
def test_message_when_there_are_no_nodes():
    assert Scheduler().schedule(tasks(1))[0].message == "no suitable node (no nodes in the cluster)"


def test_message_constraint_matches_no_node():
    s = sched(node("a", labels={"zone": "a"}), node("b"), node("c"))
    d = s.schedule(tasks(1, constraints=["node.labels.zone==z"]))[0]
    assert d == Decision("s1-0", None,
                         "no suitable node (constraint node.labels.zone==z matches no node)")


def test_message_counts_each_reason():
    s = sched(node("down", state="down"), node("dr", availability="drain"),
              node("dr2", availability="drain"), node("p", availability="pause"),
              node("wrongzone", labels={"zone": "b"}), node("small", labels={"zone": "a"}, mem=1),
              node("full", labels={"zone": "a"}, mem=2 * GB), node("dis", state="disconnected"))
    s.task_placed(task("hog", "other", mem=2 * GB, node_id="full"))
    d = s.schedule(tasks(1, mem=1 * GB, constraints=["node.labels.zone==a"]))[0]
    assert d.message == ("no suitable node (1 node disconnected; 1 node down; 2 nodes drained; "
                         "1 node paused; constraint node.labels.zone==a not satisfied on 1 node; "
                         "2 nodes lack memory)")


# ---- the image's platforms (Docker's clients send them from the registry) -------------------
def test_tasks_go_only_to_nodes_of_the_image_s_platforms_with_arch_aliases_folded():
    s = sched(node("x", arch="x86_64"), node("a", arch="aarch64"), node("w", os="windows"))
    ts = tasks(4)
    for t in ts:
        t.spec.placement.platforms = [Platform(os="linux", architecture="amd64")]
    assert spread(s.schedule(ts)) == {"x": 4}
    arm = tasks(2, "s2")
    for t in arm:
        t.spec.placement.platforms = [Platform(os="linux", architecture="arm64"),
                                      Platform(os="linux", architecture="riscv64")]
    assert spread(s.schedule(arm)) == {"a": 2}
    anywhere_linux = tasks(2, "s3")
    for t in anywhere_linux:
        t.spec.placement.platforms = [Platform(os="linux", architecture="")]
    assert set(spread(s.schedule(anywhere_linux))) <= {"x", "a"}


def test_no_node_of_the_platforms_is_explained():
    s = sched(node("x", arch="x86_64"), node("y", arch="x86_64"))
    t = task("t1")
    t.spec.placement.platforms = [Platform(os="linux", architecture="s390x")]
    [d] = s.schedule([t])
    assert d.node_id is None
    assert "2 nodes not of the image's platforms (linux/s390x)" in d.message


@pytest.mark.parametrize("platform, field", [
    ({"os": "linux", "architecture": "am d64"}, "platforms[0].architecture"),
    ({"os": "lin/ux", "architecture": "amd64"}, "platforms[0].os"),
    ({"os": "linux", "architecture": "a" * 65}, "platforms[0].architecture"),
])
def test_a_bad_platform_in_a_spec_is_refused_by_field(platform, field):
    from manager.specs.services import parse_service_spec
    spec = {"name": "web", "task_template": {"container": {"image": "busybox:1"},
                                             "placement": {"platforms": [platform]}}}
    with pytest.raises(InvalidArgument) as refused:
        parse_service_spec(spec)
    assert refused.value.field == f"task_template.placement.{field}"
