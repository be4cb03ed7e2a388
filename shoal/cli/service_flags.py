"""Flags that `service create` and `service update` share, defined once: the update and
rollback policies, the health check, and the container settings docker's service flags set
(capabilities, sysctls, ulimits, groups, hosts, DNS, tty/init/read-only, the log driver)."""
from __future__ import annotations

import shlex

import click

from common.durations import format_duration
from shoal.cli.flag_values import (ALL_CAPABILITIES, CAPABILITY, DNS_OPTION, DNS_SEARCH, DNS_SERVER,
                                   ENV_FILE, GROUP, HOST, LOG_OPT, RESET_CAPABILITIES, SYSCTL,
                                   ULIMIT, normalize_capability, parse_dns_server, quoted)
from shoal.cli.swarm import DURATION

UPDATE_ACTIONS = ("pause", "continue", "rollback")
ROLLBACK_ACTIONS = ("pause", "continue")
_POLICY_FIELDS = ("parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order")
_HEALTH_FLAGS = ("health_cmd", "health_interval", "health_timeout", "health_retries",
                 "health_start_period")


def _apply(fn, options: list):
    for option in reversed(options):
        fn = option(fn)
    return fn


def policy_options(prefix: str, actions: tuple[str, ...]):
    """--PREFIX-parallelism, -delay, -failure-action, -monitor, -max-failure-ratio, -order."""
    def deco(fn):
        return _apply(fn, [
            click.option(f"--{prefix}-parallelism", type=click.IntRange(min=0),
                         help="Tasks replaced at once (0: all)"),
            click.option(f"--{prefix}-delay", type=DURATION, help="Delay between batches"),
            click.option(f"--{prefix}-failure-action", type=click.Choice(actions),
                         help="What to do when tasks of a batch fail"),
            click.option(f"--{prefix}-monitor", type=DURATION,
                         help="How long to watch each new task for failure"),
            click.option(f"--{prefix}-max-failure-ratio", type=click.FloatRange(0, 1),
                         help="Failure rate to tolerate"),
            click.option(f"--{prefix}-order", type=click.Choice(["stop-first", "start-first"]),
                         help="Stop the old task first, or start the new one first"),
        ])
    return deco


def update_policy_options(fn):
    """Both policies: --update-* and --rollback-*."""
    return policy_options("update", UPDATE_ACTIONS)(policy_options("rollback", ROLLBACK_ACTIONS)(fn))


def apply_policies(spec: dict, o: dict) -> None:
    """Set what the --update-* and --rollback-* flags say; leave the rest as it is."""
    for key, prefix in (("update_config", "update"), ("rollback_config", "rollback")):
        for name in _POLICY_FIELDS:
            value = o.get(f"{prefix}_{name}")
            if value is not None:
                spec.setdefault(key, {})[name] = value


def health_options(fn):
    """Docker's --health-* flags and --no-healthcheck."""
    return _apply(fn, [
        click.option("--health-cmd", help="Command to run to check health (run by /bin/sh -c "
                     "in the container; exit 0: healthy)"),
        click.option("--health-interval", type=DURATION, help="Time between checks (default 30s)"),
        click.option("--health-timeout", type=DURATION, help="Maximum time a check may run (default 30s)"),
        click.option("--health-retries", type=click.IntRange(min=1),
                     help="Consecutive failures needed to report unhealthy (default 3)"),
        click.option("--health-start-period", type=DURATION,
                     help="Start period during which failures do not count (default 0s)"),
        click.option("--no-healthcheck", is_flag=True, help="Disable any container-specified HEALTHCHECK"),
    ])


def apply_health(container: dict, o: dict) -> None:
    """Set the container's healthcheck from the flags, over what it had (update) or nothing
    (create). Unset fields stay 0: the worker takes them from the image, then Docker's defaults."""
    given = [f for f in _HEALTH_FLAGS if o.get(f) is not None]
    if o.get("no_healthcheck"):
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise click.BadParameter(f"--no-healthcheck turns health checks off; it cannot go "
                                     f"with {flags}", param_hint="--no-healthcheck")
        container["healthcheck"] = {"test": ["NONE"]}
        return
    if not given:
        return
    hc = dict(container.get("healthcheck") or {})
    if hc.get("test") == ["NONE"]:
        hc["test"] = []  # --health-* after --no-healthcheck: checks come back
    if o.get("health_cmd") is not None:
        cmd = o["health_cmd"].strip()
        if not cmd:
            raise click.BadParameter("an empty command checks nothing: give a command, or use "
                                     "--no-healthcheck", param_hint="--health-cmd")
        hc["test"] = ["CMD-SHELL", cmd]
    for flag, key in (("health_interval", "interval"), ("health_timeout", "timeout"),
                      ("health_retries", "retries"), ("health_start_period", "start_period")):
        if o.get(flag) is not None:
            hc[key] = o[flag]
    container["healthcheck"] = hc


