"""Values of the flags that services, containers and networks share, as the docker CLI writes
them: key=value lists, --mount and --publish, ulimits, sysctls, extra hosts, DNS settings,
capabilities, placement preferences, environment variables and env files.

Each parser raises click.BadParameter without a flag name, so a caller outside click's option
processing still gets a usage error; `flag_type` makes a parser a click type, whose errors then
name the flag the value came from.
"""
from __future__ import annotations

import csv
import ipaddress
import json
import os
import re
import shlex
from typing import Any, Callable

import click

from common.units import parse_cpus, parse_size

INT64_MAX = 2 ** 63 - 1
# setrlimit's resources as docker names them ("as" is left out there too: it breaks the init)
ULIMIT_NAMES = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile",
                "nproc", "rss", "rtprio", "rttime", "sigpending", "stack")
ALL_CAPABILITIES = "ALL"
RESET_CAPABILITIES = "RESET"   # update only: forget what the service added (or dropped) so far
_LIMIT = re.compile(r"-?[0-9]+")
_CAPABILITY = re.compile(r"CAP_[A-Z0-9_]+")
_DNS_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?")
_MOUNT_TYPES = ("bind", "volume", "tmpfs")
_MOUNT_FLAGS = ("readonly", "ro", "volume-nocopy")   # the options that may stand without a value


def quoted(text: str) -> str:
    """How an error shows what the user typed: in double quotes, control characters escaped."""
    return json.dumps(text, ensure_ascii=False)


def expected(form: str, text: str) -> click.BadParameter:
    return click.BadParameter(f"expected {form}, got {quoted(text)}")


def flag_type(parse: Callable[[str], Any], name: str) -> click.ParamType:
    """A click type that converts with `parse`; its errors name the flag."""
    class _Type(click.ParamType):
        def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
            if not isinstance(value, str):
                return value   # a default, or a value converted already
            try:
                return parse(value)
            except click.BadParameter as exc:
                self.fail(exc.message, param, ctx)
            except (ValueError, OverflowError) as exc:
                self.fail(str(exc), param, ctx)
    _Type.name = name
    return _Type()


def _has_space(text: str) -> bool:
    return any(ch.isspace() for ch in text)


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


def parse_key_value(text: str, form: str = "KEY=VALUE", *, empty_value: bool = True) -> tuple[str, str]:
    """KEY=VALUE with a key free of whitespace (labels, sysctls, log and volume options)."""
    key, sep, value = text.partition("=")
    if not sep or not key or _has_space(key) or (not value and not empty_value) or "\x00" in text:
        raise expected(form, text)
    return key, value


def parse_label(text: str) -> tuple[str, str]:
    """docker's labels: KEY or KEY=VALUE (a bare KEY has the empty value)."""
    key, _, value = text.partition("=")
    if not key or _has_space(key) or "\x00" in text:
        raise expected("KEY=VALUE", text)
    return key, value


def parse_sysctl(text: str) -> tuple[str, str]:
    # An empty value could only fail when the container starts, on every node.
    return parse_key_value(text, "KEY=VALUE (e.g. net.core.somaxconn=1024)", empty_value=False)


def parse_log_opt(text: str) -> tuple[str, str]:
    return parse_key_value(text, "KEY=VALUE (e.g. max-size=10m)")


def _parse_limit(text: str, whole: str) -> int:
    if not _LIMIT.fullmatch(text):
        raise expected("NAME=SOFT[:HARD] with whole numbers (e.g. nofile=1024:2048)", whole)
    value = int(text)
    if value < -1 or value > INT64_MAX:
        raise click.BadParameter(f"{quoted(whole)}: a limit is a number from 0 to {INT64_MAX}, "
                                 "or -1 for unlimited")
    return value


