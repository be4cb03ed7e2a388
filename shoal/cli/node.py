"""`shoal node ...`"""
from __future__ import annotations

import click

from common import errors
from shoal.cli.client import Cli, api_path, pass_cli
from shoal.cli.output import format_option, print_json, print_listing

_MANAGER_STATUS = {"leader": "Leader", "reachable": "Reachable", "unreachable": "Unreachable"}


def summarize(node: dict, self_id: str) -> dict:
    ms = node.get("manager_status") or {}
    return {
        "id": node["id"],
        "self": node["id"] == self_id,
        "hostname": node["description"]["hostname"],
        "status": node["status"]["state"],
        "message": node["status"]["message"],
        "availability": node["spec"]["availability"],
        "role": node["role"],
        "manager_status": ms.get("reachability", "") if node["role"] == "manager" else "",
        "addr": node["status"]["addr"],
        "labels": node["spec"]["labels"],
        "engine_version": node["description"]["engine_version"],
    }


def _self_id(cli: Cli) -> str:
    return cli.call("GET", "/info")["swarm"].get("node_id", "")


@click.group()
def node() -> None:
    """Manage swarm nodes."""


@node.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@format_option()
@pass_cli
def ls(cli: Cli, quiet, fmt) -> None:
    """List nodes in the swarm (the node you are on is marked with *)."""
    nodes = cli.call("GET", "/nodes")
    me = _self_id(cli)
    rows = [summarize(n, me) for n in nodes]
    print_listing(rows, quiet=quiet, fmt=fmt,
                  headers=["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"],
                  rows=lambda items: [[r["id"] + (" *" if r["self"] else ""), r["hostname"],
                                       r["status"].capitalize(), r["availability"].capitalize(),
                                       _MANAGER_STATUS.get(r["manager_status"], ""),
                                       r["engine_version"]] for r in items])


@node.command()
@click.option("--pretty", is_flag=True, help="Print in a human friendly format")
@click.argument("nodes", nargs=-1, required=True)
@pass_cli
def inspect(cli: Cli, pretty, nodes) -> None:
    """Display detailed information on one or more nodes ('self' is this node)."""
    found = [cli.call("GET", api_path("nodes", _ref(cli, n))) for n in nodes]
    if not pretty:
        print_json(found)
        return
    for n in found:
        s = summarize(n, "")
        click.echo(f"ID:            {s['id']}\nHostname:      {s['hostname']}\nStatus:        "
                   f"{s['status'].capitalize()} {s['message']}\nAvailability:  "
                   f"{s['availability'].capitalize()}\nRole:          {s['role']}\nAddress:       {s['addr']}")
        if s["manager_status"]:
            click.echo(f"Manager Status: {_MANAGER_STATUS[s['manager_status']]}")
        if s["labels"]:
            click.echo("Labels:")
            for k, v in sorted(s["labels"].items()):
                click.echo(f" - {k}={v}")
        click.echo()


def _ref(cli: Cli, ref: str) -> str:
    return _self_id(cli) if ref == "self" else ref


def _update(cli: Cli, ref: str, change) -> dict:
    # Read-modify-write with the version read: a concurrent change makes this retry, not clobber.
    for _ in range(5):
        current = cli.call("GET", api_path("nodes", _ref(cli, ref)))
        spec = {"labels": dict(current["spec"]["labels"]),
                "availability": current["spec"]["availability"],
                "role": current["spec"]["desired_role"]}
        change(spec)
        try:
            return cli.call("POST", api_path("nodes", current["id"], "update"), {"spec": spec},
                            params={"version": str(current["meta"]["version"])})
        except errors.Conflict:
            continue
    raise errors.Conflict(f"node {ref} kept changing while it was being updated; try again")


def _label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not key:
        raise click.BadParameter(f"{value!r}: a label is KEY=VALUE (or KEY)")
    return key, val


@node.command()
@click.option("--availability", type=click.Choice(["active", "pause", "drain"]),
              help="Availability of the node")
@click.option("--label-add", multiple=True, help="Add or update a node label (KEY=VALUE)")
@click.option("--label-rm", multiple=True, help="Remove a node label if it exists")
@click.option("--role", type=click.Choice(["worker", "manager"]), help="Role of the node")
@click.argument("ref")
@pass_cli
def update(cli: Cli, availability, label_add, label_rm, role, ref) -> None:
    """Update a node."""
    adds = [_label(v) for v in label_add]

    def change(spec: dict) -> None:
        if availability:
            spec["availability"] = availability
        if role:
            spec["role"] = role
        for k, v in adds:
            spec["labels"][k] = v
        for k in label_rm:
            spec["labels"].pop(k, None)
    _update(cli, ref, change)
    click.echo(ref)


def _set_role(role: str):
    @click.argument("refs", nargs=-1, required=True)
    @pass_cli
    def command(cli: Cli, refs) -> None:
        for ref in refs:
            before = cli.call("GET", api_path("nodes", _ref(cli, ref)))
            name = before["description"]["hostname"] or before["id"]
            if before["role"] == role:
                click.echo(f"Node {name} is already a {role}.")
                continue
            _update(cli, ref, lambda spec: spec.update(role=role))
            verb = "promoted to a manager" if role == "manager" else "demoted"
            click.echo(f"Node {name} {verb} in the swarm.")
    return command


node.command("promote", help="Promote one or more nodes to manager in the swarm.")(_set_role("manager"))
node.command("demote", help="Demote one or more nodes from manager in the swarm.")(_set_role("worker"))


@node.command("rm")
@click.option("-f", "--force", is_flag=True, help="Force remove a node from the swarm")
@click.argument("refs", nargs=-1, required=True)
@pass_cli
def rm(cli: Cli, force, refs) -> None:
    """Remove one or more nodes from the swarm."""
    for ref in refs:
        cli.call("DELETE", api_path("nodes", _ref(cli, ref)), params={"force": "true" if force else "false"})
        click.echo(ref)
