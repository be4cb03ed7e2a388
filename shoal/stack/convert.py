"""A project (merged Compose files) turned into what shoal deploys: service specs, networks,
secrets, configs and named volumes, all in the stack's namespace, as `docker stack deploy` names
and labels them.

Every key is one of three kinds. Honoured keys are converted. Keys that change nothing in a swarm
(`container_name`, `build:` beside `image:`) get a one-line warning. Keys whose absence would
change what runs (`privileged: true`, `devices`) are *unsupported*: they refuse the whole deploy
before anything changes, unless `--allow-unsupported`, which drops each with a warning.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path as FsPath
from typing import Any, Optional

from dotenv import dotenv_values

from common.model import (DEPENDENCY_CONDITIONS, ConfigReference, ContainerSpec, DNSConfig,
                          EndpointSpec, HealthConfig, LogDriver, Mount, NetworkAttachmentConfig,
                          Placement, PortConfig, ResourceRequirements, Resources, RestartPolicy,
                          SecretReference, ServiceDependency, ServiceMode, ServiceSpec, TaskSpec,
                          TmpfsOptions, Ulimit, UpdateConfig, VolumeOptions)
from shoal.stack.checks import Checker
from shoal.stack.problems import Collector, ComposeError, Path, Problem, dotted
from shoal.stack.project import Project

NAMESPACE_LABEL = "com.docker.stack.namespace"
IMAGE_LABEL = "com.docker.stack.image"
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
MAX_DATA_SIZE = 500 * 1024  # the managers' limit for a secret or config

TOP_LEVEL = ("version", "name", "services", "networks", "volumes", "secrets", "configs",
             "include", "models")

# Keys whose presence changes what runs, and shoal cannot do it: why, per key.
UNSUPPORTED = {
    "privileged": "privileged containers are not run by shoal (use cap_add for what it needs)",
    "devices": "host devices are not passed into tasks",
    "device_cgroup_rules": "host devices are not passed into tasks",
    "gpus": "GPUs are not scheduled",
    "network_mode": "tasks always get their own network namespace (use networks:)",
    "ipc": "tasks always get their own IPC namespace",
    "pid": "tasks always get their own PID namespace",
    "uts": "tasks always get their own UTS namespace",
    "userns_mode": "user namespaces are not configurable",
    "cgroup": "tasks always get their own cgroup namespace",
    "cgroup_parent": "task cgroups are placed by shoal",
    "cpu_shares": "CPU shares are not set (use deploy.resources)",
    "cpu_quota": "CPU quotas are set by deploy.resources.limits.cpus",
    "cpu_period": "CPU quotas are set by deploy.resources.limits.cpus",
    "cpu_rt_runtime": "real-time CPU scheduling is not set",
    "cpu_rt_period": "real-time CPU scheduling is not set",
    "cpu_count": "CPU counts are not set (use deploy.resources)",
    "cpu_percent": "CPU percentages are not set (use deploy.resources)",
    "cpuset": "CPU pinning is not done",
    "blkio_config": "block IO limits are not set",
    "mem_swappiness": "swappiness is not set",
    "memswap_limit": "swap limits are not set",
    "oom_kill_disable": "the OOM killer cannot be turned off",
    "oom_score_adj": "OOM scores are not adjusted",
    "shm_size": "/dev/shm's size is not set (mount a tmpfs at /dev/shm with a size instead)",
    "security_opt": "seccomp, AppArmor and SELinux options are not applied",
    "isolation": "only the default isolation exists on Linux",
    "runtime": "tasks always run with runc",
    "storage_opt": "storage driver options are not set",
    "volumes_from": "tasks do not share their containers' volumes",
    "credential_spec": "credential specs are a Windows feature",
    "mac_address": "MAC addresses are assigned by shoal",
    "domainname": "a NIS domain name is not set",
    "post_start": "lifecycle hooks are not run",
    "pre_stop": "lifecycle hooks are not run",
    "extends": "extends is not read: merge files with several -c instead",
    "label_file": "label files are not read",
    "use_api_socket": "the API socket is not given to tasks",
    "provider": "provider services are not run",
    "models": "models are not run",
    "attach": "log attachment is not configurable",
    "develop": "compose watch is not run",
    "annotations": "OCI annotations are not set",
}

# Keys that change nothing in a swarm: a warning says so.
NO_EFFECT = {
    "container_name": "tasks are named by their service, slot and id",
    "expose": "a service's ports are reachable on its networks without it",
    "platform": "the node's platform is used",
    "pull_policy": "the node pulls an image it does not have",
    "stop_grace_period": None, "restart": None, "build": None, "links": None,
    "external_links": "containers outside the stack are not linked",
    "profiles": None, "scale": None,
}

SERVICE_KEYS = tuple(sorted({
    "image", "command", "entrypoint", "environment", "env_file", "labels", "deploy", "ports",
    "networks", "volumes", "secrets", "configs", "healthcheck", "user", "working_dir",
    "hostname", "stop_signal", "stop_grace_period", "tty", "stdin_open", "init", "read_only",
    "cap_add", "cap_drop", "sysctls", "ulimits", "dns", "dns_search", "dns_opt", "extra_hosts",
    "group_add", "tmpfs", "logging", "depends_on", "cpus", "mem_limit", "mem_reservation",
    "pids_limit", *UNSUPPORTED, *NO_EFFECT}))
DEPLOY_KEYS = ("mode", "replicas", "endpoint_mode", "labels", "resources", "restart_policy",
               "update_config", "rollback_config", "placement")
_RESTART = {"no": "none", "always": "any", "unless-stopped": "any", "on-failure": "on-failure"}


@dataclass
class DataPlan:
    """A secret or a config of the stack: made from a file, text or a variable, or external."""
    key: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    data: Optional[bytes] = None   # None: external, must exist
    path: Path = ()


@dataclass
class NetworkPlan:
    key: str
    name: str
    external: bool = False
    spec: dict = field(default_factory=dict)   # NetworkSpec's fields, for create
    path: Path = ()


@dataclass
class StackPlan:
    namespace: str
    services: dict[str, ServiceSpec] = field(default_factory=dict)   # full name -> spec
    service_paths: dict[str, Path] = field(default_factory=dict)
    networks: dict[str, NetworkPlan] = field(default_factory=dict)   # compose key -> plan
    secrets: dict[str, DataPlan] = field(default_factory=dict)
    configs: dict[str, DataPlan] = field(default_factory=dict)
    volumes: dict[str, str] = field(default_factory=dict)            # compose key -> volume name
    warnings: list[str] = field(default_factory=list)
    unsupported: list[Problem] = field(default_factory=list)


def is_set(value: Any) -> bool:
    """Whether a key's value asks for something (`privileged: false` asks for nothing)."""
    return value not in (None, False, "", [], {}, 0)


