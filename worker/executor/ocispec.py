"""The OCI runtime spec (config.json) of a container, from its config and image: pure functions."""
from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import resource
import signal as signals
import stat
import struct
from pathlib import Path
from typing import Optional

from common import errors
from common.model import DNSConfig, Mount, TmpfsOptions, Ulimit
from worker.executor.cgroups import _swap_accounting
from worker.executor.container import ContainerConfig
from worker.images import Image
from worker.volumes import VolumeStore

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's default capability set.
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
# runc's `runc spec` defaults, plus what Docker masks on top.
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap"]
# Every capability by number (linux/capability.h). The manager's copy in
# manager/specs/services.py must list the same names (tests/test_container_options.py checks).
ALL_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
            "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
            "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
            "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
            "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
            "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
            "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
            "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
            "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]
# The sysctls a container may set: those of its own IPC namespace, and (with a network
# namespace of its own) its network's. runc refuses the others; so does Docker.
IPC_SYSCTLS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                         "kernel.shmall", "kernel.shmmax", "kernel.shmmni",
                         "kernel.shm_rmid_forced"})
# setrlimit(2)'s resources, by Docker's names.
ULIMITS = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
           "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")
# Where Docker's --init finds its init on the node, best first: a static tini runs in any image,
# a dynamic one only where the image has the same libc at the same place.
INIT_CANDIDATES = ["/usr/bin/tini-static", "/usr/bin/docker-init", "/usr/local/bin/tini-static",
                   "/usr/bin/tini", "/usr/local/bin/tini", "/sbin/tini"]
INIT_PATH = "/sbin/docker-init"  # where the container sees it, as in Docker
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
                 volumes: VolumeStore) -> dict:
    """config.json for the bundle at `path`; named volumes come from `volumes`."""
    rootfs = path / "rootfs"
    ic = image.config or {}
    entrypoint = list(cfg.command) if cfg.command else list(ic.get("Entrypoint") or [])
    # Docker's rule: overriding the entrypoint drops the image's Cmd too.
    cmd = list(cfg.args) if cfg.args else ([] if cfg.command else list(ic.get("Cmd") or []))
    argv = entrypoint + cmd
    if not argv:
        raise errors.InvalidArgument(f"image {cfg.image} has no command and the service "
                                     "gives none", field="command")
    init_binary = init_path() if cfg.init else None
    if init_binary:
        argv = [INIT_PATH, "--", *argv]
    uid, gid, extra_gids, home = resolve_user(rootfs, cfg.user or ic.get("User") or "")
    extra_gids = _union(extra_gids, resolve_groups(rootfs, cfg.groups))
    hostname = cfg.hostname or cfg.id[:12]
    defaults = [DEFAULT_PATH, f"HOSTNAME={hostname}"] + (["TERM=xterm"] if cfg.tty else [])
    env = merge_env(defaults, ic.get("Env") or [], cfg.env)
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
    caps = capabilities(cfg.cap_add, cfg.cap_drop, root=uid == 0)
    process = {"terminal": cfg.tty,
               "user": {"uid": uid, "gid": gid, "additionalGids": extra_gids},
               "args": argv, "env": env, "cwd": cwd, "capabilities": caps,
               "noNewPrivileges": True}
    rlimits = _rlimits(cfg.ulimits)
    if rlimits:
        process["rlimits"] = rlimits
    linux = {"namespaces": _namespaces(cfg), "cgroupsPath": cgroup, "resources": _resources(cfg),
             "maskedPaths": MASKED_PATHS, "readonlyPaths": READONLY_PATHS}
    sysctls = _sysctls(cfg.sysctls, own_netns=not cfg.host_network)
    if sysctls:
        linux["sysctl"] = sysctls
    # Last: the mounts write files and make volume directories, which a refusal above spares.
    mounts = BASE_MOUNTS + _mounts(cfg, path, volumes)
    if init_binary:
        mounts.append({"destination": INIT_PATH, "type": "bind", "source": init_binary,
                       "options": ["rbind", "rprivate", "ro"]})
    return {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs", "readonly": cfg.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "annotations": {**cfg.labels, "shoal.container.name": cfg.name},
        "linux": linux,
    }


def _resources(cfg: ContainerConfig) -> dict:
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
    return resources


def _namespaces(cfg: ContainerConfig) -> list[dict]:
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
    return namespaces


