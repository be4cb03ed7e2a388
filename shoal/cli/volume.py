"""`shoal volume ...`: this node's volumes, as `docker volume` (the local driver).

Volumes are node-local: every command talks to the daemon of the node it runs on. The daemon
checks names, options and filters (worker/volumes.py); the CLI only splits KEY=VALUE flags.
"""
from __future__ import annotations

import json
import sys

import click

from common import errors
from common.units import format_size
from shoal.cli.client import Cli, api_path, pass_cli
from shoal.cli.output import print_json, print_table


def _pairs(values: tuple[str, ...], hint: str, *, value_required: bool = True) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not key or (value_required and not sep):
            raise click.BadParameter(f"{text!r}: expected KEY=VALUE", param_hint=hint)
        out[key] = value
    return out


def _filters(values: tuple[str, ...]) -> dict[str, list[str]]:
    """-f KEY=VALUE, repeatable, as Docker's filters map ('label!=x' is key 'label!')."""
    out: dict[str, list[str]] = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not key or not sep:
            raise click.BadParameter(f"{text!r}: expected KEY=VALUE (e.g. label=env, "
                                     "dangling=true)", param_hint="'-f' / '--filter'")
        out.setdefault(key, []).append(value)
    return out


@click.group()
def volume() -> None:
    """Manage volumes on this node (the local driver)."""


@volume.command("create")
@click.option("-d", "--driver", default="local", show_default=True, help="Volume driver")
@click.option("-o", "--opt", "opts", multiple=True,
              help="Driver option KEY=VALUE: type, device, o (repeatable; e.g. -o type=tmpfs "
                   "-o o=size=64m, or -o type=none -o o=bind -o device=/srv/data)")
@click.option("--label", "labels", multiple=True, help="Label KEY=VALUE (repeatable)")
@click.argument("name", required=False, default="")
@pass_cli
def volume_create(cli: Cli, driver: str, opts, labels, name: str) -> None:
    """Create a volume (without NAME: an anonymous one with a random name) and print its name."""
    if driver != "local":
        raise click.BadParameter(f"{driver!r}: this node has the local driver only",
                                 param_hint="'-d' / '--driver'")
    body = {"name": name, "driver": driver, "driver_opts": _pairs(opts, "'-o' / '--opt'"),
            "labels": _pairs(labels, "'--label'", value_required=False)}
    click.echo(cli.call("POST", "/volumes/create", body, timeout=120)["Name"])


@volume.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display volume names")
@click.option("-f", "--filter", "filters", multiple=True,
              help="Filter: label=KEY[=VALUE], name=PART, dangling=true|false, driver=local "
                   "(repeatable)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@pass_cli
def volume_ls(cli: Cli, quiet: bool, filters, fmt: str) -> None:
    """List the volumes of this node."""
    f = _filters(filters)
    items = cli.call("GET", "/volumes", params={"filters": json.dumps(f)} if f else None)
    if quiet:
        for v in items:
            click.echo(v["Name"])
    elif fmt == "json":
        print_json(items)
    else:
        print_table(["DRIVER", "VOLUME NAME"], [[v["Driver"], v["Name"]] for v in items])


@volume.command("inspect")
@click.argument("names", nargs=-1, required=True, metavar="VOLUME...")
@pass_cli
def volume_inspect(cli: Cli, names) -> None:
    """Display detailed information on volumes of this node."""
    found, failures = [], []
    for name in names:
        try:
            found.append(cli.call("GET", api_path("volumes", name)))
        except errors.ShoalError as exc:  # as docker: the others are shown, then the errors
            failures.append(exc.message)
    print_json(found)
    for message in failures:
        click.echo(f"Error: {message}", err=True)
    if failures:
        sys.exit(1)


@volume.command("rm")
@click.option("-f", "--force", is_flag=True,
              help="No error for a volume that does not exist (a volume in use is never removed)")
@click.argument("names", nargs=-1, required=True, metavar="VOLUME...")
@pass_cli
def volume_rm(cli: Cli, force: bool, names) -> None:
    """Remove volumes that no container of this node uses."""
    failed = False
    for name in names:
        try:
            cli.call("DELETE", api_path("volumes", name),
                     params={"force": "true"} if force else None, timeout=300)
            click.echo(name)
        except errors.ShoalError as exc:  # as docker: the others are still removed
            click.echo(f"Error: {exc.message}", err=True)
            failed = True
    if failed:
        sys.exit(1)


@volume.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove named volumes too, not only "
              "anonymous ones")
@click.option("--filter", "filters", multiple=True, help="Filter: label=KEY[=VALUE], "
              "label!=KEY[=VALUE] (repeatable)")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation")
@pass_cli
def volume_prune(cli: Cli, all_: bool, filters, force: bool) -> None:
    """Remove the volumes no container of this node uses: the anonymous ones, or all with -a."""
    f = _filters(filters)
    if not force:
        which = "all local volumes" if all_ else "anonymous local volumes"
        if not click.confirm(f"WARNING! This will remove {which} not used by at least one "
                             "container.\nAre you sure you want to continue?", default=False):
            return
    result = cli.call("POST", "/volumes/prune", {"all": all_, "filters": f}, timeout=600)
    if result["deleted"]:
        click.echo("Deleted Volumes:")
        for name in result["deleted"]:
            click.echo(name)
        click.echo("")
    click.echo(f"Total reclaimed space: {format_size(result['reclaimed'])}")
