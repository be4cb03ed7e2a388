"""`shoal service update` and `shoal service rollback`: change a service and follow the rollout."""
from __future__ import annotations

import copy
import time

import click
from click.core import ParameterSource

from common import errors
from shoal.cli.client import Cli, api_path, pass_cli
from shoal.cli.data_objects import parse_reference_option
from shoal.cli.login import WITH_REGISTRY_AUTH_HELP, registry_auth_body
from shoal.cli.resolve import cli_lookup, pin_spec_image, resolve_image_option
from shoal.cli.flag_values import (CPUS, ENV, LABEL, MOUNT, PLACEMENT_PREF, SIZE, WORDS,
                                   placement_pref_target)
from shoal.cli.network_flags import apply_network_update, network_update_options
from shoal.cli.service import service, wait_converged
from shoal.cli.service_flags import (BoolValueCommand, apply_container_update, apply_health,
                                     apply_policies, container_update_options, health_options,
                                     update_policy_options)
from shoal.cli.swarm import DURATION

_DONE = {"completed", "paused", "rollback_completed", "rollback_paused"}


def _edit_refs(refs: list[dict], add: tuple, rm: tuple, kind: str) -> list[dict]:
    """--secret-add/--secret-rm (or --config-*): rm by name or id, then add; an added reference
    replaces one with the same name and target."""
    name_key, id_key = f"{kind}_name", f"{kind}_id"
    out = list(refs)
    for ref in rm:
        kept = [r for r in out if ref not in (r.get(name_key), r.get(id_key))
                and not (len(ref) >= 6 and (r.get(id_key) or "").startswith(ref))]
        if len(kept) == len(out):
            raise click.BadParameter(f"the service uses no {kind} {ref!r}", param_hint=f"--{kind}-rm")
        out = kept
    base = "/run/secrets/" if kind == "secret" else "/"  # where the manager puts a relative target
    for text in add:
        new = parse_reference_option(kind, text)
        target = new.get("target") or new[name_key]
        target = target if target.startswith("/") else base + target
        out = [r for r in out if not (r.get(name_key) == new[name_key] and r.get("target") == target)]
        out.append(new)
    return out


def _edit_env(env: list[str], add: tuple, rm: tuple) -> list[str]:
    """--env-rm by name, then --env-add (the ENV type made each NAME=VALUE): a name added again
    takes its new value at the end."""
    out = [e for e in env if e.split("=", 1)[0] not in rm]
    for item in add:
        name = item.split("=", 1)[0]
        out = [e for e in out if e.split("=", 1)[0] != name] + [item]
    return out


def _edit_labels(labels: dict, add: tuple, rm: tuple) -> dict:
    """rm by key first, then add (docker's order); removing a key that is not there is no error,
    as in docker."""
    out = {k: v for k, v in (labels or {}).items() if k not in rm}
    out.update(dict(add))
    return out


def _edit_mounts(mounts: list[dict], add: tuple, rm: tuple) -> list[dict]:
    """docker's rule: an added mount replaces the one with its target, --mount-rm (by target)
    goes last, two added mounts may not share a target."""
    added: dict[str, dict] = {}
    for m in add:
        if m["target"] in added:
            raise click.BadParameter(f"two mounts with target {m['target']!r}", param_hint="--mount-add")
        added[m["target"]] = m
    out = [added.pop(m["target"], m) for m in mounts]
    return [m for m in out + list(added.values()) if m["target"] not in rm]


def _edit_preferences(prefs: list[str], add: tuple, rm: tuple) -> list[str]:
    """--placement-pref-rm names the spread descriptor, as docker compares them."""
    drop = {placement_pref_target(r) if "=" in r else r.strip() for r in rm}
    kept = [p for p in prefs if placement_pref_target(p) not in drop]
    return kept + [p for p in add if p not in kept]


def _edit_constraints(constraints: list[str], add: tuple, rm: tuple) -> list[str]:
    kept = [x for x in constraints if x not in rm]
    return kept + [x for x in add if x not in kept]


def _edit_container(c: dict, o: dict) -> None:
    c["env"] = _edit_env(c["env"], o["env_add"], o["env_rm"])
    c["labels"] = _edit_labels(c.get("labels"), o["container_label_add"], o["container_label_rm"])
    c["mounts"] = _edit_mounts(c["mounts"], o["mount_add"], o["mount_rm"])
    for key, field in (("image", "image"), ("user", "user"), ("workdir", "dir"),
                       ("hostname", "hostname"), ("stop_signal", "stop_signal"),
                       ("stop_grace_period", "stop_grace_period")):
        if o[key] is not None:
            c[field] = o[key]
    if o["args_"] is not None:
        c["args"] = list(o["args_"])
    if o["entrypoint"] is not None:
        c["command"] = list(o["entrypoint"])   # "" goes back to the image's
    c["secrets"] = _edit_refs(c.get("secrets") or [], o["secret_add"], o["secret_rm"], "secret")
    c["configs"] = _edit_refs(c.get("configs") or [], o["config_add"], o["config_rm"], "config")


