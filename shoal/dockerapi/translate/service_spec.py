"""Docker's swarm.ServiceSpec as shoal's service spec (the plain JSON shoal's own API takes):
the reverse of translate/services.py, with Docker's defaults where a field is left out.

Only shapes and types are checked here; the rules (names, ranges, images, mounts, references)
are shoal's own, applied to the result by manager/specs/services.py on the leader. Their
errors name shoal's field paths; `docker_path` spells them as Docker does.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Optional

from shoal.dockerapi.translate.reader import Obj, bad

UINT32_MAX = (1 << 32) - 1


def service_spec(body: Any) -> dict:
    return read_service_spec(body)[0]


def read_service_spec(body: Any) -> tuple[dict, dict]:
    """shoal's spec, and the spec as Docker keeps it "as the client sent it": Docker's
    spelling of each key, nulls left out."""
    top = Obj(body)
    spec: dict = {"name": top.str("Name"), "labels": top.str_map("Labels")}
    tt = top.obj("TaskTemplate") or Obj({}, "TaskTemplate")
    old_networks = top.objs("Networks")   # API < 1.29 put them on the service
    spec["task_template"] = task_spec(tt, old_networks)
    spec["mode"] = mode(top.obj("Mode"))
    for key, name, default_action in (("UpdateConfig", "update_config", "pause"),
                                      ("RollbackConfig", "rollback_config", "pause")):
        cfg = top.obj(key)
        if cfg is not None:
            spec[name] = update_config(cfg, default_action)
    ep = top.obj("EndpointSpec")
    if ep is not None:
        spec["endpoint_spec"] = endpoint_spec(ep)
    top.done()
    return spec, top.sent


def sent_json(sent: dict, network_id: Callable[[str], Optional[str]]) -> str:
    """The sent spec as dockerd stores it, as JSON text: without a Mode a service is
    replicated with 1 replica, and networks are named by id (dockerd resolves them on the
    way in; `network_id` answers None for an unknown one, which shoal's checks refuse)."""
    out = _without_nulls(sent)
    m = out.setdefault("Mode", {})
    if not m:
        out["Mode"] = m = {"Replicated": {}}
    if "Replicated" in m:
        m["Replicated"].setdefault("Replicas", 1)
    tt = out.get("TaskTemplate") or {}
    for n in tt.get("Networks", []) + out.get("Networks", []):
        if n.get("Target"):
            n["Target"] = network_id(n["Target"]) or n["Target"]
    return json.dumps(out, separators=(",", ":"))


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def task_spec(tt: Obj, old_networks: list[Obj]) -> dict:
    out: dict = {}
    cs = tt.obj("ContainerSpec")
    out["container"] = container_spec(cs or Obj({}, tt.at("ContainerSpec")))
    tt.refuse("PluginSpec", "shoal runs containers only")
    tt.refuse("NetworkAttachmentSpec", "shoal runs containers only")
    tt.refuse("Runtime", "shoal runs containers only", allowed=("container",))
    res = tt.obj("Resources")
    if res is not None:
        out["resources"] = resources(res)
    rp = tt.obj("RestartPolicy")
    if rp is not None:
        out["restart_policy"] = restart_policy(rp)
    pl = tt.obj("Placement")
    if pl is not None:
        out["placement"] = placement(pl)
    networks = tt.objs("Networks") or old_networks
    out["networks"] = [network_attachment(n) for n in networks]
    ld = tt.obj("LogDriver")
    if ld is not None:
        out["log_driver"] = {"name": ld.str("Name"), "options": ld.str_map("Options")}
        ld.done()
    out["force_update"] = tt.int("ForceUpdate")
    tt.done()
    return out


def container_spec(c: Obj) -> dict:
    out: dict = {
        "image": c.str("Image"), "labels": c.str_map("Labels"), "command": c.strs("Command"),
        "args": c.strs("Args"), "hostname": c.str("Hostname"), "env": c.strs("Env"),
        "dir": c.str("Dir"), "user": c.str("User"), "groups": c.strs("Groups"),
        "stop_signal": c.str("StopSignal") or "SIGTERM",
        "stop_grace_period": c.seconds("StopGracePeriod", 10.0),
        "tty": c.bool("TTY"), "open_stdin": c.bool("OpenStdin"), "read_only": c.bool("ReadOnly"),
        "init": c.bool("Init"),
        "hosts": c.strs("Hosts"), "sysctls": c.str_map("Sysctls"),
        "cap_add": c.strs("CapabilityAdd"), "cap_drop": c.strs("CapabilityDrop"),
    }
    out["mounts"] = [mount(m) for m in c.objs("Mounts")]
    out["secrets"] = [file_reference(r, "Secret") for r in c.objs("Secrets")]
    out["configs"] = [file_reference(r, "Config") for r in c.objs("Configs")]
    hc = c.obj("Healthcheck")
    if hc is not None:
        out["healthcheck"] = {"test": hc.strs("Test"), "interval": hc.seconds("Interval", 0.0),
                              "timeout": hc.seconds("Timeout", 0.0),
                              "start_period": hc.seconds("StartPeriod", 0.0),
                              "retries": hc.int("Retries")}
        hc.refuse("StartInterval", "health checks run at Interval from the start")
        hc.done()
    dns = c.obj("DNSConfig")
    if dns is not None:
        conf = {"nameservers": dns.strs("Nameservers"), "search": dns.strs("Search"),
                "options": dns.strs("Options")}
        dns.done()
        if any(conf.values()):
            out["dns_config"] = conf
    ulimits = []
    for u in c.objs("Ulimits"):
        ulimits.append({"name": u.str("Name"), "soft": u.int("Soft"), "hard": u.int("Hard")})
        u.done()
    out["ulimits"] = ulimits
    c.refuse("Privileges", "no credential specs, SELinux or AppArmor profiles, seccomp or "
             "no-new-privileges settings per service")
    c.refuse("Isolation", "Linux containers have the default isolation only",
             allowed=("default",))
    c.refuse("OomScoreAdj", "tasks keep the runtime's OOM score")
    c.refuse("Devices", "no devices are passed into tasks")
    c.refuse("Capabilities", "use CapabilityAdd and CapabilityDrop")
    c.done()
    return out


def mount(m: Obj) -> dict:
    out: dict = {"type": m.str("Type") or "volume", "source": m.str("Source"),
                 "target": m.str("Target"), "read_only": m.bool("ReadOnly")}
    m.refuse("Consistency", "mounts are always consistent on Linux",
             allowed=("default", "consistent"))
    m.refuse("BindOptions", "bind mounts use the default propagation (rprivate)")
    m.refuse("ClusterOptions", "no cluster volumes")
    vo = m.obj("VolumeOptions")
    if vo is not None:
        opts: dict = {"no_copy": vo.bool("NoCopy"), "labels": vo.str_map("Labels")}
        dc = vo.obj("DriverConfig")
        if dc is not None:
            opts["driver"] = dc.str("Name") or "local"
            opts["driver_opts"] = dc.str_map("Options")
            dc.done()
        vo.refuse("Subpath", "volumes are mounted whole")
        vo.done()
        out["volume_options"] = opts
    to = m.obj("TmpfsOptions")
    if to is not None:
        out["tmpfs_options"] = {"size_bytes": to.int("SizeBytes"), "mode": to.int("Mode")}
        to.refuse("Options", "tmpfs mounts take SizeBytes and Mode only")
        to.done()
    m.done()
    return out


def file_reference(r: Obj, kind: str) -> dict:
    noun = kind.lower()
    out: dict = {f"{noun}_id": r.str(f"{kind}ID"), f"{noun}_name": r.str(f"{kind}Name")}
    f = r.obj("File")
    if f is not None:
        out.update(target=f.str("Name"), uid=f.str("UID") or "0", gid=f.str("GID") or "0",
                   mode=f.int("Mode", 0o444, hi=UINT32_MAX))
        f.done()
    if kind == "Config":
        r.refuse("Runtime", "a config is always a file in the container")
    r.done()
    return out


def resources(res: Obj) -> dict:
    out: dict = {}
    limits = res.obj("Limits")
    if limits is not None:
        out["limits"] = {"nano_cpus": limits.int("NanoCPUs"),
                         "memory_bytes": limits.int("MemoryBytes")}
        out["pids_limit"] = limits.int("Pids")
        limits.done()
    reservations = res.obj("Reservations")
    if reservations is not None:
        out["reservations"] = {"nano_cpus": reservations.int("NanoCPUs"),
                               "memory_bytes": reservations.int("MemoryBytes")}
        reservations.refuse("GenericResources", "no generic resources on shoal's nodes")
        reservations.done()
    res.done()
    return out


def restart_policy(rp: Obj) -> dict:
    out = {"condition": rp.str("Condition") or "any", "delay": rp.seconds("Delay", 5.0),
           "max_attempts": rp.int("MaxAttempts"), "window": rp.seconds("Window", 0.0)}
    rp.done()
    return out


def placement(pl: Obj) -> dict:
    prefs = []
    for p in pl.objs("Preferences"):
        spread = p.obj("Spread")
        if spread is None:
            raise bad(p.path, "a placement preference is {\"Spread\": {\"SpreadDescriptor\": "
                              "...}}, the one kind Docker has")
        prefs.append(f"spread={spread.str('SpreadDescriptor')}")
        spread.done()
        p.done()
    platforms = []
    for p in pl.objs("Platforms"):
        platforms.append({"os": p.str("OS"), "architecture": p.str("Architecture")})
        p.done()
    out = {"constraints": pl.strs("Constraints"), "preferences": prefs,
           "max_replicas": pl.int("MaxReplicas"), "platforms": platforms}
    pl.done()
    return out


def network_attachment(n: Obj) -> dict:
    out = {"target": n.str("Target"), "aliases": n.strs("Aliases")}
    n.refuse("DriverOpts", "overlay attachments take no driver options")
    n.done()
    return out


def mode(m: Obj | None) -> dict:
    """Docker's one-of Mode; without one (or without Replicas) a service has 1 replica."""
    if m is None:
        return {"mode": "replicated", "replicas": 1}
    chosen = [k for k in ("Replicated", "Global", "ReplicatedJob", "GlobalJob") if m.has(k)]
    if len(chosen) > 1:
        raise bad(m.path or "Mode", f"give one of Replicated, Global, ReplicatedJob or "
                                    f"GlobalJob, not {' and '.join(chosen)}")
    out: dict = {"mode": "replicated", "replicas": 1}
    if chosen == ["Replicated"]:
        r = m.obj("Replicated")
        out["replicas"] = r.int("Replicas", 1)
        r.done()
    elif chosen == ["Global"]:
        Obj(m.take("Global"), m.at("Global")).done()
        out = {"mode": "global"}
    elif chosen == ["ReplicatedJob"]:
        j = m.obj("ReplicatedJob")
        # dockerd's defaults: one at a time, as many completions as run at once.
        concurrent = j.int("MaxConcurrent") or 1
        total = j.int("TotalCompletions") or concurrent
        j.done()
        out = {"mode": "replicated-job", "replicas": total, "max_concurrent": concurrent,
               "total_completions": total}
    elif chosen == ["GlobalJob"]:
        Obj(m.take("GlobalJob"), m.at("GlobalJob")).done()
        out = {"mode": "global-job"}
    m.done()
    return out


def update_config(cfg: Obj, default_action: str) -> dict:
    """Go's zero values for what is left out of a given config, as dockerd reads it (a
    Parallelism of 0 is all at once), with "" taking Docker's default action and order."""
    out = {"parallelism": cfg.int("Parallelism"), "delay": cfg.seconds("Delay", 0.0),
           "failure_action": cfg.str("FailureAction") or default_action,
           "monitor": cfg.seconds("Monitor", 0.0),
           "max_failure_ratio": cfg.float("MaxFailureRatio"),
           "order": cfg.str("Order") or "stop-first"}
    cfg.done()
    return out


def endpoint_spec(ep: Obj) -> dict:
    ports = []
    for p in ep.objs("Ports"):
        ports.append({"name": p.str("Name"), "protocol": p.str("Protocol") or "tcp",
                      "target_port": p.int("TargetPort", hi=UINT32_MAX),
                      "published_port": p.int("PublishedPort", hi=UINT32_MAX),
                      "publish_mode": p.str("PublishMode") or "ingress"})
        p.done()
    out = {"mode": ep.str("Mode") or "vip", "ports": ports}
    ep.done()
    return out


# -- shoal's field paths in Docker's spelling, for the errors of shoal's checks -----------------
_SEGMENTS = {
    "task_template": "TaskTemplate", "container": "ContainerSpec", "nano_cpus": "NanoCPUs",
    "pids_limit": "Limits.Pids", "tty": "TTY", "cap_add": "CapabilityAdd",
    "cap_drop": "CapabilityDrop", "dns_config": "DNSConfig", "secret_id": "SecretID",
    "config_id": "ConfigID", "target_port": "TargetPort", "uid": "File.UID", "gid": "File.GID",
    "healthcheck": "Healthcheck", "driver": "DriverConfig.Name",
    "driver_opts": "DriverConfig.Options",
}
_SEGMENT = re.compile(r"([a-z_]+)(\[\d+\])?")


def docker_path(path: str) -> str:
    """`task_template.container.image` as `TaskTemplate.ContainerSpec.Image`."""
    if path.startswith("placement."):
        # the scheduler's constraint parser names the placement without its task template
        path = "task_template." + path
    parts = path.split(".")
    out = []
    for i, part in enumerate(parts):
        m = _SEGMENT.fullmatch(part)
        if m is None:
            out.append(part)
            continue
        word, index = m.group(1), m.group(2) or ""
        if word in ("replicas", "max_concurrent", "total_completions") and out == ["Mode"]:
            name = {"replicas": "Replicated.Replicas", "max_concurrent": "ReplicatedJob."
                    "MaxConcurrent", "total_completions": "ReplicatedJob.TotalCompletions"}[word]
        elif word == "mode" and i == 0:
            name = "Mode"
        elif word == "target" and len(out) >= 1 and out[-1].startswith(("Secrets", "Configs")):
            name = "File.Name"
        elif word == "mode" and len(out) >= 1 and out[-1].startswith(("Secrets", "Configs")):
            name = "File.Mode"
        else:
            name = _SEGMENTS.get(word) or "".join(w.capitalize() for w in word.split("_"))
        out.append(name + index)
    return ".".join(out)