def _mounts(cfg: ContainerConfig, path: Path, volumes: VolumeStore) -> list[dict]:
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
                # made on first use with the mount's options (a stack's labels and driver
                # options), mounted again after a reboot; ensure() checks the name
                src = volumes.ensure(m.source, m.volume_options)
            else:  # anonymous: lives and dies with the container
                src = path / "volumes" / str(i)
                src.mkdir(parents=True, exist_ok=True, mode=0o755)
            out.append({"destination": target, "type": "bind", "source": str(src),
                        "options": ["rbind", "rprivate", ro]})
        elif m.type == "tmpfs":
            out.append({"destination": target, "type": "tmpfs", "source": "tmpfs",
                        "options": ["nosuid", "nodev", *_tmpfs_options(m.tmpfs_options), ro]})
        else:
            raise errors.InvalidArgument(f"mount type {m.type!r}: bind, volume or tmpfs",
                                         field="mounts")
    etc = path / "etc"
    etc.mkdir(exist_ok=True)
    for src, dst, readonly in cfg.extra_binds:
        if dst == "/etc/resolv.conf" and _has_dns(cfg.dns):
            # The overlay network's resolver file: its nameserver (the embedded DNS) stays, the
            # service's search domains and options go on top, as Docker does.
            (etc / "resolv.conf").write_text(resolv_conf(_read_text(src), cfg.dns, embedded=True))
            src = str(etc / "resolv.conf")
        out.append({"destination": _check_target(dst), "type": "bind", "source": str(src),
                    "options": ["rbind", "rprivate", "ro" if readonly else "rw"]})
    # As Docker: the container's own /etc/hostname, /etc/hosts and /etc/resolv.conf (a copy
    # of the host's), unless the caller binds its own (as the overlay network's DNS does);
    # read-only along with a read-only root, as Docker's are.
    taken = {m["destination"] for m in out}
    hostname = cfg.hostname or cfg.id[:12]
    files = {"hostname": f"{hostname}\n",
             "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                      f"127.0.1.1\t{hostname}\n" + extra_hosts(cfg.hosts),
             "resolv.conf": resolv_conf(_host_resolv_conf(), cfg.dns, embedded=False)}
    for name, text in files.items():
        if f"/etc/{name}" in taken:
            continue
        (etc / name).write_text(text)
        out.append({"destination": f"/etc/{name}", "type": "bind", "source": str(etc / name),
                    "options": ["rbind", "rprivate", "ro" if cfg.read_only else "rw"]})
    # Parents before children, whatever order the service listed them in.
    return sorted(out, key=lambda m: m["destination"].rstrip("/").count("/"))


# ---- capabilities, rlimits, sysctls, init ---------------------------------------------------
def capabilities(cap_add: list[str], cap_drop: list[str], root: bool) -> dict:
    """The OCI capability sets from Docker's --cap-add/--cap-drop on the default set: add ALL
    gives every capability this node has (minus the drops), drop ALL keeps only the adds,
    otherwise the drops leave the default set and the adds join it. As Docker, a non-root
    user gets them in its bounding set only: execve leaves it no effective ones."""
    adds = [_cap_name(c, "cap_add") for c in cap_add]
    drops = [_cap_name(c, "cap_drop") for c in cap_drop]
    available = available_caps()
    for name in adds:
        if name != "ALL" and name not in available:
            raise errors.InvalidArgument(
                f"capability {name} is not supported by this node's kernel or not available to "
                "its daemon (it lacks it itself); remove it from cap_add", field="cap_add")
    if "ALL" in adds:
        caps = [c for c in ALL_CAPS if c in available and c not in drops]
    elif "ALL" in drops:
        caps = adds
    else:
        caps = [c for c in DEFAULT_CAPS if c not in drops] + adds
    caps = list(dict.fromkeys(caps))  # once each, in Docker's order
    out = {"bounding": caps}
    if root:
        out.update(effective=caps, permitted=caps)
    return out


def _cap_name(name: str, field: str) -> str:
    """Docker's spellings: NET_ADMIN, cap_net_admin, CAP_NET_ADMIN, ALL."""
    text = str(name).strip().upper()
    if text == "ALL":
        return text
    text = text if text.startswith("CAP_") else "CAP_" + text
    if text not in ALL_CAPS:
        raise errors.InvalidArgument(f"unknown capability {name!r} in {field}: use a name like "
                                     "NET_ADMIN or CAP_NET_ADMIN, or ALL", field=field)
    return text


