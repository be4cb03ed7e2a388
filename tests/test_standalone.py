"""Standalone containers on the managers (manager/controlapi/containers.py): what a `container run` request may
ask for, and the life of its task on a real one-member raft manager: allocated, never restarted
or shut down by the orchestrators, removed with its addresses freed only once its node stopped
it. The agents are simulated by their status reports; the lab test in
integration/test_networking.py runs the real containers."""
import asyncio

import pytest

from common import codec, errors
from common.model import (Network, NetworkAttachment, NetworkSpec, Node, NodeStatus, PortConfig,
                          Service, ServiceSpec)
from manager.controlapi import containers as standalone
from manager.dispatcher.netstate import node_network_state
from manager.state.store import Store, Transaction
from tests.raft_harness import wait

BUSYBOX = {"image": "busybox:1"}


def _networks() -> list[Network]:
    return [Network(id="net-shared", spec=NetworkSpec(name="shared", attachable=True), vni=4100,
                    subnet="10.20.0.0/24", gateway="10.20.0.1"),
            Network(id="net-private", spec=NetworkSpec(name="private"), vni=4101,
                    subnet="10.21.0.0/24", gateway="10.21.0.1"),
            Network(id="net-ingress", spec=NetworkSpec(name="ingress", ingress=True), vni=4096,
                    subnet="10.0.0.0/24", gateway="10.0.0.1")]


def _store() -> Store:
    store = Store()
    txn = Transaction()
    for net in _networks():
        txn.create("networks", net)
    store.apply(txn.encode())
    return store


def test_run_requests_are_checked_field_by_field():
    store = _store()
    task, nets = standalone.build_task(store, "n1", {
        "name": "probe", "networks": ["shared"],
        "container": {"image": "busybox:1", "args": ["sleep", "9"], "env": ["A=1"],
                      "mounts": [{"type": "tmpfs", "target": "/scratch"}], "dir": "/tmp"}})
    assert task.standalone and task.name == "probe" and task.node_id == "n1"
    c = task.spec.container
    assert (c.args, c.env, c.mounts[0].target, c.dir) == (["sleep", "9"], ["A=1"], "/scratch", "/tmp")
    assert nets == ["net-shared"] and task.status.state == "assigned"
    unnamed, _ = standalone.build_task(store, "n1", {"container": BUSYBOX})
    assert unnamed.container_name == unnamed.id[:12]

    def refused(exc_type, data, *words):
        with pytest.raises(exc_type) as exc:
            standalone.build_task(store, "n1", {"container": BUSYBOX, **data})
        for word in words:
            assert word in exc.value.message, exc.value.message
    refused(errors.FailedPrecondition, {"networks": ["private"]}, "networks[0]",
            "'private' is not attachable", "shoal network create --attachable")
    refused(errors.FailedPrecondition, {"networks": ["ingress"]}, "routing mesh")
    refused(errors.NotFound, {"networks": ["shared", "nowhere"]}, "networks[1]", "'nowhere'")
    refused(errors.InvalidArgument, {"networks": ["shared", "net-shared"]}, "given twice")
    refused(errors.InvalidArgument, {"name": "-x"}, "invalid container name")
    # the container part is checked as a service's is, under "container."
    refused(errors.InvalidArgument, {"container": {"image": "busybox:1", "env": ["NOVALUE"]}},
            "container.env[0]", "NAME=VALUE")
    refused(errors.InvalidArgument, {"container": {"image": "busybox:1", "args": "sleep 9"}},
            "container.args", "must be a list, got a string")
    refused(errors.InvalidArgument, {"container": {"image": " "}}, "container.image")
    refused(errors.InvalidArgument, {"container": "busybox:1"}, "container", "must be an object")
    refused(errors.InvalidArgument, {"container": {"image": "busybox:1",
                                                   "mounts": [{"type": "bind", "source": "rel",
                                                               "target": "/x"}]}},
            "container.mounts[0].source", "absolute host path")
    # limits, as `docker run --memory/--cpus/--pids-limit`, checked as a service's are
    limited, _ = standalone.build_task(store, "n1", {"container": BUSYBOX, "resources": {
        "limits": {"memory_bytes": 64 << 20, "nano_cpus": 500_000_000}, "pids_limit": 32}})
    res = limited.spec.resources
    assert (res.limits.memory_bytes, res.limits.nano_cpus, res.pids_limit) == \
        (64 << 20, 500_000_000, 32)
    refused(errors.InvalidArgument, {"resources": {"limits": {"memory_bytes": 1024}}},
            "resources.limits.memory_bytes", "at least 4m")
    refused(errors.InvalidArgument, {"resources": {"pids_limit": -1}}, "resources.pids_limit")
    refused(errors.InvalidArgument, {"resources": {"limits": {"nano_cpus": "half"}}},
            "resources.limits.nano_cpus", "must be an integer")
    refused(errors.InvalidArgument, {"resources": {"reservations": {"memory_bytes": 64 << 20}}},
            "resources.reservations", "give limits instead")
    refused(errors.InvalidArgument, {"resources": "64m"}, "resources", "must be an object")
    # a node may not ask for secrets or configs this way: it could read any of them
    refused(errors.InvalidArgument, {"container": {"image": "busybox:1",
                                                   "secrets": [{"secret_name": "db"}]}},
            "container.secrets", "shoal service create --secret")


