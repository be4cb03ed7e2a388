"""Service specs arriving at the API: parsed, defaulted and checked, with errors that name the
field. Nothing half-valid reaches the store."""
from __future__ import annotations

import difflib
import ipaddress
import posixpath
import re
import signal

from common import errors, strict, templates
from common.imageref import parse_ref
from common.model import (SERVICE_MODES, UPDATE_FAILURE_ACTIONS, UPDATE_ORDERS, ContainerSpec,
                          DNSConfig, HealthConfig, LogDriver, Mount, ResourceRequirements,
                          ServiceSpec, Ulimit)
from common.units import parse_size
from manager.scheduler.constraints import parse_constraint, parse_preference

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")
_MOUNT_TYPES = ("bind", "volume", "tmpfs")
MAX_REPLICAS = 10000
_RESTART_CONDITIONS = ("none", "on-failure", "any")


def _bad(field: str, message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{field}: {message}", field=field)


# A uid or gid as Linux has them (2**32 - 1 is "no id").
MAX_ID = 2**32 - 2
_USER_PART = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}\Z")
# RFC 1123 labels; a UTS hostname holds at most 64 bytes.
_HOSTNAME = re.compile(r"^(?=.{1,63}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[^=\s][^=]*\Z")
# A DNS name as resolv.conf's search and /etc/hosts take it (Docker's domain rule; hosts names
# may carry '_' too, as many do).
_DOMAIN = re.compile(r"^(?=.{1,253}\.?\Z)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?\Z")
_HOST_NAME = re.compile(r"^(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
                        r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\Z")
# Every capability (linux/capability.h), without the CAP_ prefix. The node's copy is
# worker/executor/ocispec.py's ALL_CAPS (this module may not import the worker).
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
                "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
                "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
                "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
                "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
                "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
                "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")
# The sysctls a container's own namespaces scope (Docker's and runc's rule): these, fs.mqueue.*
# and, in a network namespace of the task's own (always, on shoal), net.*.
IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
               "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")
SYSCTL_PREFIXES = ("fs.mqueue.", "net.")
_SYSCTL_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+\Z")
ULIMITS = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
           "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")
RLIM_INFINITY = 2**64 - 1
LOG_DRIVERS = {"json-file": ("max-size", "max-file"), "none": ()}
VOLUME_DRIVER_OPTS = ("type", "device", "o")


def parse_service_spec(data: object) -> ServiceSpec:
    """A service spec from a request body: strictly decoded (common/strict.py), then checked."""
    if not isinstance(data, dict):
        raise errors.InvalidArgument("the service spec must be a JSON object", field="spec")
    spec = strict.decode(ServiceSpec, data)
    validate_service_spec(spec)
    return spec


def validate_labels(labels: dict[str, str], where: str) -> None:
    for key in labels:
        if not key:
            raise _bad(where, "a label needs a non-empty key")


def validate_user(user: str, where: str) -> None:
    """Docker's forms: NAME, UID, NAME:GROUP, UID:GID (names are looked up in the image)."""
    if not user:
        return
    parts = user.split(":")
    if len(parts) > 2 or not all(_USER_PART.match(p) for p in parts):
        raise _bad(where, f"{user!r} is not USER, UID, USER:GROUP or UID:GID (names of letters, "
                   "digits, '_', '.', '-')")
    for part in parts:
        if part.isdigit() and int(part) > MAX_ID:
            raise _bad(where, f"id {part} is out of range (at most {MAX_ID})")


def validate_container_path(path: str, where: str, *, allow_root: bool = False) -> str:
    """An absolute, normalised path inside the container (no '..', no '//')."""
    if not path.startswith("/"):
        raise _bad(where, f"{path!r} must be an absolute path in the container")
    if posixpath.normpath(path) != path or path.startswith("//") or ".." in path.split("/"):
        raise _bad(where, f"{path!r} must be a plain absolute path (no '.', '..' or '//')")
    if path == "/" and not allow_root:
        raise _bad(where, "'/' is the container's root: mount onto a directory inside it")
    return path


def validate_signal(name: str, where: str) -> None:
    text = name.strip().upper()
    try:
        if text.isdecimal() and text.isascii():
            signal.Signals(int(text))
        else:
            signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except (KeyError, ValueError):
        raise _bad(where, f"unknown signal {name!r} (e.g. SIGTERM, SIGINT, 15)") from None


