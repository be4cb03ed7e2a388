"""`shoal swarm backup` on a manager: the store at one point in time, and the keys a restore
needs, sealed into a backup file (common/backupfile.py) while the cluster keeps running.

Consistency: a raft barrier first (a no-op committed through the leader and applied here),
so every write acknowledged before the backup was asked for is in this manager's replica;
then the store is copied whole under its lock on the event loop, which is one store index.
The raft thread applies later entries only after the copy.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from common import backupfile, errors
from common.keywrap import UnlockKey
from manager.controlapi.context import Manager


@dataclass
class BackupResult:
    blob: bytes
    store_index: int
    raft_index: int
    encrypted_with: str          # "passphrase" | "unlock key <id>"


async def take_backup(manager: Manager, passphrase: Optional[str]) -> BackupResult:
    if passphrase is not None:
        backupfile.check_new_passphrase(passphrase)  # before any work: a typo costs nothing
    raft = manager.raft
    if raft is None:
        raise errors.Unavailable("the manager is not running")
    try:
        await raft.barrier(timeout=10.0)
    except errors.Unavailable as exc:
        raise errors.Unavailable(
            f"cannot take a consistent backup: {exc.message}. Without a quorum this manager "
            "may lack writes the swarm acknowledged; restore quorum (or run `shoal swarm init "
            "--force-new-cluster` on a surviving manager) first") from None
    # From here to the copy nothing awaits: the snapshot is one store index.
    cluster = manager.cluster()
    if cluster is None:
        raise errors.FailedPrecondition("the swarm is not initialised yet: nothing to back up")
    store = manager.store
    # The store's own (reentrant) lock around the copy and its index: the raft thread cannot
    # apply an entry between the two.
    with store._lock:
        snapshot = store.snapshot()
        store_index = store.index
    contents = backupfile.BackupContents(
        cluster_id=cluster.id, node_id=manager.node_id, raft_index=raft.applied_index,
        raft_term=raft.term, store_index=store_index,
        raft_secret=manager.files.load_raft_secret(), store=snapshot, created_at=time.time())
    unlock_key = cluster.unlock_keys.current
    if passphrase is not None:
        blob, how = backupfile.seal_with_passphrase(contents, passphrase), "passphrase"
    elif unlock_key:
        key = UnlockKey.parse(unlock_key)
        blob, how = backupfile.seal_with_unlock_key(contents, key), f"unlock key {key.key_id}"
    else:
        raise errors.FailedPrecondition(
            "autolock is off, so there is no unlock key to encrypt the backup with: give a "
            "passphrase on stdin with --passphrase-stdin", field="passphrase")
    return BackupResult(blob=blob, store_index=store_index, raft_index=contents.raft_index,
                        encrypted_with=how)