class Converter:
    def __init__(self, project: Project, namespace: str) -> None:
        self.project = project
        self.ns = namespace
        self.problems = Collector(project.marks)
        self.problems.problems.extend(project.problems)
        self.check = Checker(self.problems)
        self.plan = StackPlan(namespace, warnings=list(project.warnings))
        self._volume_options: dict[str, VolumeOptions] = {}  # compose key -> how to create it
        self.profiles = {p for p in project.env.get("COMPOSE_PROFILES", "").split(",") if p}

    # -- helpers ------------------------------------------------------------------------------
    def warn(self, path: Path, message: str) -> None:
        mark = self.project.marks.at(path)
        where = f"{mark}: " if mark else ""
        self.plan.warnings.append(f"{where}{dotted(path)}: {message}")

    def unsupported(self, path: Path, reason: str) -> None:
        self.plan.unsupported.append(Problem(tuple(path), reason, self.project.marks.at(path)))

    def labelled(self, labels: dict[str, str]) -> dict[str, str]:
        return {**labels, NAMESPACE_LABEL: self.ns}

    def scoped(self, key: str, explicit: Any, path: Path) -> str:
        """Docker's naming: NAMESPACE_key, unless the file names the object itself."""
        if explicit is not None:
            name = self.check.string((*path, "name"), explicit)
            return name or key
        return f"{self.ns}_{key}"

    def relative(self, text: str) -> str:
        """A path in the file is relative to the first file's directory, as in Compose."""
        path = FsPath(os.path.expanduser(text))
        return str(path if path.is_absolute() else (self.project.directory / path).resolve())

    # -- the whole file -----------------------------------------------------------------------
    def convert(self) -> StackPlan:
        data = self.project.data
        self.check.keys((), data, TOP_LEVEL, what="top-level")
        for key in ("include", "models"):
            if is_set(data.get(key)):
                self.unsupported((key,), f"the top-level {key} key is not read")
        services = self.check.mapping(("services",), data.get("services", {})) or {}
        if not services:
            self.check.bad(("services",), "a stack needs at least one service")
        self._networks(data.get("networks") or {}, services)
        self._volumes(data.get("volumes") or {})
        self._data_objects("secrets", data.get("secrets") or {}, self.plan.secrets)
        self._data_objects("configs", data.get("configs") or {}, self.plan.configs)
        for key, svc in services.items():
            path = ("services", key)
            if not isinstance(key, str) or not _NAME.match(key):
                self.check.bad(path, "a service name is letters, digits, '_', '.' or '-', "
                               "starting with a letter or digit")
                continue
            if self.check.mapping(path, svc) is None:
                continue
            profiles = self.check.string_list((*path, "profiles"), svc.get("profiles", []))
            if profiles and not self.profiles.intersection(profiles):
                self.warn(path, f"not deployed: its profiles ({', '.join(profiles)}) are not "
                          "active (set COMPOSE_PROFILES)")
                continue
            spec = self._service(key, svc, path)
            if spec is not None:
                self.plan.services[spec.name] = spec
                self.plan.service_paths[spec.name] = path
        self._check_dependencies(services)
        self.problems.raise_if_any("the Compose file has errors; nothing was deployed:")
        return self.plan

    def _networks(self, networks: Any, services: dict) -> None:
        nets = self.check.mapping(("networks",), networks) or {}
        uses_default = any(isinstance(s, dict) and not s.get("networks") for s in services.values())
        if uses_default and "default" not in nets:
            nets = {**nets, "default": None}
        for key, net in nets.items():
            path = ("networks", key)
            net = net or {}
            if self.check.mapping(path, net) is None:
                continue
            self.check.keys(path, net, ("driver", "driver_opts", "attachable", "external", "name",
                                        "labels", "ipam", "internal", "enable_ipv6",
                                        "enable_ipv4"), what="network")
            if net.get("external"):
                external = net["external"]
                explicit = external.get("name") if isinstance(external, dict) else net.get("name")
                self.plan.networks[key] = NetworkPlan(key, explicit or key, external=True, path=path)
                continue
            driver = net.get("driver", "overlay")
            if driver != "overlay":
                self.unsupported((*path, "driver"), f"network driver {driver!r}: a stack's "
                                 "networks are overlays")
            for opt in (self.check.string_map((*path, "driver_opts"), net.get("driver_opts") or {})):
                self.unsupported((*path, "driver_opts", opt), "overlay driver options are not "
                                 "applied (shoal's overlays take none)")
            if net.get("internal"):
                self.unsupported((*path, "internal"), "every overlay is internal to the cluster "
                                 "already; outbound traffic is not switched off per network")
            if net.get("enable_ipv6"):
                self.unsupported((*path, "enable_ipv6"), "overlays are IPv4 only")
            spec: dict[str, Any] = {
                "name": self.scoped(key, net.get("name"), path), "driver": "overlay",
                "labels": self.labelled(self.check.string_map((*path, "labels"), net.get("labels") or {})),
                "attachable": bool(self.check.boolean((*path, "attachable"), net.get("attachable", False))),
                "ipam": self._ipam((*path, "ipam"), net.get("ipam"))}
            self.plan.networks[key] = NetworkPlan(key, spec["name"], spec=spec, path=path)

    def _ipam(self, path: Path, ipam: Any) -> list[dict]:
        if ipam is None:
            return []
        data = self.check.mapping(path, ipam) or {}
        self.check.keys(path, data, ("driver", "config", "options"), what="ipam")
        if data.get("driver", "default") != "default":
            self.unsupported((*path, "driver"), "only the default IPAM driver exists")
        out = []
        for i, cfg in enumerate(data.get("config") or []):
            if self.check.mapping((*path, "config", i), cfg) is None:
                continue
            self.check.keys((*path, "config", i), cfg, ("subnet", "gateway", "ip_range",
                                                        "aux_addresses"), what="ipam config")
            for key in ("ip_range", "aux_addresses"):
                if is_set(cfg.get(key)):
                    self.unsupported((*path, "config", i, key), "addresses are handed out from "
                                     "the whole subnet")
            out.append({"subnet": str(cfg.get("subnet", "")), "gateway": str(cfg.get("gateway", ""))})
        return out

    def _volumes(self, volumes: Any) -> None:
        for key, vol in (self.check.mapping(("volumes",), volumes) or {}).items():
            path = ("volumes", key)
            vol = vol or {}
            if self.check.mapping(path, vol) is None:
                continue
            self.check.keys(path, vol, ("driver", "driver_opts", "external", "name", "labels"),
                            what="volume")
            if vol.get("external"):
                external = vol["external"]
                explicit = external.get("name") if isinstance(external, dict) else vol.get("name")
                self.plan.volumes[key] = explicit or key
                continue
            driver = vol.get("driver", "local")
            if driver != "local":
                self.unsupported((*path, "driver"), f"volume driver {driver!r}: only local exists")
            opts = self.check.string_map((*path, "driver_opts"), vol.get("driver_opts") or {})
            for opt in opts:
                if opt not in ("type", "device", "o"):
                    self.check.bad((*path, "driver_opts", opt), "the local driver takes type, "
                                   "device and o")
            self.plan.volumes[key] = self.scoped(key, vol.get("name"), path)
            self._volume_options[key] = VolumeOptions(
                labels=self.labelled(self.check.string_map((*path, "labels"), vol.get("labels") or {})),
                driver="local", driver_opts=opts)

    def _data_objects(self, kind: str, objects: Any, out: dict[str, DataPlan]) -> None:
        for key, obj in (self.check.mapping((kind,), objects) or {}).items():
            path = (kind, key)
            if self.check.mapping(path, obj) is None:
                continue
            known = ["file", "external", "name", "labels", "environment", "driver",
                     "driver_opts", "template_driver"] + (["content"] if kind == "configs" else [])
            self.check.keys(path, obj, known, what=kind[:-1])
            for k in ("driver", "template_driver"):
                if is_set(obj.get(k)):
                    self.unsupported((*path, k), f"{kind} are kept by the managers; no {k} is used")
            labels = self.labelled(self.check.string_map((*path, "labels"), obj.get("labels") or {}))
            if obj.get("external"):
                external = obj["external"]
                explicit = external.get("name") if isinstance(external, dict) else obj.get("name")
                out[key] = DataPlan(key, explicit or key, path=path)
                continue
            sources = [k for k in ("file", "environment", "content") if k in obj]
            if len(sources) != 1:
                self.check.bad(path, f"a {kind[:-1]} needs exactly one of file, environment"
                               f"{', content' if kind == 'configs' else ''} or external: true")
                continue
            data = self._data((*path, sources[0]), sources[0], obj[sources[0]])
            if data is not None:
                out[key] = DataPlan(key, self.scoped(key, obj.get("name"), path), labels, data, path)

    def _data(self, path: Path, source: str, value: Any) -> Optional[bytes]:
        text = self.check.string(path, value)
        if text is None:
            return None
        if source == "content":
            data = text.encode()
        elif source == "environment":
            if text not in self.project.env:
                self.check.bad(path, f"the variable {text} is not set")
                return None
            data = self.project.env[text].encode()
        else:
            try:
                with open(self.relative(text), "rb") as f:
                    data = f.read(MAX_DATA_SIZE + 1)
            except OSError as exc:
                self.check.bad(path, f"cannot read {text}: {exc.strerror}")
                return None
        if len(data) > MAX_DATA_SIZE:
            self.check.bad(path, f"larger than {MAX_DATA_SIZE} bytes (500 KB), the limit")
            return None
        return data

    # -- one service --------------------------------------------------------------------------
    def _service(self, key: str, svc: dict, path: Path) -> Optional[ServiceSpec]:
        c = self.check
        c.keys(path, svc, SERVICE_KEYS, what="service")
        for name, reason in UNSUPPORTED.items():
            if name in svc and is_set(svc[name]):
                self.unsupported((*path, name), reason)
        for name, reason in NO_EFFECT.items():
            if reason and name in svc and is_set(svc[name]):
                self.warn((*path, name), f"ignored: {reason}")
        image = svc.get("image")
        if image is None:
            if "build" in svc:
                self.unsupported((*path, "build"), "images are not built by stack deploy: build "
                                 "and push the image, and name it with image:")
            else:
                c.bad(path, "image is required")
            return None
        image = c.string((*path, "image"), image)
        if "build" in svc:
            self.warn((*path, "build"), f"ignored: stack deploy does not build; image {image} is used")
        name = f"{self.ns}_{key}"
        deploy = c.mapping((*path, "deploy"), svc.get("deploy") or {}) or {}
        c.keys((*path, "deploy"), deploy, DEPLOY_KEYS, what="deploy")
        container = ContainerSpec(image=image or "")
        container.command = c.command((*path, "entrypoint"), svc.get("entrypoint")) or []
        container.args = c.command((*path, "command"), svc.get("command")) or []
        container.env = self._environment(path, svc)
        container.labels = self.labelled(c.string_map((*path, "labels"), svc.get("labels") or {}))
        for attr, k in (("user", "user"), ("dir", "working_dir"), ("hostname", "hostname"),
                        ("stop_signal", "stop_signal")):
            if k in svc:
                value = c.string((*path, k), svc[k], allow_numbers=True)
                if value is not None:
                    setattr(container, attr, value)
        if "stop_grace_period" in svc:
            grace = c.duration((*path, "stop_grace_period"), svc["stop_grace_period"])
            if grace is not None:
                container.stop_grace_period = grace
        for attr, k in (("tty", "tty"), ("open_stdin", "stdin_open"), ("init", "init"),
                        ("read_only", "read_only")):
            if k in svc:
                setattr(container, attr, bool(c.boolean((*path, k), svc[k])))
        for attr in ("cap_add", "cap_drop"):
            setattr(container, attr, c.string_list((*path, attr), svc.get(attr) or []))
        container.sysctls = c.string_map((*path, "sysctls"), svc.get("sysctls") or {})
        container.ulimits = self._ulimits((*path, "ulimits"), svc.get("ulimits") or {})
        container.groups = c.string_list((*path, "group_add"), svc.get("group_add") or [])
        container.hosts = self._hosts((*path, "extra_hosts"), svc.get("extra_hosts") or {})
        if any(k in svc for k in ("dns", "dns_search", "dns_opt")):
            container.dns_config = DNSConfig(
                nameservers=c.string_list((*path, "dns"), svc.get("dns") or []),
                search=c.string_list((*path, "dns_search"), svc.get("dns_search") or []),
                options=c.string_list((*path, "dns_opt"), svc.get("dns_opt") or []))
        container.mounts = self._mounts(path, svc)
        container.secrets = self._references(path, svc, "secrets", self.plan.secrets, SecretReference)
        container.configs = self._references(path, svc, "configs", self.plan.configs, ConfigReference)
        if "healthcheck" in svc:
            container.healthcheck = self._healthcheck((*path, "healthcheck"), svc["healthcheck"])
        task = TaskSpec(container=container,
                        resources=self._resources(path, svc, deploy),
                        restart_policy=self._restart(path, svc, deploy),
                        placement=self._placement((*path, "deploy", "placement"),
                                                  deploy.get("placement") or {}),
                        networks=self._attachments(key, path, svc),
                        log_driver=self._logging((*path, "logging"), svc.get("logging")))
        spec = ServiceSpec(
            name=name, task_template=task, mode=self._mode(path, svc, deploy),
            labels={**self.labelled(c.string_map((*path, "deploy", "labels"), deploy.get("labels") or {})),
                    IMAGE_LABEL: image or ""},
            endpoint_spec=EndpointSpec(
                mode=c.choice((*path, "deploy", "endpoint_mode"), deploy.get("endpoint_mode", "vip"),
                              ("vip", "dnsrr")) or "vip",
                ports=self._ports((*path, "ports"), svc.get("ports") or [])),
            update_config=self._update_config((*path, "deploy", "update_config"),
                                              deploy.get("update_config"), rollback=False),
            rollback_config=self._update_config((*path, "deploy", "rollback_config"),
                                                deploy.get("rollback_config"), rollback=True),
            depends_on=self._depends_on((*path, "depends_on"), svc.get("depends_on") or {}))
        return spec

    def _environment(self, path: Path, svc: dict) -> list[str]:
        env: dict[str, str] = {}
        files = svc.get("env_file") or []
        for i, item in enumerate(files if isinstance(files, list) else [files]):
            required = True
            if isinstance(item, dict):
                required = bool(item.get("required", True))
                item = item.get("path")
            text = self.check.string((*path, "env_file", i), item)
            if text is None:
                continue
            file = self.relative(text)
            if not os.path.isfile(file):
                if required:
                    self.check.bad((*path, "env_file", i), f"env file {text} not found")
                continue
            try:
                values = dotenv_values(file, interpolate=False)
            except (OSError, UnicodeDecodeError) as exc:
                self.check.bad((*path, "env_file", i), f"cannot read {text}: {exc}")
                continue
            env.update({k: v or "" for k, v in values.items()})
        declared = svc.get("environment") or {}
        for k, v in (self.check.mapping((*path, "environment"), declared) or {}).items():
            if v is None:  # `- NAME` alone: the value from where the deploy runs, if it has one
                if k in self.project.env:
                    env[k] = self.project.env[k]
                continue
            value = self.check.string((*path, "environment", k), v if not isinstance(v, bool)
                                      else ("true" if v else "false"), allow_numbers=True)
            if value is not None:
                env[str(k)] = value
        return [f"{k}={v}" for k, v in env.items()]

    def _ulimits(self, path: Path, value: Any) -> list[Ulimit]:
        out = []
        for name, limit in (self.check.mapping(path, value) or {}).items():
            if isinstance(limit, dict):
                self.check.keys((*path, name), limit, ("soft", "hard"), what="ulimit")
                soft = self.check.integer((*path, name, "soft"), limit.get("soft"))
                hard = self.check.integer((*path, name, "hard"), limit.get("hard"))
            else:
                soft = hard = self.check.integer((*path, name), limit)
            if soft is not None and hard is not None:
                out.append(Ulimit(str(name), soft, hard))
        return out

    def _hosts(self, path: Path, value: Any) -> list[str]:
        """extra_hosts `host: ip` become Docker's hosts lines `ip host`."""
        if isinstance(value, list):  # the first file's list forms were merged as mappings
            from shoal.stack.merge import mapping_from_list
            value = mapping_from_list(value, ":", self.problems, path)
        out = []
        for host, ip in (self.check.mapping(path, value) or {}).items():
            ips = ip if isinstance(ip, list) else [ip]
            for one in ips:
                text = str(one or "").strip("[]")
                try:
                    ipaddress.ip_address(text)
                except ValueError:
                    self.check.bad((*path, host), f"{text!r} is not an IP address (write host:IP)")
                    continue
                out.append(f"{text} {host}")
        return out

    def _mounts(self, path: Path, svc: dict) -> list[Mount]:
        mounts = []
        for i, vol in enumerate(svc.get("volumes") or []):
            at = (*path, "volumes", i)
            if self.check.mapping(at, vol) is None:
                continue
            self.check.keys(at, vol, ("type", "source", "target", "read_only", "bind", "volume",
                                      "tmpfs", "consistency", "image"), what="volume mount")
            kind = self.check.choice((*at, "type"), vol.get("type", "volume"),
                                     ("volume", "bind", "tmpfs", "npipe", "cluster", "image"))
            target = self.check.string((*at, "target"), vol.get("target"))
            if kind is None or target is None:
                continue
            if kind in ("npipe", "cluster", "image"):
                self.unsupported((*at, "type"), f"{kind} mounts do not exist here")
                continue
            mount = Mount(type=kind, target=target,
                          read_only=bool(self.check.boolean((*at, "read_only"), vol.get("read_only", False))))
            source = vol.get("source")
            if kind == "bind":
                text = self.check.string((*at, "source"), source)
                if text is None:
                    continue
                mount.source = self.relative(text)
                bind = vol.get("bind") or {}
                if bind.get("propagation") not in (None, "rprivate", "private"):
                    self.unsupported((*at, "bind", "propagation"), "bind mounts are rprivate")
            elif kind == "volume" and source:
                text = self.check.string((*at, "source"), source)
                if text is None:
                    continue
                if text not in self.plan.volumes:
                    self.check.bad((*at, "source"), f"volume {text!r} is not declared under the "
                                   "top-level volumes key")
                    continue
                mount.source = self.plan.volumes[text]
                options = self._volume_options.get(text)
                nocopy = bool((vol.get("volume") or {}).get("nocopy", False))
                if options is not None or nocopy:
                    mount.volume_options = VolumeOptions(
                        labels=dict(options.labels) if options else {}, driver="local",
                        driver_opts=dict(options.driver_opts) if options else {}, no_copy=nocopy)
            elif kind == "tmpfs":
                tmpfs = self.check.mapping((*at, "tmpfs"), vol.get("tmpfs") or {}) or {}
                self.check.keys((*at, "tmpfs"), tmpfs, ("size", "mode"), what="tmpfs")
                size = self.check.size((*at, "tmpfs", "size"), tmpfs.get("size", 0))
                mode = self.check.integer((*at, "tmpfs", "mode"), tmpfs.get("mode", 0), maximum=0o7777)
                if size or mode:
                    mount.tmpfs_options = TmpfsOptions(size_bytes=size or 0, mode=mode or 0)
            mounts.append(mount)
        for i, item in enumerate(svc.get("tmpfs") or []):
            text = self.check.string((*path, "tmpfs", i), item)
            if text is None:
                continue
            target, _, opts = text.partition(":")
            options = TmpfsOptions()
            for opt in filter(None, opts.split(",")):
                k, _, v = opt.partition("=")
                if k == "size":
                    options.size_bytes = self.check.size((*path, "tmpfs", i), v) or 0
                elif k == "mode":
                    try:
                        options.mode = int(v, 8)
                    except ValueError:
                        self.check.bad((*path, "tmpfs", i), f"mode {v!r} is not octal")
                else:
                    self.check.bad((*path, "tmpfs", i), f"tmpfs option {k!r}: size= and mode= only")
            mounts.append(Mount(type="tmpfs", target=target,
                                tmpfs_options=options if options.size_bytes or options.mode else None))
        return mounts

    def _references(self, path: Path, svc: dict, kind: str, declared: dict[str, DataPlan],
                    cls: type) -> list:
        out = []
        for i, ref in enumerate(svc.get(kind) or []):
            at = (*path, kind, i)
            if self.check.mapping(at, ref) is None:
                continue
            self.check.keys(at, ref, ("source", "target", "uid", "gid", "mode"), what=kind[:-1])
            source = self.check.string((*at, "source"), ref.get("source"))
            if source is None:
                continue
            if source not in declared:
                self.check.bad((*at, "source"), f"{kind[:-1]} {source!r} is not declared under "
                               f"the top-level {kind} key")
                continue
            name = declared[source].name
            if kind == "secrets":
                target = ref.get("target") or source
                if not str(target).startswith("/"):
                    target = f"/run/secrets/{target}"
            else:
                target = ref.get("target") or f"/{source}"
            item = cls(target=str(target),
                       uid=self.check.string((*at, "uid"), ref.get("uid", "0"), allow_numbers=True) or "0",
                       gid=self.check.string((*at, "gid"), ref.get("gid", "0"), allow_numbers=True) or "0",
                       mode=self.check.integer((*at, "mode"), ref.get("mode", 0o444), maximum=0o7777) or 0)
            if kind == "secrets":
                item.secret_name = name
            else:
                item.config_name = name
            out.append(item)
        return out

    def _healthcheck(self, path: Path, value: Any) -> Optional[HealthConfig]:
        hc = self.check.mapping(path, value)
        if hc is None:
            return None
        self.check.keys(path, hc, ("test", "interval", "timeout", "retries", "start_period",
                                   "start_interval", "disable"), what="healthcheck")
        if hc.get("disable"):
            return HealthConfig(test=["NONE"])
        test = hc.get("test")
        out = HealthConfig()
        if isinstance(test, str):
            out.test = ["CMD-SHELL", test]
        elif test is not None:
            items = self.check.string_list((*path, "test"), test)
            if items and items[0] not in ("CMD", "CMD-SHELL", "NONE"):
                self.check.bad((*path, "test"), "a list test starts with CMD, CMD-SHELL or NONE")
            out.test = items
        for key in ("interval", "timeout", "start_period"):
            if key in hc:
                setattr(out, key, self.check.duration((*path, key), hc[key]) or 0.0)
        if "start_interval" in hc:
            self.warn((*path, "start_interval"), "ignored: checks run every interval from the start")
        if "retries" in hc:
            out.retries = self.check.integer((*path, "retries"), hc["retries"]) or 0
        return out

    def _resources(self, path: Path, svc: dict, deploy: dict) -> ResourceRequirements:
        at = (*path, "deploy", "resources")
        res = self.check.mapping(at, deploy.get("resources") or {}) or {}
        self.check.keys(at, res, ("limits", "reservations"), what="resources")
        out = ResourceRequirements()
        limits = self.check.mapping((*at, "limits"), res.get("limits") or {}) or {}
        self.check.keys((*at, "limits"), limits, ("cpus", "memory", "pids"), what="limits")
        reservations = self.check.mapping((*at, "reservations"), res.get("reservations") or {}) or {}
        self.check.keys((*at, "reservations"), reservations, ("cpus", "memory", "generic_resources",
                                                              "devices"), what="reservations")
        for key in ("generic_resources", "devices"):
            if is_set(reservations.get(key)):
                self.unsupported((*at, "reservations", key), "generic resources and devices are "
                                 "not scheduled")
        for target, data, where in ((out.limits, limits, (*at, "limits")),
                                    (out.reservations, reservations, (*at, "reservations"))):
            if "cpus" in data:
                target.nano_cpus = self.check.cpus((*where, "cpus"), data["cpus"]) or 0
            if "memory" in data:
                target.memory_bytes = self.check.size((*where, "memory"), data["memory"]) or 0
        if "pids" in limits:
            out.pids_limit = self.check.integer((*at, "limits", "pids"), limits["pids"]) or 0
        # The older service-level keys, where deploy does not say otherwise.
        if "cpus" in svc and not out.limits.nano_cpus:
            out.limits.nano_cpus = self.check.cpus((*path, "cpus"), svc["cpus"]) or 0
        if "mem_limit" in svc and not out.limits.memory_bytes:
            out.limits.memory_bytes = self.check.size((*path, "mem_limit"), svc["mem_limit"]) or 0
        if "mem_reservation" in svc and not out.reservations.memory_bytes:
            out.reservations.memory_bytes = self.check.size((*path, "mem_reservation"),
                                                            svc["mem_reservation"]) or 0
        if "pids_limit" in svc and not out.pids_limit:
            out.pids_limit = self.check.integer((*path, "pids_limit"), svc["pids_limit"]) or 0
        return out

    def _restart(self, path: Path, svc: dict, deploy: dict) -> RestartPolicy:
        out = RestartPolicy()
        at = (*path, "deploy", "restart_policy")
        policy = deploy.get("restart_policy")
        if policy is None:
            if "restart" in svc:
                text = self.check.string((*path, "restart"), svc["restart"]) or ""
                name, _, count = text.partition(":")
                if name not in _RESTART:
                    self.check.bad((*path, "restart"), f"{text!r} is not no, always, on-failure[:N] "
                                   "or unless-stopped")
                else:
                    out.condition = _RESTART[name]
                    if count:
                        out.max_attempts = self.check.integer((*path, "restart"), count) or 0
            return out
        if "restart" in svc:
            self.warn((*path, "restart"), "ignored: deploy.restart_policy says how tasks restart")
        data = self.check.mapping(at, policy) or {}
        self.check.keys(at, data, ("condition", "delay", "max_attempts", "window"),
                        what="restart_policy")
        if "condition" in data:
            out.condition = self.check.choice((*at, "condition"), data["condition"],
                                              ("none", "on-failure", "any")) or "any"
        for key in ("delay", "window"):
            if key in data:
                setattr(out, key, self.check.duration((*at, key), data[key]) or 0.0)
        if "max_attempts" in data:
            out.max_attempts = self.check.integer((*at, "max_attempts"), data["max_attempts"]) or 0
        return out

    def _placement(self, path: Path, value: Any) -> Placement:
        data = self.check.mapping(path, value) or {}
        self.check.keys(path, data, ("constraints", "preferences", "max_replicas_per_node"),
                        what="placement")
        out = Placement(constraints=self.check.string_list((*path, "constraints"),
                                                           data.get("constraints") or []))
        for i, pref in enumerate(data.get("preferences") or []):
            if isinstance(pref, dict) and set(pref) == {"spread"}:
                out.preferences.append(f"spread={pref['spread']}")
            else:
                self.check.bad((*path, "preferences", i), "a preference is `spread: node.labels.KEY`")
        if "max_replicas_per_node" in data:
            out.max_replicas = self.check.integer((*path, "max_replicas_per_node"),
                                                  data["max_replicas_per_node"]) or 0
        return out

    def _attachments(self, key: str, path: Path, svc: dict) -> list[NetworkAttachmentConfig]:
        nets = svc.get("networks") or {"default": None}
        out = []
        for name, opts in (self.check.mapping((*path, "networks"), nets) or {}).items():
            at = (*path, "networks", name)
            if name not in self.plan.networks:
                self.check.bad(at, f"network {name!r} is not declared under the top-level "
                               "networks key")
                continue
            # As Docker: the service's key in the file is an alias on each of its networks, so
            # `api` resolves although the service is named STACK_api.
            aliases = [key]
            if opts is not None:
                if self.check.mapping(at, opts) is None:
                    continue
                self.check.keys(at, opts, ("aliases", "ipv4_address", "ipv6_address",
                                           "link_local_ips", "priority", "mac_address",
                                           "driver_opts", "gw_priority", "interface_name"),
                                what="service network")
                for k in ("ipv4_address", "ipv6_address", "link_local_ips", "mac_address",
                          "driver_opts", "interface_name"):
                    if is_set(opts.get(k)):
                        self.unsupported((*at, k), "task addresses are assigned by shoal")
                for k in ("priority", "gw_priority"):
                    if k in opts:
                        self.warn((*at, k), "ignored: a task's networks have no order")
                for alias in self.check.string_list((*at, "aliases"), opts.get("aliases") or []):
                    if alias not in aliases:
                        aliases.append(alias)
            out.append(NetworkAttachmentConfig(target=self.plan.networks[name].name, aliases=aliases))
        return out

    def _logging(self, path: Path, value: Any) -> Optional[LogDriver]:
        if value is None:
            return None
        data = self.check.mapping(path, value) or {}
        self.check.keys(path, data, ("driver", "options"), what="logging")
        driver = data.get("driver", "json-file")
        if driver not in ("json-file", "none", "local"):
            self.unsupported((*path, "driver"), f"log driver {driver!r}: json-file and none exist")
            return None
        options = self.check.string_map((*path, "options"), data.get("options") or {})
        for k in options:
            if k not in ("max-size", "max-file"):
                self.unsupported((*path, "options", k), "json-file takes max-size and max-file")
        return LogDriver(name="json-file" if driver == "local" else driver,
                         options={k: v for k, v in options.items() if k in ("max-size", "max-file")})

    def _mode(self, path: Path, svc: dict, deploy: dict) -> ServiceMode:
        at = (*path, "deploy")
        mode = self.check.choice((*at, "mode"), deploy.get("mode", "replicated"),
                                 ("replicated", "global", "replicated-job", "global-job")) or "replicated"
        out = ServiceMode(mode=mode)
        replicas = None
        if "replicas" in deploy:
            replicas = self.check.integer((*at, "replicas"), deploy["replicas"], maximum=10000)
        elif "scale" in svc:
            replicas = self.check.integer((*path, "scale"), svc["scale"], maximum=10000)
        if mode.startswith("global"):
            if replicas is not None:
                self.check.bad((*at, "replicas"), f"replicas cannot be set in {mode} mode")
            return out
        out.replicas = 1 if replicas is None else replicas
        if mode == "replicated-job":  # as Docker: run the replicas at once, complete each once
            out.max_concurrent = out.replicas
            out.total_completions = out.replicas
        return out

    def _ports(self, path: Path, ports: Any) -> list[PortConfig]:
        out = []
        if not isinstance(ports, list):
            self.check.expected(path, "a list of ports", ports)
            return out
        for i, port in enumerate(ports):
            at = (*path, i)
            if self.check.mapping(at, port) is None:
                continue
            self.check.keys(at, port, ("target", "published", "protocol", "mode", "host_ip",
                                       "name", "app_protocol"), what="port")
            if is_set(port.get("host_ip")) and port.get("host_ip") not in ("0.0.0.0", "::"):
                self.unsupported((*at, "host_ip"), "a published port answers on every address "
                                 "of every node")
            target = self.check.integer((*at, "target"), port.get("target"), minimum=1, maximum=65535)
            protocol = self.check.choice((*at, "protocol"), port.get("protocol", "tcp"), ("tcp", "udp"))
            mode = self.check.choice((*at, "mode"), port.get("mode", "ingress"), ("ingress", "host"))
            published: list[int] = [0]
            raw = port.get("published")
            if isinstance(raw, str) and "-" in raw:
                first, _, last = raw.partition("-")
                lo = self.check.integer((*at, "published"), first, maximum=65535)
                hi = self.check.integer((*at, "published"), last, maximum=65535)
                published = list(range(lo, hi + 1)) if lo is not None and hi is not None else []
                if len(published) > 1:
                    self.check.bad((*at, "published"), "a published range needs a target range: "
                                   "write the ports one by one, or use the short form \"8000-8001:80-81\"")
            elif raw not in (None, ""):
                value = self.check.integer((*at, "published"), raw, maximum=65535)
                published = [value or 0]
            if target is None or protocol is None or mode is None or not published:
                continue
            out.append(PortConfig(name=str(port.get("name") or ""), protocol=protocol,
                                  target_port=target, published_port=published[0],
                                  publish_mode=mode))
        return out

    def _update_config(self, path: Path, value: Any, *, rollback: bool) -> UpdateConfig:
        out = UpdateConfig()
        if value is None:
            return out
        data = self.check.mapping(path, value) or {}
        self.check.keys(path, data, ("parallelism", "delay", "failure_action", "monitor",
                                     "max_failure_ratio", "order"), what="update_config")
        if "parallelism" in data:
            out.parallelism = self.check.integer((*path, "parallelism"), data["parallelism"]) or 0
        for key in ("delay", "monitor"):
            if key in data:
                setattr(out, key, self.check.duration((*path, key), data[key]) or 0.0)
        if "failure_action" in data:
            actions = ("pause", "continue") if rollback else ("pause", "continue", "rollback")
            out.failure_action = self.check.choice((*path, "failure_action"), data["failure_action"],
                                                   actions) or "pause"
        if "max_failure_ratio" in data:
            out.max_failure_ratio = self.check.number((*path, "max_failure_ratio"),
                                                      data["max_failure_ratio"], maximum=1.0) or 0.0
        if "order" in data:
            out.order = self.check.choice((*path, "order"), data["order"],
                                          ("stop-first", "start-first")) or "stop-first"
        return out

    def _depends_on(self, path: Path, value: Any) -> list[ServiceDependency]:
        out = []
        for name, opts in (self.check.mapping(path, value) or {}).items():
            opts = opts or {}
            if self.check.mapping((*path, name), opts) is None:
                continue
            self.check.keys((*path, name), opts, ("condition", "required", "restart"),
                            what="depends_on")
            condition = self.check.choice((*path, name, "condition"),
                                          opts.get("condition", "service_started"),
                                          DEPENDENCY_CONDITIONS)
            if condition is not None:
                out.append(ServiceDependency(service=f"{self.ns}_{name}", condition=condition))
        return out

    def _check_dependencies(self, services: dict) -> None:
        """Dependencies name services of this file; cycles are refused here, before the
        managers would refuse them one service at a time."""
        graph: dict[str, list[str]] = {}
        for key, svc in services.items():
            if not isinstance(svc, dict) or not isinstance(svc.get("depends_on"), dict):
                continue
            for dep in svc["depends_on"]:
                if dep not in services:
                    self.check.bad(("services", key, "depends_on", dep),
                                   f"service {dep!r} is not in the file")
                elif dep == key:
                    self.check.bad(("services", key, "depends_on", dep), "a service cannot "
                                   "depend on itself")
                graph.setdefault(key, []).append(dep)
        state: dict[str, int] = {}

        def visit(node: str, trail: list[str]) -> None:
            state[node] = 1
            for dep in graph.get(node, []):
                if state.get(dep) == 1 and dep != node:
                    cycle = trail[trail.index(dep):] + [dep] if dep in trail else [node, dep]
                    self.check.bad(("services", node, "depends_on", dep),
                                   f"a dependency cycle: {' -> '.join(cycle)}")
                elif dep in services and not state.get(dep):
                    visit(dep, trail + [dep])
            state[node] = 2

        for node in graph:
            if not state.get(node):
                visit(node, [node])


def convert(project: Project, namespace: str) -> StackPlan:
    return Converter(project, namespace).convert()


def service_body(spec: ServiceSpec) -> dict:
    return asdict(spec)


def refuse_unsupported(plan: StackPlan) -> None:
    if plan.unsupported:
        raise ComposeError(plan.unsupported, "the Compose file uses keys shoal cannot honour; "
                           "nothing was deployed (--allow-unsupported deploys without them, "
                           "with a warning for each):")
