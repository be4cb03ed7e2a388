"""`container stats`: a container's resource use, read from its cgroup (v1 controllers, or the
unified hierarchy) and its network namespace's /proc/net/dev; the figures computed as the
docker CLI computes them from dockerd's samples (CPU % from two samples, memory without the
inactive page cache, the limit capped at the host's memory)."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from worker.executor.top import cgroup_file

_UNLIMITED = 1 << 62  # a v1 memory limit above this is "no limit"


@dataclass
class Sample:
    read: float          # time.time() when taken
    cpu_ns: int          # CPU time the container used, ever
    system_ns: int       # CPU time the host used, ever (all CPUs)
    online_cpus: int
    mem_usage: int       # bytes, without the inactive page cache
    mem_limit: int       # bytes: the container's limit, at most the host's memory
    net_rx: int
    net_tx: int
    blk_read: int
    blk_write: int
    pids: int


@dataclass
class Stats:
    """One line of `container stats` (the JSON --format json prints)."""
    id: str
    name: str
    cpu_percent: float
    mem_usage: int
    mem_limit: int
    mem_percent: float
    net_rx: int
    net_tx: int
    blk_read: int
    blk_write: int
    pids: int
    read: float

    def plain(self) -> dict:
        return asdict(self)


def _read(path: Optional[Path]) -> str:
    if path is None:
        return ""
    try:
        return path.read_text()
    except OSError:
        return ""


def _int(text: str) -> int:
    text = text.strip()
    if text == "max":
        return _UNLIMITED
    try:
        return int(text)
    except ValueError:
        return 0


def _keyed(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = _int(parts[1])
    return out


def host_cpu_ns() -> int:
    """The host's CPU time in ns, as dockerd's getSystemCPUUsage: /proc/stat's cpu line."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                ticks = sum(int(x) for x in line.split()[1:8])
                return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return 0


def host_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_ns(cg: str) -> int:
    usage = cgroup_file(cg, "cpuacct", "cpuacct.usage")
    if usage is not None:
        return _int(_read(usage))
    return _keyed(_read(cgroup_file(cg, "cpu", "cpu.stat"))).get("usage_usec", 0) * 1000


def _memory(cg: str) -> tuple[int, int]:
    v1 = cgroup_file(cg, "memory", "memory.usage_in_bytes")
    if v1 is not None:
        usage = _int(_read(v1))
        limit = _int(_read(cgroup_file(cg, "memory", "memory.limit_in_bytes")))
        inactive = _keyed(_read(cgroup_file(cg, "memory", "memory.stat"))).get(
            "total_inactive_file", 0)
    else:
        usage = _int(_read(cgroup_file(cg, "memory", "memory.current")))
        limit = _int(_read(cgroup_file(cg, "memory", "memory.max")))
        inactive = _keyed(_read(cgroup_file(cg, "memory", "memory.stat"))).get(
            "inactive_file", 0)
    if inactive < usage:  # docker's calculateMemUsageUnixNoCache
        usage -= inactive
    machine = host_memory()
    if limit <= 0 or limit >= _UNLIMITED or (machine and limit > machine):
        limit = machine
    return usage, limit


def _block_io(cg: str) -> tuple[int, int]:
    read = write = 0
    v1 = (cgroup_file(cg, "blkio", "blkio.throttle.io_service_bytes_recursive")
          or cgroup_file(cg, "blkio", "blkio.throttle.io_service_bytes"))
    if v1 is not None:
        for line in _read(v1).splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1].lower() in ("read", "write"):
                if parts[1].lower() == "read":
                    read += _int(parts[2])
                else:
                    write += _int(parts[2])
        return read, write
    for line in _read(cgroup_file(cg, "io", "io.stat")).splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes":
                read += _int(value)
            elif key == "wbytes":
                write += _int(value)
    return read, write


def net_dev(pid: int) -> tuple[int, int]:
    """Bytes received and sent by the interfaces of `pid`'s network namespace, loopback left
    out (as dockerd counts the container's endpoints only)."""
    rx = tx = 0
    if pid <= 0:
        return 0, 0
    try:
        text = Path(f"/proc/{pid}/net/dev").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        fields = counters.split()
        if name.strip() == "lo" or len(fields) < 9:
            continue
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx


def sample(cgroup: str, pid: int) -> Sample:
    """The container's counters now."""
    mem_usage, mem_limit = _memory(cgroup)
    net_rx, net_tx = net_dev(pid)
    blk_read, blk_write = _block_io(cgroup)
    pids = _int(_read(cgroup_file(cgroup, "pids", "pids.current")))
    return Sample(read=time.time(), cpu_ns=_cpu_ns(cgroup), system_ns=host_cpu_ns(),
                  online_cpus=os.cpu_count() or 1, mem_usage=mem_usage, mem_limit=mem_limit,
                  net_rx=net_rx, net_tx=net_tx, blk_read=blk_read, blk_write=blk_write,
                  pids=pids)


def compute(cid: str, name: str, prev: Optional[Sample], cur: Sample) -> Stats:
    """The docker CLI's figures: CPU % = container CPU delta / host CPU delta x CPUs x 100."""
    cpu = 0.0
    if prev is not None:
        cpu_delta = cur.cpu_ns - prev.cpu_ns
        system_delta = cur.system_ns - prev.system_ns
        if cpu_delta > 0 and system_delta > 0:
            cpu = cpu_delta / system_delta * cur.online_cpus * 100.0
    mem_percent = cur.mem_usage / cur.mem_limit * 100.0 if cur.mem_limit else 0.0
    return Stats(id=cid, name=name, cpu_percent=cpu, mem_usage=cur.mem_usage,
                 mem_limit=cur.mem_limit, mem_percent=mem_percent, net_rx=cur.net_rx,
                 net_tx=cur.net_tx, blk_read=cur.blk_read, blk_write=cur.blk_write,
                 pids=cur.pids, read=cur.read)