def validate_resources(res: ResourceRequirements, where: str) -> None:
    """Limits and reservations of a task's container, a service's or a standalone one; errors
    name the field under ``where``."""
    for name, value in (("limits.memory_bytes", res.limits.memory_bytes),
                        ("limits.nano_cpus", res.limits.nano_cpus),
                        ("reservations.memory_bytes", res.reservations.memory_bytes),
                        ("reservations.nano_cpus", res.reservations.nano_cpus),
                        ("pids_limit", res.pids_limit)):
        if value < 0:
            raise _bad(f"{where}.{name}", "must be a non-negative integer")
    if res.limits.memory_bytes and res.limits.memory_bytes < 4 * 1024 * 1024:
        raise _bad(f"{where}.limits.memory_bytes",
                   "a memory limit below 4MB leaves no room for a process; use at least 4m")


def validate_service_spec(spec: ServiceSpec) -> None:
    """The semantic checks of a strictly decoded spec (types are right; ranges and forms are
    checked here)."""
    if not _NAME.match(spec.name):
        raise _bad("name", f"invalid service name {spec.name!r}: use 1-63 letters, digits, '_', "
                   "'.' or '-', starting with a letter or digit")
    validate_labels(spec.labels, "labels")
    validate_container_spec(spec.task_template.container, "task_template.container")
    validate_resources(spec.task_template.resources, "task_template.resources")
    if spec.task_template.log_driver is not None:
        validate_log_driver(spec.task_template.log_driver, "task_template.log_driver")
    rp = spec.task_template.restart_policy
    if rp.condition not in _RESTART_CONDITIONS:
        raise _bad("task_template.restart_policy.condition",
                   f"{rp.condition!r} is not one of {', '.join(_RESTART_CONDITIONS)}")
    for name in ("delay", "window"):
        strict.seconds(getattr(rp, name), f"task_template.restart_policy.{name}")
    if rp.max_attempts < 0:
        raise _bad("task_template.restart_policy.max_attempts", "must be an integer >= 0")
    if spec.task_template.force_update < 0:
        raise _bad("task_template.force_update", "must be an integer >= 0")
    placement = spec.task_template.placement
    for text in placement.constraints:
        parse_constraint(text)
    for text in placement.preferences:
        parse_preference(text)
    if placement.max_replicas < 0:
        raise _bad("task_template.placement.max_replicas", "must be an integer >= 0")
    if len(placement.platforms) > 64:
        raise _bad("task_template.placement.platforms", "at most 64 platforms")
    for i, p in enumerate(placement.platforms):
        for part, value in (("os", p.os), ("architecture", p.architecture)):
            if len(value) > 64 or not all(c.isascii() and (c.isalnum() or c in "._-")
                                          for c in value):
                raise _bad(f"task_template.placement.platforms[{i}].{part}",
                           "letters, digits, '.', '_' and '-' (e.g. linux, amd64), at most 64")
    mode = spec.mode
    if mode.mode not in SERVICE_MODES:
        raise _bad("mode.mode", f"{mode.mode!r} is not one of {', '.join(SERVICE_MODES)}")
    for name in ("replicas", "max_concurrent", "total_completions"):
        value = getattr(mode, name)
        if not 0 <= value <= MAX_REPLICAS:
            raise _bad(f"mode.{name}", f"must be an integer between 0 and {MAX_REPLICAS}")
    for name, cfg, actions in (("update_config", spec.update_config, UPDATE_FAILURE_ACTIONS),
                               ("rollback_config", spec.rollback_config, ("pause", "continue"))):
        if not 0 <= cfg.parallelism <= MAX_REPLICAS:
            raise _bad(f"{name}.parallelism", f"must be an integer between 0 (all at once) and "
                       f"{MAX_REPLICAS}")
        for key in ("delay", "monitor"):
            strict.seconds(getattr(cfg, key), f"{name}.{key}")
        if cfg.failure_action not in actions:
            raise _bad(f"{name}.failure_action", f"{cfg.failure_action!r} is not one of {', '.join(actions)}")
        if not 0 <= cfg.max_failure_ratio <= 1:
            raise _bad(f"{name}.max_failure_ratio", "must be between 0 and 1")
        if cfg.order not in UPDATE_ORDERS:
            raise _bad(f"{name}.order", f"{cfg.order!r} is not one of {', '.join(UPDATE_ORDERS)}")
    for i, p in enumerate(spec.endpoint_spec.ports):
        where = f"endpoint_spec.ports[{i}]"
        if p.protocol not in ("tcp", "udp"):
            raise _bad(f"{where}.protocol", f"{p.protocol!r} is not tcp or udp")
        if not 0 < p.target_port < 65536:
            raise _bad(f"{where}.target_port", "must be a port between 1 and 65535")
        if not 0 <= p.published_port < 65536:
            raise _bad(f"{where}.published_port", "must be a port between 1 and 65535 (0: any)")
        if p.publish_mode not in ("ingress", "host"):
            raise _bad(f"{where}.publish_mode", f"{p.publish_mode!r} is not ingress or host")
        if p.publish_mode == "host" and not p.published_port:
            raise _bad(f"{where}.published_port", "host-mode publishing needs the port to bind "
                       "on each node: published=PORT,target=PORT,mode=host")
        if p.name and not _NAME.match(p.name):
            raise _bad(f"{where}.name", f"invalid port name {p.name!r}: letters, digits, '_', "
                       "'.' or '-'")
    if spec.endpoint_spec.mode not in ("vip", "dnsrr"):
        raise _bad("endpoint_spec.mode", f"{spec.endpoint_spec.mode!r} is not vip or dnsrr")
    for i, n in enumerate(spec.task_template.networks):
        if not n.target:
            raise _bad(f"task_template.networks[{i}].target", "must name a network")
        for j, alias in enumerate(n.aliases):
            if not _NAME.match(alias):
                raise _bad(f"task_template.networks[{i}].aliases[{j}]",
                           f"invalid alias {alias!r}: a DNS name of letters, digits, '_', '.' "
                           "or '-'")