def test_restart_policies_are_docker_s_and_exclude_rm():
    store = _store()

    def policy(data):
        task, _ = standalone.build_task(store, "n1", {"container": BUSYBOX, **data})
        return task.restart
    assert policy({}) is None and policy({"restart_policy": {"name": "no"}}) is None
    limited = policy({"restart_policy": {"name": "on-failure", "maximum_retry_count": 3}})
    assert (limited.name, limited.maximum_retry_count) == ("on-failure", 3)
    for name in ("always", "unless-stopped"):
        assert policy({"restart_policy": {"name": name}}).name == name
    # the policy travels with the task through the store's codec
    task, _ = standalone.build_task(store, "n1", {"container": BUSYBOX,
                                                  "restart_policy": {"name": "always"}})
    assert codec.clone(task).restart.name == "always"

    def refused(data, *words):
        with pytest.raises(errors.InvalidArgument) as exc:
            standalone.build_task(store, "n1", {"container": BUSYBOX, **data})
        for word in words:
            assert word in exc.value.message, exc.value.message
    refused({"restart_policy": {"name": "sometimes"}}, "restart_policy.name", "'sometimes'",
            "on-failure")
    refused({"restart_policy": {"name": "always", "maximum_retry_count": 2}},
            "restart_policy.maximum_retry_count", "on-failure only")
    refused({"restart_policy": {"name": "on-failure", "maximum_retry_count": -1}},
            "restart_policy.maximum_retry_count", ">= 0")
    refused({"restart_policy": {"name": "on-failure", "maximum_retry_count": "3"}},
            "restart_policy.maximum_retry_count")
    refused({"restart_policy": "always"}, "restart_policy", "must be an object")
    refused({"restart_policy": {"name": "always"}, "auto_remove": True}, "restart_policy",
            "--rm", "give one of them")


def test_host_ports_bind_on_this_node_only_and_never_twice():
    store = _store()
    task, _ = standalone.build_task(store, "n1", {"container": BUSYBOX, "ports": [
        {"published_port": 8080, "target_port": 80}, {"protocol": "udp", "published_port": 8080,
                                                      "target_port": 53}]})
    assert [(p.protocol, p.published_port, p.target_port, p.publish_mode) for p in task.ports] == [
        ("tcp", 8080, 80, "host"), ("udp", 8080, 53, "host")]
    store.apply(Transaction().create("tasks", task).encode())

    def refused(exc_type, ports, *words, node="n1"):
        with pytest.raises(exc_type) as exc:
            standalone.build_task(store, node, {"container": BUSYBOX, "ports": ports})
        for word in words:
            assert word in exc.value.message, exc.value.message
    refused(errors.Conflict, [{"published_port": 8080, "target_port": 81}],
            "8080/tcp is already bound on this node", task.name)
    standalone.build_task(store, "n2", {"container": BUSYBOX,   # another node: free there
                                        "ports": [{"published_port": 8080, "target_port": 80}]})
    refused(errors.InvalidArgument, [{"published_port": 2377, "target_port": 80}],
            "ports[0].published_port", "the cluster API")
    refused(errors.InvalidArgument, [{"published_port": 0, "target_port": 80}], "-p 8080:80")
    refused(errors.InvalidArgument, [{"published_port": 9000, "target_port": 80, "protocol": "sctp"}],
            "ports[0].protocol")
    refused(errors.InvalidArgument, [{"published_port": 9000, "target_port": 80},
                                     {"published_port": 9000, "target_port": 81}], "given twice")
    refused(errors.InvalidArgument, "8080:80", "must be a list")
    svc = Service(id="svc-web", spec=ServiceSpec(name="web"))
    svc.endpoint.ports = [PortConfig(protocol="tcp", target_port=80, published_port=9090)]
    store.apply(Transaction().create("services", svc).encode())
    refused(errors.Conflict, [{"published_port": 9090, "target_port": 80}],
            "published on every node by service 'web'", node="n3")


