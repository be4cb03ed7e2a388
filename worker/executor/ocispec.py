"""The OCI runtime spec (config.json) of a container, from its config and image: pure functions."""
from __future__ import annotations

import math
import os
import re
import signal as signals
import stat
from pathlib import Path

from common import errors
from common.model import Mount
from worker.executor.cgroups import _swap_accounting
from worker.executor.container import ContainerConfig
from worker.images import Image

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_VOLUME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Docker's default capability set.
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
# runc's `runc spec` defaults, plus what Docker masks on top.
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
BASE_MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
]


# Docker's default: the grace period of a spec that gives no usable one.
DEFAULT_STOP_GRACE = 10.0
# SIGKILL follows the stop signal after this long at the latest, whatever the spec says.
MAX_STOP_GRACE = 3600.0


def stop_grace(value: object) -> float:
    """The seconds to wait between the stop signal and SIGKILL: always finite, so that a stop
    always ends. A spec from a manager that let NaN, infinity or a negative number through
    (NaN passes every comparison) gets the default; a huge one gets the bound."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return DEFAULT_STOP_GRACE
    try:
        grace = float(value)
    except OverflowError:  # an int beyond any float
        return MAX_STOP_GRACE if value > 0 else DEFAULT_STOP_GRACE
    if not math.isfinite(grace) or grace < 0:
        return DEFAULT_STOP_GRACE
    return min(grace, MAX_STOP_GRACE)


# ---- the runtime spec -----------------------------------------------------------------------
def runtime_spec(cfg: ContainerConfig, image: Image, path: Path, cgroup: str,
                 volumes_dir: Path) -> dict:
    """config.json for the bundle at `path`; named volumes live under `volumes_dir`."""
    rootfs = path / "rootfs"
    ic = image.config or {}
    entrypoint = list(cfg.command) if cfg.command else list(ic.get("Entrypoint") or [])
    # Docker's rule: overriding the entrypoint drops the image's Cmd too.
    cmd = list(cfg.args) if cfg.args else ([] if cfg.command else list(ic.get("Cmd") or []))
    argv = entrypoint + cmd
    if not argv:
        raise errors.InvalidArgument(f"image {cfg.image} has no command and the service "
                                     "gives none", field="command")
    uid, gid, extra_gids, home = resolve_user(rootfs, cfg.user or ic.get("User") or "")
    hostname = cfg.hostname or cfg.id[:12]
    env = merge_env([DEFAULT_PATH, f"HOSTNAME={hostname}"], ic.get("Env") or [], cfg.env)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={home}")
    cwd = cfg.workdir or ic.get("WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise errors.InvalidArgument(f"working directory {cwd!r} must be absolute",
                                     field="dir")
    wd = in_rootfs(rootfs, cwd)
    if not wd.exists():
        wd.mkdir(parents=True, mode=0o755)
    for src, dst, _ in cfg.extra_binds:
        # A file bound onto a directory fails in runc with a message far from the cause; the
        # image decides what its paths are, so only the node can tell.
        if os.path.isfile(src) and in_rootfs(rootfs, dst).is_dir():
            raise errors.InvalidArgument(f"{dst!r} is a directory in image {cfg.image}: a secret "
                                         "or config is a file and cannot be mounted onto it; "
                                         "give it another target", field="secrets")
    caps = {"bounding": DEFAULT_CAPS}
    if uid == 0:  # as Docker: a non-root user gets no effective capabilities
        caps.update(effective=DEFAULT_CAPS, permitted=DEFAULT_CAPS)
    resources: dict = {"devices": [{"allow": False, "access": "rwm"}]}
    if cfg.memory_limit:
        if cfg.memory_limit < 4 << 20:
            raise errors.InvalidArgument(f"memory limit {cfg.memory_limit} bytes is below "
                                         "the 4 MiB minimum", field="memory_limit")
        resources["memory"] = {"limit": cfg.memory_limit}
        if _swap_accounting():  # no swap on top of the limit: the limit means what it says
            resources["memory"]["swap"] = cfg.memory_limit
    if cfg.nano_cpus:
        period = 100_000
        resources["cpu"] = {"period": period,
                            "quota": max(1000, cfg.nano_cpus * period // 10**9)}
    if cfg.pids_limit:
        resources["pids"] = {"limit": cfg.pids_limit}
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if cfg.netns_path:
        if not os.path.exists(cfg.netns_path):
            raise errors.FailedPrecondition(f"network namespace {cfg.netns_path} does not "
                                            "exist", field="networks")
        namespaces.append({"type": "network", "path": cfg.netns_path})
    elif not cfg.host_network:
        # A task never shares the node's network: without a network attachment it gets a
        # namespace of its own with only loopback (two tasks may both listen on :80).
        namespaces.append({"type": "network"})
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False,
                    "user": {"uid": uid, "gid": gid, "additionalGids": extra_gids},
                    "args": argv, "env": env, "cwd": cwd, "capabilities": caps,
                    "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": BASE_MOUNTS + _mounts(cfg, path, volumes_dir),
        "annotations": {**cfg.labels, "shoal.container.name": cfg.name},
        "linux": {"namespaces": namespaces, "cgroupsPath": cgroup, "resources": resources,
                  "maskedPaths": MASKED_PATHS, "readonlyPaths": READONLY_PATHS},
    }


def _mounts(cfg: ContainerConfig, path: Path, volumes_dir: Path) -> list[dict]:
    out: list[dict] = []
    for i, m in enumerate(cfg.mounts):
        m = m if isinstance(m, Mount) else Mount(**m)
        target = _check_target(m.target)
        ro = "ro" if m.read_only else "rw"
        if m.type == "bind":
            if not m.source.startswith("/") or not os.path.exists(m.source):
                raise errors.InvalidArgument(
                    f"bind mount source {m.source!r} does not exist on this node (it must be "
                    "an absolute path to an existing file or directory)", field="mounts")
            out.append({"destination": target, "type": "bind", "source": m.source,
                        "options": ["rbind", "rprivate", ro]})
        elif m.type == "volume":
            if m.source:
                if not _VOLUME_RE.match(m.source):
                    raise errors.InvalidArgument(f"volume name {m.source!r}: letters, "
                                                 "digits, '_', '.', '-' only", field="mounts")
                src = volumes_dir / m.source
            else:  # anonymous: lives and dies with the container
                src = path / "volumes" / str(i)
            src.mkdir(parents=True, exist_ok=True, mode=0o755)
            out.append({"destination": target, "type": "bind", "source": str(src),
                        "options": ["rbind", "rprivate", ro]})
        elif m.type == "tmpfs":
            out.append({"destination": target, "type": "tmpfs", "source": "tmpfs",
                        "options": ["nosuid", "nodev", "mode=1777", ro]})
        else:
            raise errors.InvalidArgument(f"mount type {m.type!r}: bind, volume or tmpfs",
                                         field="mounts")
    for src, dst, readonly in cfg.extra_binds:
        out.append({"destination": _check_target(dst), "type": "bind", "source": str(src),
                    "options": ["rbind", "rprivate", "ro" if readonly else "rw"]})
    # As Docker: the container's own /etc/hostname, /etc/hosts and /etc/resolv.conf (a copy
    # of the host's), unless the caller binds its own (as the overlay network's DNS does).
    taken = {m["destination"] for m in out}
    etc = path / "etc"
    etc.mkdir(exist_ok=True)
    hostname = cfg.hostname or cfg.id[:12]
    files = {"hostname": f"{hostname}\n",
             "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                      f"127.0.1.1\t{hostname}\n",
             "resolv.conf": _host_resolv_conf()}
    for name, text in files.items():
        if f"/etc/{name}" in taken:
            continue
        (etc / name).write_text(text)
        out.append({"destination": f"/etc/{name}", "type": "bind",
                    "source": str(etc / name), "options": ["rbind", "rprivate", "rw"]})
    # Parents before children, whatever order the service listed them in.
    return sorted(out, key=lambda m: m["destination"].rstrip("/").count("/"))


# ---- helpers: users, env, paths, signals ----------------------------------------------------
def in_rootfs(rootfs: Path, path: str, max_links: int = 40) -> Path:
    """`path` inside the container's root, resolving symlinks as the container would see
    them (an absolute link points into the rootfs, never at the host)."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = rootfs.joinpath(*resolved, part)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > max_links:
                raise errors.InvalidArgument(f"too many symlinks resolving {path} in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return rootfs.joinpath(*resolved)


def _read_db(rootfs: Path, name: str) -> list[list[str]]:
    try:
        text = in_rootfs(rootfs, f"/etc/{name}").read_text(errors="replace")
    except (OSError, errors.ShoalError):
        return []
    return [line.split(":") for line in text.splitlines()
            if line and not line.startswith("#") and line.count(":") >= 2]


def resolve_user(rootfs: Path, user: str) -> tuple[int, int, list[int], str]:
    """uid, gid, supplementary gids and home for "", "uid", "uid:gid", "name", "name:group"
    (names looked up in the image's /etc/passwd and /etc/group, as Docker does)."""
    name, _, group = (user or "0").partition(":")
    if len(user.split(":")) > 2 or not all(_USER_PART.match(p) for p in (name, group) if p) \
            or any(_is_id(p) and int(p) > MAX_ID for p in (name, group)):
        # The image's config comes from outside too: its User is held to the API's rule.
        raise errors.InvalidArgument(f"user {user!r} is not USER, UID, USER:GROUP or UID:GID",
                                     field="user")
    passwd = [e for e in _read_db(rootfs, "passwd") if len(e) >= 6]
    groups = [e for e in _read_db(rootfs, "group") if len(e) >= 3]
    entry = None
    if _is_id(name):
        uid = int(name)
        entry = next((e for e in passwd if e[2] == name), None)
    else:
        entry = next((e for e in passwd if e[0] == name), None)
        if entry is None:
            raise errors.InvalidArgument(f"user {name!r} is not in the image's /etc/passwd",
                                         field="user")
        if not _is_id(entry[2]) or int(entry[2]) > MAX_ID:
            raise errors.InvalidArgument(f"the image's /etc/passwd gives user {name!r} the uid "
                                         f"{entry[2]!r}, which is not a number", field="user")
        uid = int(entry[2])
    gid = int(entry[3]) if entry and _is_id(entry[3]) and int(entry[3]) <= MAX_ID else 0
    if group:
        if _is_id(group):
            gid = int(group)
        else:
            g = next((e for e in groups if e[0] == group), None)
            if g is None:
                raise errors.InvalidArgument(f"group {group!r} is not in the image's "
                                             "/etc/group", field="user")
            if not _is_id(g[2]) or int(g[2]) > MAX_ID:
                raise errors.InvalidArgument(f"the image's /etc/group gives group {group!r} the "
                                             f"gid {g[2]!r}, which is not a number", field="user")
            gid = int(g[2])
    extra = []
    if entry is not None and not group:
        extra = sorted({int(g[2]) for g in groups
                        if len(g) >= 4 and entry[0] in g[3].split(",") and _is_id(g[2])}
                       - {gid})
    home = entry[5] if entry and entry[5] else "/"
    return uid, gid, extra, home


_USER_PART = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}\Z")
MAX_ID = 2**32 - 2


def _is_id(text: str) -> bool:
    """A decimal id: str.isdigit() alone also takes '²', which int() refuses."""
    return text.isascii() and text.isdigit()


def merge_env(*layers: list[str]) -> list[str]:
    """Later layers override earlier ones by variable name; order of first appearance kept."""
    merged: dict[str, str] = {}
    for layer in layers:
        for item in layer:
            key = item.split("=", 1)[0]
            merged[key] = item if "=" in item else f"{item}="
    return list(merged.values())


def _host_resolv_conf() -> str:
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""


def _check_target(target: str) -> str:
    if not target.startswith("/") or ".." in target.split("/") or target.rstrip("/") == "":
        raise errors.InvalidArgument(f"mount target {target!r} must be an absolute path other "
                                     "than /", field="mounts")
    return target


def _signal(name: str) -> signals.Signals:
    text = str(name).strip().upper()
    try:
        if text.isdigit():
            return signals.Signals(int(text))
        return signals.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise errors.InvalidArgument(f"unknown signal {name!r}", field="stop_signal")
