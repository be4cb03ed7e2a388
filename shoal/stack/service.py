"""One Compose service turned into a shoal ServiceSpec, key by key, with Docker's meaning."""
from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING, Any, Optional

from dotenv import dotenv_values

from common.model import (DEPENDENCY_CONDITIONS, ConfigReference, ContainerSpec, DNSConfig,
                          EndpointSpec, HealthConfig, LogDriver, Mount, NetworkAttachmentConfig,
                          Placement, PortConfig, ResourceRequirements, RestartPolicy,
                          SecretReference, ServiceDependency, ServiceMode, ServiceSpec, TaskSpec,
                          TmpfsOptions, Ulimit, UpdateConfig, VolumeOptions)
from shoal.stack.checks import Checker
from shoal.stack.keys import DEPLOY_KEYS, NO_EFFECT, SERVICE_KEYS, UNSUPPORTED, is_set
from shoal.stack.merge import mapping_from_list
from shoal.stack.plan import DataPlan, StackPlan
from shoal.stack.problems import Collector, Path

if TYPE_CHECKING:
    from shoal.stack.project import Project

IMAGE_LABEL = "com.docker.stack.image"
_RESTART = {"no": "none", "always": "any", "unless-stopped": "any", "on-failure": "on-failure"}


class ServiceConversion:
    """The service half of the Converter (convert.py), which supplies these."""
    ns: str
    project: "Project"
    plan: StackPlan
    check: Checker
    problems: Collector
    _volume_options: dict[str, VolumeOptions]

    def warn(self, path: Path, message: str) -> None: ...
    def unsupported(self, path: Path, reason: str) -> None: ...
    def labelled(self, labels: dict[str, str]) -> dict[str, str]: ...
    def relative(self, text: str) -> str: ...

    def _service(self, key: str, svc: dict, path: Path) -> Optional[ServiceSpec]:
        c = self.check
        c.keys(path, svc, SERVICE_KEYS, what="service")
        for name, reason in UNSUPPORTED.items():
            if name in svc and is_set(svc[name]):
                self.unsupported((*path, name), reason)
        for name, reason in NO_EFFECT.items():
            if reason and name in svc and is_set(svc[name]):
                self.warn((*path, name), f"ignored: {reason}")
        self._links(path, svc.get("links"))
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

    def _links(self, path: Path, links: Any) -> None:
        """A link to a service of the stack is its name, which resolves on a shared network
        anyway; a link under another name would not resolve."""
        for i, link in enumerate(self.check.string_list((*path, "links"), links or [])):
            service, _, alias = link.partition(":")
            if alias and alias != service:
                self.unsupported((*path, "links", i), f"the alias {alias!r} would not resolve: "
                                 f"add it to the service {service}'s networks: aliases")
            else:
                self.warn((*path, "links", i), "ignored: services on a shared network reach "
                          "each other by name")

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
        for i, vol in enumerate(self.check.items((*path, "volumes"), svc.get("volumes"))):
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
                bind = self.check.mapping((*at, "bind"), vol.get("bind") or {}) or {}
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
                volume = self.check.mapping((*at, "volume"), vol.get("volume") or {}) or {}
                nocopy = bool(volume.get("nocopy", False))
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
        for i, item in enumerate(self.check.items((*path, "tmpfs"), svc.get("tmpfs"))):
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
        for i, ref in enumerate(self.check.items((*path, kind), svc.get(kind))):
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
        for i, pref in enumerate(self.check.items((*path, "preferences"), data.get("preferences"))):
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