def parse_ulimit(text: str) -> dict:
    """`NAME=SOFT[:HARD]`, one value for both when HARD is left out."""
    name, sep, values = text.partition("=")
    if not sep or not name:
        raise expected("NAME=SOFT[:HARD] (e.g. nofile=1024:2048)", text)
    if name not in ULIMIT_NAMES:
        raise click.BadParameter(f"unknown ulimit {quoted(name)} in {quoted(text)}: one of "
                                 f"{', '.join(ULIMIT_NAMES)}")
    parts = values.split(":")
    if len(parts) > 2:
        raise expected("NAME=SOFT[:HARD] (e.g. nofile=1024:2048)", text)
    soft, hard = _parse_limit(parts[0], text), _parse_limit(parts[-1], text)
    if hard != -1 and (soft == -1 or soft > hard):
        raise click.BadParameter(f"{quoted(text)}: the soft limit must not be above the hard one")
    return {"name": name, "soft": soft, "hard": hard}


def _ip(text: str) -> str:
    """The address, canonical; no zone: /etc/hosts and resolv.conf take none."""
    if "%" in text:
        raise ValueError(text)
    return str(ipaddress.ip_address(text))


def parse_extra_host(text: str) -> str:
    """`HOST:IP` (or HOST=IP, the address maybe in brackets) -> the hosts line "IP HOST"."""
    form = "HOST:IP (e.g. db:10.0.0.5)"
    host, sep, ip = text.partition("=")
    if not sep:
        host, sep, ip = text.partition(":")   # the first colon: the address may be IPv6
    if not sep or not host or ":" in host or _has_space(host) or not host.isprintable():
        raise expected(form, text)
    if ip == "host-gateway":
        raise click.BadParameter(f"{quoted(text)}: shoal has no host-gateway address; give the IP")
    if len(ip) > 2 and ip[0] == "[" and ip[-1] == "]":
        ip = ip[1:-1]
    try:
        _ip(ip)
    except ValueError:
        raise expected(form, text) from None
    return f"{ip} {host}"   # the address as written, as docker keeps it


def parse_dns_server(text: str) -> str:
    try:
        return _ip(text.strip())
    except ValueError:
        raise expected("an IP address (e.g. 10.0.0.2)", text) from None


def parse_dns_search(text: str) -> str:
    value = text.strip(" ")
    if value == ".":
        return value   # the empty search list, as resolv.conf writes it
    if not re.search("[a-zA-Z]", value) or not _DOMAIN.fullmatch(value) or len(value) >= 255:
        raise expected("a domain name (e.g. example.com)", text)
    return value


def parse_dns_option(text: str) -> str:
    if not text or _has_space(text) or not text.isprintable():
        raise expected("a resolver option (e.g. ndots:2)", text)
    return text


def parse_group(text: str) -> str:
    if not text or _has_space(text) or not text.isprintable():
        raise expected("a group name or id", text)
    return text


def normalize_capability(text: str) -> str:
    """As docker: upper case, CAP_ added (ALL and RESET stay)."""
    name = text.strip().upper()
    if name in (ALL_CAPABILITIES, RESET_CAPABILITIES) or name.startswith("CAP_"):
        return name
    return "CAP_" + name


def parse_capability(text: str) -> str:
    """Which capabilities exist is the node's business; this only keeps out what cannot be
    one."""
    name = normalize_capability(text)
    if name not in (ALL_CAPABILITIES, RESET_CAPABILITIES) and not _CAPABILITY.fullmatch(name):
        raise expected("a capability (e.g. NET_ADMIN, CAP_SYS_TIME or ALL)", text)
    return name


def parse_placement_pref(text: str) -> str:
    strategy, sep, arg = text.partition("=")
    if not sep or not strategy or not arg.strip():
        raise expected("spread=NODE_LABEL (e.g. spread=node.labels.zone)", text)
    if strategy != "spread":
        raise click.BadParameter(f"{quoted(text)}: unknown strategy {quoted(strategy)}; only "
                                 "spread exists")
    return f"spread={arg.strip()}"


