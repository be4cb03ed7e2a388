"""Creating, joining and leaving a swarm: what `swarm init | join | leave` do on this node."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time

from common import errors, pki, tokens
from common.ids import new_id
from common.keywrap import UnlockKey
from common.model import (NODE_ROLE_MANAGER, Cluster, ClusterSpec, JoinTokens, ManagerStatus,
                          NetworkSpec, Node,
                          NodeDescription, NodeSpec, NodeStatus, RootCAState, NODE_STATE_READY)
from common.nodestate import API_PORT, VXLAN_PORT as DEFAULT_DATA_PATH_PORT, NodeState
from common import codec
from manager.controlapi import autolock
from manager.allocator.allocator import INGRESS_NAME, plan_network
from manager.specs.cluster import check_data_path_port, parse_cluster_spec
from manager.state.store import Transaction
from worker.agent import describe_node, request_join

log = logging.getLogger("shoal.lifecycle")


def _require_ip(value: str, flag: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise errors.InvalidArgument(f"{flag} must be an IP address of this node, got {value!r}",
                                     field=flag.lstrip("-").replace("-", "_")) from None
    return value


def _not_in_swarm(daemon) -> None:
    if daemon.state.in_swarm:
        raise errors.FailedPrecondition(
            "this node is already part of a swarm: use 'shoal swarm leave' to leave it before "
            "creating or joining another")


def _listen(listen_addr: str | None, default: str) -> str:
    value = listen_addr or default
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, str(API_PORT)
    _require_ip(host, "--listen-addr")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.InvalidArgument(f"--listen-addr has a bad port: {value!r}", field="listen_addr")
    return f"{host}:{port}"


async def init_swarm(daemon, advertise_addr: str | None, listen_addr: str | None,
                     spec: dict | None, data_path_port: int | None = None) -> dict:
    async with daemon.role_lock:
        _not_in_swarm(daemon)
        advertise = _require_ip(advertise_addr or daemon.default_advertise_addr or "",
                                "--advertise-addr") if (advertise_addr or daemon.default_advertise_addr) \
            else None
        if advertise is None:
            raise errors.InvalidArgument("--advertise-addr is required: the IP address other nodes "
                                         "reach this node at", field="advertise_addr")
        listen = _listen(listen_addr, daemon.default_listen_addr)
        cluster_spec = ClusterSpec()
        if spec:
            cluster_spec = parse_cluster_spec({**codec.to_plain(cluster_spec), **spec})
        port = DEFAULT_DATA_PATH_PORT if data_path_port is None \
            else check_data_path_port(data_path_port, "data_path_port")
        cluster_id, node_id = new_id(), new_id()
        root = pki.RootCA.generate(cluster_id)
        key = pki.generate_key()
        cert = root.issue(pki.make_csr(key, node_id), node_id, pki.ROLE_MANAGER, cluster_id,
                          [advertise], cluster_spec.ca_config.node_cert_expiry)
        state = NodeState(node_id=node_id, cluster_id=cluster_id, role=NODE_ROLE_MANAGER,
                          advertise_addr=advertise, listen_addr=listen)
        state.managers = [state.api_addr]
        state.raft_members = [state.raft_addr]
        daemon.files.save_certs(root.cert_pem, cert, key)
        daemon.files.save_raft_secret(os.urandom(32))
        daemon.state = state
        daemon.files.save_state(state)
        try:
            await daemon.start_roles()
            await _wait(lambda: daemon.manager.is_leader, 10, "this manager to elect itself leader")
            now = time.time()
            cluster = Cluster(id=cluster_id, spec=cluster_spec,
                              root_ca=RootCAState(cert_pem=root.cert_pem, key_pem=root.key_pem,
                                                  digest=root.digest()),
                              join_tokens=JoinTokens(worker=tokens.new_token(root.cert_pem),
                                                     manager=tokens.new_token(root.cert_pem)),
                              data_path_port=port)
            # The manager's reseal loop seals this node's secrets as soon as it sees the key.
            cluster.unlock_keys.current, cluster.unlock_keys.previous = autolock.new_cluster_keys(
                cluster_spec.encryption_config.auto_lock_managers)
            cluster.meta.created_at = cluster.meta.updated_at = now
            node = Node(id=node_id, spec=NodeSpec(desired_role=NODE_ROLE_MANAGER),
                        description=codec.from_plain(NodeDescription, describe_node(daemon.hostname)),
                        status=NodeStatus(state=NODE_STATE_READY, addr=advertise),
                        role=NODE_ROLE_MANAGER,
                        manager_status=ManagerStatus(raft_addr=state.raft_addr, api_addr=state.api_addr))
            node.meta.created_at = node.meta.updated_at = now
            # The ingress network exists from the start, as in docker: -p works at once.
            ingress = plan_network(daemon.manager.store, cluster_spec.networking,
                                   NetworkSpec(name=INGRESS_NAME, ingress=True), new_id())
            ingress.meta.created_at = ingress.meta.updated_at = now
            await daemon.manager.propose(Transaction().create("clusters", cluster).create("nodes", node)
                                         .create("networks", ingress), timeout=10)
            if cluster.unlock_keys.current:
                # Sealed before init returns: a restart right after it must already be locked.
                daemon.files.reseal(UnlockKey.parse(cluster.unlock_keys.current))
        except BaseException:
            # Nothing half-made survives a failed init.
            await daemon.stop_roles()
            daemon.files.wipe()
            daemon.state = NodeState()
            raise
        log.info("swarm %s initialised; this node (%s) is its first manager", cluster_id, node_id)
        result = {"node_id": node_id, "cluster_id": cluster_id}
        if cluster.unlock_keys.current:
            result["unlock_key"] = cluster.unlock_keys.current  # shown once, like docker
        return result


async def join_swarm(daemon, remote_addr: str, token: str, advertise_addr: str | None,
                     listen_addr: str | None) -> dict:
    async with daemon.role_lock:
        _not_in_swarm(daemon)
        tokens.parse_token(token)  # a malformed token fails before anything is asked
        remote = _listen(remote_addr, remote_addr)
        advertise = advertise_addr or daemon.default_advertise_addr
        if not advertise:
            raise errors.InvalidArgument("--advertise-addr is required: the IP address other nodes "
                                         "reach this node at", field="advertise_addr")
        _require_ip(advertise, "--advertise-addr")
        listen = _listen(listen_addr, daemon.default_listen_addr)

        joined = await request_join(remote, token, advertise, describe_node(daemon.hostname))
        ca_pem, cert, key = joined.ca_pem, joined.cert_pem, joined.key_pem
        state = NodeState(node_id=joined.node_id, cluster_id=joined.cluster_id,
                          role=joined.role, advertise_addr=advertise, listen_addr=listen,
                          managers=joined.managers)
        daemon.files.save_certs(ca_pem, cert, key)
        if joined.role == NODE_ROLE_MANAGER:
            daemon.files.save_raft_secret(bytes.fromhex(joined.raft["secret"]))
            state.raft_members = joined.raft["members"]
        daemon.state = state
        daemon.files.save_state(state)
        try:
            await daemon.start_roles()
            await _wait(lambda: daemon.agent.connected.is_set(), 15, "the first heartbeat")
            if state.role == NODE_ROLE_MANAGER:
                await _wait(lambda: daemon.manager.raft.caught_up, 30, "raft to catch up")
        except errors.ShoalError:
            log.warning("joined, but not settled yet; the node keeps trying in the background")
        log.info("joined swarm %s as %s (node %s)", state.cluster_id, state.role, state.node_id)
        return {"node_id": state.node_id, "role": state.role}


async def leave_swarm(daemon, force: bool) -> dict:
    async with daemon.role_lock:
        if not daemon.state.in_swarm:
            raise errors.NotInSwarm("this node is not part of a swarm")
        if daemon.state.role == NODE_ROLE_MANAGER and not force:
            raise errors.FailedPrecondition(
                "this node is a manager: leaving removes a raft member and, for the last manager, "
                "the whole swarm state. Demote it first ('shoal node demote NODE' on another "
                "manager) or use --force")
        await daemon.stop_roles()
        # Like docker: a node that leaves stops and removes its service containers.
        for container in daemon.executor.list():
            try:
                await daemon.executor.stop(container.id, None, 10)
            except errors.ShoalError:
                pass
            await daemon.executor.remove(container.id)
        daemon.files.wipe()
        daemon.state = NodeState()
        daemon.locked = False  # a locked manager may leave (--force): nothing is sealed any more
        return {"left": True}


async def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)