def describe_health(hc: dict | None) -> str:
    """One line for `service inspect --pretty`."""
    if not hc:
        return "the image's, if any"
    test = hc.get("test") or []
    if test == ["NONE"]:
        return "disabled (--no-healthcheck)"
    if not test:
        what = "the image's command"
    elif test[0] == "CMD-SHELL":
        what = " ".join(test[1:])
    else:
        what = shlex.join(test[1:] if test[0] == "CMD" else test)
    parts = [what]
    for key in ("interval", "timeout", "start_period"):
        if hc.get(key):
            parts.append(f"{key}={format_duration(hc[key])}")
    if hc.get("retries"):
        parts.append(f"retries={hc['retries']}")
    return " ".join(parts)


# --- docker's bool syntax --------------------------------------------------------------------

_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")


class BoolValueCommand(click.Command):
    """Takes docker's `--read-only=false` (pflag's syntax for a bool) for each `--X/--no-X`
    flag, besides click's `--no-read-only`: an update turns a setting off that way."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _rewrite_bools(self, ctx, list(args)))


def _option_table(command: click.Command, ctx: click.Context) -> tuple[dict[str, bool], set[str]]:
    """Each option string -> whether it takes a value; and the long flags that have a --no- form."""
    takes: dict[str, bool] = {}
    negatable: set[str] = set()
    for p in command.get_params(ctx):
        if not isinstance(p, click.Option):
            continue
        for name in p.opts + p.secondary_opts:
            takes[name] = not p.is_flag and not p.count
        if p.is_bool_flag and p.secondary_opts:
            negatable.update(n for n in p.opts if n.startswith("--"))
    return takes, negatable


def _rewrite_bools(command: click.Command, ctx: click.Context, args: list[str]) -> list[str]:
    """Walk the options as click's parser will, rewriting `--X=false` to `--no-X` (and
    `--X=true` to `--X`); a command's own arguments after them are left alone."""
    takes, negatable = _option_table(command, ctx)
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        out.append(arg)
        i += 1
        if arg == "--":
            break
        if arg.startswith("--"):
            name, sep, value = arg.partition("=")
            if sep and name in negatable:
                out[-1] = _bool_arg(ctx, name, value)
            elif not sep and takes.get(name):
                out += args[i:i + 1]
                i += 1
        elif arg.startswith("-") and len(arg) > 1:
            for pos, ch in enumerate(arg[1:], 2):
                if takes.get("-" + ch):
                    if pos == len(arg):   # its value is the next argument
                        out += args[i:i + 1]
                        i += 1
                    break
        elif not ctx.allow_interspersed_args:
            break   # the image: what follows is the container's command
    return out + args[i:]


def _bool_arg(ctx: click.Context, name: str, value: str) -> str:
    if value in _TRUE:
        return name
    if value in _FALSE:
        return "--no-" + name[2:]
    raise click.BadParameter(f"expected true or false, got {quoted(value)}", ctx=ctx, param_hint=name)


# --- container settings: create --------------------------------------------------------------

def bool_options(fn):
    """Settings an update may turn on and off again: --X, --X=false or --no-X."""
    return _apply(fn, [
        click.option("-t", "--tty/--no-tty", default=None, help="Allocate a pseudo-TTY"),
        click.option("--read-only/--no-read-only", default=None,
                     help="Mount the container's root filesystem read only"),
        click.option("--init/--no-init", default=None,
                     help="Run an init as pid 1 that forwards signals and reaps processes"),
    ])


def log_options(fn):
    return _apply(fn, [
        click.option("--log-driver", help="Logging driver (json-file or none)"),
        click.option("--log-opt", multiple=True, type=LOG_OPT,
                     help="Logging driver option KEY=VALUE (e.g. max-size=10m, max-file=3)"),
    ])