def _edit_resources(res: dict, o: dict) -> None:
    for key, part, field in (("limit_memory", "limits", "memory_bytes"),
                             ("limit_cpu", "limits", "nano_cpus"),
                             ("reserve_memory", "reservations", "memory_bytes"),
                             ("reserve_cpu", "reservations", "nano_cpus")):
        if o[key] is not None:
            res.setdefault(part, {})[field] = o[key]
    if o["limit_pids"] is not None:
        res["pids_limit"] = o["limit_pids"]


def _edit_placement(placement: dict, o: dict) -> None:
    placement["constraints"] = _edit_constraints(placement["constraints"], o["constraint_add"],
                                                 o["constraint_rm"])
    placement["preferences"] = _edit_preferences(placement.get("preferences") or [],
                                                 o["placement_pref_add"], o["placement_pref_rm"])
    if o["replicas_max_per_node"] is not None:
        placement["max_replicas"] = o["replicas_max_per_node"]


def _edit_task(tt: dict, o: dict) -> None:
    _edit_container(tt["container"], o)
    _edit_resources(tt["resources"], o)
    for key, field in (("restart_condition", "condition"), ("restart_delay", "delay"),
                       ("restart_max_attempts", "max_attempts"), ("restart_window", "window")):
        if o[key] is not None:
            tt["restart_policy"][field] = o[key]
    _edit_placement(tt["placement"], o)
    if o["force"]:
        tt["force_update"] = tt.get("force_update", 0) + 1
    apply_container_update(tt, o)
    apply_health(tt["container"], o)


def edit_spec(cli: Cli, svc: dict, o: dict) -> dict:
    """The service's spec as the flags change it (svc is the service as read, left alone)."""
    spec = copy.deepcopy(svc["spec"])
    spec["labels"] = _edit_labels(spec.get("labels"), o["label_add"], o["label_rm"])
    if o["replicas"] is not None:
        if spec["mode"]["mode"] != "replicated":
            raise click.BadParameter("only replicated services have replicas", param_hint="--replicas")
        spec["mode"]["replicas"] = o["replicas"]
    _edit_task(spec["task_template"], o)
    apply_policies(spec, o)
    apply_network_update(spec, svc, o, lambda ref: cli.call("GET", api_path("networks", ref))["id"])
    return spec


def _refuse_with_rollback(ctx: click.Context) -> None:
    """--rollback is `service rollback`: a spec of its own cannot come with it (as docker)."""
    given = [p.opts[-1] for p in ctx.command.get_params(ctx)
             if p.name not in ("rollback", "detach", "quiet", "ref")
             and ctx.get_parameter_source(p.name) in (ParameterSource.COMMANDLINE,
                                                      ParameterSource.ENVIRONMENT)]
    if given:
        raise click.UsageError(f"--rollback goes back to the previous spec; it cannot be "
                               f"combined with {', '.join(given)}", ctx=ctx)


@service.command(cls=BoolValueCommand, context_settings={"allow_interspersed_args": True})
@click.option("--image", help="Service image")
@click.option("--args", "args_", type=WORDS, help="Service command args (split as a shell would)")
@click.option("--entrypoint", type=WORDS, help="Overwrite the image's entrypoint (\"\": the image's again)")
@click.option("-u", "--user", help="Username or UID[:GID]")
@click.option("-w", "--workdir", help="Working directory inside the container")
@click.option("--hostname", help="Container hostname")
@click.option("--env-add", multiple=True, type=ENV, help="Add or update an environment variable")
@click.option("--env-rm", multiple=True, help="Remove an environment variable")
@click.option("--label-add", multiple=True, type=LABEL, help="Add or update a service label")
@click.option("--label-rm", multiple=True, help="Remove a service label by its key")
@click.option("--container-label-add", multiple=True, type=LABEL, help="Add or update a container label")
@click.option("--container-label-rm", multiple=True, help="Remove a container label by its key")
@click.option("--replicas", type=click.IntRange(min=0), help="Number of tasks")
@click.option("--replicas-max-per-node", type=click.IntRange(min=0),
              help="Maximum tasks per node (0: unlimited)")
@click.option("--constraint-add", multiple=True, help="Add a placement constraint")
@click.option("--constraint-rm", multiple=True, help="Remove a placement constraint")
@click.option("--placement-pref-add", multiple=True, type=PLACEMENT_PREF, help="Add a placement preference")
@click.option("--placement-pref-rm", multiple=True, help="Remove a placement preference (spread=LABEL)")
@click.option("--mount-add", multiple=True, type=MOUNT, help="Add or replace a mount (by its target)")
@click.option("--mount-rm", multiple=True, help="Remove a mount by its target")
@click.option("--limit-memory", type=SIZE, help="Limit memory")
@click.option("--limit-cpu", type=CPUS, help="Limit CPUs")
@click.option("--limit-pids", type=click.IntRange(min=0), help="Limit the number of processes (0: unlimited)")
@click.option("--reserve-memory", type=SIZE, help="Reserve memory")
@click.option("--reserve-cpu", type=CPUS, help="Reserve CPUs")
@click.option("--restart-condition", type=click.Choice(["none", "on-failure", "any"]))
@click.option("--restart-delay", type=DURATION, help="Delay between restart attempts")
@click.option("--restart-max-attempts", type=click.IntRange(min=0),
              help="Maximum number of restarts (0: no limit)")
