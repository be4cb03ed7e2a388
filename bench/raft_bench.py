"""Raft benchmarks (issue 2).

1. Commits per second through shoal's raft adapter with three members in three processes on
   loopback: sequential, and with 100 concurrent writers; each with the journal's syncing on
   and off (SHOAL_UNSAFE_RAFT_NO_SYNC=1 in the members' environment, a test-only switch), the
   two interleaved round by round (on, off, then off, on) so that a shared machine's load
   falls on both alike. Also the CPU time the three members spend per commit, which a loaded
   machine hardly moves: the figure to watch for a change of cost (the regression of issue 18,
   sealing each transaction on its own, cost 40 % more CPU per commit with 100 writers).
2. Leader failover on a real lab (3 managers, real shoald): SIGKILL the leader, then time until a
   write through a surviving manager's API succeeds. At least 5 trials; median and max.

Run as root: .venv/bin/python bench/raft_bench.py [--rounds 3] [--trials 5] [--skip-failover]
The figures also go to bench/results/raft_bench.json (--json PATH); bench/compare.py sets them
against bench/baseline/raft_bench.json.
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

from bench._results import Results, add_json_option  # noqa: E402

NO_SYNC = "SHOAL_UNSAFE_RAFT_NO_SYNC"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def commit_rates(sequential: int, concurrent: int, writers: int, sync: bool = True) -> dict:
    # On a loaded machine a follower sometimes wins the first election (member 0 must lead, it
    # drives the writes): start the three again rather than lose the whole run.
    for attempt in range(3):
        out = _commit_rates_once(sequential, concurrent, writers, sync)
        if out.returncode == 0:
            return json.loads(out.stdout.strip().splitlines()[-1])
        if "did not become leader" not in out.stderr:
            break
        print(f"member 0 did not become leader; again ({attempt + 1})", flush=True)
    raise SystemExit(f"raft members failed (exit {out.returncode}):\n{out.stderr[-2000:]}")


def _commit_rates_once(sequential: int, concurrent: int, writers: int,
                       sync: bool) -> subprocess.CompletedProcess:
    addrs = ",".join(f"127.0.0.1:{p}" for p in free_ports(3))
    with tempfile.TemporaryDirectory() as data:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        # Each member's journal reads the switch at start: set it for all three, or for none.
        env.pop(NO_SYNC, None)
        if not sync:
            env[NO_SYNC] = "1"
        args = [addrs, data, str(sequential), str(concurrent), str(writers)]
        followers = [subprocess.Popen([sys.executable, str(ROOT / "bench/_raft_member.py"), str(i), *args],
                                      env=env, stdout=subprocess.DEVNULL) for i in (1, 2)]
        try:
            pids = ",".join(str(p.pid) for p in followers)
            out = subprocess.run([sys.executable, str(ROOT / "bench/_raft_member.py"), "0", *args, pids],
                                 env=env, capture_output=True, text=True, timeout=600)
        finally:
            for p in followers:
                p.kill()
                p.wait()
    return out


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


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def cpu_spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, help="commit-rate rounds, each sync on and off")
    parser.add_argument("--trials", type=int, default=5, help="failover trials")
    parser.add_argument("--sequential", type=int, default=2000)
    parser.add_argument("--concurrent", type=int, default=10000)
    parser.add_argument("--writers", type=int, default=100)
    parser.add_argument("--skip-failover", action="store_true")
    add_json_option(parser, "raft_bench")
    args = parser.parse_args()
    results = Results("raft_bench", args={k: v for k, v in vars(args).items() if k != "json"})

    rates: dict[tuple[str, bool], list[float]] = {}
    cpu: dict[tuple[str, bool], list[float]] = {}     # ms of the 3 members' CPU per commit
    for r in range(args.rounds):
        for sync in ((True, False) if r % 2 == 0 else (False, True)):
            got = commit_rates(args.sequential, args.concurrent, args.writers, sync)
            rates.setdefault(("sequential", sync), []).append(got["sequential_per_s"])
            rates.setdefault(("concurrent", sync), []).append(got["concurrent_per_s"])
            cpu.setdefault(("sequential", sync), []).append(got["sequential_cpu_ms"])
            cpu.setdefault(("concurrent", sync), []).append(got["concurrent_cpu_ms"])
            print(f"round {r + 1}, sync {'on ' if sync else 'off'}: sequential {got['sequential_per_s']}, "
                  f"{args.writers} writers {got['concurrent_per_s']} commits/s; CPU per commit "
                  f"{got['sequential_cpu_ms']:.2f} and {got['concurrent_cpu_ms']:.2f} ms "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"raft commits/s, 3 members in 3 processes, {args.rounds} rounds, median (min–max):")
    print(f"  {'':<22} {'sync on':<28} {'sync off (unsafe)':<28}")
    for kind, label in (("sequential", "sequential"), ("concurrent", f"{args.writers} writers")):
        on, off = rates[(kind, True)], rates[(kind, False)]
        print(f"  {label:<22} {spread(on):<28} {spread(off):<28}"
              f"{'  (aim: >= 2000)' if kind == 'concurrent' else ''}")
        for sync, samples in ((True, on), (False, off)):
            results.add(f"{label} commits/s, sync {'on' if sync else 'off'}", samples, "commits/s", "higher")
    # Sequential commits leave the members idle between them, and idle ticks cost CPU too: that
    # figure moves with the load a little; the 100 writers' hardly at all.
    print("CPU time of the 3 members per commit, ms, median (min–max):")
    for kind, label in (("sequential", "sequential"), ("concurrent", f"{args.writers} writers")):
        on, off = cpu[(kind, True)], cpu[(kind, False)]
        print(f"  {label:<22} {cpu_spread(on):<28} {cpu_spread(off):<28}")
        for sync, samples in ((True, on), (False, off)):
            results.add(f"{label} CPU ms per commit, sync {'on' if sync else 'off'}", samples, "ms", "lower")
    if not args.skip_failover:
        times = failover(args.trials)
        print(f"leader failover (SIGKILL -> first successful write), {len(times)} trials: "
              f"median {statistics.median(times):.2f}s, max {max(times):.2f}s "
              f"(aim: median < 1s; Docker Swarm here: 12s) — {', '.join(f'{t:.2f}' for t in times)}")
        results.add("leader failover s", times, "s", "lower")
    results.write(args.json)


if __name__ == "__main__":
    main()
