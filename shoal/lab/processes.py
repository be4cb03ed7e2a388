"""Processes the lab starts and stops: commands in hosts, signals by PID, liveness, reaping."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from common import linux
from shoal.lab.errors import LabCommandError, LabError

STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 20

# The processes one Lab object started, by PID, so that their exits are seen and reaped.
Children = dict[int, subprocess.Popen]


def map_argv(argv: Iterable[str]) -> list[str]:
    """`shoal ...` / `shoald ...` run this interpreter's CLI / daemon, not whatever is on PATH."""
    argv = list(argv)
    if argv and argv[0] == "shoal":
        return [sys.executable, "-m", "shoal.cli", *argv[1:]]
    if argv and argv[0] == "shoald":
        return [sys.executable, "-m", "shoal.daemon", *argv[1:]]
    return argv


def source_root() -> str:
    """The directory holding the `shoal` package, so `-m shoal.cli` works from any cwd."""
    return str(Path(__file__).resolve().parent.parent.parent)


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    root = source_root()
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        parts.insert(0, root)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


# -- running commands inside a host --

def host_command(lab: str, host: str, h: dict, argv: Iterable[str]) -> tuple[list[str], dict]:
    """The full argv and env that run `argv` inside `host` (record `h`; `shoal` maps to this
    CLI)."""
    argv = map_argv(argv)
    if not argv:
        raise LabError("no command given: e.g. `shoal lab exec manager1 -- shoal node ls`")
    extra = {"SHOAL_SOCKET": h["socket"], "SHOAL_LAB": lab, "SHOAL_LAB_HOST": host}
    if h.get("docker_socket"):
        # The docker CLI (and Docker's SDKs) reach this host's shoald as they would dockerd.
        extra["DOCKER_HOST"] = f"unix://{h['docker_socket']}"
    env = child_env(extra)
    return ["ip", "netns", "exec", h["namespace"], *argv], env


def run(host: str, argv: list[str], full: list[str], env: dict, *, check: bool, timeout: float,
        input: bytes | str | None) -> subprocess.CompletedProcess:
    """Run `full` (the host's command for `argv`); stdout/stderr as text."""
    if isinstance(input, str):
        input = input.encode()
    try:
        raw = subprocess.run(full, env=env, capture_output=True, timeout=timeout,
                             input=input, stdin=None if input is not None
                             else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{host}: `{' '.join(argv)}` did not finish within {timeout:.0f} s") \
            from exc
    res = subprocess.CompletedProcess(
        list(argv), raw.returncode, raw.stdout.decode(errors="replace"),
        raw.stderr.decode(errors="replace"))
    if check and res.returncode != 0:
        out = (res.stderr.strip() or res.stdout.strip()).splitlines()
        raise LabCommandError(f"{host}: `{' '.join(argv)}` exited with {res.returncode}: "
                              f"{out[-1] if out else '(no output)'}", res)
    return res


# -- what /proc says --

def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def ppid_map() -> dict[int, int]:
    result = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := linux.proc_stat(int(entry))) is not None:
            result[int(entry)] = st.ppid
    return result


def descendants(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in ppid_map().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found and child not in roots:
                found.add(child)
                todo.append(child)
    return found


def ancestors_of_self() -> set[int]:
    ppids = ppid_map()
    result, pid = {os.getpid()}, os.getpid()
    while pid in ppids and ppids[pid] > 0:
        pid = ppids[pid]
        result.add(pid)
    return result


def netns_pids(ns: str) -> set[int]:
    try:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {int(tok) for tok in out.split() if tok.isdigit()}


def tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    text = "\n".join(data.splitlines()[-lines:])
    return text or "(log is empty)"


# -- liveness, reaping, signals --

def alive(children: Children, pid: int | None, h: dict | None = None) -> bool:
    """Is `pid` alive and (when a host record is given) still that host's daemon?"""
    if not pid:
        return False
    child = children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    if not linux.pid_alive(pid):
        return False
    if h is not None and h.get("socket") not in cmdline(pid):
        return False  # the PID was reused by something else
    return True


def reap(children: Children, pid: int) -> None:
    child = children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(Exception):
            child.wait(timeout=1)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_dead(children: Children, pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until every pid is gone (or a zombie); returns those still alive."""
    pending = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        for pid in list(pending):
            child = children.get(pid)
            if child is not None and child.poll() is not None:
                pending.discard(pid)
            elif not linux.pid_alive(pid):
                pending.discard(pid)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    for pid in set(pids) - pending:
        reap(children, pid)
    return pending


def kill(children: Children, pid: int) -> None:
    """SIGKILL `pid` and wait (up to 5 s) until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_dead(children, [pid], 5.0)


def terminate(children: Children, pid: int, timeout: float,
              on_sigkill: Callable[[], None]) -> bool:
    """SIGTERM `pid`, wait up to `timeout` s, then (after calling `on_sigkill`) SIGKILL. True if
    SIGTERM was enough."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    graceful = not wait_dead(children, [pid], timeout)
    if not graceful:
        on_sigkill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_dead(children, [pid], 5.0)
    return graceful
