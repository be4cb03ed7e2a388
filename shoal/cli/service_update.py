"""`shoal service update` and `shoal service rollback`: change a service and follow the rollout."""
from __future__ import annotations

import time

import click

from common import errors
from shoal.cli.client import Cli, api_path, pass_cli
from shoal.cli.data_objects import parse_reference_option
from shoal.cli.network_flags import apply_network_update, network_update_options
from shoal.cli.service import CPUS, SIZE, parse_mount, service, wait_converged
from shoal.cli.service_flags import apply_health, apply_policies, health_options, update_policy_options
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
    out = [e for e in env if e.split("=", 1)[0] not in rm]
    for item in add:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--env-add")
        name = item.split("=", 1)[0]
        out = [e for e in out if e.split("=", 1)[0] != name] + [item]
    return out


@service.command(context_settings={"allow_interspersed_args": True})
@click.option("--image", help="Service image")
@click.option("--args", "args_", help="Service command args (space separated)")
@click.option("--env-add", multiple=True, help="Add or update an environment variable")
@click.option("--env-rm", multiple=True, help="Remove an environment variable")
@click.option("--replicas", type=click.IntRange(min=0), help="Number of tasks")
@click.option("--constraint-add", multiple=True, help="Add a placement constraint")
@click.option("--constraint-rm", multiple=True, help="Remove a placement constraint")
@click.option("--mount-add", multiple=True, help="Add a mount")
@click.option("--mount-rm", multiple=True, help="Remove a mount by its target")
@click.option("--limit-memory", type=SIZE, help="Limit memory")
@click.option("--limit-cpu", type=CPUS, help="Limit CPUs")
@click.option("--restart-condition", type=click.Choice(["none", "on-failure", "any"]))
@click.option("--stop-grace-period", type=DURATION)
@click.option("--force", is_flag=True, help="Replace every task even if nothing changed")
@click.option("--secret-add", multiple=True, help="Add or update a secret: NAME or source=NAME,target=PATH,...")
@click.option("--secret-rm", multiple=True, help="Remove a secret (by name or id)")
@click.option("--config-add", multiple=True, help="Add or update a config: NAME or source=NAME,target=PATH,...")
@click.option("--config-rm", multiple=True, help="Remove a config (by name or id)")
@network_update_options
@health_options
@update_policy_options
@click.option("-d", "--detach", is_flag=True, help="Exit immediately instead of following the update")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output")
@click.argument("ref")
@pass_cli
def update(cli: Cli, ref, detach, quiet, **o) -> None:
    """Update a service: tasks are replaced in rolling batches."""
    for _ in range(5):
        svc = cli.call("GET", api_path("services", ref))
        spec = svc["spec"]
        tt = spec["task_template"]
        c = tt["container"]
        if o["image"]:
            c["image"] = o["image"]
        if o["args_"] is not None:
            c["args"] = o["args_"].split()
        c["env"] = _edit_env(c["env"], o["env_add"], o["env_rm"])
        if o["replicas"] is not None:
            if spec["mode"]["mode"] != "replicated":
                raise click.BadParameter("only replicated services have replicas", param_hint="--replicas")
            spec["mode"]["replicas"] = o["replicas"]
        constraints = [x for x in tt["placement"]["constraints"] if x not in o["constraint_rm"]]
        tt["placement"]["constraints"] = constraints + [x for x in o["constraint_add"] if x not in constraints]
        c["mounts"] = [m for m in c["mounts"] if m["target"] not in o["mount_rm"]] + \
            [parse_mount(m) for m in o["mount_add"]]
        if o["limit_memory"] is not None:
            tt["resources"]["limits"]["memory_bytes"] = o["limit_memory"]
        if o["limit_cpu"] is not None:
            tt["resources"]["limits"]["nano_cpus"] = o["limit_cpu"]
        if o["restart_condition"]:
            tt["restart_policy"]["condition"] = o["restart_condition"]
        if o["stop_grace_period"] is not None:
            c["stop_grace_period"] = o["stop_grace_period"]
        if o["force"]:
            tt["force_update"] = tt.get("force_update", 0) + 1
        c["secrets"] = _edit_refs(c.get("secrets") or [], o["secret_add"], o["secret_rm"], "secret")
        c["configs"] = _edit_refs(c.get("configs") or [], o["config_add"], o["config_rm"], "config")
        apply_health(c, o)
        apply_policies(spec, o)
        apply_network_update(spec, svc, o, lambda ref: cli.call("GET", api_path("networks", ref))["id"])
        try:
            cli.call("POST", api_path("services", svc["id"], "update"), {"spec": spec},
                     params={"version": str(svc["meta"]["version"])})
            break
        except errors.Conflict:
            continue
    click.echo(svc["spec"]["name"])
    if not detach:
        follow_update(cli, svc["id"], quiet)


@service.command()
@click.option("-d", "--detach", is_flag=True, help="Exit immediately")
@click.option("-q", "--quiet", is_flag=True)
@click.argument("ref")
@pass_cli
def rollback(cli: Cli, ref, detach, quiet) -> None:
    """Revert a service to its previous spec (again: back to the newer one)."""
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
