"""A project (merged Compose files) turned into what shoal deploys: service specs, networks,
secrets, configs and named volumes, all in the stack's namespace, as `docker stack deploy` names
and labels them. The services themselves are converted in service.py; keys.py says which keys
are honoured, which change nothing, and which shoal cannot honour.
"""
from __future__ import annotations

import os
import re
from pathlib import Path as FsPath
from typing import Any, Optional

from common.model import VolumeOptions
from shoal.stack.checks import Checker
from shoal.stack.keys import TOP_LEVEL, is_set
from shoal.stack.problems import Collector, ComposeError, Path, Problem, dotted
from shoal.stack.plan import DataPlan, NetworkPlan, StackPlan
from shoal.stack.project import Project
from shoal.stack.service import ServiceConversion

NAMESPACE_LABEL = "com.docker.stack.namespace"
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
MAX_DATA_SIZE = 500 * 1024  # the managers' limit for a secret or config

class Converter(ServiceConversion):
    def __init__(self, project: Project, namespace: str) -> None:
        self.project = project
        self.ns = namespace
        self.problems = Collector(project.marks)
        self.problems.problems.extend(project.problems)
        self.check = Checker(self.problems)
        self.plan = StackPlan(namespace, warnings=list(project.warnings), marks=project.marks)
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
        for i, cfg in enumerate(self.check.items((*path, "config"), data.get("config"))):
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


def refuse_unsupported(plan: StackPlan) -> None:
    if plan.unsupported:
        raise ComposeError(plan.unsupported, "the Compose file uses keys shoal cannot honour; "
                           "nothing was deployed (--allow-unsupported deploys without them, "
                           "with a warning for each):")
