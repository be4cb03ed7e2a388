"""One raft member for bench/raft_bench.py: a separate process, like a manager.

The member whose index is 0 also drives the writes once it leads, and prints the figures.
"""
import asyncio
import json
import sys
import time
from pathlib import Path

from common.model import Node
from manager.state.raft.node import RaftNode, RaftTimings
from manager.state.store import Store, Transaction


async def main(index: int, addrs: list[str], data: Path, sequential: int, concurrent: int,
               writers: int) -> None:
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
        t0 = time.perf_counter()
        for i in range(sequential):
            await raft.commit(Transaction().create("nodes", Node(id=f"s{i}")))
        seq = sequential / (time.perf_counter() - t0)

        queue = list(range(concurrent))

        async def writer() -> None:
            while queue:
                i = queue.pop()
                await raft.commit(Transaction().create("nodes", Node(id=f"c{i}")), timeout=30)

        t0 = time.perf_counter()
        await asyncio.gather(*[writer() for _ in range(writers)])
        conc = concurrent / (time.perf_counter() - t0)
        print(json.dumps({"sequential_per_s": round(seq), "concurrent_per_s": round(conc),
                          "writers": writers}), flush=True)
    finally:
        raft.close()


if __name__ == "__main__":
    idx, addrs, data, seq, conc, writers = (int(sys.argv[1]), sys.argv[2].split(","), Path(sys.argv[3]),
                                            int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    asyncio.run(main(idx, addrs, data, seq, conc, writers))