def placement_pref_target(text: str) -> str:
    """What --placement-pref-rm compares: the spread descriptor."""
    return text.partition("=")[2].strip()


def parse_env(text: str) -> str:
    """NAME=VALUE; a bare NAME takes its value from this environment, as docker does. Unset, it
    is refused: the managers take only NAME=VALUE."""
    name, sep, _ = text.partition("=")
    if not name:
        raise expected("NAME=VALUE", text)
    if sep:
        return text
    if name not in os.environ:
        raise click.BadParameter(f"{quoted(name)} is not set in this environment: give NAME=VALUE")
    return f"{name}={os.environ[name]}"


def read_env_file(path: str) -> list[str]:
    """docker's env-file: KEY=VALUE lines taken as they are (no quotes, no expansion), leading
    whitespace dropped, `#` comments and blank lines skipped; a bare KEY takes the value of this
    environment, or is left out when it is unset there."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise click.BadParameter(f"cannot read {quoted(path)}: {exc.strerror or exc}") from None
    out = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        raw = raw.removesuffix(b"\r")
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            line = raw.decode("utf-8").lstrip()
        except UnicodeDecodeError:
            raise click.BadParameter(f"{quoted(path)} line {number}: not valid UTF-8") from None
        if not line or line.startswith("#"):
            continue
        key, sep, _ = line.partition("=")
        if not key or " " in key or "\t" in key:
            raise click.BadParameter(f"{quoted(path)} line {number}: expected KEY=VALUE, got "
                                     f"{quoted(line)}")
        if sep:
            out.append(line)
        elif key in os.environ:
            out.append(f"{key}={os.environ[key]}")
    return out


def merge_env(entries: list[str]) -> list[str]:
    """Later entries win (--env over --env-file), each name once, in the order first given."""
    merged: dict[str, str] = {}
    for entry in entries:
        merged[entry.partition("=")[0]] = entry
    return list(merged.values())


def parse_words(text: str) -> list[str]:
    """--entrypoint and --args: split as a shell would (quotes group words)."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise click.BadParameter(f"{quoted(text)}: {exc}") from None


def _mount_fields(text: str) -> list[str]:
    """docker reads --mount as one CSV record: a field in double quotes may hold commas."""
    if "\n" in text or "\r" in text or "\0" in text:
        raise click.BadParameter(f"mount {quoted(text)}: a line break or NUL cannot be part of it")
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise click.BadParameter(f"mount {quoted(text)}: {exc}") from None
    return rows[0] if rows else []


def _mount_bool(key: str, value: str | None) -> bool:
    if value is None or value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise click.BadParameter(f"{key}={quoted(value)}: expected true, 1, false or 0")


def _mount_size(value: str) -> int:
    try:
        size = parse_size(value)
    except (ValueError, OverflowError):
        size = -1
    if not 0 <= size <= INT64_MAX:
        raise click.BadParameter(f"tmpfs-size={quoted(value)}: expected a size such as 64m")
    return size


def _mount_mode(value: str) -> int:
    if not re.fullmatch("[0-7]+", value) or int(value, 8) > 0o7777:
        raise click.BadParameter(f"tmpfs-mode={quoted(value)}: expected an octal file mode such "
                                 "as 1777")
    return int(value, 8)


def _mount_pairs(text: str) -> list[tuple[str, str | None]]:
    """(key, value) per field, keys in lower case; value None for a bare flag."""
    pairs = []
    for field in _mount_fields(text.strip()):
        key, sep, value = field.partition("=")
        if not key or key.strip() != key:
            raise click.BadParameter(f"{quoted(field)} in mount {quoted(text)}: expected "
                                     "key=value (no blanks around the key)")
        key = key.lower()
        if not sep:
            if key not in _MOUNT_FLAGS:
                raise click.BadParameter(f"{quoted(field)} in mount {quoted(text)}: expected "
                                         "key=value")
            pairs.append((key, None))
            continue
        if not value.strip() or value.strip() != value:
            raise click.BadParameter(f"{quoted(field)} in mount {quoted(text)}: the value is "
                                     "empty or has blanks around it")
        pairs.append((key, value))
    return pairs


