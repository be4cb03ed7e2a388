"""`shoal system df|prune`: this node's disk use by images, containers, volumes and build cache,
and freeing what nothing uses."""
from __future__ import annotations

import click

from common.units import format_size
from shoal.cli.client import Cli, pass_cli
from shoal.cli.output import print_json


@click.group()
def system() -> None:
    """Manage this node's disk use."""


@system.command("df")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@pass_cli
def system_df(cli: Cli, fmt) -> None:
    """Show the disk space this node's images, containers, volumes and build cache use."""
    data = cli.call("GET", "/system/df", timeout=300)
    if fmt == "json":
        print_json(data)
        return
    rows = [["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]]
    for key, label in (("images", "Images"), ("containers", "Containers"),
                       ("volumes", "Local Volumes"), ("build_cache", "Build Cache")):
        d = data[key]
        share = f" ({100 * d['reclaimable'] // d['size']}%)" if d["size"] else ""
        rows.append([label, str(d["count"]), str(d["active"]), format_size(d["size"]),
                     format_size(d["reclaimable"]) + share])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@system.command("prune")
@click.option("-a", "--all", "all_unused", is_flag=True,
              help="Remove all unused images, not just dangling ones")
@click.option("--volumes", is_flag=True, help="Prune anonymous volumes no container uses")
@click.option("-f", "--force", is_flag=True, help="Do not prompt for confirmation")
@pass_cli
def system_prune(cli: Cli, all_unused, volumes, force) -> None:
    """Remove stopped standalone containers, unused images (dangling, or all with -a) and,
    with --volumes, anonymous volumes no container uses."""
    items = ["all stopped containers (run with 'shoal container run')"]
    if volumes:
        items.append("all anonymous volumes not used by at least one container")
    items.append("all images without at least one container associated to them"
                 if all_unused else "all dangling images")
    if not force:
        click.echo("WARNING! This will remove:")
        for item in items:
            click.echo(f"  - {item}")
        if not click.confirm("\nAre you sure you want to continue?", default=False):
            return
    answer = cli.call("POST", "/system/prune", {"all": all_unused, "volumes": volumes},
                      timeout=900)
    for title, key in (("Deleted Containers:", "containers"), ("Deleted Volumes:", "volumes")):
        if answer[key]:
            click.echo(title)
            for name in answer[key]:
                click.echo(name)
            click.echo()
    if answer["images"]:
        click.echo("Deleted Images:")
        for line in answer["images"]:
            verb, _, what = line.partition(" ")
            click.echo(f"{verb}: {what}")
        click.echo()
    for note in answer.get("notes", []):
        click.echo(f"Note: {note}", err=True)
    click.echo(f"Total reclaimed space: {format_size(answer['reclaimed'])}")
