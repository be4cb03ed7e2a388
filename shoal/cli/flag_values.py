"""Values of the flags that services, containers and networks share: key=value lists, --mount
and --publish, as docker writes them."""
from __future__ import annotations

import click


def parse_kv_list(text: str, what: str) -> dict:
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            if what == "mount" and key in ("readonly", "ro"):
                out["readonly"] = "true"
                continue
            raise click.BadParameter(f"{part!r} in {text!r}: expected key=value pairs separated by commas")
        out[key.strip()] = value.strip()
    return out


def parse_mount(text: str) -> dict:
    kv = parse_kv_list(text, "mount")
    known = {"type", "source", "src", "target", "destination", "dst", "readonly", "ro"}
    unknown = set(kv) - known
    if unknown:
        raise click.BadParameter(f"unknown mount option(s) {', '.join(sorted(unknown))} in {text!r}")
    target = kv.get("target") or kv.get("destination") or kv.get("dst")
    if not target:
        raise click.BadParameter(f"mount {text!r} needs target=PATH")
    ro = (kv.get("readonly") or kv.get("ro") or "false").lower() in ("1", "true", "yes")
    return {"type": kv.get("type", "volume"), "source": kv.get("source") or kv.get("src") or "",
            "target": target, "read_only": ro}


def parse_publish(text: str) -> dict:
    if "=" in text:
        kv = parse_kv_list(text, "publish")
        unknown = set(kv) - {"published", "target", "protocol", "mode"}
        if unknown:
            raise click.BadParameter(f"unknown publish option(s) {', '.join(sorted(unknown))} in {text!r}")
        if "target" not in kv:
            raise click.BadParameter(f"--publish {text!r} needs target=PORT")
        published, target = kv.get("published", "0"), kv["target"]
        protocol, mode = kv.get("protocol", "tcp"), kv.get("mode", "ingress")
    else:
        ports, _, protocol = text.partition("/")
        published, sep, target = ports.partition(":")
        if not sep:
            published, target = "0", published
        protocol = protocol or "tcp"
        mode = "ingress"
    try:
        return {"published_port": int(published), "target_port": int(target), "protocol": protocol,
                "publish_mode": mode}
    except ValueError:
        raise click.BadParameter(f"--publish {text!r}: ports must be numbers (e.g. 8080:80)") from None