def available_caps() -> frozenset[str]:
    """The capabilities this node can give: those its kernel knows (cap_last_cap) that are in
    the daemon's own bounding set (a daemon in a restricted container has fewer)."""
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = len(ALL_CAPS) - 1
    bounding = (1 << (last + 1)) - 1
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapBnd:"):
                bounding &= int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return frozenset(c for i, c in enumerate(ALL_CAPS) if bounding >> i & 1)


def _rlimits(ulimits: list) -> list[dict]:
    out: dict[str, dict] = {}
    for u in ulimits:
        u = u if isinstance(u, Ulimit) else Ulimit(**u)
        if u.name not in ULIMITS:
            raise errors.InvalidArgument(f"unknown ulimit {u.name!r}: one of "
                                         f"{', '.join(ULIMITS)}", field="ulimits")
        if not 0 <= u.soft <= u.hard:
            raise errors.InvalidArgument(f"ulimit {u.name}: the soft limit {u.soft} must be "
                                         f"between 0 and the hard limit {u.hard}",
                                         field="ulimits")
        _check_raisable(u)
        out[u.name] = {"type": f"RLIMIT_{u.name.upper()}", "hard": u.hard, "soft": u.soft}
    return list(out.values())


def _check_raisable(u: Ulimit) -> None:
    """runc's own refusal ("error setting rlimit type 7") names neither the limit nor why."""
    if u.name == "nofile":
        try:
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            nr_open = None
        if nr_open is not None and u.hard > nr_open:
            raise errors.InvalidArgument(f"ulimit nofile: the hard limit {u.hard} is above this "
                                         f"node's fs.nr_open ({nr_open})", field="ulimits")
    which = getattr(resource, f"RLIMIT_{u.name.upper()}", None)
    if which is None or "CAP_SYS_RESOURCE" in available_caps():
        return
    own = resource.getrlimit(which)[1]
    if own != resource.RLIM_INFINITY and u.hard > own:
        raise errors.InvalidArgument(
            f"ulimit {u.name}: the hard limit {u.hard} is above this node's daemon's own ({own}),"
            " and the daemon lacks CAP_SYS_RESOURCE to raise it; ask for at most that",
            field="ulimits")


def sysctl_allowed(key: str, own_netns: bool) -> bool:
    """Docker's (and runc's) rule: only what the container's own namespaces scope."""
    if key in IPC_SYSCTLS or key.startswith("fs.mqueue."):
        return True
    return own_netns and key.startswith("net.")


_SYSCTL_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+\Z")


def _sysctls(sysctls: dict[str, str], own_netns: bool) -> dict[str, str]:
    for key, value in sysctls.items():
        if not _SYSCTL_KEY.match(key) or not sysctl_allowed(key, own_netns):
            raise errors.InvalidArgument(
                f"sysctl {key!r} is not allowed: only net.* (in the task's own network "
                f"namespace), fs.mqueue.* and {', '.join(sorted(IPC_SYSCTLS))}",
                field="sysctls")
        if not value or "\n" in value:
            raise errors.InvalidArgument(f"sysctl {key}: the value must be one non-empty line",
                                         field="sysctls")
    return dict(sysctls)


def _tmpfs_options(opts) -> list[str]:
    opts = opts if isinstance(opts, TmpfsOptions) or opts is None else TmpfsOptions(**opts)
    mode = opts.mode if opts is not None and opts.mode else 0o1777
    if not 0 <= mode <= 0o7777:
        raise errors.InvalidArgument(f"tmpfs mode {mode:o} is beyond 7777", field="mounts")
    out = [f"mode={mode:o}"]
    if opts is not None and opts.size_bytes:
        if opts.size_bytes < 0:
            raise errors.InvalidArgument("tmpfs size must be >= 0 bytes", field="mounts")
        out.append(f"size={opts.size_bytes}")
    return out


def init_path(candidates: Optional[list[str]] = None) -> str:
    """The node's tini for Docker's --init: the first static one. A dynamic tini is refused
    rather than bound: it would fail in the container with a bare "no such file or directory"
    (its loader or libc missing from the image)."""
    dynamic = []
    for candidate in INIT_CANDIDATES if candidates is None else candidates:
        if not os.path.isfile(candidate) or not os.access(candidate, os.X_OK):
            continue
        if _is_static_elf(candidate):
            return candidate
        dynamic.append(candidate)
    found = (f" ({', '.join(dynamic)} is dynamically linked: it would not run in images "
             "without its libc)") if dynamic else ""
    raise errors.FailedPrecondition(
        f"init: this node has no static tini to run as the container's init{found}; install "
        "Debian's package tini (apt-get install tini), which ships /usr/bin/tini-static",
        field="init")


