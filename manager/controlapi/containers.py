"""Standalone containers (`shoal container run`): what a node runs for itself, outside any service,
optionally on attachable overlay networks.

As in Swarm, the managers hold one task per such container, so that its addresses are allocated
like a service task's and every node of its networks learns it as a peer; its node runs it like
any task. No orchestrator restarts or moves it: it stops when its process ends (unless its
`--restart` policy has its node run it again) or when it is stopped, and it goes with
`shoal container rm`, with its node, or (`--rm`) once it stopped. Only the node that runs it may
create, stop or remove it (its certificate says which node it is).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field as dataclass_field
from typing import Any, Optional

from aiohttp import web

from common import codec, errors, strict
from common.httpserver import body_json, reply
from common.ids import new_id
from common.model import (ContainerRestartPolicy, ContainerSpec, NetworkAttachmentConfig,
                          PortConfig, RESTART_POLICIES, ResourceRequirements, Task, TaskSpec,
                          TaskStatus)
from manager.allocator.allocator import cluster_ports, host_bound_ports, ingress_port_holders
from manager.controlapi.context import caller_node_id, manager_of
from manager.specs.services import validate_container_spec, validate_resources
from manager.state.store import Transaction

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")


def _bad(name: str, message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{name}: {message}", field=name)


@dataclass
class ContainerRun:
    """A `container run` request, as the node's socket and the dispatcher take it."""
    container: Optional[ContainerSpec] = None
    name: str = ""
    resources: Optional[ResourceRequirements] = None
    networks: list[str] = dataclass_field(default_factory=list)
    ports: Optional[list[PortConfig]] = None
    auto_remove: bool = False
    restart_policy: Optional[ContainerRestartPolicy] = None
    # The node's business (it streams the output); the managers ignore it.
    attach: bool = False


def parse_container_run(data: Any) -> ContainerRun:
    return strict.decode(ContainerRun, data)


def standalone_tasks(store, node_id: str) -> list[Task]:
    return [t for t in store.by_index("tasks", "node_id", node_id) if t.standalone]