def validate_container_spec(c: ContainerSpec, where: str) -> None:
    """What a container needs to run, a service's or a standalone one; errors name the field
    under `where`. The node runs the same checks again (worker/executor/ocispec.py); these make a
    request fail at once instead of every task of it on every node."""
    # As SwarmKit: templates must parse, and the rest is checked on what a node would get from
    # them ({{.Node.Hostname}} is not a hostname, but what it expands to must be).
    try:
        c = templates.expand_container_spec(c, templates.sample_values())
    except errors.InvalidArgument as exc:
        raise _bad(f"{where}.{exc.field}", exc.message.split(": ", 1)[-1]) from None
    if not c.image.strip():
        raise _bad(f"{where}.image", "an image is required (e.g. busybox:1)")
    try:
        parse_ref(c.image)
    except errors.InvalidArgument as exc:
        raise _bad(f"{where}.image", exc.message) from None
    for i, e in enumerate(c.env):
        name = e.split("=", 1)[0]
        if "=" not in e or not _ENV_NAME.match(name):
            raise _bad(f"{where}.env[{i}]", f"{e!r} is not NAME=VALUE")
    if c.dir:
        validate_container_path(c.dir, f"{where}.dir", allow_root=True)
    validate_user(c.user, f"{where}.user")
    if c.hostname and not _HOSTNAME.match(c.hostname):
        raise _bad(f"{where}.hostname", f"{c.hostname!r} is not a hostname (letters, digits and "
                   "'-' in dot-separated labels, at most 63 characters)")
    validate_labels(c.labels, f"{where}.labels")
    validate_signal(c.stop_signal, f"{where}.stop_signal")
    strict.seconds(c.stop_grace_period, f"{where}.stop_grace_period")
    if c.healthcheck is not None:
        _validate_healthcheck(c.healthcheck, f"{where}.healthcheck")
    targets: dict[str, int] = {}
    for i, m in enumerate(c.mounts):
        at = f"{where}.mounts[{i}]"
        if m.type not in _MOUNT_TYPES:
            raise _bad(f"{at}.type", f"unknown mount type {m.type!r}: one of {', '.join(_MOUNT_TYPES)}")
        target = validate_container_path(m.target, f"{at}.target")
        if target in targets:
            raise _bad(f"{at}.target", f"{target!r} is also the target of mounts[{targets[target]}]")
        targets[target] = i
        if m.type == "bind":
            if not m.source.startswith("/") or posixpath.normpath(m.source) != m.source \
                    or m.source.startswith("//"):
                raise _bad(f"{at}.source", "a bind mount needs a plain absolute host path as "
                           "source (no '.', '..' or '//')")
        elif m.type == "volume":
            if m.source and not _NAME.match(m.source):
                raise _bad(f"{at}.source", f"invalid volume name {m.source!r}")
        elif m.source:
            raise _bad(f"{at}.source", "a tmpfs mount takes no source")
        _validate_mount_options(m, at)
    _validate_capabilities(c.cap_add, f"{where}.cap_add")
    _validate_capabilities(c.cap_drop, f"{where}.cap_drop")
    _validate_sysctls(c.sysctls, f"{where}.sysctls")
    _validate_ulimits(c.ulimits, f"{where}.ulimits")
    for i, group in enumerate(c.groups):
        _validate_group(group, f"{where}.groups[{i}]")
    for i, entry in enumerate(c.hosts):
        _validate_hosts_entry(entry, f"{where}.hosts[{i}]")
    if c.dns_config is not None:
        _validate_dns(c.dns_config, f"{where}.dns_config")


