"""Removing a lab: its processes, containers, mounts, namespaces and directories."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Iterable

from common import linux
from common.fsutil import read_json
from shoal.lab.errors import LabError
from shoal.lab.naming import NETNS_DIR, lab_namespaces
from shoal.lab.processes import (Children, ancestors_of_self, cmdline, descendants, netns_pids,
                                 reap, wait_dead)


def down(name: str, state_dir: Path, run_dir: Path, underlay: str, children: Children) -> None:
    """Remove everything of the lab `name`, from its lab.json and by scanning `shoal-NAME-*`
    namespaces; idempotent. A LabError lists what could not be removed."""
    from pyroute2 import netns  # lazy: every CLI command loads the lab's modules
    problems: list[str] = []
    data = read_json(state_dir / "lab.json") or {}
    namespaces = lab_namespaces(name)

    # 1. processes: in our namespaces, recorded daemons (if still ours), their descendants
    pids: set[int] = set()
    for ns in namespaces:
        pids |= netns_pids(ns)
    for h in data.get("hosts", {}).values():
        pid = h.get("pid")
        if pid and linux.pid_alive(pid) and h.get("socket") in cmdline(pid):
            pids.add(pid)
    pids |= {pid for pid in children if linux.pid_alive(pid)}
    # processes inside namespaces bound under our own directories (e.g. containers)
    pids |= pids_in_bound_namespaces([state_dir, run_dir])
    pids |= descendants(pids)
    pids -= ancestors_of_self()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    left = wait_dead(children, pids, 5.0)
    if left:
        problems.append(f"processes still alive after SIGKILL: {sorted(left)}")
    for pid in list(children):
        reap(children, pid)
    # Containers run in network namespaces of their own and outlive a killed daemon: ask
    # runc, whose state each host's executor keeps under its data root, to remove them.
    for state_root in state_dir.glob("*/executor/runc-state"):
        problems += remove_runc_containers(state_root)
    for data_root in state_dir.glob("*"):
        if data_root.is_dir():
            problems += remove_leftover_cgroups(data_root / "executor")

    # 2. mounts under the lab's directories, deepest first, lazily; and each host's
    # per-task secret tmpfs, which lives under /run (never on a data root's disk)
    from worker.secrets import run_dir_for
    secret_dirs = [run_dir_for(d) for d in state_dir.glob("*") if d.is_dir()]
    for mnt in mounts_under([state_dir, run_dir, *secret_dirs]):
        try:
            umount_lazy(mnt)
        except OSError as exc:
            problems.append(f"cannot unmount {mnt}: {exc}")

    # 3. namespaces (hosts first, the underlay last)
    for ns in sorted(namespaces, key=lambda n: n == underlay):
        try:
            netns.remove(ns)
        except Exception:
            path = NETNS_DIR / ns
            with contextlib.suppress(OSError):
                umount_lazy(str(path))
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"cannot remove namespace {ns}: {exc}")

    # 4. directories
    for d in (run_dir, state_dir, *secret_dirs):
        try:
            shutil.rmtree(d)
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"cannot remove {d}: {exc}")
    if problems:
        raise LabError(f"lab {name!r} was not removed completely: "
                       f"{'; '.join(problems)}; run `shoal lab down --name {name}` "
                       f"again")


def pids_in_bound_namespaces(dirs: Iterable[Path]) -> set[int]:
    """PIDs whose network namespace is an nsfs bind mount under `dirs`."""
    inodes = set()
    for mnt in mounts_under(dirs):
        with contextlib.suppress(OSError):
            st = os.stat(mnt)
            inodes.add((st.st_dev, st.st_ino))
    if not inodes:
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                st = os.stat(f"/proc/{entry}/ns/net")
                if (st.st_dev, st.st_ino) in inodes:
                    found.add(int(entry))
    return found


def mounts_under(dirs: Iterable[Path]) -> list[str]:
    prefixes = [str(d).rstrip("/") for d in dirs]
    try:
        table = linux.mountinfo()
    except OSError:
        return []
    found = {m.mount_point for m in table
             if any(m.mount_point == p or m.mount_point.startswith(p + "/") for p in prefixes)}
    # deepest first
    return sorted(found, key=lambda p: (p.count("/"), p), reverse=True)


def remove_runc_containers(state_root: Path) -> list[str]:
    problems = []
    if shutil.which("runc") is None:
        return problems
    for entry in sorted(p.name for p in state_root.iterdir() if p.is_dir()):
        r = subprocess.run(["runc", "--root", str(state_root), "delete", "--force", entry],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0 and (state_root / entry).exists():
            problems.append(f"runc could not remove container {entry}: {r.stderr.strip()}")
    return problems


def remove_leftover_cgroups(executor_root: Path) -> list[str]:
    """A daemon killed between runc's create and its own bookkeeping leaves the container's
    cgroups behind with no runc state to find them by: remove them by the executor's prefix."""
    from worker.executor import cgroup_mounts, cgroup_prefix_for
    prefix = cgroup_prefix_for(executor_root)
    problems = []
    for mnt, _, _ in cgroup_mounts():
        for cgroup in Path(mnt).glob(f"{prefix}*"):
            try:
                cgroup.rmdir()  # an empty cgroup goes with rmdir, its control files with it
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"cannot remove cgroup {cgroup}: {exc}")
    return problems


def umount_lazy(path: str) -> None:
    try:
        linux.umount(path, linux.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more); gone
            raise
