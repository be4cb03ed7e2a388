"""A shoal Service (and its TaskSpec, shared with tasks) as Docker's swarm.Service."""
from __future__ import annotations

from typing import Optional

from common.model import (ConfigReference, ContainerSpec, EndpointSpec, Mount, PortConfig,
                          SecretReference, Service, ServiceMode, ServiceSpec, TaskSpec,
                          UpdateConfig)
from shoal.dockerapi.translate.values import drop_empty, meta, nanos, rfc3339


def mode(m: ServiceMode) -> dict:
    """Docker's one-of Mode object."""
    if m.mode == "global":
        return {"Global": {}}
    if m.mode == "global-job":
        return {"GlobalJob": {}}
    if m.mode == "replicated-job":
        # shoal's reading of a job (manager/orchestrator): completions default to the replica
        # count, and concurrency to the completions.
        total = m.total_completions or m.replicas
        return {"ReplicatedJob": {"MaxConcurrent": m.max_concurrent or total,
                                  "TotalCompletions": total}}
    return {"Replicated": {"Replicas": m.replicas}}


def mode_name(m: ServiceMode) -> str:
    """The value of the `mode` filter (Docker's names are shoal's)."""
    return m.mode


def _mount(m: Mount) -> dict:
    out: dict = drop_empty({"Type": m.type, "Source": m.source, "Target": m.target})
    if m.read_only:
        out["ReadOnly"] = True
    if m.volume_options is not None:
        vo = m.volume_options
        out["VolumeOptions"] = drop_empty({
            "NoCopy": vo.no_copy or None, "Labels": dict(vo.labels),
            "DriverConfig": drop_empty({"Name": vo.driver, "Options": dict(vo.driver_opts)}),
        })
    if m.tmpfs_options is not None:
        to = m.tmpfs_options
        out["TmpfsOptions"] = drop_empty({"SizeBytes": to.size_bytes or None,
                                          "Mode": to.mode or None})
    return out


def _file_ref(ref: SecretReference | ConfigReference) -> dict:
    return {"Name": ref.target, "UID": ref.uid, "GID": ref.gid, "Mode": ref.mode}


def container_spec(c: ContainerSpec) -> dict:
    out = drop_empty({
        "Image": c.image, "Labels": dict(c.labels), "Command": list(c.command),
        "Args": list(c.args), "Hostname": c.hostname, "Env": list(c.env), "Dir": c.dir,
        "User": c.user, "Groups": list(c.groups),
        "Mounts": [_mount(m) for m in c.mounts],
        "StopSignal": c.stop_signal,
        "Hosts": list(c.hosts),
        "Secrets": [{"File": _file_ref(s), "SecretID": s.secret_id, "SecretName": s.secret_name}
                    for s in c.secrets],
        "Configs": [{"File": _file_ref(r), "ConfigID": r.config_id, "ConfigName": r.config_name}
                    for r in c.configs],
        "Sysctls": dict(c.sysctls),
        "CapabilityAdd": list(c.cap_add), "CapabilityDrop": list(c.cap_drop),
        "Ulimits": [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in c.ulimits],
    })
    out["StopGracePeriod"] = nanos(c.stop_grace_period)
    for key, value in (("TTY", c.tty), ("OpenStdin", c.open_stdin), ("ReadOnly", c.read_only)):
        if value:
            out[key] = True
    out["Init"] = c.init
    if c.healthcheck is not None:
        h = c.healthcheck
        out["Healthcheck"] = drop_empty({
            "Test": list(h.test), "Interval": nanos(h.interval) or None,
            "Timeout": nanos(h.timeout) or None, "StartPeriod": nanos(h.start_period) or None,
            "Retries": h.retries or None})
    if c.dns_config is not None:
        out["DNSConfig"] = drop_empty({"Nameservers": list(c.dns_config.nameservers),
                                       "Search": list(c.dns_config.search),
                                       "Options": list(c.dns_config.options)})
    out["Isolation"] = "default"
    return out


def _preference(text: str) -> dict:
    strategy, _, descriptor = text.partition("=")
    return {"Spread": {"SpreadDescriptor": descriptor}} if strategy.lower() == "spread" else {}


