"""Old raft snapshots kept beside the current one: the swarm's `--max-snapshots` (Docker's
KeepOldSnapshots). They are for an operator's recovery by hand; raft never reads them.

pysyncobj replaces its snapshot file by name (journal.replace_durably). Before that, the file
being replaced is hard-linked as `<snapshot>.old-<nanoseconds>` (no copy: the replace gives the
name to the new file and the old bytes stay with the link), and the oldest links beyond the
setting are removed. The setting is per snapshot path, so several managers in one process
(tests) keep their own.
"""
from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("shoal.raft")

OLD_SUFFIX = ".old-"
_keep: dict[str, int] = {}
_lock = threading.Lock()  # set on the event loop, read on pysyncobj's thread


def set_keep(snapshot_path: str, count: int) -> None:
    with _lock:
        _keep[snapshot_path] = max(0, int(count))
    if count >= 0:
        prune(snapshot_path, count)


def kept(snapshot_path: str) -> list[str]:
    """The old snapshots of `snapshot_path`, oldest first."""
    directory, name = os.path.split(snapshot_path)
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    prefix = name + OLD_SUFFIX
    olds = [n for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return [os.path.join(directory, n) for n in sorted(olds, key=lambda n: int(n[len(prefix):]))]


def before_replace(snapshot_path: str) -> None:
    """Called just before `snapshot_path` is replaced by a new snapshot."""
    with _lock:
        keep = _keep.get(snapshot_path, 0)
    if keep > 0 and os.path.exists(snapshot_path):
        try:
            os.link(snapshot_path, f"{snapshot_path}{OLD_SUFFIX}{time.time_ns()}")
        except OSError as exc:  # a kept copy is a convenience: never fail the snapshot for it
            log.warning("could not keep the old raft snapshot %s: %s", snapshot_path, exc)
    prune(snapshot_path, keep)


def prune(snapshot_path: str, keep: int) -> None:
    olds = kept(snapshot_path)
    for path in olds[:max(0, len(olds) - keep)]:
        try:
            os.unlink(path)
        except OSError as exc:
            log.warning("could not remove the old raft snapshot %s: %s", path, exc)
