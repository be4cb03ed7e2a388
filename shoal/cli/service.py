"""`shoal service ...` and `shoal node ps`."""
from __future__ import annotations

import sys
import time

import click

from common import errors
from common.durations import format_duration
from shoal.cli import progress
from shoal.cli.client import Cli, api_path, pass_cli
from shoal.cli.data_objects import parse_reference_option
from shoal.cli.log_flags import SINCE_HELP, UNTIL_HELP, log_window, rfc3339_nano
from shoal.cli.login import WITH_REGISTRY_AUTH_HELP, registry_auth_body
from shoal.cli.resolve import cli_lookup, pin_spec_image, resolve_image_option
# SIZE and CPUS are imported from here by container.py and service_update.py too
from shoal.cli.flag_values import (CPUS, ENV, LABEL, MOUNT, PLACEMENT_PREF, SIZE, merge_env,
                                   WORDS, parse_mount, parse_publish, read_env_file)
from shoal.cli.output import print_json, print_listing
from shoal.cli.network_flags import apply_network_create, network_create_options
from shoal.cli.swarm import DURATION
from shoal.cli.service_flags import (BoolValueCommand, apply_container_create, apply_health,
                                     apply_policies, container_create_options, describe_container,
                                     describe_health, health_options, update_policy_options)


