"""A node's container as Docker shows a swarm task's container: the summary of GET
/containers/json and the inspect of GET /containers/{id}/json.

What the executor, the task and the image store know is gathered into `Facts` first (by
dockerapi/containers.py); these are pure functions of it. Docker's fields shoal has no
counterpart for keep Docker's empty values. Secrets and configs are files on a tmpfs, never in
the environment, so nothing here can show their bytes.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from typing import Optional

from common.model import Task
from shoal.dockerapi.translate.values import ZERO_TIME, rfc3339
from worker.executor import merge_env

# The swarm labels dockerd's executor puts on a task's container.
SWARM_LABELS = ("com.docker.swarm.node.id", "com.docker.swarm.service.id",
                "com.docker.swarm.service.name", "com.docker.swarm.task",
                "com.docker.swarm.task.id", "com.docker.swarm.task.name")
# shoal's own bookkeeping labels on its containers (taskrunner.container_config).
_SHOAL_PREFIX = "shoal."


@dataclass
class Facts:
    id: str
    name: str                     # without Docker's leading "/"
    image: str                    # the reference the task asked for
    image_id: str
    state: str                    # Docker's: created | running | restarting | exited
    pid: int
    created: float                # Unix time
    config: dict                  # the executor's ContainerConfig, as plain data
    labels: dict[str, str]        # the container's own labels (the service's container labels)
    node_id: str = ""
    task: Optional[Task] = None
    exit_code: Optional[int] = None
    oom_killed: bool = False
    error: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    restart_count: int = 0
    health: str = ""              # "" (no check), starting, healthy, unhealthy
    image_config: dict = field(default_factory=dict)   # the image's Env, Cmd, Entrypoint, ...
    networks: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # network name -> (network id, address with prefix, MAC)


def docker_labels(f: Facts) -> dict[str, str]:
    out = {k: v for k, v in f.labels.items() if not k.startswith(_SHOAL_PREFIX)}
    t = f.task
    if t is not None and t.service_id:
        out.update({"com.docker.swarm.node.id": f.node_id or t.node_id,
                    "com.docker.swarm.service.id": t.service_id,
                    "com.docker.swarm.service.name": t.service_name,
                    "com.docker.swarm.task": "",
                    "com.docker.swarm.task.id": t.id,
                    "com.docker.swarm.task.name": t.name})
    return out


def entrypoint_and_cmd(f: Facts) -> tuple[list[str], list[str]]:
    """What runs, as Docker splits it: the spec's command replaces the image's Entrypoint (and
    drops its Cmd), the spec's args replace the Cmd."""
    command = list(f.config.get("command") or [])
    args = list(f.config.get("args") or [])
    image_entry = list(f.image_config.get("Entrypoint") or [])
    image_cmd = list(f.image_config.get("Cmd") or [])
    if command:
        return command, args
    return image_entry, args or image_cmd


def command_line(f: Facts) -> str:
    entry, cmd = entrypoint_and_cmd(f)
    return " ".join(shlex.quote(a) if (" " in a or not a) else a for a in entry + cmd)


def human_duration(seconds: float) -> str:
    """go-units' HumanDuration, which `docker ps` prints."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def status_text(f: Facts, now: Optional[float] = None) -> str:
    """`docker ps`'s STATUS column: Up 5 minutes (healthy), Exited (0) 2 hours ago, Created."""
    now = time.time() if now is None else now
    if f.state == "running":
        text = "Up " + human_duration(now - f.started_at) if f.started_at else "Up"
        health = {"starting": "health: starting"}.get(f.health, f.health)
        return f"{text} ({health})" if health else text
    if f.state == "restarting":
        return (f"Restarting ({_code(f)}) {human_duration(now - f.finished_at)} ago"
                if f.finished_at else f"Restarting ({_code(f)})")
    if f.state == "exited":
        return (f"Exited ({_code(f)}) {human_duration(now - f.finished_at)} ago"
                if f.finished_at else f"Exited ({_code(f)})")
    return "Created"


def _code(f: Facts) -> int:
    return f.exit_code if f.exit_code is not None else 0


def _mounts(f: Facts) -> list[dict]:
    out = []
    for m in f.config.get("mounts") or []:
        kind = m.get("type", "volume")
        source = m.get("source", "")
        entry = {"Type": kind, "Source": source, "Destination": m.get("target", ""),
                 "Mode": "", "RW": not m.get("read_only", False), "Propagation": ""}
        if kind == "volume":
            opts = m.get("volume_options") or {}
            entry.update(Name=source, Driver=opts.get("driver", "local") or "local")
            entry["Mode"] = "z"
            entry["Propagation"] = ""
        elif kind == "bind":
            entry["Propagation"] = "rprivate"
        out.append(entry)
    return out


def _endpoints(f: Facts) -> dict:
    out = {}
    for name, (net_id, address, mac) in sorted(f.networks.items()):
        ip, _, prefix = address.partition("/")
        out[name] = {
            "IPAMConfig": {"IPv4Address": ip} if ip else None,
            "Links": None, "Aliases": [f.id[:12]] if f.id else None,
            "MacAddress": mac, "NetworkID": net_id, "EndpointID": "",
            "Gateway": "", "IPAddress": ip,
            "IPPrefixLen": int(prefix) if prefix.isdigit() else 0,
            "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "DriverOpts": None, "DNSNames": None,
        }
    return out


def _network_mode(f: Facts) -> str:
    if f.config.get("host_network"):
        return "host"
    return next(iter(sorted(f.networks)), "default")


