"""Quorum recovery on this node: `swarm init --force-new-cluster`, `swarm backup` and
`swarm restore` (the node-side half; the raft files are manager/state/raft/recovery.py's, the
backup's contents manager/controlapi/backup.py's and its file format common/backupfile.py's).

After either recovery this manager is the swarm's only manager, with every object as it was.
The managers that are no longer raft members are demoted to workers in the store at once
(Docker leaves them listed as unreachable managers for `node demote`; here the quorum checks
of a demotion would count them, so they are demoted by the recovery itself): `node ls` shows
them Down, `node rm` removes them, and one that comes back anyway is told by its first
heartbeat that it is a worker now, and drops its raft data.

Workers reconnect by themselves: their agents cycle through the manager addresses they learnt.
After a force-new-cluster the survivor is one of those. After a restore, the new host must have
the address of one of the old managers (Docker's advice too) for them to find it; a worker that
knows none of the new manager's addresses has to leave and join again.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

from common import backupfile, codec, errors, pki
from common.keywrap import UnlockKey
from common.model import NODE_ROLE_MANAGER, NODE_ROLE_WORKER, ManagerStatus, Node
from common.nodestate import API_PORT, RAFT_PORT, NodeState
from manager.controlapi.ca import issuing_ca, trust_bundle
from manager.state.raft import recovery as raft_recovery
from manager.state.store import Store, Transaction
from shoal import lifecycle

log = logging.getLogger("shoal.recovery")


async def force_new_cluster(daemon, advertise_addr: Optional[str]) -> dict:
    """Restart raft on this manager as a one-member cluster from its own raft data."""
    async with daemon.role_lock:
        state = daemon.state
        if not state.in_swarm:
            raise errors.NotInSwarm(
                "this node is not part of a swarm: --force-new-cluster recovers a swarm on one "
                "of its managers; use 'shoal swarm init' without it to create a new swarm, or "
                "'shoal swarm restore' to bring one back from a backup")
        if daemon.locked:
            raise errors.FailedPrecondition(
                "this manager is locked (autolock): run 'shoal swarm unlock' first, then "
                "--force-new-cluster")
        if state.role != NODE_ROLE_MANAGER:
            raise errors.NotAManager(
                "this node is not a swarm manager: --force-new-cluster must run on a manager "
                "that holds the swarm's raft data")
        if not raft_recovery.has_raft_data(daemon.files.raft_dir):
            raise errors.FailedPrecondition(
                f"this manager has no raft data in {daemon.files.raft_dir}: there is nothing to "
                "recover from; run it on another surviving manager, or restore a backup")
        if advertise_addr and advertise_addr != state.advertise_addr:
            raise errors.InvalidArgument(
                f"--advertise-addr {advertise_addr} differs from this manager's address "
                f"{state.advertise_addr}: the workers know the managers by address, so a "
                "recovered manager keeps its own; leave --advertise-addr out (or give "
                f"{state.advertise_addr})", field="advertise_addr")
        secret = daemon.files.load_raft_secret()
        # The manager stops (raft's files must be still); the agent and its tasks go on.
        await daemon._stop_manager()
        try:
            recovered = raft_recovery.force_new_cluster(
                daemon.files.raft_dir, secret, state.raft_addr, state.raft_members)
        except BaseException:
            await daemon._start_manager()  # as it was: nothing was changed on disk
            raise
        state.raft_members = [state.raft_addr]
        daemon.files.save_state(state)
        await daemon._start_manager()
        await lifecycle._wait(lambda: daemon.manager.is_leader, 15,
                              "this manager to elect itself leader")
        workers = _workers_to_tell(daemon, state)
        demoted = await _adopt(daemon, state)
        _tell_workers(daemon, workers, state)
        log.warning("swarm %s forced into a new cluster with this manager alone (raft index %d); "
                    "managers demoted: %s", state.cluster_id, recovered.raft_index,
                    ", ".join(demoted) or "none")
        return {"node_id": state.node_id, "cluster_id": state.cluster_id,
                "raft_index": recovered.raft_index, "removed_managers": demoted,
                "old_raft_data": recovered.kept_at}


async def restore_swarm(daemon, blob: bytes, secret: str, advertise_addr: Optional[str],
                        listen_addr: Optional[str]) -> dict:
    """Bring a swarm back from a backup on this (fresh) node, as its only manager."""
    async with daemon.role_lock:
        if daemon.state.in_swarm:
            raise errors.FailedPrecondition(
                "this node is already part of a swarm: a restore needs a host with no swarm "
                "state; use 'shoal swarm leave --force' first (it discards this node's swarm "
                "state) or restore on another host")
        advertise = advertise_addr or daemon.default_advertise_addr
        if not advertise:
            raise errors.InvalidArgument("--advertise-addr is required: the IP address other "
                                         "nodes reach this node at", field="advertise_addr")
        lifecycle._require_ip(advertise, "--advertise-addr")
        listen = lifecycle._listen(listen_addr, daemon.default_listen_addr)
        # Decrypt and check everything before anything is written: a wrong passphrase or a bad
        # file leaves the host exactly as it was.
        contents = backupfile.open_backup(blob, secret)
        store = Store()
        try:
            store.restore(contents.store)
        except Exception as exc:  # the authenticated contents still decode strictly or not at all
            raise backupfile.BackupFileError(f"its store does not decode: {exc}") from None
        clusters = store.list("clusters")
        if len(clusters) != 1 or clusters[0].id != contents.cluster_id:
            raise backupfile.BackupFileError("its store does not hold exactly the swarm it names")
        cluster = clusters[0]
        me = store.get("nodes", contents.node_id)
        if me is None:
            raise backupfile.BackupFileError("the manager it was taken on is not in its store")
        key = pki.generate_key()
        cert = issuing_ca(cluster).issue(pki.make_csr(key, me.id), me.id, pki.ROLE_MANAGER,
                                         cluster.id, [advertise],
                                         cluster.spec.ca_config.node_cert_expiry)
        state = NodeState(node_id=me.id, cluster_id=cluster.id, role=NODE_ROLE_MANAGER,
                          advertise_addr=advertise, listen_addr=listen)
        state.managers = [state.api_addr]
        state.raft_members = [state.raft_addr]
        try:
            daemon.files.prepare()
            daemon.files.save_certs(trust_bundle(cluster), cert, key)
            daemon.files.save_raft_secret(contents.raft_secret)
            raft_recovery.write_single_member(daemon.files.raft_dir, contents.raft_secret,
                                              state.raft_addr, contents.store,
                                              contents.raft_index, contents.raft_term)
            daemon.state = state
            daemon.files.save_state(state)
            await daemon.start_roles()
            await lifecycle._wait(lambda: daemon.manager.is_leader, 15,
                                  "this manager to elect itself leader")
            workers = _workers_to_tell(daemon, state)
            demoted = await _adopt(daemon, state)
            if cluster.unlock_keys.current:
                # Sealed before restore returns, as after init: a restart must come up locked.
                daemon.files.reseal(UnlockKey.parse(cluster.unlock_keys.current))
        except BaseException:
            # Nothing half-made survives a failed restore.
            await daemon.stop_roles()
            daemon.files.wipe()
            daemon.state = NodeState()
            raise
        _tell_workers(daemon, workers, state)
        log.warning("swarm %s restored from a backup of store index %d on this node (%s); "
                    "managers demoted: %s", cluster.id, contents.store_index, me.id,
                    ", ".join(demoted) or "none")
        return {"node_id": me.id, "cluster_id": cluster.id, "store_index": contents.store_index,
                "raft_index": contents.raft_index, "removed_managers": demoted}


async def _adopt(daemon, state: NodeState) -> list[str]:
    """One transaction on the new cluster: this node is a manager at its (possibly new)
    address, and every other manager, no longer a raft member, is a worker. Returns the
    hostnames (or ids) of those demoted."""
    manager = daemon.manager
    now = time.time()
    txn = Transaction()
    demoted = []
    for stored in manager.store.list("nodes"):
        node = codec.clone(stored)  # list() hands out the stored objects themselves
        if node.id == state.node_id:
            changed = _as_this_manager(node, state)
            if changed is not None:
                changed.meta.updated_at = now
                txn.update("nodes", changed)
        elif node.role == NODE_ROLE_MANAGER or node.spec.desired_role == NODE_ROLE_MANAGER:
            node.role = NODE_ROLE_WORKER
            node.spec.desired_role = NODE_ROLE_WORKER
            node.manager_status = None
            node.meta.updated_at = now
            txn.update("nodes", node)
            demoted.append(node.description.hostname or node.id)
    if txn.ops:
        await manager.propose(txn, timeout=10)
    return demoted


def _as_this_manager(node: Node, state: NodeState) -> Optional[Node]:
    addr = state.advertise_addr
    status = ManagerStatus(raft_addr=f"{addr}:{RAFT_PORT}",
                           api_addr=f"{addr}:{state.listen_addr.rsplit(':', 1)[1] or API_PORT}")
    if (node.role, node.spec.desired_role, node.status.addr, node.manager_status) == \
            (NODE_ROLE_MANAGER, NODE_ROLE_MANAGER, addr, status):
        return None
    node.role = node.spec.desired_role = NODE_ROLE_MANAGER
    node.status.addr = addr
    node.manager_status = status
    return node


# Background pushes of the new manager address to the workers (kept referenced until done).
_PUSHES: set[asyncio.Task] = set()
_PUSH_FOR = 120.0


def _workers_to_tell(daemon, state: NodeState) -> list[str]:
    """The addresses of the nodes that were workers before the recovery (the demoted managers
    are not told: one still alive would turn itself into a worker of this swarm)."""
    return sorted({n.status.addr for n in daemon.manager.store.list("nodes")
                   if n.id != state.node_id and n.role == NODE_ROLE_WORKER and n.status.addr})


def _tell_workers(daemon, addrs: list[str], state: NodeState) -> None:
    if addrs:
        task = asyncio.create_task(_push_managers(daemon, addrs, [state.api_addr]),
                                   name="recovery-tell-workers")
        _PUSHES.add(task)
        task.add_done_callback(_PUSHES.discard)


async def _push_managers(daemon, addrs: list[str], managers: list[str]) -> None:
    pending = set(addrs)
    deadline = time.monotonic() + _PUSH_FOR
    while pending and time.monotonic() < deadline and daemon.manager is not None:
        for addr in sorted(pending):
            try:
                await daemon.peer_client(f"{addr}:{API_PORT}").request(
                    "POST", "/recovery/managers", {"managers": managers}, timeout=3)
                pending.discard(addr)
            except errors.ShoalError as exc:
                log.debug("telling %s its manager: %s", addr, exc.message)
        if pending:
            await asyncio.sleep(2.0)
    if pending:
        log.warning("could not tell these nodes the new manager address: %s; they reconnect "
                    "once one of the managers they know answers, or leave and join again",
                    ", ".join(sorted(pending)))


async def learn_managers(daemon, from_node: str, managers: list[str]) -> None:
    """A manager of this swarm names the managers to use now (after a recovery)."""
    state = daemon.state
    if sorted(state.managers) != managers:
        log.warning("manager %s says the swarm's managers are now %s (they were %s)", from_node,
                    ", ".join(managers), ", ".join(state.managers) or "none")
        state.managers = managers
        daemon.files.try_save_state(state)
    if daemon.agent is not None:
        daemon.agent.leader = None  # the next heartbeat goes to one of them


async def backup(daemon, passphrase: Optional[str]) -> dict:
    from manager.controlapi.backup import take_backup
    if not daemon.state.in_swarm:
        raise errors.NotInSwarm("this node is not part of a swarm: there is nothing to back up")
    if daemon.manager is None:
        raise errors.NotAManager("this node is not a swarm manager: run `shoal swarm backup` on "
                                 "a manager")
    result = await take_backup(daemon.manager, passphrase)
    return {"file": result.blob, "store_index": result.store_index,
            "raft_index": result.raft_index, "encrypted_with": result.encrypted_with,
            "size": len(result.blob)}