def container_create_options(fn):
    """The container flags of `service create` beyond those of service.py."""
    return log_options(bool_options(_apply(fn, [
        click.option("--env-file", multiple=True, type=ENV_FILE,
                     help="Read environment variables from a file (KEY=VALUE lines)"),
        click.option("--cap-add", multiple=True, type=CAPABILITY, help="Add a Linux capability"),
        click.option("--cap-drop", multiple=True, type=CAPABILITY, help="Drop a Linux capability"),
        click.option("--sysctl", multiple=True, type=SYSCTL, help="Namespaced kernel parameter KEY=VALUE"),
        click.option("--ulimit", multiple=True, type=ULIMIT,
                     help="Ulimit NAME=SOFT[:HARD] (e.g. nofile=1024:2048)"),
        click.option("--group", multiple=True, type=GROUP, help="Add a supplementary user group"),
        click.option("--host", multiple=True, type=HOST, help="Add a host-to-IP mapping HOST:IP"),
        click.option("--dns", multiple=True, type=DNS_SERVER, help="Set a DNS server"),
        click.option("--dns-search", multiple=True, type=DNS_SEARCH, help="Set a DNS search domain"),
        click.option("--dns-option", multiple=True, type=DNS_OPTION, help="Set a DNS option (e.g. ndots:2)"),
    ])))


