"""Compose's short forms (`"8080:80/udp"`, `"data:/var/lib/db:ro"`, `"mysecret"`) turned into
its long forms, so that merging and converting see one shape."""
from __future__ import annotations

import re
from typing import Any

_PORT = re.compile(r"^(?:(?:(?P<ip>\[[0-9a-fA-F:.]+\]|[0-9.]+):)?(?P<published>\d*(?:-\d+)?):)?"
                   r"(?P<target>\d+(?:-\d+)?)(?:/(?P<protocol>[a-z]+))?$")


def _range(text: str, what: str) -> list[int]:
    first, _, last = text.partition("-")
    lo, hi = int(first), int(last or first)
    if not (0 < lo <= hi <= 65535) if what == "target" else not (0 <= lo <= hi <= 65535):
        raise ValueError(f"{what} port range {text!r} is not within 1-65535, low to high")
    return list(range(lo, hi + 1))


def port_long(value: Any) -> list[dict]:
    """One short port (a string or a bare number) as long-form ports; a range gives several."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("a port is a string like \"8080:80\" or a mapping with target and "
                         "published")
    text = str(value)
    match = _PORT.match(text)
    if not match:
        raise ValueError(f"invalid port {text!r}: expected [[HOST_IP:]PUBLISHED:]TARGET[/PROTOCOL], "
                         "e.g. \"8080:80\" or \"53:53/udp\"")
    targets = _range(match.group("target"), "target")
    published = _range(match.group("published"), "published") if match.group("published") else []
    if published and len(published) != len(targets):
        raise ValueError(f"invalid port {text!r}: the published range and the target range "
                         "differ in length")
    out = []
    for i, target in enumerate(targets):
        port: dict[str, Any] = {"target": target, "protocol": match.group("protocol") or "tcp",
                                "mode": "ingress"}
        if published:
            port["published"] = published[i]
        if match.group("ip"):
            port["host_ip"] = match.group("ip").strip("[]")
        out.append(port)
    return out


def port_key(port: dict) -> tuple:
    """What makes two ports the same when files merge (Compose: ip, target, published, protocol)."""
    return (port.get("host_ip", ""), str(port.get("target")), str(port.get("published", "")),
            port.get("protocol", "tcp"))


def volume_long(value: Any) -> dict:
    if not isinstance(value, str):
        raise ValueError("a volume is a string like \"data:/var/lib/data\" or a mapping with "
                         "type, source and target")
    parts = value.split(":")
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0]}  # anonymous
    if len(parts) > 3:
        raise ValueError(f"invalid volume {value!r}: expected SOURCE:TARGET[:MODE]")
    source, target = parts[0], parts[1]
    out: dict[str, Any] = {"type": "bind" if source.startswith(("/", ".", "~")) else "volume",
                           "source": source, "target": target}
    if len(parts) == 3:
        for option in parts[2].split(","):
            if option == "ro":
                out["read_only"] = True
            elif option == "rw":
                out["read_only"] = False
            elif option == "nocopy":
                out.setdefault("volume", {})["nocopy"] = True
            elif option in ("z", "Z", "cached", "delegated", "consistent"):
                pass  # SELinux relabelling and macOS consistency: nothing to do on this kernel
            elif option in ("shared", "slave", "private", "rshared", "rslave", "rprivate"):
                out.setdefault("bind", {})["propagation"] = option
            else:
                raise ValueError(f"invalid volume {value!r}: unknown mode {option!r} (ro, rw, "
                                 "nocopy, or a bind propagation)")
    return out


def reference_long(value: Any) -> dict:
    """A service's secret or config: `name` or the long mapping."""
    if isinstance(value, str):
        return {"source": value}
    return value