def task_spec(t: TaskSpec) -> dict:
    r = t.resources
    limits = drop_empty({"NanoCPUs": r.limits.nano_cpus or None,
                         "MemoryBytes": r.limits.memory_bytes or None,
                         "Pids": r.pids_limit or None})
    reservations = drop_empty({"NanoCPUs": r.reservations.nano_cpus or None,
                               "MemoryBytes": r.reservations.memory_bytes or None})
    out: dict = {
        "ContainerSpec": container_spec(t.container),
        "Resources": drop_empty({"Limits": limits, "Reservations": reservations}),
        "RestartPolicy": {"Condition": t.restart_policy.condition,
                          "Delay": nanos(t.restart_policy.delay),
                          "MaxAttempts": t.restart_policy.max_attempts,
                          "Window": nanos(t.restart_policy.window)},
        "Placement": drop_empty({
            "Constraints": list(t.placement.constraints),
            "Preferences": [_preference(p) for p in t.placement.preferences],
            "MaxReplicas": t.placement.max_replicas or None,
            "Platforms": [{"Architecture": p.architecture, "OS": p.os}
                          for p in t.placement.platforms] or None}),
        "ForceUpdate": t.force_update,
        "Runtime": "container",
    }
    if t.networks:
        out["Networks"] = [drop_empty({"Target": n.target, "Aliases": list(n.aliases)})
                           for n in t.networks]
    if t.log_driver is not None:
        out["LogDriver"] = drop_empty({"Name": t.log_driver.name,
                                       "Options": dict(t.log_driver.options)})
    return out


def _update_config(u: UpdateConfig) -> dict:
    return {"Parallelism": u.parallelism, "Delay": nanos(u.delay),
            "FailureAction": u.failure_action, "Monitor": nanos(u.monitor),
            "MaxFailureRatio": u.max_failure_ratio, "Order": u.order}


def port(p: PortConfig) -> dict:
    return drop_empty({"Name": p.name, "Protocol": p.protocol, "TargetPort": p.target_port,
                       "PublishedPort": p.published_port or None,
                       "PublishMode": p.publish_mode})


def endpoint_spec(e: EndpointSpec) -> dict:
    return drop_empty({"Mode": e.mode, "Ports": [port(p) for p in e.ports]})


def service_spec(s: ServiceSpec) -> dict:
    return {
        "Name": s.name,
        "Labels": dict(s.labels),
        "TaskTemplate": task_spec(s.task_template),
        "Mode": mode(s.mode),
        "UpdateConfig": _update_config(s.update_config),
        "RollbackConfig": _update_config(s.rollback_config),
        "EndpointSpec": endpoint_spec(s.endpoint_spec),
    }


def service(svc: Service, status: Optional[dict] = None,
            sent: tuple[Optional[dict], Optional[dict]] = (None, None)) -> dict:
    """`status`: controlapi's replicas_status ({running, desired, completed}) for
    `status=true`, None to leave ServiceStatus out as Docker does without it. `sent`: the
    spec and previous spec as the client sent them, where they are to be shown; the
    translation of shoal's spec otherwise."""
    spec, previous = sent
    out = {**meta(svc), "Spec": spec if spec is not None else service_spec(svc.spec)}
    if svc.previous_spec is not None:
        out["PreviousSpec"] = (previous if previous is not None
                               else service_spec(svc.previous_spec))
    out["Endpoint"] = drop_empty({
        "Spec": endpoint_spec(svc.spec.endpoint_spec),
        "Ports": [port(p) for p in svc.endpoint.ports],
        "VirtualIPs": [{"NetworkID": v.network_id, "Addr": v.addr}
                       for v in svc.endpoint.virtual_ips]})
    us = svc.update_status
    if us.state:
        out["UpdateStatus"] = drop_empty({
            "State": us.state,
            "StartedAt": rfc3339(us.started_at) if us.started_at else None,
            "CompletedAt": rfc3339(us.completed_at) if us.completed_at else None,
            "Message": us.message})
    if status is not None:
        out["ServiceStatus"] = {"RunningTasks": status["running"],
                                "DesiredTasks": status["desired"],
                                "CompletedTasks": status["completed"]}
    return out