def _is_static_elf(path: str) -> bool:
    """Whether an ELF executable has no program interpreter (PT_INTERP): what makes ldd say
    "not a dynamic executable"."""
    st = os.stat(path)
    return _static_cache(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=16)
def _static_cache(path: str, _mtime: int, _size: int) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF":
                return False
            wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
            if wide:
                phoff, = struct.unpack_from(order + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
            else:
                phoff, = struct.unpack_from(order + "I", head, 28)
                phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except (OSError, struct.error):
        return False
    PT_INTERP = 3
    return all(struct.unpack_from(order + "I", table, i * phentsize)[0] != PT_INTERP
               for i in range(len(table) // phentsize if phentsize else 0))


# ---- supplementary groups, /etc/hosts, /etc/resolv.conf ---------------------------------------
def resolve_groups(rootfs: Path, groups: list[str]) -> list[int]:
    """Docker's --group-add: ids as they are, names looked up in the image's /etc/group."""
    table = {e[0]: e[2] for e in _read_db(rootfs, "group") if len(e) >= 3}
    out = []
    for group in groups:
        text = group.strip()
        if not _is_id(text):
            text = table.get(text, "")
            if not text:
                raise errors.InvalidArgument(f"group {group!r} is not in the image's /etc/group:"
                                             " give its number instead", field="groups")
        if not _is_id(text) or int(text) > MAX_ID:
            raise errors.InvalidArgument(f"group {group!r}: {text!r} is no gid", field="groups")
        out.append(int(text))
    return out


def _union(first: list[int], second: list[int]) -> list[int]:
    return list(dict.fromkeys(first + second))


def extra_hosts(hosts: list[str]) -> str:
    """Docker's ContainerSpec.Hosts ("IP name [alias...]") as /etc/hosts lines, rebuilt from
    their fields so that no entry can smuggle in a line of its own."""
    lines = []
    for entry in hosts:
        fields = entry.split()
        if len(fields) < 2:
            raise errors.InvalidArgument(f"hosts entry {entry!r} is not 'IP hostname "
                                         "[alias...]'", field="hosts")
        try:
            ipaddress.ip_address(fields[0])
        except ValueError:
            raise errors.InvalidArgument(f"hosts entry {entry!r}: {fields[0]!r} is no IP "
                                         "address", field="hosts") from None
        lines.append(f"{fields[0]}\t{' '.join(fields[1:])}\n")
    return "".join(lines)


def _has_dns(dns: Optional[DNSConfig]) -> bool:
    return dns is not None and bool(dns.nameservers or dns.search or dns.options)


def resolv_conf(base: str, dns: Optional[DNSConfig], embedded: bool) -> str:
    """The container's resolv.conf: `base` (the host's, or the network's pointing at its
    embedded DNS) with the service's DNS config over it, as Docker builds it. Each list the
    config gives replaces base's; behind an embedded DNS its nameserver stays (Docker lists
    the configured IPv6 ones after it, and makes the IPv4 ones the resolver's upstreams) and
    its ndots option too, unless the config sets ndots itself."""
    if not _has_dns(dns):
        return base
    assert dns is not None
    nameservers, search, options = _parse_resolv(base)
    if embedded:
        nameservers += [ns for ns in dns.nameservers if ":" in ns]
        if dns.options:
            own_ndots = any(o.startswith("ndots:") for o in dns.options)
            options = list(dns.options) + ([] if own_ndots else
                                           [o for o in options if o.startswith("ndots:")])
    else:
        nameservers = list(dns.nameservers) or nameservers
        options = list(dns.options) or options
    search = list(dns.search) or search
    for field, values in (("nameservers", nameservers), ("search", search),
                          ("options", options)):
        if any(not v or any(ch.isspace() for ch in v) for v in values):
            raise errors.InvalidArgument(f"dns {field}: entries must be single words",
                                         field="dns_config")
    text = "".join(f"nameserver {ns}\n" for ns in dict.fromkeys(nameservers))
    if search:
        text += f"search {' '.join(search)}\n"
    if options:
        text += f"options {' '.join(dict.fromkeys(options))}\n"
    return text


def _parse_resolv(text: str) -> tuple[list[str], list[str], list[str]]:
    nameservers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2:
            continue
        if fields[0] == "nameserver":
            nameservers.append(fields[1])
        elif fields[0] == "search":
            search = fields[1:]  # the last one counts, as for the resolver
        elif fields[0] == "options":
            options += fields[1:]
    return nameservers, search, options


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


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
