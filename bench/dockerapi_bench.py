"""The Docker Engine API's cost over shoal's own API (issue 16, Benchmark), in one lab of
3 managers + 2 workers with 50 services (created through the Docker API, so each keeps the spec
its client sent):

- `docker service ls` and `docker node ls` (the unchanged docker CLI on the Docker socket)
  against `shoal service ls` and `shoal node ls` (shoal's CLI on its own socket): p50/p99 over
  N calls each, every call a new process run inside the host as `shoal lab exec` runs it;
- the raw HTTP cost: `GET /services` through the Docker socket against `GET /services` on
  shoal's socket, from one client process (aiohttp over the Unix socket, one connection kept
  alive), sequential and 8 at a time: requests/s and p50/p99, so the translation's added ms per
  call is one printed difference. Aim: under 5 ms.

The CLI figures include each CLI's own start-up (Go's is small, Python's is not); the HTTP figures
are the servers' alone.

Run as root: .venv/bin/python bench/dockerapi_bench.py [--calls 200] [--requests 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import Results, add_json_option  # noqa: E402
from shoal.lab.netlab import Lab  # noqa: E402

DOCKER = os.environ.get("SHOAL_TEST_DOCKER", "/opt/shoal-test/docker-cli/usr/bin/docker")
SERVICES = 50
HOST = "manager1"


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def cli_latencies(lab: Lab, argv: list[str], calls: int, env_extra: dict) -> list[float]:
    full, env = lab.command(HOST, argv)
    env = {**env, **env_extra}
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        res = subprocess.run(full, env=env, capture_output=True, timeout=60)
        out.append(time.perf_counter() - t0)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {res.stderr.decode()[-400:]}")
    return out


async def http_latencies(socket: str, path: str, n: int, concurrency: int) -> tuple[list[float], float]:
    """Per-request latencies and requests/s for `n` GETs, `concurrency` at a time."""
    conn = aiohttp.UnixConnector(path=socket, limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def one() -> float:
            t0 = time.perf_counter()
            async with session.get(f"http://localhost{path}") as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"GET {path}: {resp.status} {body[:200]!r}")
            return time.perf_counter() - t0
        for _ in range(20):   # warm: connections, caches
            await one()
        per_worker = n // concurrency
        lat: list[float] = []

        async def worker() -> None:
            for _ in range(per_worker):
                lat.append(await one())
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return lat, len(lat) / (time.perf_counter() - t0)


async def create_services(socket: str) -> None:
    conn = aiohttp.UnixConnector(path=socket)
    async with aiohttp.ClientSession(connector=conn) as session:
        for i in range(SERVICES):
            spec = {"Name": f"bench{i:02d}", "Labels": {"bench": "1"},
                    "TaskTemplate": {"ContainerSpec": {"Image": "busybox:1",
                                                       "Args": ["sleep", "100000"],
                                                       "Env": [f"I={i}"]},
                                     "RestartPolicy": {"Condition": "any"}},
                    "Mode": {"Replicated": {"Replicas": 0}},
                    "EndpointSpec": {"Ports": [{"TargetPort": 80,
                                                "PublishedPort": 20000 + i}]}}
            async with session.post("http://localhost/v1.44/services/create",
                                    data=json.dumps(spec)) as resp:
                if resp.status != 201:
                    raise SystemExit(f"create bench{i}: {resp.status} {await resp.text()}")


def row(what: str, samples: list[float]) -> str:
    return f"  {what:<34} p50 {pct(samples, 0.5) * 1000:7.1f} ms   p99 {pct(samples, 0.99) * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--requests", type=int, default=1000)
    add_json_option(parser, "dockerapi_bench")
    args = parser.parse_args()
    results = Results("dockerapi_bench", args={"calls": args.calls, "requests": args.requests})
    with tempfile.TemporaryDirectory() as cfg, Lab("benchdk") as lab:
        lab.up(managers=3, workers=2)
        h = lab.host(HOST)
        asyncio.run(create_services(h.docker_socket))
        docker_env = {"DOCKER_CONFIG": cfg}
        cli = {}
        for name, argv in (("docker service ls", [DOCKER, "service", "ls"]),
                           ("shoal service ls", ["shoal", "service", "ls"]),
                           ("docker node ls", [DOCKER, "node", "ls"]),
                           ("shoal node ls", ["shoal", "node", "ls"])):
            cli[name] = cli_latencies(lab, argv, args.calls, docker_env)
        http = {}
        for conc in (1, 8):
            http[("docker", conc)] = asyncio.run(http_latencies(
                h.docker_socket, "/v1.44/services", args.requests, conc))
            http[("shoal", conc)] = asyncio.run(http_latencies(
                h.socket, "/services", args.requests, conc))
            http[("docker status", conc)] = asyncio.run(http_latencies(
                h.docker_socket, "/v1.44/services?status=true", args.requests, conc))

    print(f"CLI latency, {args.calls} calls each, {SERVICES} services, on {HOST} "
          f"(a new process per call):")
    for name, samples in cli.items():
        print(row(name, samples))
        results.add(f"{name} p50 ms", [pct(samples, 0.5) * 1000], "ms", "lower")
        results.add(f"{name} p99 ms", [pct(samples, 0.99) * 1000], "ms", "lower")
    print(f"GET /services with {SERVICES} services, {args.requests} requests from one process:")
    for conc in (1, 8):
        for key, label in (("docker", "Docker socket /v1.44/services"),
                           ("docker status", "Docker socket ?status=true"),
                           ("shoal", "shoal socket /services")):
            lat, rate = http[(key, conc)]
            print(row(f"{label} x{conc}", lat) + f"   {rate:7.0f} req/s")
            results.add(f"GET {label} x{conc} p50 ms", [pct(lat, 0.5) * 1000], "ms", "lower")
            results.add(f"GET {label} x{conc} req/s", [rate], "req/s", "higher")
    seq_docker, seq_shoal = http[("docker", 1)][0], http[("shoal", 1)][0]
    added = (pct(seq_docker, 0.5) - pct(seq_shoal, 0.5)) * 1000
    print(f"translation's added cost per GET /services (p50, sequential): {added:+.2f} ms "
          f"(aim: < 5 ms)")
    results.write(args.json)


if __name__ == "__main__":
    main()
