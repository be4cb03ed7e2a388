"""`shoal stack ...`: deploy Compose files as stacks, and look after them."""
from __future__ import annotations

import re
import sys
import time

import click
import yaml

from common import errors
from common.imageref import parse_ref
from shoal.cli.client import Cli, pass_cli
from shoal.cli.login import registry_auth_body
from shoal.cli.resolve import cli_lookup, resolve_image_option, stack_image
from shoal.cli.output import print_json, print_table
from shoal.cli.service import _service_rows, print_tasks
from shoal.stack.convert import convert, refuse_unsupported
from shoal.stack.deploy import (Deployer, remove_stack, rollback_stack, stack_services, stacks,
                                wait_running)
from shoal.stack.project import load_project

_STACK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,30}\Z")


def _check_name(name: str) -> str:
    if not _STACK_NAME.match(name):
        raise click.BadParameter(f"{name!r}: a stack name is 1-31 letters, digits, '_', '.' or "
                                 "'-', starting with a letter or digit", param_hint="NAME")
    return name


def _warn(text: str) -> None:
    click.echo(f"WARNING: {text}", err=True)


def compose_options(fn):
    fn = click.option("--env-file", help="Variables for interpolation (default: .env beside the "
                      "first file)")(fn)
    fn = click.option("-c", "--compose-file", "files", multiple=True, required=True,
                      help="Compose file (repeat to merge; '-' reads standard input)")(fn)
    return fn


@click.group()
def stack() -> None:
    """Manage stacks: services, networks, secrets and configs deployed from Compose files."""


@stack.command()
@compose_options
@click.option("--prune", is_flag=True, help="Remove services that are no longer in the files")
@click.option("--allow-unsupported", is_flag=True,
              help="Deploy although some keys cannot be honoured (each is named in a warning)")
@click.option("-d", "--detach", is_flag=True, help="Do not wait for the services to run")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="Seconds to wait for the services to run")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and errors")
@click.option("--with-registry-auth", is_flag=True,
              help="Send your registry credentials (shoal login) for the images that name a "
                   "registry to the nodes that run their tasks")
@resolve_image_option
@click.argument("name")
@pass_cli
def deploy(cli: Cli, files, env_file, prune, allow_unsupported, detach, timeout, quiet,
           with_registry_auth, resolve_image, name) -> None:
    """Deploy a new stack or update an existing one."""
    _check_name(name)
    project = load_project(list(files), env_file=env_file)
    plan = convert(project, name)
    if not allow_unsupported:
        refuse_unsupported(plan)
    for problem in plan.unsupported:
        _warn(f"{problem} (dropped: --allow-unsupported)")
    for warning in plan.warnings:
        _warn(warning)
    echo = (lambda _: None) if quiet else click.echo
    started = time.monotonic()
    auth = (lambda image: registry_auth_body(image, True) if parse_ref(image).host else {}) \
        if with_registry_auth else (lambda image: {})
    lookup = cli_lookup(cli)
    pin = (lambda image, current: stack_image(lookup, image, current, mode=resolve_image,
                                              with_registry_auth=with_registry_auth))
    outcome = Deployer(cli, plan, echo, auth, pin).deploy(prune)
    if outcome.unchanged and not quiet:
        click.echo(f"Unchanged: {', '.join(s.split(' ', 1)[1] for s in outcome.unchanged)}")
    if detach:
        return
    wait_running(cli, list(outcome.service_ids.values()), timeout, echo)
    if not quiet:
        click.echo(f"Stack {name} is running ({time.monotonic() - started:.1f}s)")


@stack.command("config")
@compose_options
def config_command(files, env_file) -> None:
    """Print the merged and interpolated Compose file."""
    project = load_project(list(files), env_file=env_file)
    project.raise_if_any()
    for warning in project.warnings:
        _warn(warning)
    sys.stdout.write(yaml.safe_dump(project.data, sort_keys=False, default_flow_style=False,
                                    allow_unicode=True))


@stack.command("ls")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@pass_cli
def ls(cli: Cli, fmt) -> None:
    """List stacks."""
    found = stacks(cli)
    if fmt == "json":
        print_json([{"name": k, "services": v} for k, v in sorted(found.items())])
        return
    print_table(["NAME", "SERVICES"], [[k, v] for k, v in sorted(found.items())])


@stack.command("services")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.argument("name")
@pass_cli
def services(cli: Cli, quiet, fmt, name) -> None:
    """List the services of a stack."""
    found = _services_or_fail(cli, name)
    if fmt == "json":
        print_json(found)
    elif quiet:
        for s in found:
            click.echo(s["id"])
    else:
        print_table(["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], _service_rows(found))


def _services_or_fail(cli: Cli, name: str) -> list[dict]:
    found = sorted(stack_services(cli, name), key=lambda s: s["spec"]["name"])
    if not found:
        raise errors.NotFound(f"nothing found in stack: {name}")
    return found


@stack.command("ps")
@click.option("--no-trunc", is_flag=True, help="Do not truncate output")
@click.option("-q", "--quiet", is_flag=True, help="Only display task IDs")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.argument("name")
@pass_cli
def ps(cli: Cli, no_trunc, quiet, fmt, name) -> None:
    """List the tasks of a stack (and what a service still waits for)."""
    found = _services_or_fail(cli, name)
    tasks = []
    for s in found:
        tasks += sorted(cli.call("GET", "/tasks", params={"service": s["id"]}),
                        key=lambda t: (t["slot"], t["node_id"], -t["meta"]["created_at"]))
    print_tasks(tasks, no_trunc, quiet, fmt)
    if fmt != "json" and not quiet:
        for s in found:
            if s.get("dependency_wait"):
                click.echo(f"{s['spec']['name']}: no task yet, {s['dependency_wait']}")


@stack.command("rm")
@click.argument("names", nargs=-1, required=True)
@pass_cli
def rm(cli: Cli, names) -> None:
    """Remove stacks: their services, networks, secrets and configs (named volumes stay)."""
    missing = [n for n in names if not remove_stack(cli, n, click.echo)]
    if missing:
        raise errors.NotFound(f"nothing found in stack: {', '.join(missing)}")


@stack.command("rollback")
@click.option("-d", "--detach", is_flag=True, help="Do not wait for the rollbacks to finish")
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True)
@click.argument("name")
@pass_cli
def rollback(cli: Cli, detach, timeout, name) -> None:
    """Return every service of a stack to its spec before the last deploy."""
    _services_or_fail(cli, name)
    rolled = rollback_stack(cli, name, click.echo)
    if rolled and not detach:
        wait_running(cli, rolled, timeout, click.echo)