def _host_ports(f: Facts) -> list[dict]:
    t = f.task
    if t is None:
        return []
    return [{"IP": "0.0.0.0", "PrivatePort": p.target_port, "PublicPort": p.published_port,
             "Type": p.protocol} for p in t.ports
            if p.publish_mode == "host" and p.published_port]


def summary(f: Facts, now: Optional[float] = None) -> dict:
    return {
        "Id": f.id,
        "Names": ["/" + f.name],
        "Image": f.image,
        "ImageID": f.image_id,
        "Command": command_line(f),
        "Created": int(f.created),
        "Ports": _host_ports(f),
        "Labels": docker_labels(f),
        "State": f.state,
        "Status": status_text(f, now),
        "HostConfig": {"NetworkMode": _network_mode(f)},
        "NetworkSettings": {"Networks": _endpoints(f)},
        "Mounts": _mounts(f),
    }


def _state(f: Facts) -> dict:
    out = {
        "Status": f.state,
        "Running": f.state in ("running", "restarting"),
        "Paused": False,
        "Restarting": f.state == "restarting",
        "OOMKilled": f.oom_killed,
        "Dead": False,
        "Pid": f.pid if f.state == "running" else 0,
        "ExitCode": _code(f),
        "Error": f.error,
        "StartedAt": rfc3339(f.started_at) if f.started_at else ZERO_TIME,
        "FinishedAt": rfc3339(f.finished_at) if f.finished_at else ZERO_TIME,
    }
    if f.health:
        out["Health"] = {"Status": f.health, "FailingStreak": 0, "Log": []}
    return out


def _host_config(f: Facts) -> dict:
    c = f.config
    dns = c.get("dns") or {}
    log_driver = c.get("log_driver") or {"name": "json-file", "options": {}}
    return {
        "Binds": None,
        "NetworkMode": _network_mode(f),
        "PortBindings": {},
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "AutoRemove": False,
        "LogConfig": {"Type": log_driver.get("name", "json-file"),
                      "Config": dict(log_driver.get("options") or {})},
        "CapAdd": list(c.get("cap_add") or []) or None,
        "CapDrop": list(c.get("cap_drop") or []) or None,
        "Dns": list(dns.get("nameservers") or []),
        "DnsOptions": list(dns.get("options") or []),
        "DnsSearch": list(dns.get("search") or []),
        "ExtraHosts": list(c.get("hosts") or []) or None,
        "GroupAdd": list(c.get("groups") or []) or None,
        "Privileged": False,
        "ReadonlyRootfs": bool(c.get("read_only")),
        "Sysctls": dict(c.get("sysctls") or {}) or None,
        "Memory": int(c.get("memory_limit") or 0),
        "NanoCpus": int(c.get("nano_cpus") or 0),
        "PidsLimit": int(c.get("pids_limit") or 0) or None,
        "Ulimits": [{"Name": u.get("name", ""), "Soft": u.get("soft", 0),
                     "Hard": u.get("hard", 0)} for u in c.get("ulimits") or []] or None,
        "Init": bool(c.get("init")),
        "Mounts": [{"Type": m["Type"], "Source": m["Source"], "Target": m["Destination"],
                    "ReadOnly": not m["RW"]} for m in _mounts(f)] or None,
    }


def _config(f: Facts) -> dict:
    c = f.config
    entry, cmd = entrypoint_and_cmd(f)
    env = merge_env(list(f.image_config.get("Env") or []), list(c.get("env") or []))
    out = {
        "Hostname": c.get("hostname", ""),
        "Domainname": "",
        "User": c.get("user") or f.image_config.get("User", ""),
        "AttachStdin": False, "AttachStdout": False, "AttachStderr": False,
        "Tty": bool(c.get("tty")),
        "OpenStdin": bool(c.get("open_stdin")),
        "StdinOnce": False,
        "Env": env,
        "Cmd": cmd or None,
        "Image": f.image,
        "Volumes": None,
        "WorkingDir": c.get("workdir") or f.image_config.get("WorkingDir", ""),
        "Entrypoint": entry or None,
        "OnBuild": None,
        "Labels": docker_labels(f),
    }
    if c.get("stop_signal"):
        out["StopSignal"] = c["stop_signal"]
    if c.get("stop_grace") is not None:
        out["StopTimeout"] = int(c["stop_grace"])
    return out


def inspect(f: Facts) -> dict:
    entry, cmd = entrypoint_and_cmd(f)
    argv = entry + cmd
    return {
        "Id": f.id,
        "Created": rfc3339(f.created),
        "Path": argv[0] if argv else "",
        "Args": argv[1:],
        "State": _state(f),
        "Image": f.image_id,
        "ResolvConfPath": "", "HostnamePath": "", "HostsPath": "", "LogPath": "",
        "Name": "/" + f.name,
        "RestartCount": f.restart_count,
        "Driver": "overlay",
        "Platform": "linux",
        "MountLabel": "", "ProcessLabel": "", "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": _host_config(f),
        "GraphDriver": {"Name": "overlay", "Data": None},
        "Mounts": _mounts(f),
        "Config": _config(f),
        "NetworkSettings": {
            "Bridge": "", "SandboxID": "", "SandboxKey": "", "HairpinMode": False,
            "LinkLocalIPv6Address": "", "LinkLocalIPv6PrefixLen": 0,
            "Ports": {}, "SecondaryIPAddresses": None, "SecondaryIPv6Addresses": None,
            "EndpointID": "", "Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "IPAddress": "", "IPPrefixLen": 0, "IPv6Gateway": "", "MacAddress": "",
            "Networks": _endpoints(f),
        },
    }

