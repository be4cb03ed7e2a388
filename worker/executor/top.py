"""`container top`: a container's processes, as dockerd finds them: the pids of its cgroup,
then `ps` run on the host with the caller's options (default -ef), its rows narrowed to those
pids. The host's ps sees every process, so the options work as on the host."""
from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from common import errors
from worker.executor.cgroups import cgroup_mounts

DEFAULT_PS_ARGS = ["-ef"]
PS_TIMEOUT = 10.0


@dataclass
class ProcessList:
    titles: list[str] = field(default_factory=list)
    processes: list[list[str]] = field(default_factory=list)


def cgroup_file(cgroup: str, controller: str, name: str) -> Path | None:
    """`name` in the container's cgroup of `controller` (v1), or of the unified hierarchy
    (v2, when the controller is not mounted as v1); None when neither exists."""
    unified = None
    for mnt, fstype, opts in cgroup_mounts():
        if fstype == "cgroup" and controller in opts.split(","):
            path = Path(mnt + cgroup) / name
            if path.exists():
                return path
        elif fstype == "cgroup2":
            unified = Path(mnt + cgroup) / name
    return unified if unified is not None and unified.exists() else None


def cgroup_pids(cgroup: str) -> list[int]:
    """The processes (thread group ids) in the container's cgroup."""
    path = cgroup_file(cgroup, "pids", "cgroup.procs") or \
        cgroup_file(cgroup, "memory", "cgroup.procs")
    if path is None:
        return []
    try:
        return [int(x) for x in path.read_text().split()]
    except OSError:
        return []


def ps_args(text: str | list[str] | None) -> list[str]:
    """The ps options (a string, split as a shell would, or a list); -ef when none."""
    if text is None or text == "" or text == []:
        return list(DEFAULT_PS_ARGS)
    if isinstance(text, list):
        return [str(a) for a in text]
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise errors.InvalidArgument(f"ps options {text!r}: {exc}", field="ps_args") from None


def parse_ps(output: str, pids: list[int]) -> ProcessList:
    """ps's table, narrowed to `pids` (a thread line, PID "-" under -m, follows its process).
    The last column (the command) keeps its spaces."""
    lines = output.splitlines()
    if not lines:
        raise errors.InvalidArgument("ps printed nothing: give options that print a table "
                                     "with a PID column (e.g. -ef or aux)", field="ps_args")
    titles = lines[0].split()
    if "PID" not in titles:
        raise errors.InvalidArgument("ps's output has no PID column: give options that print "
                                     "one (e.g. -ef or aux)", field="ps_args")
    at = titles.index("PID")
    wanted = set(pids)
    result = ProcessList(titles=titles)
    keep_threads = False
    for line in lines[1:]:
        fields = line.split()
        if len(fields) <= at:
            continue
        if fields[at] == "-":
            if keep_threads:
                result.processes.append(_row(fields, len(titles)))
            continue
        try:
            pid = int(fields[at])
        except ValueError:
            continue
        keep_threads = pid in wanted
        if keep_threads:
            result.processes.append(_row(fields, len(titles)))
    return result


def _row(fields: list[str], columns: int) -> list[str]:
    return fields[:columns - 1] + [" ".join(fields[columns - 1:])]


async def top(cgroup: str, args: list[str]) -> ProcessList:
    """The container's processes as `ps ARGS` shows them."""
    ps = shutil.which("ps")
    if ps is None:
        raise errors.Unavailable("container top needs ps on this node (apt-get install procps)")
    pids = cgroup_pids(cgroup)
    proc = await asyncio.create_subprocess_exec(
        ps, *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PS_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise errors.Unavailable(f"ps {' '.join(args)} took more than {PS_TIMEOUT:g}s") from None
    if proc.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
        raise errors.InvalidArgument(f"ps {' '.join(args)}: {last}", field="ps_args")
    return parse_ps(out.decode(errors="replace"), pids)