def service_options(fn):
    options = [
        click.option("--replicas", type=click.IntRange(min=0), help="Number of tasks"),
        click.option("--mode", type=click.Choice(["replicated", "global", "replicated-job", "global-job"]),
                     default="replicated", show_default=True, help="Service mode"),
        click.option("--max-concurrent", type=click.IntRange(min=0), help="Jobs: tasks run at once"),
        click.option("-e", "--env", multiple=True, type=ENV,
                     help="Set an environment variable (NAME=VALUE; a bare NAME takes this shell's value)"),
        click.option("-w", "--workdir", help="Working directory inside the container"),
        click.option("-u", "--user", help="Username or UID[:GID]"),
        click.option("--hostname", help="Container hostname"),
        click.option("--entrypoint", type=WORDS,
                     help="Overwrite the image's entrypoint (split as a shell would)"),
        click.option("-l", "--label", multiple=True, type=LABEL, help="Service label (KEY=VALUE)"),
        click.option("--container-label", multiple=True, type=LABEL, help="Container label (KEY=VALUE)"),
        click.option("--mount", multiple=True, type=MOUNT,
                     help="type=bind|volume|tmpfs,source=...,target=...[,readonly][,volume-driver=,"
                          "volume-opt=K=V,volume-label=K=V,volume-nocopy][,tmpfs-size=,tmpfs-mode=]"),
        click.option("--limit-cpu", type=CPUS, help="Limit CPUs (e.g. 0.5)"),
        click.option("--limit-memory", type=SIZE, help="Limit memory (e.g. 64m)"),
        click.option("--limit-pids", type=click.IntRange(min=0), help="Limit the number of processes"),
        click.option("--reserve-cpu", type=CPUS, help="Reserve CPUs"),
        click.option("--reserve-memory", type=SIZE, help="Reserve memory"),
        click.option("--restart-condition", type=click.Choice(["none", "on-failure", "any"]),
                     help="Restart when condition is met (default any)"),
        click.option("--restart-delay", type=DURATION, help="Delay between restart attempts (default 5s)"),
        click.option("--restart-max-attempts", type=click.IntRange(min=0), help="Maximum number of restarts"),
        click.option("--restart-window", type=DURATION, help="Window used to evaluate the restart policy"),
        click.option("--constraint", multiple=True, help="Placement constraint (e.g. node.labels.zone==a)"),
        click.option("--placement-pref", multiple=True, type=PLACEMENT_PREF,
                     help="Placement preference (spread=node.labels.zone)"),
        click.option("--replicas-max-per-node", type=click.IntRange(min=0), help="Maximum tasks per node"),
        click.option("--stop-signal", help="Signal to stop the container (default SIGTERM)"),
        click.option("--stop-grace-period", type=DURATION, help="Time to wait before SIGKILL (default 10s)"),
        click.option("-p", "--publish", multiple=True, help="Publish a port: 8080:80 or published=8080,target=80[,protocol=udp][,mode=host]"),
        click.option("-d", "--detach", is_flag=True, help="Exit immediately instead of waiting for the service to converge"),
        click.option("-q", "--quiet", is_flag=True, help="Suppress progress output"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _labels(values) -> dict:
    """KEY=VALUE strings (build_spec's callers outside click) or pairs the LABEL type made."""
    return dict(v if isinstance(v, tuple) else LABEL.convert(v, None, None) for v in values)


def _env(o: dict) -> list[str]:
    """docker's order: the --env-file lines, then --env; a later name wins."""
    files = [f if isinstance(f, list) else read_env_file(f) for f in o.get("env_file") or ()]
    from_files = [line for lines in files for line in lines]
    return merge_env(from_files + list(o["env"]))


def build_spec(name, image, args, o: dict) -> dict:
    container = {"image": image, "args": list(args), "env": _env(o),
                 "labels": _labels(o["container_label"]),
                 "mounts": [m if isinstance(m, dict) else parse_mount(m) for m in o["mount"]]}
    container["secrets"] = [parse_reference_option("secret", s) for s in o.get("secret") or ()]
    container["configs"] = [parse_reference_option("config", s) for s in o.get("config") or ()]
    for key, flag in (("workdir", "dir"), ("user", "user"), ("hostname", "hostname"),
                      ("stop_signal", "stop_signal"), ("stop_grace_period", "stop_grace_period")):
        if o.get(key) is not None:
            container[flag] = o[key]
    if o.get("entrypoint"):
        container["command"] = list(o["entrypoint"])
    resources = {"limits": {"nano_cpus": o.get("limit_cpu") or 0, "memory_bytes": o.get("limit_memory") or 0},
                 "reservations": {"nano_cpus": o.get("reserve_cpu") or 0,
                                  "memory_bytes": o.get("reserve_memory") or 0},
                 "pids_limit": o.get("limit_pids") or 0}
    restart = {}
    for key, field in (("restart_condition", "condition"), ("restart_delay", "delay"),
                       ("restart_max_attempts", "max_attempts"), ("restart_window", "window")):
        if o.get(key) is not None:
            restart[field] = o[key]
    mode = {"mode": o["mode"], "replicas": 1 if o.get("replicas") is None else o["replicas"]}
    if o.get("max_concurrent") is not None:
        mode["max_concurrent"] = o["max_concurrent"]
    if mode["mode"] == "replicated-job":
        mode["total_completions"] = mode["replicas"]
    task = {"container": container, "resources": resources, "restart_policy": restart,
            "placement": {"constraints": list(o["constraint"]),
                          "preferences": list(o["placement_pref"]),
                          "max_replicas": o.get("replicas_max_per_node") or 0}}
    apply_container_create(task, o)
    return {
        "name": name, "labels": _labels(o["label"]),
        "task_template": task,
        "mode": mode,
        "endpoint_spec": {"ports": [parse_publish(p) for p in o["publish"]]},
    }


@click.group()
def service() -> None:
    """Manage swarm services."""


@service.command(cls=BoolValueCommand,
                 context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@click.option("--name", help="Service name (default: derived from the image)")
@click.option("--secret", "secret", multiple=True, help="Secret to expose: NAME or source=NAME,target=PATH,uid=,gid=,mode=")
@click.option("--config", "config", multiple=True, help="Config to expose: NAME or source=NAME,target=PATH,uid=,gid=,mode=")
@service_options
@container_create_options
@network_create_options
@health_options
@update_policy_options
@click.option("--with-registry-auth", is_flag=True, help=WITH_REGISTRY_AUTH_HELP)
@resolve_image_option
@click.argument("image")
@click.argument("args", nargs=-1)
@pass_cli
def create(cli: Cli, name, image, args, detach, quiet, with_registry_auth, resolve_image,
           **o) -> None:
    """Create a new service: IMAGE [COMMAND] [ARG...]."""
    if not name:
        name = image.rsplit("/", 1)[-1].split(":")[0].split("@")[0]
    spec = build_spec(name, image, args, o)
    apply_health(spec["task_template"]["container"], o)
    apply_policies(spec, o)
    apply_network_create(spec, o)
    auth = registry_auth_body(image, with_registry_auth)  # a missing login fails before a lookup
    pin_spec_image(cli_lookup(cli), spec, mode=resolve_image, image_changed=True,
                   with_registry_auth=with_registry_auth)
    created = cli.call("POST", "/services/create", {"spec": spec, **auth})
    click.echo(created["id"])
    if not detach:
        wait_converged(cli, created["id"], quiet)


def _state_cell(t: dict) -> str:
    state = t["status"]["state"]
    ago = max(0, time.time() - (t["status"]["timestamp"] or t["meta"]["created_at"]))
    if t["status"].get("health") and state == "running":
        state = f"{state} ({t['status']['health']})"
    return f"{state.capitalize()} {format_duration(round(ago)) if ago >= 1 else 'less than a second'} ago"


def wait_converged(cli: Cli, service_id: str, quiet: bool, timeout: float = 300.0) -> None:
    """Live progress until every slot runs (or, for jobs, completed), like docker's; each
    slot's latest error as it happens, and an end with the reason once every slot keeps being
    rejected for it (Docker waits forever there)."""
    tty = sys.stdout.isatty() and not quiet
    drawn = 0
    printed: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        svc = cli.call("GET", api_path("services", service_id))
        every_task = cli.call("GET", "/tasks", params={"service": service_id})
        tasks = [t for t in every_task if t["desired_state"] in ("running", "ready")]
        status = svc["replicas_status"]
        job = svc["spec"]["mode"]["mode"].endswith("-job")
        done = status["completed"] if job else status["running"]
        desired = status["desired"]
        summary = f"overall progress: {done} out of {desired} tasks"
        slots = progress.slot_lines(every_task, desired)
        if tty:
            if drawn:
                sys.stdout.write(f"\x1b[{drawn}A")
            for line in [summary, *(s.text() for s in slots)]:
                sys.stdout.write("\x1b[2K" + line[:150] + "\n")
            sys.stdout.flush()
            drawn = 1 + len(slots)
        elif not quiet:
            # without a terminal: each new summary, and each slot's error once
            news = [summary, *(f"{s.label}: {s.error}" for s in slots if s.error)]
            for line in news:
                if line not in printed:
                    click.echo(line)
                    printed.add(line)
        converged = done >= desired and (job or len(tasks) == desired or svc["spec"]["mode"]["mode"] == "global")
        if converged:
            if not quiet:
                click.echo("verify: Service converged")
            return
        hopeless = progress.stuck(every_task, desired)
        if hopeless is not None:
            name = svc["spec"]["name"]
            raise errors.FailedPrecondition(
                f"service {name} cannot start: every task was rejected "
                f"{hopeless.times} times in a row: {hopeless.describe()}. The service is still "
                f"there and keeps retrying: fix the cause and run 'shoal service update --force "
                f"{name}', or remove it with 'shoal service rm {name}'")
        if time.monotonic() > deadline:
            raise errors.Unavailable(f"the service did not converge within {format_duration(timeout)}: "
                                     "see 'shoal service ps' for why (the service is still there)")
        time.sleep(0.25)


@service.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@pass_cli
def ls(cli: Cli, quiet, fmt) -> None:
    """List services."""
    print_listing(cli.call("GET", "/services"), quiet=quiet, fmt=fmt,
                  headers=["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], rows=_service_rows)


def _service_rows(services: list[dict]) -> list[list]:
    rows = []
    for s in services:
        rs, mode = s["replicas_status"], s["spec"]["mode"]["mode"]
        ports = ", ".join(f"*:{p['published_port']}->{p['target_port']}/{p['protocol']}"
                          for p in (s.get("endpoint") or {}).get("ports")
                          or s["spec"]["endpoint_spec"]["ports"])
        replicas = f"{rs['completed'] if mode.endswith('-job') else rs['running']}/{rs['desired']}"
        rows.append([s["id"][:12], s["spec"]["name"], mode, replicas,
                     s["spec"]["task_template"]["container"]["image"], ports])
    return rows


def print_tasks(tasks: list[dict], no_trunc: bool, quiet: bool, fmt: str) -> None:
    print_listing(tasks, quiet=quiet, fmt=fmt,
                  headers=["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR"],
                  rows=lambda items: _task_rows(items, no_trunc))


def _task_rows(tasks: list[dict], no_trunc: bool) -> list[list]:
    rows = []
    previous = None
    for t in tasks:
        # a standalone container (`container run`) shows its own name
        base = t.get("container_name") or f"{t['service_name']}.{t['slot'] or t['node_id']}"
        name = base if base != previous else r" \_ " + base
        previous = base
        err = t["status"]["err"] or (t["status"]["message"] if t["status"]["state"] == "pending" else "")
        if not no_trunc and len(err) > 60:
            err = err[:57] + "..."
        rows.append([t["id"] if no_trunc else t["id"][:12], name,
                     t["spec"]["container"]["image"], t["node_hostname"],
                     t["desired_state"].capitalize(), _state_cell(t), f'"{err}"' if err else ""])
    return rows


def _filters(values) -> dict:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or key not in ("desired-state", "node", "name", "id"):
            raise click.BadParameter(f"{v!r}: filters are desired-state=, node=, name=, id=",
                                     param_hint="--filter")
        out[key] = val
    return out


def _apply_filters(tasks: list[dict], filters: dict) -> list[dict]:
    if "desired-state" in filters:
        tasks = [t for t in tasks if t["desired_state"] == filters["desired-state"]]
    if "node" in filters:
        tasks = [t for t in tasks if filters["node"] in (t["node_id"], t["node_hostname"])]
    if "name" in filters:
        tasks = [t for t in tasks if t["name"].startswith(filters["name"])]
    if "id" in filters:
        tasks = [t for t in tasks if t["id"].startswith(filters["id"])]
    return tasks


@service.command()
@click.option("-f", "--filter", "filters", multiple=True, help="Filter: desired-state=running, node=NAME, ...")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output")
@click.option("-q", "--quiet", is_flag=True, help="Only display task IDs")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.argument("services", nargs=-1, required=True)
@pass_cli
def ps(cli: Cli, filters, no_trunc, quiet, fmt, services) -> None:
    """List the tasks of one or more services."""
    f = _filters(filters)
    tasks = []
    for ref in services:
        tasks += cli.call("GET", "/tasks", params={"service": ref})
    print_tasks(_apply_filters(tasks, f), no_trunc, quiet, fmt)


@service.command()
@click.option("--pretty", is_flag=True, help="Human friendly format")
@click.argument("services", nargs=-1, required=True)
@pass_cli
def inspect(cli: Cli, pretty, services) -> None:
    """Display detailed information on one or more services."""
    found = [cli.call("GET", api_path("services", ref)) for ref in services]
    if not pretty:
        print_json(found)
        return
    for s in found:
        spec = s["spec"]
        c = spec["task_template"]["container"]
        click.echo(f"ID:             {s['id']}\nName:           {spec['name']}")
        mode = spec["mode"]
        click.echo(f"Mode:           {mode['mode']}" + (f" (replicas {mode['replicas']})" if not mode["mode"].startswith("global") else ""))
        click.echo(f"Image:          {c['image']}")
        if c["command"] or c["args"]:
            click.echo(f"Command:        {' '.join(c['command'] + c['args'])}")
        rp = spec["task_template"]["restart_policy"]
        click.echo(f"Restart Policy: condition={rp['condition']} delay={format_duration(rp['delay'])} "
                   f"max_attempts={rp['max_attempts']}")
        lim = spec["task_template"]["resources"]["limits"]
        if lim["memory_bytes"] or lim["nano_cpus"]:
            click.echo(f"Limits:         memory={lim['memory_bytes']} cpus={lim['nano_cpus'] / 1e9:g}")
        if spec["task_template"]["placement"]["constraints"]:
            click.echo(f"Constraints:    {', '.join(spec['task_template']['placement']['constraints'])}")
        uc = spec["update_config"]
        click.echo(f"Update Config:  parallelism={uc['parallelism']} delay={format_duration(uc['delay'])} "
                   f"order={uc['order']} failure_action={uc['failure_action']} "
                   f"monitor={format_duration(uc['monitor'])} max_failure_ratio={uc['max_failure_ratio']:g}")
        rc = spec["rollback_config"]
        click.echo(f"Rollback Config: parallelism={rc['parallelism']} delay={format_duration(rc['delay'])} "
                   f"order={rc['order']} failure_action={rc['failure_action']} "
                   f"monitor={format_duration(rc['monitor'])} max_failure_ratio={rc['max_failure_ratio']:g}")
        click.echo(f"Healthcheck:    {describe_health(c.get('healthcheck'))}")
        for label, text in describe_container(spec["task_template"]):
            click.echo(f"{label + ':':<16}{text}")
        us = s["update_status"]
        if us["state"]:
            click.echo(f"Update Status:  {us['state']}: {us['message']}")
        rs = s["replicas_status"]
        health: dict[str, int] = {}
        for t in cli.call("GET", "/tasks", params={"service": s["id"], "desired_state": "running"}):
            if t["status"]["state"] == "running" and t["status"].get("health"):
                health[t["status"]["health"]] = health.get(t["status"]["health"], 0) + 1
        checked = f" ({', '.join(f'{n} {h}' for h, n in sorted(health.items()))})" if health else ""
        click.echo(f"Tasks:          {rs['running']} running{checked} of {rs['desired']} desired\n")


@service.command()
@click.option("-d", "--detach", is_flag=True, help="Exit immediately instead of waiting")
@click.argument("pairs", nargs=-1, required=True)
@pass_cli
def scale(cli: Cli, detach, pairs) -> None:
    """Scale one or more replicated services: SERVICE=REPLICAS..."""
    targets = []
    for pair in pairs:
        name, sep, count = pair.partition("=")
        if not sep or not count.isdigit():
            raise click.BadParameter(f"{pair!r}: expected SERVICE=REPLICAS, e.g. web=6")
        targets.append((name, int(count)))
    for name, count in targets:
        for _ in range(5):
            svc = cli.call("GET", api_path("services", name))
            if svc["spec"]["mode"]["mode"] != "replicated":
                raise errors.InvalidArgument(f"{name}: scale works on replicated services only "
                                             f"(this one is {svc['spec']['mode']['mode']})")
            svc["spec"]["mode"]["replicas"] = count
            try:
                cli.call("POST", api_path("services", svc["id"], "update"), {"spec": svc["spec"]},
                         params={"version": str(svc["meta"]["version"])})
                break
            except errors.Conflict:
                continue
        click.echo(f"{name} scaled to {count}")
    if not detach:
        for name, _ in targets:
            wait_converged(cli, name, quiet=False)


@service.command()
@click.argument("services", nargs=-1, required=True)
@pass_cli
def rm(cli: Cli, services) -> None:
    """Remove one or more services."""
    for ref in services:
        cli.call("DELETE", api_path("services", ref))
        click.echo(ref)


@service.command()
@click.option("-f", "--follow", is_flag=True, help="Follow log output")
@click.option("--tail", default="all", help="Number of lines to show from the end of each task's log")
@click.option("-t", "--timestamps", is_flag=True, help="Show timestamps")
@click.option("--since", default="", help=SINCE_HELP)
@click.option("--until", default="", help=UNTIL_HELP)
@click.option("--details", is_flag=True, help="Show the log's attributes (com.docker.swarm.node.id,"
              " service.id, task.id) before each line")
@click.option("--raw", is_flag=True, help="Do not prefix lines with the task name")
@click.argument("ref", metavar="SERVICE|TASK")
@pass_cli
def logs(cli: Cli, follow, tail, timestamps, since, until, details, raw, ref) -> None:
    """Fetch the logs of a service's tasks, or of one task, from every node that ran them."""
    if tail != "all" and not tail.isdigit():
        raise click.BadParameter(f"{tail!r}: a number of lines or 'all'", param_hint="--tail")
    params = {"follow": "true" if follow else "false", "tail": tail, **log_window(since, until)}
    if details:
        params["details"] = "true"
    for entry in _service_or_task_logs(cli, ref, params):
        if entry.get("error"):
            click.echo(f"error from {entry.get('node', '?')}: {entry['error']}", err=True)
            continue
        prefix = "" if raw else f"{entry['task']}@{entry['node']}    | "
        stamp = rfc3339_nano(entry["t"]) + " " if timestamps else ""
        attrs = (f"com.docker.swarm.node.id={entry.get('node_id', '')},"
                 f"com.docker.swarm.service.id={entry.get('service_id', '')},"
                 f"com.docker.swarm.task.id={entry.get('task_id', '')} ") if details else ""
        click.echo(f"{prefix}{stamp}{attrs}{entry['l']}", err=entry.get("s") == "stderr")


def _service_or_task_logs(cli: Cli, ref: str, params: dict):
    """A service's entries, or a task's when no service is called `ref` (as docker's CLI)."""
    entries = iter(cli.stream("GET", api_path("services", ref, "logs"), params=params))
    try:
        first = next(entries, None)
    except errors.NotFound as exc:
        # the managers' find_service refusal, before any line; not an error record mid-stream
        if not exc.message.startswith("no such service"):
            raise
        entries = iter(cli.stream("GET", api_path("tasks", ref, "logs"), params=params))
        first = next(entries, None)
    if first is not None:
        yield first
        yield from entries


def node_ps_command(node_group: click.Group) -> None:
    @node_group.command("ps")
    @click.option("-f", "--filter", "filters", multiple=True, help="Filter: desired-state=running, ...")
    @click.option("--no-trunc", is_flag=True, help="Do not truncate output")
    @click.option("-q", "--quiet", is_flag=True, help="Only display task IDs")
    @click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
    @click.argument("nodes", nargs=-1)
    @pass_cli
    def ps_cmd(cli: Cli, filters, no_trunc, quiet, fmt, nodes) -> None:
        """List tasks running on one or more nodes (default: this node)."""
        f = _filters(filters)
        refs = nodes or ["self"]
        tasks = []
        for ref in refs:
            if ref == "self":
                ref = cli.call("GET", "/info")["swarm"].get("node_id", "")
            tasks += cli.call("GET", "/tasks", params={"node": ref})
        print_tasks(_apply_filters(tasks, f), no_trunc, quiet, fmt)


from shoal.cli.exec import add_service_exec  # noqa: E402  (after the group it extends)
add_service_exec(service)
