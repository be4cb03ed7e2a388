"""Several `-c` files become one, as Compose merges them: later files replace scalars, merge
mappings, and extend sequences (ports, volumes, secrets and configs by what makes them unique;
command, entrypoint and a health check's test are replaced whole). `!reset` removes a key and
`!override` replaces without merging."""
from __future__ import annotations

from typing import Any, Callable

from shoal.stack.problems import Collector, Path
from shoal.stack.shortsyntax import port_key, port_long, reference_long, volume_long
from shoal.stack.yamlfile import Override, Reset

# Service keys whose list form is a mapping in disguise (KEY=VALUE items).
_MAPPING_LISTS = {"environment": "=", "labels": "=", "extra_hosts": ":", "sysctls": "=",
                  "annotations": "="}
_REPLACED = {("command",), ("entrypoint",), ("healthcheck", "test")}
_STRING_OR_LIST = ("dns", "dns_search", "dns_opt", "tmpfs", "env_file", "cap_add", "cap_drop",
                   "group_add", "expose", "profiles", "devices", "security_opt", "links",
                   "external_links")


def mapping_from_list(items: list, separator: str, problems: Collector, path: Path) -> dict:
    out: dict = {}
    for i, item in enumerate(items):
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            problems.add((*path, i), f"expected a string KEY{separator}VALUE")
            continue
        text = str(item)
        if separator == ":" and "=" in text:  # extra_hosts also take host=ip
            key, sep, value = text.partition("=")
        else:
            key, sep, value = text.partition(separator)
        out[key] = value if sep else None  # None: take it from the environment (environment)
    return out


def normalize_service(svc: Any, problems: Collector, path: Path) -> Any:
    """The long forms, in place of the short ones, so files merge item by item."""
    if not isinstance(svc, dict):
        return svc
    out = dict(svc)
    for key, separator in _MAPPING_LISTS.items():
        if isinstance(out.get(key), list):
            out[key] = mapping_from_list(out[key], separator, problems, (*path, key))
    deploy = out.get("deploy")
    if isinstance(deploy, dict) and isinstance(deploy.get("labels"), list):
        out["deploy"] = {**deploy, "labels": mapping_from_list(deploy["labels"], "=", problems,
                                                               (*path, "deploy", "labels"))}
    for key in _STRING_OR_LIST:
        if isinstance(out.get(key), str):
            out[key] = [out[key]]
    _long_items(out, "ports", port_long, problems, path, many=True)
    _long_items(out, "volumes", volume_long, problems, path)
    _long_items(out, "secrets", reference_long, problems, path)
    _long_items(out, "configs", reference_long, problems, path)
    if isinstance(out.get("depends_on"), list):
        deps = {}
        for i, name in enumerate(out["depends_on"]):
            if not isinstance(name, str):
                problems.add((*path, "depends_on", i), "expected a service name")
                continue
            deps[name] = {"condition": "service_started"}
        out["depends_on"] = deps
    if isinstance(out.get("networks"), list):
        nets = {}
        for i, name in enumerate(out["networks"]):
            if not isinstance(name, str):
                problems.add((*path, "networks", i), "expected a network name")
                continue
            nets[name] = None
        out["networks"] = nets
    return out


def _long_items(svc: dict, key: str, convert: Callable, problems: Collector, path: Path,
                many: bool = False) -> None:
    items = svc.get(key)
    if not isinstance(items, list):
        return
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            out.append(item)
            continue
        try:
            converted = convert(item)
        except ValueError as exc:
            problems.add((*path, key, i), str(exc))
            continue
        out.extend(converted if many else [converted])
    svc[key] = out


def _identity(key: str) -> Callable[[Any], Any] | None:
    if key == "ports":
        return lambda p: port_key(p) if isinstance(p, dict) else repr(p)
    if key == "volumes":
        return lambda v: v.get("target") if isinstance(v, dict) else repr(v)
    if key in ("secrets", "configs"):
        return lambda r: (r.get("target") or r.get("source")) if isinstance(r, dict) else repr(r)
    return None


def merge(base: Any, over: Any, path: Path = ()) -> Any:
    if isinstance(over, Override):
        return strip(over.value)
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, (*path, key))
            else:
                out[key] = strip(value)
        return out
    if isinstance(base, list) and isinstance(over, list):
        svc_path = path[2:] if len(path) > 2 and path[0] == "services" else None
        if svc_path in _REPLACED:
            return strip(over)
        ident = _identity(svc_path[0]) if svc_path and len(svc_path) == 1 else None
        if ident:
            merged = {ident(item): item for item in base}
            for item in over:
                key = ident(item)
                merged[key] = merge(merged[key], item, path) if key in merged else strip(item)
            return list(merged.values())
        out = list(base)
        for item in strip(over):
            if item not in out:
                out.append(item)
        return out
    return strip(over)


def strip(value: Any) -> Any:
    """A first file's `!reset` and `!override` mean nothing more than their value."""
    if isinstance(value, Override):
        return strip(value.value)
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not isinstance(v, Reset)}
    if isinstance(value, list):
        return [strip(v) for v in value if not isinstance(v, Reset)]
    return value
