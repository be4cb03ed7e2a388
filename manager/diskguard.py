"""Changes stop before a manager's disk is full, not when it is.

Every change goes into every manager's raft journal. A manager whose disk fills can no longer
append (manager/state/raft/journal.py makes that an error instead of a crash), and with a majority of
them full the cluster cannot commit anything, not even a task's status. So the leader refuses
the changes users ask for while any manager has less than `RAFT_DISK_RESERVE` free where its
raft log lives: the leader measures its own disk, the other managers report theirs in their
heartbeats. The cluster's own writes (heartbeats, task status, certificate renewals) go on
within the reserve, and so do removals and stops, which a user may need to get out of the very
situation that filled the disk.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common import errors
from common.fsutil import free_bytes
from common.model import Node
from common.units import format_size



class Managers(Protocol):
    """What the guard reads of its manager: its own raft directory, the managers, and the
    heartbeat period (a report older than a few periods is not trusted)."""
    node_id: str

    @property
    def raft_dir(self) -> Path: ...

    @property
    def heartbeat_period(self) -> float: ...

    def manager_nodes(self) -> list[Node]: ...

RAFT_DISK_RESERVE = 64 << 20
_STALE_AFTER_PERIODS = 3  # as the dispatcher's Down rule: an older report is not trusted


@dataclass
class DiskReport:
    free: int
    path: str
    at: float


class RaftDiskGuard:
    def __init__(self, manager: Managers, reserve: int = RAFT_DISK_RESERVE) -> None:
        self.manager = manager
        self.reserve = reserve
        self._reports: dict[str, DiskReport] = {}

    def note(self, node_id: str, free: int, path: str) -> None:
        """A manager's heartbeat said how much room its raft log has."""
        self._reports[node_id] = DiskReport(free, path, time.monotonic())

    def short(self) -> list[tuple[str, DiskReport]]:
        """(hostname, report) of every manager now below the reserve; the leader measured now."""
        manager = self.manager
        own = manager.raft_dir
        found = {manager.node_id: DiskReport(free_bytes(own), str(own), time.monotonic())}
        fresh_since = time.monotonic() - _STALE_AFTER_PERIODS * manager.heartbeat_period
        names = {}
        for node in manager.manager_nodes():
            names[node.id] = node.description.hostname or node.id
            report = self._reports.get(node.id)
            if node.id != manager.node_id and report is not None and report.at >= fresh_since:
                found[node.id] = report
        return sorted(((names.get(node_id, node_id), report) for node_id, report in found.items()
                       if report.free < self.reserve), key=lambda item: item[1].free)

    def check(self) -> None:
        """Raise ResourceExhausted, naming the managers and the fix, if a change must wait."""
        short = self.short()
        if not short:
            return
        which = "; ".join(f"{host} has {format_size(r.free)} free at {r.path}" for host, r in short)
        raise errors.ResourceExhausted(
            f"the raft log is nearly out of disk: {which}. Changes are refused while any manager "
            f"has less than {format_size(self.reserve)} free there, so that no manager's log "
            f"fills its disk; nothing was changed. Free space on "
            f"{'that manager' if len(short) == 1 else 'those managers'} and retry (removals and "
            f"stops still go through)")
