"""Network-namespace helpers that work with namespaces bind-mounted at arbitrary paths.

Namespaces are addressed by *path* (``<data_root>/netns/<name>``) rather than by ``ip netns``
name, so several nodes on one machine (the lab) never collide and nothing lands in /run/netns
that other tools would treat as theirs.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Callable, Optional, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as _pr_netns

from common import linux

T = TypeVar("T")


def pyroute2_path(path: str) -> bytes:
    """A namespace path as pyroute2 must be handed it: it encodes a str path as ASCII, so a
    data root with a non-ASCII character in it would fail; bytes pass through untouched."""
    return os.fsencode(path)


def exists(path: str) -> bool:
    """True when ``path`` is a bind-mounted network namespace (not just a leftover file).

    os.path.ismount works on files too: a bind-mounted nsfs file has another st_dev than its
    directory.
    """
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def create(path: str) -> None:
    """Create a new network namespace bind-mounted at ``path`` (idempotent).

    pyroute2 does what iproute2 does: the containing directory becomes a shared mount so that
    unmounting the namespace also unmounts the copies other mount namespaces (runc's) made.
    """
    if exists(path):
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a placeholder left by a crash between create and bind
    _pr_netns.create(pyroute2_path(path))
    # loopback up: a namespace without it surprises every program run in it
    with ipr(path) as ip:
        ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")


def remove(path: str) -> None:
    """Unmount and delete the namespace file (idempotent); the namespace dies with its last user."""
    if not os.path.lexists(path):
        return
    with contextlib.suppress(OSError):  # not (or no longer) mounted: only the file is left
        linux.umount(path, linux.MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def release_dir(directory: str) -> None:
    """Undo pyroute2's self-bind of a namespace directory once it holds no namespace.

    (os.path.ismount cannot see a directory bound onto itself: same device as its parent.)
    """
    try:
        if os.listdir(directory):
            return
    except FileNotFoundError:
        return
    directory = os.path.realpath(directory)
    for _ in range(8):      # pyroute2 may have stacked several self-binds
        if not linux.is_mountpoint(directory):
            break
        try:
            linux.umount(directory, linux.MNT_DETACH)
        except OSError:
            break


def ipr(path: Optional[str]) -> IPRoute:
    """An IPRoute bound to the namespace at ``path`` (None = ours); never creates one."""
    if path is None:
        return IPRoute()
    if not os.path.exists(path):
        raise FileNotFoundError(f"network namespace {path} does not exist")
    # flags=0: pyroute2 would otherwise silently create a missing namespace
    return IPRoute(netns=pyroute2_path(path), flags=0)


def veth(path: Optional[str], name: str, peer_path: str, peer_name: str) -> None:
    """A veth pair: ``name`` in ``path`` (None: the caller's namespace), ``peer_name`` in
    ``peer_path``. Both ends are left down."""
    fd = os.open(peer_path, os.O_RDONLY)
    try:
        with ipr(path) as ip:
            ip.link("add", ifname=name, kind="veth", peer={"ifname": peer_name, "net_ns_fd": fd})
    finally:
        os.close(fd)


def nsenter_argv(path: Optional[str], argv: list[str]) -> list[str]:
    """argv that runs ``argv`` inside the namespace (network namespace only)."""
    if path is None:
        return list(argv)
    return ["nsenter", f"--net={path}", "--", *argv]


def run(path: Optional[str], argv: list[str], *, input: Optional[str] = None,
        timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(nsenter_argv(path, argv), input=input, capture_output=True, text=True,
                          timeout=timeout, check=False)


def nft_reset(table: str) -> str:
    """Script lines deleting ``ip table`` whether or not it exists (create, then delete), so a
    script that goes on to declare the table replaces it in one transaction."""
    return f"table ip {table}\ndelete table ip {table}\n"


def nft(path: Optional[str], script: str, error: type[Exception] = RuntimeError) -> None:
    """Apply an nftables script in the namespace, as one transaction; ``error`` on failure."""
    r = run(path, ["nft", "-f", "-"], input=script)
    if r.returncode != 0:
        raise error(f"nft failed ({r.returncode}): {r.stderr.strip()}\n--- script ---\n{script}")


def call_in(path: Optional[str], fn: Callable[[], T]) -> T:
    """Run ``fn`` in a forked child that entered the namespace; return its (picklable) result.

    Needed for the few things that read the *current* namespace (``/proc/sys/net``,
    ``/proc/net``), since Python 3.11 has no os.setns and threads share one namespace choice.
    """
    if path is None:
        return fn()
    import pickle
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's stack
        code = 0
        try:
            os.close(r)
            _pr_netns.setns(pyroute2_path(path), flags=0)
            try:
                payload = pickle.dumps((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - shipped to the parent
                payload = pickle.dumps((False, exc))
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"could not enter network namespace {path}")
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value
