"""Quorum recovery benchmarks (issue 18), on a store of 10,000 objects, in one process with
shoal's real raft adapter (pysyncobj) on loopback:

1. force-new-cluster: a manager's raft directory (a snapshot plus a journal tail, as a running
   manager leaves it) rewritten as a one-member cluster's (manager/state/raft/recovery.py), then
   raft started on it until it leads with every object: each step and the total.
2. backup and restore: the store sealed into a backup file with a passphrase (scrypt + AES-GCM),
   and a restore's work: open and check the file, write the raft directory, start raft until
   it leads with every object.

The control-plane parts a real `swarm init --force-new-cluster` adds (stopping and starting the
manager's loops, one transaction) are small next to these; the lab tests prove the whole path.

Run: .venv/bin/python bench/recovery_bench.py [--objects 10000] [--rounds 3]
The figures also go to bench/results/recovery_bench.json (--json PATH).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import Results, add_json_option  # noqa: E402
from common import backupfile  # noqa: E402
from common.model import Cluster, Node, NodeDescription, Secret, SecretSpec, Service, ServiceSpec  # noqa: E402
from manager.state.raft import recovery  # noqa: E402
from manager.state.raft.node import RaftNode  # noqa: E402
from manager.state.store import Store, Transaction  # noqa: E402

SECRET = b"b" * 32
PASSPHRASE = "bench passphrase"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def wait_for(check, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        await asyncio.sleep(0.005)


def objects(n: int) -> list[Transaction]:
    """A mixed store: nodes, services and secrets, 100 creates per transaction."""
    txns, txn = [Transaction().create("clusters", Cluster(id="c1"))], Transaction()
    for i in range(n - 1):
        kind = i % 10
        if kind == 0:
            txn.create("nodes", Node(id=f"node{i}", description=NodeDescription(hostname=f"h{i}")))
        elif kind < 4:
            txn.create("secrets", Secret(id=f"sec{i}", spec=SecretSpec(name=f"sec{i}",
                                                                      data=os.urandom(64))))
        else:
            txn.create("services", Service(id=f"svc{i}", spec=ServiceSpec(name=f"svc{i}")))
        if len(txn.ops) == 100:
            txns.append(txn)
            txn = Transaction()
    if txn.ops:
        txns.append(txn)
    return txns


async def build_raft_dir(raft_dir: Path, n: int) -> int:
    """A manager's raft directory holding n objects: most in a snapshot, the rest journalled."""
    node = RaftNode(Store(), f"127.0.0.1:{free_port()}", [], raft_dir, SECRET)
    try:
        await wait_for(lambda: node.is_leader, 10)
        txns = objects(n)
        split = len(txns) * 8 // 10
        for txn in txns[:split]:
            assert (await node.commit(txn, timeout=30)).ok
        node.compact()
        await asyncio.sleep(1.0)
        for txn in txns[split:]:
            assert (await node.commit(txn, timeout=30)).ok
        return sum(node.store.count(t) for t in ("clusters", "nodes", "services", "secrets"))
    finally:
        node.close()


async def start_until_leading(raft_dir: Path, addr: str, count: int) -> float:
    t0 = time.perf_counter()
    node = RaftNode(Store(), addr, [], raft_dir, SECRET)
    try:
        await wait_for(lambda: node.is_leader and
                       sum(node.store.count(t) for t in ("clusters", "nodes", "services",
                                                          "secrets")) == count)
        return time.perf_counter() - t0
    finally:
        node.close()


async def force_new_cluster_round(work: Path, n: int) -> dict[str, float]:
    raft_dir = work / "raft"
    count = await build_raft_dir(raft_dir, n)
    addr = f"127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    recovery.force_new_cluster(raft_dir, SECRET, addr, [])
    rewrite = time.perf_counter() - t0
    start = await start_until_leading(raft_dir, addr, count)
    return {"rewrite": rewrite, "start": start, "total": rewrite + start}


async def backup_restore_round(work: Path, n: int) -> dict[str, float]:
    store = Store()
    for txn in objects(n):
        store.apply(txn.encode())
    count = sum(store.count(t) for t in ("clusters", "nodes", "services", "secrets"))
    t0 = time.perf_counter()
    snapshot = store.snapshot()
    blob = backupfile.seal_with_passphrase(backupfile.BackupContents(
        cluster_id="c1", node_id="node0", raft_index=1000, raft_term=3, store_index=store.index,
        raft_secret=SECRET, store=snapshot, created_at=time.time()), PASSPHRASE)
    backup = time.perf_counter() - t0
    t0 = time.perf_counter()
    contents = backupfile.open_backup(blob, PASSPHRASE)
    Store().restore(contents.store)  # restore's check that the store decodes
    addr = f"127.0.0.1:{free_port()}"
    recovery.write_single_member(work / "restored", contents.raft_secret, addr, contents.store,
                                 contents.raft_index, contents.raft_term)
    prepare = time.perf_counter() - t0
    start = await start_until_leading(work / "restored", addr, count)
    return {"backup": backup, "size_mb": len(blob) / 1e6, "prepare": prepare, "start": start,
            "total": prepare + start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    add_json_option(parser, "recovery_bench")
    args = parser.parse_args()
    results = Results("recovery_bench", args={k: v for k, v in vars(args).items() if k != "json"})
    fnc: dict[str, list[float]] = {}
    br: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        work = Path(tempfile.mkdtemp(prefix="shoal-recovery-bench-"))
        try:
            for k, v in asyncio.run(force_new_cluster_round(work / "fnc", args.objects)).items():
                fnc.setdefault(k, []).append(v)
            for k, v in asyncio.run(backup_restore_round(work / "br", args.objects)).items():
                br.setdefault(k, []).append(v)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in fnc.items()}
    print(f"force-new-cluster, {args.objects} objects, median of {args.rounds}: rewrite of the "
          f"raft directory {med['rewrite']:.2f} s, raft start until it leads with every object "
          f"{med['start']:.2f} s, total {med['total']:.2f} s")
    med2 = {k: statistics.median(v) for k, v in br.items()}
    print(f"backup, {args.objects} objects: sealed in {med2['backup']:.2f} s "
          f"({med2['size_mb']:.1f} MB); restore: file opened and raft directory written in "
          f"{med2['prepare']:.2f} s, raft start until it leads {med2['start']:.2f} s, total "
          f"{med2['total']:.2f} s")
    for name, samples in fnc.items():
        results.add(f"force-new-cluster {name} s", samples, "s", "lower")
    for name, samples in br.items():
        if name == "size_mb":
            results.add("backup file MB", samples, "MB", "lower")
        else:
            results.add(f"backup/restore {name} s", samples, "s", "lower")
    results.write(args.json)


if __name__ == "__main__":
    main()