def parse_mount(text: str) -> dict:
    """docker's long --mount syntax: type=bind|volume|tmpfs,source=,target=[,readonly] plus the
    volume-* and tmpfs-* options of their types."""
    mount: dict[str, Any] = {"type": "volume", "source": "", "target": "", "read_only": False}
    volume: dict[str, Any] = {}
    tmpfs: dict[str, Any] = {}
    for key, value in _mount_pairs(text):
        v = value or ""
        if key == "type":
            mount["type"] = v.lower()
        elif key in ("source", "src"):
            # docker makes ./relative paths absolute here, where they were meant
            mount["source"] = os.path.abspath(v) if v.startswith(".") else v
        elif key in ("target", "dst", "destination"):
            mount["target"] = v
        elif key in ("readonly", "ro"):
            mount["read_only"] = _mount_bool(key, value)
        elif key == "volume-nocopy":
            volume["no_copy"] = _mount_bool(key, value)
        elif key in ("volume-label", "volume-opt"):
            name, _, val = v.partition("=")
            options = volume.setdefault("labels" if key == "volume-label" else "driver_opts", {})
            if name:   # docker skips an entry without a name, and so does this
                options[name] = val
        elif key == "volume-driver":
            volume["driver"] = v
        elif key == "tmpfs-size":
            tmpfs["size_bytes"] = _mount_size(v)
        elif key == "tmpfs-mode":
            tmpfs["mode"] = _mount_mode(v)
        else:
            raise click.BadParameter(f"unknown mount option {quoted(key)} in {quoted(text)}")
    return _checked_mount(text, mount, volume, tmpfs)


def _checked_mount(text: str, mount: dict, volume: dict, tmpfs: dict) -> dict:
    kind = mount["type"]
    if kind not in _MOUNT_TYPES:
        raise click.BadParameter(f"mount {quoted(text)}: type is bind, volume or tmpfs, not "
                                 f"{quoted(kind)}")
    for options, prefix, owner in ((volume, "volume", "volume"), (tmpfs, "tmpfs", "tmpfs")):
        if options and kind != owner:
            raise click.BadParameter(f"mount {quoted(text)}: {prefix}-* options go with "
                                     f"type={owner}, not type={kind}")
    if not mount["target"]:
        raise click.BadParameter(f"mount {quoted(text)} needs target=PATH")
    if volume:
        mount["volume_options"] = {"labels": {}, "driver": "local", "driver_opts": {},
                                   "no_copy": False, **volume}
    if tmpfs:
        mount["tmpfs_options"] = {"size_bytes": 0, "mode": 0, **tmpfs}
    return mount


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


SIZE = flag_type(parse_size, "size")
CPUS = flag_type(parse_cpus, "cpus")
MOUNT = flag_type(parse_mount, "mount")
ULIMIT = flag_type(parse_ulimit, "ulimit")
SYSCTL = flag_type(parse_sysctl, "sysctl")
HOST = flag_type(parse_extra_host, "host:ip")
DNS_SERVER = flag_type(parse_dns_server, "ip")
DNS_SEARCH = flag_type(parse_dns_search, "domain")
DNS_OPTION = flag_type(parse_dns_option, "option")
GROUP = flag_type(parse_group, "group")
CAPABILITY = flag_type(parse_capability, "capability")
LABEL = flag_type(parse_label, "key=value")
LOG_OPT = flag_type(parse_log_opt, "key=value")
ENV = flag_type(parse_env, "name=value")
PLACEMENT_PREF = flag_type(parse_placement_pref, "spread=label")
WORDS = flag_type(parse_words, "command")
ENV_FILE = flag_type(read_env_file, "file")
