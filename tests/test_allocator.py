"""The allocator on a real store: subnets, VNIs, VIPs, task addresses, published ports, and
addresses coming back when their owners go."""
from __future__ import annotations

import socket

import pytest

from common import errors
from common.model import (IPAMConfig, NetworkAttachmentConfig, NetworkingConfig, NetworkSpec,
                          Node, NodeDescription, PortConfig, Service, ServiceSpec, Task,
                          TaskStatus)
from manager.allocator.allocator import Allocator, mac_for, plan_network
from manager.state.store import Event, Store, Transaction


def _store_with_networks(*specs: NetworkSpec) -> Store:
    store = Store()
    for i, spec in enumerate(specs):
        net = plan_network(store, NetworkingConfig(), spec, f"net{i}")
        store.apply(Transaction().create("networks", net).encode())
    return store


def _service(name: str, networks=(), ports=()) -> Service:
    spec = ServiceSpec(name=name)
    spec.task_template.networks = [NetworkAttachmentConfig(target=n) for n in networks]
    spec.endpoint_spec.ports = [PortConfig(**p) for p in ports]
    return Service(id=f"svc-{name}", spec=spec)


def test_subnets_vnis_and_gateways():
    store = _store_with_networks(NetworkSpec(name="ingress", ingress=True), NetworkSpec(name="a"),
                                 NetworkSpec(name="b", ipam=[IPAMConfig("10.20.0.0/16", "10.20.0.254")]))
    nets = {n.spec.name: n for n in store.list("networks")}
    assert (nets["ingress"].subnet, nets["ingress"].vni) == ("10.0.0.0/24", 4096)
    assert (nets["a"].subnet, nets["a"].gateway, nets["a"].vni) == ("10.0.1.0/24", "10.0.1.1", 4097)
    assert (nets["b"].subnet, nets["b"].gateway) == ("10.20.0.0/16", "10.20.0.254")
    with pytest.raises(errors.Conflict, match="overlaps 10.0.0.0/24 of network 'ingress'"):
        plan_network(store, NetworkingConfig(), NetworkSpec(name="c", ipam=[IPAMConfig("10.0.0.0/16")]), "x")
    with pytest.raises(errors.InvalidArgument, match="not a host address"):
        plan_network(store, NetworkingConfig(), NetworkSpec(name="c", ipam=[IPAMConfig("10.9.0.0/24", "10.8.0.1")]), "x")
    tiny = NetworkingConfig(default_addr_pools=["192.168.0.0/24"], subnet_size=24)
    plan_network(Store(), tiny, NetworkSpec(name="only"), "y")
    full = Store()
    full.apply(Transaction().create("networks", plan_network(full, tiny, NetworkSpec(name="one"), "z")).encode())
    with pytest.raises(errors.ResourceExhausted, match="no free /24"):
        plan_network(full, tiny, NetworkSpec(name="two"), "w")


def test_vips_ports_and_task_addresses():
    store = _store_with_networks(NetworkSpec(name="ingress", ingress=True), NetworkSpec(name="app"))
    alloc = Allocator(store)
    web = _service("web", ["app"], [{"target_port": 80, "published_port": 8080},
                                    {"target_port": 53, "protocol": "udp"}])
    alloc.allocate_service(web)
    assert [v.network_id for v in web.endpoint.virtual_ips] == ["net0", "net1"]   # ingress first
    assert [p.published_port for p in web.endpoint.ports] == [8080, 30000]
    store.apply(Transaction().create("services", web).encode())

    clash = _service("other", [], [{"target_port": 80, "published_port": 8080}])
    with pytest.raises(errors.Conflict, match="8080/tcp is already published by service 'web'"):
        alloc.allocate_service(clash)
    with pytest.raises(errors.NotFound, match="shoal network create nope"):
        alloc.allocate_service(_service("lost", ["nope"]))
    with pytest.raises(errors.InvalidArgument, match="ingress network"):
        alloc.allocate_service(_service("sneaky", ["ingress"]))
    # the nodes' own ports: the mesh would take the cluster's traffic from every node
    for port, proto, what in ((4789, "udp", "VXLAN"), (2377, "tcp", "cluster API"),
                              (2378, "tcp", "raft")):
        hijack = _service("hijack", [], [{"target_port": 80, "published_port": port,
                                          "protocol": proto}])
        with pytest.raises(errors.InvalidArgument, match=f"{port}/{proto} carries .*{what}"):
            alloc.allocate_service(hijack)
    host_mode = _service("h", [], [{"target_port": 80, "published_port": 2377,
                                    "publish_mode": "host"}])
    with pytest.raises(errors.InvalidArgument, match="pick another published port"):
        alloc.allocate_service(host_mode)

    t1 = Task(id="t1", service_id=web.id)
    alloc.allocate_task(t1, web)
    assert [a.network_id for a in t1.networks] == ["net0", "net1"]
    addr = t1.networks[1].address
    assert addr.endswith("/24") and t1.networks[1].mac == mac_for(addr)
    store.apply(Transaction().create("tasks", t1).encode())
    vips = {v.addr for v in web.endpoint.virtual_ips}
    assert addr not in vips

    # a fresh allocator (a new leader) sees the same holdings in the store
    again = Allocator(store)
    t2 = Task(id="t2", service_id=web.id)
    again.allocate_task(t2, web)
    assert t2.networks[1].address not in vips | {addr}

    # the task ends: its addresses return, but are not handed out again at once
    ended = Task(id="t1", service_id=web.id, networks=t1.networks,
                 status=TaskStatus(state="failed"))
    alloc.observe(Event("update", "tasks", ended, t1))
    t3 = Task(id="t3", service_id=web.id)
    alloc.allocate_task(t3, web)
    assert t3.networks[1].address != addr
    # the service goes: its ports are free for another one
    alloc.observe(Event("delete", "services", web))
    alloc.allocate_service(clash)
    assert clash.endpoint.ports[0].published_port == 8080


