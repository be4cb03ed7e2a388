"""cgroups: the per-daemon path prefix, the cgroup mounts, swap accounting, OOM kill counts."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from common import linux


def cgroup_prefix_for(executor_root: Path) -> str:
    """Unique per daemon (data root), so lab daemons on one machine never share cgroups."""
    tag = hashlib.sha256(str(executor_root.resolve()).encode()).hexdigest()[:10]
    return f"shoal-{tag}-"


def cgroup_mounts() -> list[tuple[str, str, str]]:
    return [(m.mount_point, m.fs_type, m.super_options) for m in linux.mountinfo()
            if m.fs_type in ("cgroup", "cgroup2")]


def _swap_accounting() -> bool:
    for mnt, fstype, opts in cgroup_mounts():
        if fstype == "cgroup" and "memory" in opts.split(","):
            return os.path.exists(f"{mnt}/memory.memsw.limit_in_bytes")
        if fstype == "cgroup2" and mnt == "/sys/fs/cgroup":
            return True
    return False


def oom_kills(cg: str) -> int:
    """How many times the kernel's OOM killer struck in the cgroup `cg` (a container's
    cgroupsPath); 0 when it cannot be read."""
    if not cg:
        return 0
    for mnt, fstype, opts in cgroup_mounts():
        try:
            if fstype == "cgroup" and "memory" in opts.split(","):
                text = (Path(mnt + cg) / "memory.oom_control").read_text()
            elif fstype == "cgroup2" and mnt == "/sys/fs/cgroup":
                text = (Path(mnt + cg) / "memory.events").read_text()
            else:
                continue
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return 0
