"""Raft benchmarks (issue 2).

1. Commits per second through shoal's raft adapter with three members in three processes on
   loopback: sequential, and with 100 concurrent writers.
2. Leader failover on a real lab (3 managers, real shoald): SIGKILL the leader, then time until a
   write through a surviving manager's API succeeds. At least 5 trials; median and max.

Run as root: .venv/bin/python bench/raft_bench.py [--trials 5] [--skip-failover]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def commit_rates(sequential: int, concurrent: int, writers: int) -> dict:
    addrs = ",".join(f"127.0.0.1:{p}" for p in free_ports(3))
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        args = [addrs, data, str(sequential), str(concurrent), str(writers)]
        followers = [subprocess.Popen([sys.executable, str(ROOT / "bench/_raft_member.py"), str(i), *args],
                                      env=env, stdout=subprocess.DEVNULL) for i in (1, 2)]
        try:
            out = subprocess.run([sys.executable, str(ROOT / "bench/_raft_member.py"), "0", *args],
                                 env=env, capture_output=True, text=True, timeout=600, check=True)
        finally:
            for p in followers:
                p.kill()
                p.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


WRITE_PROBE = textwrap.dedent("""
    import asyncio, sys, time
    from common.httpclient import ApiClient, Endpoint
    async def main():
        async with ApiClient(Endpoint(unix_path=sys.argv[1])) as c:
            while True:
                try:
                    await c.request("POST", "/nodes/" + sys.argv[2] + "/update",
                                    {"spec": {"labels": {"t": sys.argv[3]}}}, timeout=2)
                    print(time.monotonic(), flush=True)
                    return
                except Exception:
                    await asyncio.sleep(0.02)
    asyncio.run(main())
""")


def failover(trials: int) -> list[float]:
    from integration.helpers import leader_of, node_table, wait_until
    from shoal.lab.netlab import Lab

    times = []
    with Lab("benchfo") as lab:
        lab.up(managers=3, workers=0)
        for trial in range(trials):
            leader = wait_until(lambda: leader_of(lab, "manager1") if lab.host("manager1").state == "running"
                                else leader_of(lab, "manager2"), what="a leader")
            survivor = next(m for m in ("manager1", "manager2", "manager3") if m != leader)
            target = next(m for m in ("manager1", "manager2", "manager3") if m not in (leader, survivor))
            cmd = lab.command(survivor, [sys.executable, "-c", WRITE_PROBE, lab.host(survivor).socket,
                                         target, str(trial)])
            t_kill = time.monotonic()
            lab.kill(leader)
            out = subprocess.run(cmd[0], env=cmd[1], capture_output=True, text=True, timeout=60)
            times.append(float(out.stdout.strip()) - t_kill)
            lab.start(leader)
            wait_until(lambda: all(n["manager_status"] in ("leader", "reachable")
                                   for n in node_table(lab, survivor).values()),
                       timeout=30, what="all managers reachable")
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=2000)
    parser.add_argument("--concurrent", type=int, default=10000)
    parser.add_argument("--writers", type=int, default=100)
    parser.add_argument("--skip-failover", action="store_true")
    args = parser.parse_args()
    rates = commit_rates(args.sequential, args.concurrent, args.writers)
    print(f"raft commits/s, 3 members in 3 processes: sequential {rates['sequential_per_s']}, "
          f"{rates['writers']} concurrent writers {rates['concurrent_per_s']} (aim: >= 2000)")
    if not args.skip_failover:
        times = failover(args.trials)
        print(f"leader failover (SIGKILL -> first successful write), {len(times)} trials: "
              f"median {statistics.median(times):.2f}s, max {max(times):.2f}s "
              f"(aim: median < 1s; Docker Swarm here: 12s) — {', '.join(f'{t:.2f}' for t in times)}")


if __name__ == "__main__":
    main()