def test_a_port_is_either_on_every_node_or_bound_on_nodes_never_both():
    """One frontend per port on a node: an ingress port and a host-mode one would be balanced
    together, each side receiving the other's connections."""
    store = _store_with_networks(NetworkSpec(name="ingress", ingress=True))
    store.apply(Transaction().create("nodes", Node(id="n1", description=NodeDescription(
        hostname="worker1"))).encode())
    alloc = Allocator(store)
    mesh = _service("mesh", [], [{"target_port": 80, "published_port": 8080}])
    alloc.allocate_service(mesh)
    store.apply(Transaction().create("services", mesh).encode())
    with pytest.raises(errors.Conflict, match="8080/tcp is published on every node by service "
                                              "'mesh'"):
        alloc.allocate_service(_service("pinned", [], [{"target_port": 80, "published_port": 8080,
                                                        "publish_mode": "host"}]))
    bound = Task(id="t9", container_name="probe", node_id="n1", status=TaskStatus(state="running"),
                 ports=[PortConfig(target_port=80, published_port=9000, publish_mode="host"),
                        PortConfig(target_port=81, published_port=30001, publish_mode="host")])
    store.apply(Transaction().create("tasks", bound).encode())
    with pytest.raises(errors.Conflict, match="9000/tcp is bound in host mode by probe on worker1"):
        alloc.allocate_service(_service("late", [], [{"target_port": 80, "published_port": 9000}]))
    # automatic ports step over the host-mode one
    picked = []
    for name in ("auto1", "auto2"):
        svc = _service(name, [], [{"target_port": 80}])
        alloc.allocate_service(svc)
        picked.append(svc.endpoint.ports[0].published_port)
    assert picked == [30000, 30002]


def test_pysyncobj_import_leaves_inet_ntop_working():
    import manager.state.raft.node  # noqa: F401  - pysyncobj replaces socket.inet_ntop on import
    assert socket.inet_ntop(socket.AF_INET, b"\x0a\x00\x00\x01") == "10.0.0.1"


def test_no_overlay_subnet_holds_a_node_address():
    """Issue 13, defect 8: an overlay subnet over the nodes' own addresses would take their
    cluster traffic. Chosen subnets skip them, and a given one that holds one is refused."""
    from common.model import Node, NodeDescription, NodeStatus
    store = Store()
    store.apply(Transaction()
                .create("nodes", Node(id="a", status=NodeStatus(addr="10.0.0.5"),
                                      description=NodeDescription(hostname="host-a")))
                .create("nodes", Node(id="b", status=NodeStatus(addr="10.0.1.7"))).encode())
    ingress = plan_network(store, NetworkingConfig(), NetworkSpec(name="ingress", ingress=True), "i")
    assert ingress.subnet == "10.0.2.0/24"  # 10.0.0.0/24 is preferred, but holds host-a
    with pytest.raises(errors.Conflict) as exc:
        plan_network(store, NetworkingConfig(), NetworkSpec(name="c", ipam=[IPAMConfig("10.0.0.0/16")]), "x")
    assert "10.0.0.5 of node host-a" in exc.value.message


def test_a_full_ingress_leaves_the_last_nodes_without_an_address_and_the_loop_running(loops, caplog):
    """Every node takes an ingress address; past the subnet's size (254 nodes with the default
    /24) the allocator loop raised, was started again, raised again, and, rebuilding its pools
    from 100,000 tasks at each try, took most of a leader's time (issue 20, 5,000 nodes). Now
    the nodes past it go without one, the operator is told the fix, and an address given back
    goes to a waiting node."""
    import asyncio
    import logging

    from tests.raft_harness import wait

    async def scenario(h):
        store = h.m.store
        spec = NetworkSpec(name="ingress", ingress=True,
                           ipam=[IPAMConfig(subnet="10.0.0.0/29")])   # 6 addresses, 1 gateway
        await h.m.propose(Transaction().create("networks", plan_network(
            store, NetworkingConfig(), spec, "ing")))
        txn = Transaction()
        for i in range(8):
            txn.create("nodes", Node(id=f"x{i}", description=NodeDescription(hostname=f"x{i}")))
        await h.m.propose(txn)

        def addressed():
            return sorted(n.id for n in store.list("nodes")
                          if n.ingress_attachment is not None and n.id.startswith("x"))
        # the harness's own nodes (n1..n3) come first: 5 addresses in all
        await wait(lambda: len(addressed()) == 2)
        await asyncio.sleep(0.3)
        assert len(addressed()) == 2
        holder = addressed()[0]
        await h.m.propose(Transaction().delete("nodes", holder))
        await wait(lambda: len(addressed()) == 2 and holder not in addressed())
    with caplog.at_level(logging.WARNING, logger="shoal.allocator"):
        loops(scenario)
    said = [r.getMessage() for r in caplog.records if r.name == "shoal.allocator"]
    assert said and "no free address for 6 node(s)" in said[0], said
    assert "--ingress --subnet" in said[0]