def test_names_are_unique_per_node_and_found_by_name_or_id():
    store = _store()
    task, _ = standalone.build_task(store, "n1", {"name": "probe", "container": BUSYBOX})
    store.apply(Transaction().create("tasks", task).encode())
    with pytest.raises(errors.Conflict, match="'probe' is in use on this node"):
        standalone.build_task(store, "n1", {"name": "probe", "container": BUSYBOX})
    standalone.build_task(store, "n2", {"name": "probe", "container": BUSYBOX})  # another node
    assert standalone.find_container(store, "n1", "probe").id == task.id
    assert standalone.find_container(store, "n1", task.id[:8]).id == task.id
    with pytest.raises(errors.NotFound, match="no such container on this node"):
        standalone.find_container(store, "n2", "probe")


def test_the_task_lives_and_goes_as_its_node_and_the_user_say(run):
    async def scenario(h):
        m = h.m
        txn = Transaction()
        for net in _networks():
            txn.create("networks", net)
        await m.propose(txn)
        probe = await standalone.create_container(
            m, "n1", {"name": "probe", "container": BUSYBOX, "networks": ["shared"]})
        address = probe.networks[0].address
        assert address.startswith("10.20.0.") and address != "10.20.0.1/24"
        await h.report(probe, "running")
        # the node's peers learn it as an endpoint, and its name; it backs no service
        view = node_network_state(m.store, "n1")["networks"][0]
        assert view["name"] == "shared" and view["endpoints"][0]["ip"] == address.split("/")[0]
        assert view["services"] == [] and view["containers"] == {"probe": [address.split("/")[0]]}
        # no orchestrator touches it, not even when it ends by itself
        await asyncio.sleep(0.3)
        assert m.store.get("tasks", probe.id).desired_state == "running"

        with pytest.raises(errors.FailedPrecondition, match="container rm -f probe"):
            await standalone.remove_container(m, "n1", "probe", force=False)
        task, removed = await standalone.remove_container(m, "n1", "probe", force=True)
        assert not removed and task.desired_state == "remove"
        await asyncio.sleep(0.3)
        assert m.store.get("tasks", probe.id) is not None, "deleted before its node stopped it"
        other = await standalone.create_container(m, "n2", {"container": BUSYBOX,
                                                            "networks": ["shared"]})
        assert other.networks[0].address != address, "an address reused while still in use"
        await h.report(probe, "shutdown")
        await wait(lambda: m.store.get("tasks", probe.id) is None)

        # stop keeps the task; rm of a stopped container deletes it at once
        await h.report(other, "running")
        stopped = await standalone.stop_container(m, "n2", other.container_name)
        assert stopped.desired_state == "shutdown"
        await h.report(other, "shutdown")
        await asyncio.sleep(0.3)
        assert m.store.get("tasks", other.id) is not None
        _, removed = await standalone.remove_container(m, "n2", other.container_name, force=False)
        assert removed and m.store.get("tasks", other.id) is None

        # --rm: the task stays while it runs and goes once it has ended by itself
        brief = await standalone.create_container(m, "n2", {"name": "brief", "container": BUSYBOX,
                                                            "auto_remove": True})
        assert brief.auto_remove
        await h.report(brief, "running")
        await asyncio.sleep(0.3)
        assert m.store.get("tasks", brief.id) is not None, "removed while it ran"
        await h.report(brief, "complete", exit_code=0)
        await wait(lambda: m.store.get("tasks", brief.id) is None)
        with pytest.raises(errors.InvalidArgument, match="auto_remove"):
            await standalone.create_container(m, "n2", {"container": BUSYBOX, "auto_remove": "yes"})

        # a removed node takes its containers' tasks with it
        last = await standalone.create_container(m, "n3", {"container": BUSYBOX})
        await h.report(last, "running")
        await m.propose(Transaction().delete("nodes", "n3"))
        await wait(lambda: m.store.get("tasks", last.id) is None)
        with pytest.raises(errors.NotFound, match="not part of this swarm"):
            await standalone.create_container(m, "n3", {"container": BUSYBOX})
    run(scenario)


def test_network_state_holds_attachable_networks_only_while_a_container_is_on_them():
    store = _store()
    node = Node(id="n1", status=NodeStatus(state="ready", addr="10.9.0.1"))
    store.apply(Transaction().create("nodes", node).encode())
    assert node_network_state(store, "n1")["networks"] == []
    task, _ = standalone.build_task(store, "n1", {"container": BUSYBOX, "networks": ["shared"]})
    task.networks = [NetworkAttachment("net-shared", "10.20.0.7/24", "02:42:0a:14:00:07")]
    store.apply(Transaction().create("tasks", task).encode())
    assert [n["name"] for n in node_network_state(store, "n1")["networks"]] == ["shared"]