def effective_caps(add: tuple[str, ...], drop: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """docker's create rule: ALL stands alone, adding wins over dropping the same one, RESET
    means nothing here; both sorted."""
    add_set, drop_set = set(add) - {RESET_CAPABILITIES}, set(drop) - {RESET_CAPABILITIES}
    if ALL_CAPABILITIES in add_set:
        add_set = {ALL_CAPABILITIES}
    if ALL_CAPABILITIES in drop_set:
        drop_set = {ALL_CAPABILITIES}
    return sorted(add_set), sorted(drop_set - add_set)


def ulimit_list(ulimits: dict[str, dict]) -> list[dict]:
    return [ulimits[name] for name in sorted(ulimits)]


def log_driver(name: str | None, opts: tuple[tuple[str, str], ...], current: dict | None) -> dict | None:
    """The task's log driver after --log-driver/--log-opt: options belong to the driver named
    with them, so --log-opt alone is refused rather than dropped (docker drops it)."""
    if opts and not name:
        raise click.BadParameter("give --log-driver too: the options replace the driver's "
                                 "(e.g. --log-driver json-file --log-opt max-size=10m)",
                                 param_hint="--log-opt")
    if not name:
        return current
    return {"name": name, "options": dict(opts)}


def apply_container_create(task: dict, o: dict) -> None:
    """What the flags of container_create_options say, into a new task template."""
    c = task["container"]
    c["cap_add"], c["cap_drop"] = effective_caps(o.get("cap_add") or (), o.get("cap_drop") or ())
    c["sysctls"] = dict(o.get("sysctl") or ())
    c["ulimits"] = ulimit_list({u["name"]: u for u in o.get("ulimit") or ()})
    c["groups"] = _unique(o.get("group") or ())
    c["hosts"] = _unique(o.get("host") or ())
    for key in ("tty", "read_only", "init"):
        c[key] = bool(o.get(key))
    dns = {"nameservers": _unique(o.get("dns") or ()), "search": _unique(o.get("dns_search") or ()),
           "options": _unique(o.get("dns_option") or ())}
    if any(dns.values()):
        c["dns_config"] = dns
    driver = log_driver(o.get("log_driver"), o.get("log_opt") or (), None)
    if driver:
        task["log_driver"] = driver


def _unique(values) -> list:
    """In the order first given, each once."""
    return list(dict.fromkeys(values))


# --- container settings: update --------------------------------------------------------------

def container_update_options(fn):
    """The -add/-rm forms of the container flags, and the settings an update may switch."""
    return log_options(bool_options(_apply(fn, [
        click.option("--cap-add", multiple=True, type=CAPABILITY,
                     help="Add a Linux capability (one the service dropped: no longer dropped; "
                          "RESET: forget those added)"),
        click.option("--cap-drop", multiple=True, type=CAPABILITY,
                     help="Drop a Linux capability (one the service added: no longer added; "
                          "RESET: forget those dropped)"),
        click.option("--sysctl-add", multiple=True, type=SYSCTL, help="Add or update a sysctl KEY=VALUE"),
        click.option("--sysctl-rm", multiple=True, help="Remove a sysctl by its key"),
        click.option("--ulimit-add", multiple=True, type=ULIMIT,
                     help="Add or update a ulimit NAME=SOFT[:HARD]"),
        click.option("--ulimit-rm", multiple=True, help="Remove a ulimit by its name"),
        click.option("--group-add", multiple=True, type=GROUP, help="Add a supplementary user group"),
        click.option("--group-rm", multiple=True, help="Remove a supplementary user group"),
        click.option("--host-add", multiple=True, type=HOST, help="Add a host-to-IP mapping HOST:IP"),
        click.option("--host-rm", multiple=True,
                     help="Remove a host mapping: HOST (every address) or HOST:IP"),
        click.option("--dns-add", multiple=True, type=DNS_SERVER, help="Add a DNS server"),
        click.option("--dns-rm", multiple=True, help="Remove a DNS server"),
        click.option("--dns-search-add", multiple=True, type=DNS_SEARCH, help="Add a DNS search domain"),
        click.option("--dns-search-rm", multiple=True, help="Remove a DNS search domain"),
        click.option("--dns-option-add", multiple=True, type=DNS_OPTION, help="Add a DNS option"),
        click.option("--dns-option-rm", multiple=True, help="Remove a DNS option"),
    ])))


def update_caps(c: dict, add: tuple[str, ...], drop: tuple[str, ...]) -> None:
    """docker's update rule: adding one the service drops only stops dropping it (and the other
    way round); adding wins over dropping the same one; RESET empties that list first."""
    if not add and not drop:
        return
    cur_add = {normalize_capability(x) for x in c.get("cap_add") or ()}
    cur_drop = {normalize_capability(x) for x in c.get("cap_drop") or ()}
    to_add, to_drop = set(add), set(drop)
    if RESET_CAPABILITIES in to_add:
        cur_add, to_add = set(), to_add - {RESET_CAPABILITIES}
    if RESET_CAPABILITIES in to_drop:
        cur_drop, to_drop = set(), to_drop - {RESET_CAPABILITIES}
    for cap in to_drop - to_add:
        if cap in cur_add:
            cur_add.discard(cap)
        else:
            cur_drop.add(cap)
    for cap in to_add:
        if cap in cur_drop:
            cur_drop.discard(cap)
        else:
            cur_add.add(cap)
    c["cap_add"], c["cap_drop"] = _caps_list(cur_add), _caps_list(cur_drop)


def _caps_list(caps: set[str]) -> list[str]:
    return [ALL_CAPABILITIES] if ALL_CAPABILITIES in caps else sorted(caps)


def _key(text: str) -> str:
    """What a -rm flag names: the key, with or without =VALUE after it (as docker reads it)."""
    return text.partition("=")[0]


def update_hosts(hosts: list[str], add: tuple[str, ...], rm: tuple[str, ...]) -> list[str]:
    """docker's rule: HOST alone leaves every entry, HOST:IP the entries of that address; an
    entry left without a name goes. Order kept: the first entry for a name is the one used."""
    removals = [(host, ip) for host, _, ip in (r.partition(":") for r in rm)]
    out = []
    for entry in hosts:
        fields = entry.split()
        if not fields:
            continue
        ip, names = fields[0], fields[1:]
        for host, rm_ip in removals:
            if not rm_ip or rm_ip == ip:
                names = [n for n in names if n != host]
        if names:
            out.append(" ".join([ip, *names]))
    return _unique(out + list(add))


def _edit_list(current, add, rm, key=lambda x: x) -> list:
    """Append what is new, then remove by key (so removing wins, as in docker). Order kept where
    docker sorts: the order of DNS servers and search domains is the order they are tried."""
    drop = set(rm)
    return _unique(x for x in [*current, *add] if key(x) not in drop)


def _dns_key(text: str) -> str:
    try:
        return parse_dns_server(text)
    except click.BadParameter:
        return text


def update_dns(current: dict | None, o: dict) -> dict | None:
    names = ("dns_add", "dns_rm", "dns_search_add", "dns_search_rm", "dns_option_add", "dns_option_rm")
    if not any(o.get(n) for n in names):
        return current
    cur = current or {}
    dns = {"nameservers": _edit_list(cur.get("nameservers") or [], o.get("dns_add") or (),
                                     [_dns_key(x) for x in o.get("dns_rm") or ()], _dns_key),
           "search": _edit_list(cur.get("search") or [], o.get("dns_search_add") or (),
                                o.get("dns_search_rm") or ()),
           "options": _edit_list(cur.get("options") or [], o.get("dns_option_add") or (),
                                 o.get("dns_option_rm") or ())}
    return dns if any(dns.values()) else None


def apply_container_update(task: dict, o: dict) -> None:
    """What the flags of container_update_options say, over the service's task template."""
    c = task["container"]
    update_caps(c, o.get("cap_add") or (), o.get("cap_drop") or ())
    sysctls = {k: v for k, v in (c.get("sysctls") or {}).items()
               if k not in {_key(x) for x in o.get("sysctl_rm") or ()}}
    c["sysctls"] = {**sysctls, **dict(o.get("sysctl_add") or ())}
    ulimits = {u["name"]: u for u in c.get("ulimits") or ()
               if u["name"] not in {_key(x) for x in o.get("ulimit_rm") or ()}}
    c["ulimits"] = ulimit_list({**ulimits, **{u["name"]: u for u in o.get("ulimit_add") or ()}})
    c["groups"] = _edit_list(c.get("groups") or [], o.get("group_add") or (), o.get("group_rm") or ())
    c["hosts"] = update_hosts(c.get("hosts") or [], o.get("host_add") or (), o.get("host_rm") or ())
    c["dns_config"] = update_dns(c.get("dns_config"), o)
    for key in ("tty", "read_only", "init"):
        if o.get(key) is not None:
            c[key] = o[key]
    task["log_driver"] = log_driver(o.get("log_driver"), o.get("log_opt") or (), task.get("log_driver"))


# --- inspect --pretty ------------------------------------------------------------------------

def _mount_line(m: dict) -> str:
    ro = " (read only)" if m.get("read_only") else ""
    parts = [f"{m['type']} {m.get('source') or '-'} -> {m['target']}{ro}"]
    vo, to = m.get("volume_options"), m.get("tmpfs_options")
    if vo:
        parts.append(f"driver={vo.get('driver') or 'local'}")
        parts += [f"opt {k}={v}" for k, v in sorted((vo.get("driver_opts") or {}).items())]
        parts += [f"label {k}={v}" for k, v in sorted((vo.get("labels") or {}).items())]
        if vo.get("no_copy"):
            parts.append("nocopy")
    if to:
        if to.get("size_bytes"):
            parts.append(f"size={to['size_bytes']}")
        if to.get("mode"):
            parts.append(f"mode={to['mode']:o}")
    return ", ".join(parts)


def describe_container(task: dict) -> list[tuple[str, str]]:
    """(label, text) for `service inspect --pretty`: the container settings that are set."""
    c = task["container"]
    rows: list[tuple[str, str]] = []
    switches = [name for key, name in (("init", "init"), ("tty", "tty"), ("read_only", "read-only root"))
                if c.get(key)]
    if switches:
        rows.append(("Options", ", ".join(switches)))
    for key, label in (("cap_add", "Cap Add"), ("cap_drop", "Cap Drop"), ("groups", "Groups")):
        if c.get(key):
            rows.append((label, ", ".join(c[key])))
    if c.get("sysctls"):
        rows.append(("Sysctls", ", ".join(f"{k}={v}" for k, v in sorted(c["sysctls"].items()))))
    if c.get("ulimits"):
        rows.append(("Ulimits", ", ".join(f"{u['name']}={u['soft']}:{u['hard']}" for u in c["ulimits"])))
    rows += [("Host", h) for h in c.get("hosts") or ()]
    dns = c.get("dns_config") or {}
    for key, label in (("nameservers", "DNS"), ("search", "DNS Search"), ("options", "DNS Options")):
        if dns.get(key):
            rows.append((label, ", ".join(dns[key])))
    rows += [("Mount", _mount_line(m)) for m in c.get("mounts") or ()]
    log = task.get("log_driver")
    if log:
        opts = " ".join(f"{k}={v}" for k, v in sorted((log.get("options") or {}).items()))
        rows.append(("Log Driver", f"{log['name']} {opts}".rstrip()))
    return rows
