"""Networking flags of `service create` and `service update`: --network, --endpoint-mode,
--publish-add/--publish-rm and --network-add/--network-rm."""
from __future__ import annotations

import click

from shoal.cli.flag_values import parse_kv_list, parse_publish


def parse_network_option(text: str) -> dict:
    """`--network NAME` or `--network name=NAME,alias=A,alias=B`."""
    text = text.strip()
    if "=" not in text:
        if not text:
            raise click.BadParameter("--network needs a network name")
        return {"target": text, "aliases": []}
    target, aliases = "", []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("name", "target", "alias"):
            raise click.BadParameter(f"{part!r} in --network {text!r}: use name=NET[,alias=NAME]")
        if key.strip() == "alias":
            aliases.append(value.strip())
        else:
            target = value.strip()
    if not target:
        raise click.BadParameter(f"--network {text!r} needs name=NET")
    return {"target": target, "aliases": aliases}


def network_create_options(fn):
    fn = click.option("--endpoint-mode", type=click.Choice(["vip", "dnsrr"]), default="vip",
                      show_default=True, help="Endpoint mode: a virtual IP, or DNS round robin")(fn)
    fn = click.option("--network", "network", multiple=True,
                      help="Network to attach to: NAME or name=NAME,alias=ALIAS")(fn)
    return fn


def apply_network_create(spec: dict, o: dict) -> None:
    spec["task_template"]["networks"] = [parse_network_option(n) for n in o.get("network") or ()]
    spec.setdefault("endpoint_spec", {})["mode"] = o.get("endpoint_mode") or "vip"


def network_update_options(fn):
    for option in reversed([
        click.option("--network-add", multiple=True, help="Add a network"),
        click.option("--network-rm", multiple=True, help="Remove a network (name or id)"),
        click.option("--publish-add", multiple=True, help="Add or update a published port"),
        click.option("--publish-rm", multiple=True,
                     help="Remove a published port: PUBLISHED[/PROTOCOL] or its full form"),
        click.option("--endpoint-mode", type=click.Choice(["vip", "dnsrr"]), help="Endpoint mode"),
    ]):
        fn = option(fn)
    return fn


def _port_key(text: str) -> tuple[int, str]:
    """What --publish-rm names: the published port and protocol (target for `target=` forms)."""
    if "=" in text:
        kv = parse_kv_list(text, "publish-rm")
        port = kv.get("published") or kv.get("target") or ""
        proto = kv.get("protocol", "tcp")
    else:
        ports, _, proto = text.partition("/")
        port = ports.split(":")[0]
        proto = proto or "tcp"
    if not port.isdigit():
        raise click.BadParameter(f"{text!r}: expected a port such as 8080 or 8080/udp",
                                 param_hint="--publish-rm")
    return int(port), proto


def apply_network_update(spec: dict, svc: dict, o: dict, resolve_network) -> None:
    """Edit the spec in place; `resolve_network(name)` returns the network's id (the spec
    holds ids once the manager resolved them)."""
    tt = spec["task_template"]
    nets = list(tt.get("networks") or [])
    for ref in o.get("network_rm") or ():
        net_id = resolve_network(ref)
        kept = [n for n in nets if n["target"] not in (ref, net_id)]
        if len(kept) == len(nets):
            raise click.BadParameter(f"the service is not attached to network {ref!r}",
                                     param_hint="--network-rm")
        nets = kept
    for text in o.get("network_add") or ():
        new = parse_network_option(text)
        net_id = resolve_network(new["target"])
        if any(n["target"] in (new["target"], net_id) for n in nets):
            raise click.BadParameter(f"the service is already attached to network "
                                     f"{new['target']!r}", param_hint="--network-add")
        nets.append(new)
    tt["networks"] = nets
    ep = spec.setdefault("endpoint_spec", {"mode": "vip", "ports": []})
    ports = list(ep.get("ports") or [])
    # The published ports the manager chose for "any port" entries stay as they were.
    resolved = {(p["target_port"], p["protocol"]): p["published_port"]
                for p in (svc.get("endpoint") or {}).get("ports") or []}
    for text in o.get("publish_rm") or ():
        port, proto = _port_key(text)
        kept = [p for p in ports if not (
            p["protocol"] == proto and port in (p["published_port"] or
                                                resolved.get((p["target_port"], p["protocol"])),
                                                p["target_port"] if "target=" in text else -1))]
        if len(kept) == len(ports):
            raise click.BadParameter(f"the service publishes no port {port}/{proto}",
                                     param_hint="--publish-rm")
        ports = kept
    for text in o.get("publish_add") or ():
        new = parse_publish(text)
        ports = [p for p in ports if not (p["protocol"] == new["protocol"] and (
            (new["published_port"] and p["published_port"] == new["published_port"])
            or p["target_port"] == new["target_port"]))]
        ports.append(new)
    ep["ports"] = ports
    if o.get("endpoint_mode"):
        ep["mode"] = o["endpoint_mode"]
