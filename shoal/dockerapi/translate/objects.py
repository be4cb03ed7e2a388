"""Secrets, configs and networks: shoal's objects as Docker's JSON, and Docker's create
bodies as shoal's."""
from __future__ import annotations

import base64
import re
from typing import Any

from common.model import Network
from shoal.dockerapi.translate.reader import Obj, bad
from shoal.dockerapi.translate.values import meta, rfc3339


def data_object(obj: Any, shows_data: bool) -> dict:
    """Docker's swarm.Secret or swarm.Config: a secret's data never leaves the managers."""
    spec: dict = {"Name": obj.spec.name, "Labels": dict(obj.spec.labels)}
    if shows_data:
        spec["Data"] = base64.b64encode(obj.spec.data).decode("ascii")
    return {**meta(obj), "Spec": spec}


def data_object_spec(body: Any) -> dict:
    """Docker's SecretSpec / ConfigSpec as shoal's create (or update) body."""
    top = Obj(body)
    out: dict = {"name": top.str("Name"), "labels": top.str_map("Labels")}
    if top.has("Data"):
        out["data"] = top.str("Data")
    else:
        top.take("Data")
    top.refuse("Driver", "secrets are kept by the managers, encrypted in their raft log")
    top.refuse("Templating", "the data is mounted as it is")
    top.done()
    return out


_OBJECT_FIELDS = {"subnet": "IPAM.Config.Subnet", "gateway": "IPAM.Config.Gateway"}


def object_path(path: str) -> str:
    """shoal's field path of a secret, config or network spec in Docker's spelling (`data` as
    `Data`, `labels.k` as `Labels.k`, `subnet` as `IPAM.Config.Subnet`), for the errors of
    shoal's checks."""
    head, dot, rest = path.partition(".")
    name = _OBJECT_FIELDS.get(head)
    if name is None:
        match = re.fullmatch(r"ipam(\[\d+\])", head)
        name = f"IPAM.Config{match.group(1)}" if match else head[:1].upper() + head[1:]
        rest = ".".join(p[:1].upper() + p[1:] for p in rest.split(".")) if match else rest
    return name + dot + rest


def network(net: Network, services: list[str]) -> dict:
    """Docker's NetworkResource of a swarm-scoped overlay (`services`: names using it)."""
    ipam = [c for c in ([{"Subnet": net.subnet, "Gateway": net.gateway}] if net.subnet else [])]
    return {
        "Name": net.spec.name, "Id": net.id, "Created": rfc3339(net.meta.created_at),
        "Scope": "swarm", "Driver": net.spec.driver, "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None, "Config": ipam},
        "Internal": False, "Attachable": net.spec.attachable, "Ingress": net.spec.ingress,
        "ConfigFrom": {"Network": ""}, "ConfigOnly": False, "Containers": {},
        "Options": {"com.docker.network.driver.overlay.vxlanid_list": str(net.vni)},
        "Labels": dict(net.spec.labels),
    }


def network_spec(body: Any) -> dict:
    """Docker's NetworkCreateRequest as shoal's network spec: overlays in the swarm only."""
    top = Obj(body)
    out: dict = {"name": top.str("Name"), "labels": top.str_map("Labels"),
                 "attachable": top.bool("Attachable"), "ingress": top.bool("Ingress")}
    driver = top.str("Driver")
    if driver != "overlay":
        raise bad("Driver", f"{driver or 'bridge'!r}: shoal's networks span the swarm and use "
                            "the overlay driver (docker network create -d overlay)")
    out["driver"] = driver
    scope = top.str("Scope")
    if scope not in ("", "swarm"):
        raise bad("Scope", f"{scope!r}: overlay networks are swarm-scoped")
    top.bool("CheckDuplicate")   # names are always unique in a swarm
    top.refuse("Internal", "overlay networks are not cut off from the outside")
    top.refuse("EnableIPv6", "overlay networks are IPv4")
    top.refuse("EnableIPv4", "overlay networks are always IPv4", allowed=(True,))
    top.refuse("ConfigOnly", "no configuration-only networks")
    top.refuse("ConfigFrom", "no configuration-only networks", allowed=({"Network": ""},))
    top.refuse("Options", "overlay networks take no driver options")
    ipam = top.obj("IPAM")
    if ipam is not None:
        driver = ipam.str("Driver")
        if driver not in ("", "default"):
            raise bad(ipam.at("Driver"), f"{driver!r}: only the default IPAM driver")
        ipam.refuse("Options", "the default IPAM driver takes no options")
        configs = []
        for c in ipam.objs("Config"):
            configs.append({"subnet": c.str("Subnet"), "gateway": c.str("Gateway")})
            c.refuse("IPRange", "tasks take addresses from the whole subnet")
            c.refuse("AuxiliaryAddresses", "no reserved auxiliary addresses")
            c.done()
        ipam.done()
        out["ipam"] = configs
    top.done()
    return out