@click.option("--restart-window", type=DURATION, help="Window used to evaluate the restart policy")
@click.option("--stop-signal", help="Signal to stop the container")
@click.option("--stop-grace-period", type=DURATION)
@click.option("--force", is_flag=True, help="Replace every task even if nothing changed")
@click.option("--rollback", is_flag=True, help="Go back to the previous spec (as `service rollback`)")
@click.option("--secret-add", multiple=True, help="Add or update a secret: NAME or source=NAME,target=PATH,...")
@click.option("--secret-rm", multiple=True, help="Remove a secret (by name or id)")
@click.option("--config-add", multiple=True, help="Add or update a config: NAME or source=NAME,target=PATH,...")
@click.option("--config-rm", multiple=True, help="Remove a config (by name or id)")
@container_update_options
@network_update_options
@health_options
@update_policy_options
@click.option("--with-registry-auth", is_flag=True, help=WITH_REGISTRY_AUTH_HELP)
@resolve_image_option
@click.option("-d", "--detach", is_flag=True, help="Exit immediately instead of following the update")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output")
@click.argument("ref")
@click.pass_context
def update(ctx: click.Context, ref, detach, quiet, rollback, with_registry_auth, resolve_image,
           **o) -> None:
    """Update a service: tasks are replaced in rolling batches."""
    cli = ctx.find_object(Cli)
    if rollback:
        _refuse_with_rollback(ctx)
        _rollback(cli, ref, detach, quiet)
        return
    pinned: dict[str, str] = {}  # image -> its pin: looked up once, not per Conflict retry
    for _ in range(5):
        svc = cli.call("GET", api_path("services", ref))
        spec = edit_spec(cli, svc, o)
        try:
            auth = registry_auth_body(spec["task_template"]["container"]["image"],
                                      with_registry_auth)
            _pin(cli, spec, svc, pinned, resolve_image, o["image"] is not None,
                 with_registry_auth)
            cli.call("POST", api_path("services", svc["id"], "update"), {"spec": spec, **auth},
                     params={"version": str(svc["meta"]["version"])})
            break
        except errors.Conflict:
            continue
    click.echo(svc["spec"]["name"])
    if not detach:
        follow_update(cli, svc["id"], quiet)


def _pin(cli: Cli, spec: dict, svc: dict, pinned: dict[str, str], mode: str,
         image_given: bool, with_registry_auth: bool) -> None:
    """--resolve-image: always re-pins the tag (a re-push rolls out); changed only with --image.
    An unchanged digest leaves the spec as it was, so no task is replaced (unless --force)."""
    container = spec["task_template"]["container"]
    image = container["image"]
    if image not in pinned:
        pin_spec_image(cli_lookup(cli), spec, mode=mode, image_changed=image_given,
                       current=svc["spec"]["task_template"]["container"]["image"],
                       with_registry_auth=with_registry_auth)
        pinned[image] = container["image"]
    container["image"] = pinned[image]


@service.command()
@click.option("-d", "--detach", is_flag=True, help="Exit immediately")
@click.option("-q", "--quiet", is_flag=True)
@click.argument("ref")
@pass_cli
def rollback(cli: Cli, ref, detach, quiet) -> None:
    """Revert a service to its previous spec (again: back to the newer one)."""
    _rollback(cli, ref, detach, quiet)


def _rollback(cli: Cli, ref: str, detach: bool, quiet: bool) -> None:
    svc = cli.call("POST", api_path("services", ref, "rollback"))
    click.echo(svc["spec"]["name"])
    if not detach:
        follow_update(cli, svc["id"], quiet)


def follow_update(cli: Cli, service_id: str, quiet: bool, timeout: float = 600.0) -> None:
    """Until the update (or rollback) ends; says how it ended. Exit 1 if it did not complete."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        svc = cli.call("GET", api_path("services", service_id))
        status = svc["update_status"]
        if not quiet and (status["state"], status["message"]) != last:
            click.echo(f"{status['state'] or 'no update'}: {status['message']}".rstrip(": "))
            last = (status["state"], status["message"])
        if status["state"] in _DONE or not status["state"]:
            break
        if time.monotonic() > deadline:
            raise errors.Unavailable("the update is still going on; follow it with 'shoal service inspect'")
        time.sleep(0.25)
    if status["state"] in ("paused", "rollback_paused"):
        raise errors.FailedPrecondition(status["message"])
    wait_converged(cli, service_id, quiet)