def find_container(store, node_id: str, ref: str) -> Task:
    """This node's standalone container by name, id or unique id prefix."""
    mine = standalone_tasks(store, node_id)
    exact = [t for t in mine if ref in (t.id, t.container_name)]
    matches = exact or [t for t in mine if ref and t.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise errors.NotFound(f"no such container on this node: {ref} (see 'shoal container ls "
                              "--all'; a service's containers go with their service)")
    raise errors.InvalidArgument(f"{ref!r} matches {len(matches)} containers: give more of the id")


def _resolve_networks(store, refs: list[str]) -> list[str]:
    ids: list[str] = []
    for i, ref in enumerate(refs):
        net = store.find("networks", ref)
        if net is None:
            raise errors.NotFound(f"networks[{i}]: network {ref!r} not found (see 'shoal network "
                                  "ls')", field=f"networks[{i}]")
        if net.spec.ingress:
            raise errors.FailedPrecondition(
                f"networks[{i}]: {net.spec.name!r} is the routing mesh's network; containers "
                "cannot attach to it", field=f"networks[{i}]")
        if not net.spec.attachable:
            raise errors.FailedPrecondition(
                f"networks[{i}]: network {net.spec.name!r} is not attachable: only services may "
                f"use it. Create an attachable one with 'shoal network create --attachable NAME'",
                field=f"networks[{i}]")
        if net.id in ids:
            raise _bad(f"networks[{i}]", f"network {net.spec.name!r} is given twice")
        ids.append(net.id)
    return ids


def _container_spec(c: Optional[ContainerSpec]) -> ContainerSpec:
    if c is None:
        raise _bad("container", "is required: {image, args, env, mounts, ...}")
    validate_container_spec(c, "container")
    # The dispatcher hands a node the secrets and configs of its tasks: a node asking for them
    # here could read any of them. Services carry them.
    for kind in ("secrets", "configs"):
        if getattr(c, kind):
            raise _bad(f"container.{kind}", f"a standalone container takes no {kind}: run it as "
                       f"a service ('shoal service create --{kind[:-1]} ...')")
    return c


def _resources(res: Optional[ResourceRequirements]) -> ResourceRequirements:
    """`--memory`, `--cpus`, `--pids-limit`: limits, as a service's. Reservations are what the
    scheduler places tasks by; nothing places a standalone container, so none are taken."""
    if res is None:
        return ResourceRequirements()
    validate_resources(res, "resources")
    if res.reservations.memory_bytes or res.reservations.nano_cpus:
        raise _bad("resources.reservations", "a standalone container runs where it is started: "
                   "reservations only place a service's tasks (give limits instead)")
    return res


def restart_policy(policy: Optional[ContainerRestartPolicy],
                   auto_remove: bool) -> Optional[ContainerRestartPolicy]:
    """`--restart`, as Docker's HostConfig.RestartPolicy: {name, maximum_retry_count}."""
    if policy is None:
        return None
    if policy.name not in RESTART_POLICIES:
        raise _bad("restart_policy.name", f"{policy.name!r} is not a restart policy: use "
                   f"{', '.join(RESTART_POLICIES)} (e.g. --restart on-failure:3)")
    count = policy.maximum_retry_count
    if count < 0:
        raise _bad("restart_policy.maximum_retry_count", "must be an integer >= 0 (0: no limit)")
    if count and policy.name != "on-failure":
        raise _bad("restart_policy.maximum_retry_count", f"a maximum retry count goes with "
                   f"on-failure only, not with {policy.name!r} (e.g. --restart on-failure:3)")
    if policy.name == "no":
        return None
    if auto_remove:
        raise _bad("restart_policy", f"--restart {policy.name} runs the container again when it "
                   "exits, --rm removes it then: give one of them")
    return policy


def _host_ports(store, node_id: str, given: Optional[list[PortConfig]]) -> list[PortConfig]:
    """`-p PUBLISHED:TARGET[/udp]`: bound on this node only (host mode), as `docker run -p`."""
    if not given:
        return []
    in_use = host_bound_ports(store, node_id=node_id)
    ingress = ingress_port_holders(store)
    reserved = cluster_ports(store)
    ports: list[PortConfig] = []
    for i, port in enumerate(given):
        where = f"ports[{i}]"
        protocol, published, target = port.protocol, port.published_port, port.target_port
        if protocol not in ("tcp", "udp"):
            raise _bad(f"{where}.protocol", f"{protocol!r} is not tcp or udp")
        if port.publish_mode not in ("host", "ingress") or port.name:
            raise _bad(where, "a container's port is {protocol, published_port, target_port}: "
                       "bound on this node, as -p PUBLISHED:TARGET")
        for name, number in (("published_port", published), ("target_port", target)):
            if not 0 < number < 65536:
                raise _bad(f"{where}.{name}", "must be a port between 1 and 65535 (e.g. -p 8080:80)")
        key = (protocol, published)
        if key in reserved:
            raise _bad(f"{where}.published_port", f"port {published}/{protocol} carries "
                       f"{reserved[key]} between the nodes: pick another published port")
        if key in ingress:
            raise errors.Conflict(f"{where}: port {published}/{protocol} is published on every "
                                  f"node by service {ingress[key].spec.name!r} (routing mesh): "
                                  "pick another published port", field=f"{where}.published_port")
        if key in in_use:
            raise errors.Conflict(f"{where}: port {published}/{protocol} is already bound on this "
                                  f"node by {in_use[key].name}: pick another published port",
                                  field=f"{where}.published_port")
        if any((p.protocol, p.published_port) == key for p in ports):
            raise _bad(f"{where}.published_port", f"port {published}/{protocol} is given twice")
        ports.append(PortConfig(protocol=protocol, target_port=target, published_port=published,
                                publish_mode="host"))
    return ports


def build_task(store, node_id: str, data: Any) -> tuple[Task, list[str]]:
    """The task of a `container run` request ({name, container, resources, networks, ports,
    auto_remove, restart_policy}), and the networks it attaches to (not allocated yet)."""
    run = parse_container_run(data)
    container = _container_spec(run.container)
    resources = _resources(run.resources)
    ports = _host_ports(store, node_id, run.ports)
    task_id = new_id()
    name = run.name or task_id[:12]
    if not _NAME.match(name):
        raise _bad("name", f"invalid container name {name!r}: use 1-63 letters, digits, '_', '.' "
                   "or '-', starting with a letter or digit")
    taken = next((t for t in standalone_tasks(store, node_id) if t.container_name == name), None)
    if taken is not None:
        raise errors.Conflict(f"the container name {name!r} is in use on this node by container "
                              f"{taken.id[:12]}: remove it ('shoal container rm {name}') or pick "
                              "another name", field="name")
    network_ids = _resolve_networks(store, run.networks)
    auto_remove = run.auto_remove
    restart = restart_policy(run.restart_policy, auto_remove)
    now = time.time()
    task = Task(id=task_id, container_name=name, node_id=node_id, ports=ports,
                auto_remove=auto_remove, restart=restart,
                spec=TaskSpec(container=container, resources=resources,
                              networks=[NetworkAttachmentConfig(target=n) for n in network_ids]),
                desired_state="running",
                status=TaskStatus(state="assigned", timestamp=now, message="assigned to its node"))
    task.meta.created_at = task.meta.updated_at = now
    return task, network_ids


async def create_container(manager, node_id: str, data: dict[str, Any]) -> Task:
    if manager.store.get("nodes", node_id) is None:
        raise errors.NotFound(f"node {node_id} is not part of this swarm (it was removed)")
    manager.require_leader()
    # One at a time: the name and host-port checks must see the container created before.
    async with manager.allocator.lock:
        task, network_ids = build_task(manager.store, node_id, data)
        manager.allocator.allocate_attachments(task, network_ids)
        try:
            await manager.propose(Transaction().create("tasks", task))
        except BaseException:
            manager.allocator.release_task(task)
            raise
    return task


async def stop_container(manager, node_id: str, ref: str) -> Task:
    """Desired state shutdown: its node stops it; the task stays (as `docker stop`)."""
    return await _set_desired(manager, node_id, ref, "shutdown")


async def remove_container(manager, node_id: str, ref: str, force: bool) -> tuple[Task, bool]:
    """A stopped container's task goes at once (True). A running one only with force: desired
    state remove, so that its node stops it first and its addresses are free only once it has
    stopped (the orchestrator deletes the task then)."""
    task = find_container(manager.store, node_id, ref)
    if task.terminal or task.status.state in ("new", "pending", "assigned"):
        await manager.propose(Transaction().delete("tasks", task.id,
                                                   expect_version=task.meta.version))
        return task, True
    if not force:
        raise errors.FailedPrecondition(
            f"container {task.container_name!r} is {task.status.state}: stop it first ('shoal "
            f"container stop {task.container_name}') or stop and remove it at once ('shoal "
            f"container rm -f {task.container_name}')")
    return await _set_desired(manager, node_id, ref, "remove"), False


async def _set_desired(manager, node_id: str, ref: str, desired: str) -> Task:
    conflicts = 0
    while True:
        task = find_container(manager.store, node_id, ref)
        if task.desired_state == desired or (desired == "shutdown" and task.desired_state == "remove"):
            return task
        changed = codec.clone(task)
        changed.desired_state = desired
        changed.meta.updated_at = time.time()
        try:
            await manager.propose(Transaction().update("tasks", changed))
            return changed
        except errors.Conflict:
            conflicts += 1  # its node reported a state meanwhile: read it again
            if conflicts == 5:
                raise


# ---- the dispatcher's endpoints (a node, by its certificate) -----------------------------------

def _answer(task: Task, removed: bool = False, status: int = 200) -> web.Response:
    return reply({"id": task.id, "name": task.container_name, "removed": removed,
                  "addresses": [a.address for a in task.networks]}, status=status)


def _caller(request: web.Request) -> str:
    return caller_node_id(request, "standalone containers")


async def container_create(request: web.Request) -> web.Response:
    task = await create_container(manager_of(request), _caller(request), await body_json(request))
    return _answer(task, status=201)


async def container_stop(request: web.Request) -> web.Response:
    return _answer(await stop_container(manager_of(request), _caller(request),
                                        request.match_info["ref"]))


async def container_remove(request: web.Request) -> web.Response:
    task, removed = await remove_container(manager_of(request), _caller(request),
                                           request.match_info["ref"],
                                           request.query.get("force") == "true")
    return _answer(task, removed)


def routes() -> list[web.RouteDef]:
    return [web.post("/dispatcher/containers", container_create),
            web.post("/dispatcher/containers/{ref}/stop", container_stop),
            web.delete("/dispatcher/containers/{ref}", container_remove)]
