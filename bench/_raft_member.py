"""One raft member for bench/raft_bench.py: a separate process, like a manager.

The member whose index is 0 also drives the writes once it leads, and prints the figures:
commits per second, and the CPU time the three members spent per commit (from /proc, so the
driver passes the followers' pids). CPU per commit hardly moves with the machine's load, where
commits per second do: on a shared machine it is the figure that shows a change of cost.
"""
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from common.model import Node
from manager.state.raft.node import RaftNode, RaftTimings
from manager.state.store import Store, Transaction


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of these processes (fields 14 and 15 of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()   # the name may hold spaces
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def main(index: int, addrs: list[str], data: Path, sequential: int, concurrent: int,
               writers: int, pids: list[int]) -> None:
    # Member 0 drives the writes, so it should lead: the others wait longer before an election.
    timings = RaftTimings() if index == 0 else RaftTimings(election_min=1.5, election_max=2.0,
                                                           connection_timeout=2.5)
    raft = RaftNode(Store(), addrs[index], addrs, data / str(index), b"bench-secret" * 3,
                    timings=timings)
    try:
        if index != 0:
            await asyncio.sleep(3600)
            return
        deadline = time.monotonic() + 15
        while not raft.is_leader:
            if time.monotonic() > deadline:
                raise SystemExit(f"member 0 did not become leader (leader: {raft.leader_addr})")
            await asyncio.sleep(0.05)
        pids = [os.getpid(), *pids]
        t0, c0 = time.perf_counter(), cpu_seconds(pids)
        for i in range(sequential):
            await raft.commit(Transaction().create("nodes", Node(id=f"s{i}")))
        seq = sequential / (time.perf_counter() - t0)
        seq_cpu = (cpu_seconds(pids) - c0) / max(sequential, 1)

        queue = list(range(concurrent))

        async def writer() -> None:
            while queue:
                i = queue.pop()
                await raft.commit(Transaction().create("nodes", Node(id=f"c{i}")), timeout=30)

        t0, c0 = time.perf_counter(), cpu_seconds(pids)
        await asyncio.gather(*[writer() for _ in range(writers)])
        conc = concurrent / (time.perf_counter() - t0)
        conc_cpu = (cpu_seconds(pids) - c0) / max(concurrent, 1)
        print(json.dumps({"sequential_per_s": round(seq), "concurrent_per_s": round(conc),
                          "sequential_cpu_ms": round(seq_cpu * 1000, 3),
                          "concurrent_cpu_ms": round(conc_cpu * 1000, 3),
                          "writers": writers}), flush=True)
    finally:
        raft.close()


if __name__ == "__main__":
    idx, addrs, data, seq, conc, writers = (int(sys.argv[1]), sys.argv[2].split(","), Path(sys.argv[3]),
                                            int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    # The followers' pids, for the leader's CPU figures (optional: older drivers pass none).
    others = [int(p) for p in sys.argv[7].split(",")] if len(sys.argv) > 7 and sys.argv[7] else []
    asyncio.run(main(idx, addrs, data, seq, conc, writers, others))