def _validate_mount_options(m: Mount, at: str) -> None:
    """Options go with their own mount type only, as in Docker."""
    if m.volume_options is not None:
        if m.type != "volume":
            raise _bad(f"{at}.volume_options", f"go with type=volume only, not {m.type}")
        vo = m.volume_options
        if vo.driver != "local":
            raise _bad(f"{at}.volume_options.driver", f"{vo.driver!r}: only the local driver "
                       "exists on shoal nodes (driver=local)")
        for key in vo.driver_opts:
            if key not in VOLUME_DRIVER_OPTS:
                raise _bad(f"{at}.volume_options.driver_opts.{key}", f"the local driver takes "
                           f"{', '.join(VOLUME_DRIVER_OPTS)} (as mount -t TYPE -o O DEVICE)")
        validate_labels(vo.labels, f"{at}.volume_options.labels")
    if m.tmpfs_options is not None:
        if m.type != "tmpfs":
            raise _bad(f"{at}.tmpfs_options", f"go with type=tmpfs only, not {m.type}")
        if m.tmpfs_options.size_bytes < 0:
            raise _bad(f"{at}.tmpfs_options.size_bytes", "must be bytes >= 0 (0: the kernel's "
                       "default, half the memory)")
        if not 0 <= m.tmpfs_options.mode <= 0o7777:
            raise _bad(f"{at}.tmpfs_options.mode", f"{m.tmpfs_options.mode} (octal "
                       f"{m.tmpfs_options.mode:o}) is no file mode: at most 0o7777 (4095); 0 "
                       "means 1777")


