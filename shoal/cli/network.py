"""`shoal network ...`: overlay networks."""
from __future__ import annotations

import click

from shoal.cli.client import Cli, api_path, pass_cli
from shoal.cli.output import format_option, print_json, print_listing
from shoal.cli.data_objects import parse_labels


@click.group()
def network() -> None:
    """Manage overlay networks."""


@network.command()
@click.option("-d", "--driver", default="overlay", show_default=True, help="Network driver")
@click.option("--subnet", default="", help="Subnet in CIDR form (default: the next free /24 of "
                                           "the swarm's address pool)")
@click.option("--gateway", default="", help="Gateway address of the subnet")
@click.option("--attachable", is_flag=True, help="Let standalone containers attach")
@click.option("--ingress", is_flag=True, help="Create the routing-mesh network")
@click.option("-l", "--label", multiple=True, help="Network labels (KEY=VALUE)")
@click.argument("name")
@pass_cli
def create(cli: Cli, driver, subnet, gateway, attachable, ingress, label, name) -> None:
    """Create a network."""
    ipam = [{"subnet": subnet, "gateway": gateway}] if subnet or gateway else []
    created = cli.call("POST", "/networks/create", {
        "name": name, "driver": driver, "ipam": ipam, "attachable": attachable,
        "ingress": ingress, "labels": parse_labels(label)})
    click.echo(created["id"])


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@format_option()
@pass_cli
def ls(cli: Cli, quiet, fmt) -> None:
    """List networks."""
    print_listing(cli.call("GET", "/networks"), quiet=quiet, fmt=fmt,
                  headers=["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET", "SERVICES"],
                  rows=lambda items: [[r["id"][:12], r["spec"]["name"], r["spec"]["driver"], "swarm",
                                       r["subnet"], len(r["services"])] for r in items])


@network.command()
@click.argument("networks", nargs=-1, required=True)
@pass_cli
def inspect(cli: Cli, networks) -> None:
    """Display detailed information on one or more networks."""
    print_json([cli.call("GET", api_path("networks", ref)) for ref in networks])


@network.command()
@click.argument("networks", nargs=-1, required=True)
@pass_cli
def rm(cli: Cli, networks) -> None:
    """Remove one or more networks."""
    for ref in networks:
        cli.call("DELETE", api_path("networks", ref))
        click.echo(ref)
