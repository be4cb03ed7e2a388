"""Service specs arriving at the API: parsed, defaulted and checked, with errors that name the
field. Nothing half-valid reaches the store."""
from __future__ import annotations

import re
import signal

from common import codec, errors
from common.model import (SERVICE_MODES, UPDATE_FAILURE_ACTIONS, UPDATE_ORDERS, ContainerSpec,
                          HealthConfig, ResourceRequirements, ServiceSpec)
from manager.constraints import parse_constraint, parse_preference

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_MOUNT_TYPES = ("bind", "volume", "tmpfs")
_RESTART_CONDITIONS = ("none", "on-failure", "any")


def _bad(field: str, message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{field}: {message}", field=field)


def parse_service_spec(data: object) -> ServiceSpec:
    if not isinstance(data, dict):
        raise errors.InvalidArgument("the service spec must be a JSON object", field="spec")
    try:
        spec = codec.from_plain(ServiceSpec, data)
    except (TypeError, ValueError, AttributeError) as exc:
        raise errors.InvalidArgument(f"malformed service spec: {exc}", field="spec") from None
    validate_service_spec(spec)
    return spec


def validate_resources(res: ResourceRequirements, where: str) -> None:
    """Limits and reservations of a task's container, a service's or a standalone one; errors
    name the field under ``where``."""
    for name, value in (("limits.memory_bytes", res.limits.memory_bytes),
                        ("limits.nano_cpus", res.limits.nano_cpus),
                        ("reservations.memory_bytes", res.reservations.memory_bytes),
                        ("reservations.nano_cpus", res.reservations.nano_cpus),
                        ("pids_limit", res.pids_limit)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _bad(f"{where}.{name}", "must be a non-negative integer")
    if res.limits.memory_bytes and res.limits.memory_bytes < 4 * 1024 * 1024:
        raise _bad(f"{where}.limits.memory_bytes",
                   "a memory limit below 4MB leaves no room for a process; use at least 4m")


def validate_service_spec(spec: ServiceSpec) -> None:
    if not isinstance(spec.name, str) or not _NAME.match(spec.name or ""):
        raise _bad("name", f"invalid service name {spec.name!r}: use 1-63 letters, digits, '_', "
                   "'.' or '-', starting with a letter or digit")
    validate_container_spec(spec.task_template.container, "task_template.container")
    validate_resources(spec.task_template.resources, "task_template.resources")
    rp = spec.task_template.restart_policy
    if rp.condition not in _RESTART_CONDITIONS:
        raise _bad("task_template.restart_policy.condition",
                   f"{rp.condition!r} is not one of {', '.join(_RESTART_CONDITIONS)}")
    for name in ("delay", "window"):
        if getattr(rp, name) < 0:
            raise _bad(f"task_template.restart_policy.{name}", "must be a duration >= 0")
    if not isinstance(rp.max_attempts, int) or rp.max_attempts < 0:
        raise _bad("task_template.restart_policy.max_attempts", "must be an integer >= 0")
    placement = spec.task_template.placement
    for text in placement.constraints:
        parse_constraint(text)
    for text in placement.preferences:
        parse_preference(text)
    if not isinstance(placement.max_replicas, int) or placement.max_replicas < 0:
        raise _bad("task_template.placement.max_replicas", "must be an integer >= 0")
    mode = spec.mode
    if mode.mode not in SERVICE_MODES:
        raise _bad("mode.mode", f"{mode.mode!r} is not one of {', '.join(SERVICE_MODES)}")
    for name in ("replicas", "max_concurrent", "total_completions"):
        value = getattr(mode, name)
        if not isinstance(value, int) or value < 0:
            raise _bad(f"mode.{name}", "must be an integer >= 0")
    if mode.replicas > 10000:
        raise _bad("mode.replicas", "at most 10000 replicas per service")
    for name, cfg, actions in (("update_config", spec.update_config, UPDATE_FAILURE_ACTIONS),
                               ("rollback_config", spec.rollback_config, ("pause", "continue"))):
        if not isinstance(cfg.parallelism, int) or cfg.parallelism < 0:
            raise _bad(f"{name}.parallelism", "must be an integer >= 0 (0: all at once)")
        for key in ("delay", "monitor"):
            if not isinstance(getattr(cfg, key), (int, float)) or getattr(cfg, key) < 0:
                raise _bad(f"{name}.{key}", "must be a duration >= 0")
        if cfg.failure_action not in actions:
            raise _bad(f"{name}.failure_action", f"{cfg.failure_action!r} is not one of {', '.join(actions)}")
        if not isinstance(cfg.max_failure_ratio, (int, float)) or not 0 <= cfg.max_failure_ratio <= 1:
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
    if spec.endpoint_spec.mode not in ("vip", "dnsrr"):
        raise _bad("endpoint_spec.mode", f"{spec.endpoint_spec.mode!r} is not vip or dnsrr")
    for i, n in enumerate(spec.task_template.networks):
        if not isinstance(n.target, str) or not n.target:
            raise _bad(f"task_template.networks[{i}].target", "must name a network")
        if not isinstance(n.aliases, list) or not all(isinstance(a, str) and a for a in n.aliases):
            raise _bad(f"task_template.networks[{i}].aliases", "must be a list of names")


def validate_container_spec(c: ContainerSpec, where: str) -> None:
    """What a container needs to run, a service's or a standalone one; errors name the field
    under `where`."""
    if not isinstance(c.image, str) or not c.image.strip():
        raise _bad(f"{where}.image", "an image is required (e.g. busybox:1)")
    for name in ("command", "args", "env"):
        value = getattr(c, name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _bad(f"{where}.{name}", "must be a list of strings")
    for i, e in enumerate(c.env):
        if "=" not in e or e.startswith("="):
            raise _bad(f"{where}.env[{i}]", f"{e!r} is not NAME=VALUE")
    try:
        signal.Signals[c.stop_signal if c.stop_signal.startswith("SIG") else "SIG" + c.stop_signal]
    except KeyError:
        raise _bad(f"{where}.stop_signal", f"unknown signal {c.stop_signal!r}") from None
    if not isinstance(c.stop_grace_period, (int, float)) or c.stop_grace_period < 0:
        raise _bad(f"{where}.stop_grace_period", "must be a duration >= 0")
    if c.healthcheck is not None:
        _validate_healthcheck(c.healthcheck, f"{where}.healthcheck")
    for i, m in enumerate(c.mounts):
        at = f"{where}.mounts[{i}]"
        if m.type not in _MOUNT_TYPES:
            raise _bad(f"{at}.type", f"unknown mount type {m.type!r}: one of {', '.join(_MOUNT_TYPES)}")
        if not m.target.startswith("/"):
            raise _bad(f"{at}.target", f"{m.target!r} must be an absolute path in the container")
        if m.type == "bind" and not m.source.startswith("/"):
            raise _bad(f"{at}.source", "a bind mount needs an absolute host path as source")
        if m.type == "volume" and m.source and not _NAME.match(m.source):
            raise _bad(f"{at}.source", f"invalid volume name {m.source!r}")


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
        value = getattr(hc, name)
        if not isinstance(value, (int, float)) or value < 0:
            raise _bad(f"{where}.{name}", "must be a duration >= 0 (0: the image's, else Docker's default)")
        if 0 < value < 0.001:
            raise _bad(f"{where}.{name}", "must be at least 1ms")
    if not isinstance(hc.retries, int) or hc.retries < 0:
        raise _bad(f"{where}.retries", "must be an integer >= 0 (0: the image's, else 3)")