def _validate_capabilities(names: list[str], where: str) -> None:
    """Docker's spellings: NET_ADMIN, CAP_NET_ADMIN, any case, or ALL."""
    for i, name in enumerate(names):
        text = name.strip().upper()
        if text == "ALL" or text.removeprefix("CAP_") in CAPABILITIES:
            continue
        close = difflib.get_close_matches(text.removeprefix("CAP_"), CAPABILITIES, 1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise _bad(f"{where}[{i}]", f"unknown capability {name!r}: write a capability's name "
                   f"with or without CAP_ (NET_ADMIN, CAP_SYS_TIME), or ALL{hint}")


def _validate_sysctls(sysctls: dict[str, str], where: str) -> None:
    for key, value in sysctls.items():
        at = f"{where}.{key}"
        if not _SYSCTL_KEY.match(key):
            raise _bad(at, f"{key!r} is no sysctl name (dot-separated, like net.ipv4.ip_forward)")
        if key not in IPC_SYSCTLS and not key.startswith(SYSCTL_PREFIXES):
            raise _bad(at, f"{key!r} is not for a container: it may set only what its own "
                       f"namespaces scope, net.*, fs.mqueue.* and {', '.join(IPC_SYSCTLS)}; "
                       "set the others on the node")
        if not value.strip() or "\n" in value:
            raise _bad(at, "the value must be one non-empty line")


def _validate_ulimits(ulimits: list[Ulimit], where: str) -> None:
    seen: dict[str, int] = {}
    for i, u in enumerate(ulimits):
        at = f"{where}[{i}]"
        if u.name not in ULIMITS:
            raise _bad(f"{at}.name", f"unknown ulimit {u.name!r}: one of {', '.join(ULIMITS)}")
        if u.name in seen:
            raise _bad(f"{at}.name", f"{u.name} is also given at [{seen[u.name]}]")
        seen[u.name] = i
        for name in ("soft", "hard"):
            if not 0 <= getattr(u, name) <= RLIM_INFINITY:
                raise _bad(f"{at}.{name}", "must be an integer >= 0")
        if u.soft > u.hard:
            raise _bad(f"{at}.soft", f"the soft limit {u.soft} is above the hard limit {u.hard}")


def _validate_group(group: str, where: str) -> None:
    """A gid, or a name the node looks up in the image's /etc/group."""
    if not _USER_PART.match(group):
        raise _bad(where, f"{group!r} is no group: a name of letters, digits, '_', '.', '-' or "
                   "a number")
    if group.isdigit() and int(group) > MAX_ID:
        raise _bad(where, f"gid {group} is out of range (at most {MAX_ID})")


def _validate_hosts_entry(entry: str, where: str) -> None:
    """Docker's ContainerSpec.Hosts: "IP hostname [alias...]", one /etc/hosts line."""
    fields = entry.split()
    if len(fields) < 2 or "\n" in entry:
        raise _bad(where, f"{entry!r} is not 'IP hostname [alias...]' (e.g. '10.0.0.5 db')")
    try:
        ipaddress.ip_address(fields[0])
    except ValueError:
        raise _bad(where, f"{fields[0]!r} is no IP address: write 'IP hostname [alias...]' "
                   "(e.g. '10.0.0.5 db')") from None
    for name in fields[1:]:
        if not _HOST_NAME.match(name):
            raise _bad(where, f"{name!r} is no hostname (letters, digits, '-', '_' in "
                       "dot-separated labels)")


def _validate_dns(dns: DNSConfig, where: str) -> None:
    for i, ns in enumerate(dns.nameservers):
        try:
            ipaddress.ip_address(ns)
        except ValueError:
            raise _bad(f"{where}.nameservers[{i}]", f"{ns!r} is no IP address (e.g. 10.0.0.2)") \
                from None
    for i, domain in enumerate(dns.search):
        if domain != "." and not _DOMAIN.match(domain):
            raise _bad(f"{where}.search[{i}]", f"{domain!r} is no domain name (e.g. "
                       "example.com, or '.' for none)")
    for i, option in enumerate(dns.options):
        at = f"{where}.options[{i}]"
        if not option or any(ch.isspace() for ch in option):
            raise _bad(at, f"{option!r}: one resolv.conf option, like ndots:2 or timeout:1")
        name, sep, value = option.partition(":")
        if name == "ndots" and not (sep and value.isdigit() and value.isascii()):
            raise _bad(at, f"{option!r}: ndots takes a number (ndots:2)")


def validate_log_driver(ld: LogDriver, where: str) -> None:
    """json-file (options max-size=SIZE, max-file=N) or none."""
    if ld.name not in LOG_DRIVERS:
        raise _bad(f"{where}.name", f"{ld.name!r} is not a log driver here: json-file or none")
    allowed = LOG_DRIVERS[ld.name]
    for key, value in ld.options.items():
        at = f"{where}.options.{key}"
        if key not in allowed:
            raise _bad(at, f"{ld.name} takes no option {key!r}" + (
                f": {' and '.join(allowed)} only" if allowed else ""))
        if key == "max-size":
            try:
                size = parse_size(value)
            except ValueError:
                size = 0
            if size <= 0:
                raise _bad(at, f"{value!r} is no size above 0: bytes or a number with k, m or "
                           "g (e.g. 10m)")
        elif key == "max-file":
            if not (value.isascii() and value.isdigit()) or int(value) < 1:
                raise _bad(at, f"{value!r}: the number of log files to keep, an integer >= 1")


def _validate_healthcheck(hc: HealthConfig, where: str) -> None:
    test = hc.test
    if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        raise _bad(f"{where}.test", "must be a list of strings, like [\"CMD-SHELL\", \"curl -f "
                   "http://localhost/\"], [\"CMD\", \"/bin/check\"] or [\"NONE\"]")
    if test:
        if test[0] not in ("CMD", "CMD-SHELL", "NONE"):
            raise _bad(f"{where}.test", f"must start with CMD, CMD-SHELL or NONE, not {test[0]!r}")
        if test[0] == "NONE" and len(test) > 1:
            raise _bad(f"{where}.test", "NONE takes no command (it turns health checks off)")
        if test[0] != "NONE" and not any(t.strip() for t in test[1:]):
            raise _bad(f"{where}.test", f"{test[0]} needs a command (e.g. --health-cmd 'test -f /ready')")
    for name in ("interval", "timeout", "start_period"):
        value = strict.seconds(getattr(hc, name), f"{where}.{name}")
        if 0 < value < 0.001:
            raise _bad(f"{where}.{name}", "must be at least 1ms")
    if not 0 <= hc.retries <= 1_000_000:
        raise _bad(f"{where}.retries", "must be an integer >= 0 (0: the image's, else 3)")
