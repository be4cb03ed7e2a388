"""`shoal config ...`, and the parsing of `service create --config`."""
from __future__ import annotations

import base64
import binascii
import sys
import time

import click

from shoal.cli.client import Cli, pass_cli
from shoal.cli.output import format_option, print_json, print_table
from shoal.cli.secret import _ago, _labels, parse_secret_option

MAX_CONFIG_SIZE = 500 * 1024


def parse_config_option(text: str) -> dict:
    """`--config NAME` or `--config source=NAME,target=PATH,uid=0,gid=0,mode=0444` -> a
    ConfigReference as the API takes it. Target, uid, gid and mode default on the manager
    (/NAME, 0, 0, 0444)."""
    try:
        ref = parse_secret_option(text)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message.replace("secret", "config")) from None
    ref["config_name"] = ref.pop("secret_name")
    return ref


@click.group()
def config() -> None:
    """Manage swarm configs."""


@config.command()
@click.option("-l", "--label", multiple=True, help="Config labels (KEY=VALUE)")
@click.argument("name")
@click.argument("file")
@pass_cli
def create(cli: Cli, label, name, file) -> None:
    """Create a config from FILE, or from standard input with '-'."""
    if file == "-":
        data = sys.stdin.buffer.read(MAX_CONFIG_SIZE + 1)
    else:
        try:
            with open(file, "rb") as f:
                data = f.read(MAX_CONFIG_SIZE + 1)
        except OSError as exc:
            raise click.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="FILE")
    if len(data) > MAX_CONFIG_SIZE:
        raise click.ClickException(f"config data is larger than the limit of {MAX_CONFIG_SIZE} "
                                   "bytes (500 KB)")
    created = cli.call("POST", "/configs/create", {
        "name": name, "labels": _labels(label), "data": base64.b64encode(data).decode("ascii")})
    click.echo(created["id"])


@config.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@format_option()
@pass_cli
def ls(cli: Cli, quiet, fmt) -> None:
    """List configs."""
    rows = cli.call("GET", "/configs")
    if quiet:
        for r in rows:
            click.echo(r["id"])
        return
    if fmt == "json":
        print_json(rows)
        return
    print_table(["ID", "NAME", "CREATED", "UPDATED"],
                [[r["id"], r["spec"]["name"], _ago(r["meta"]["created_at"]),
                  _ago(r["meta"]["updated_at"])] for r in rows])


def _text(data_b64: str) -> str:
    try:
        raw = base64.b64decode(data_b64)
    except (binascii.Error, ValueError):
        return data_b64
    return raw.decode("utf-8", errors="replace")


@config.command()
@click.option("--pretty", is_flag=True, help="Print in a human friendly format")
@click.argument("configs", nargs=-1, required=True)
@pass_cli
def inspect(cli: Cli, pretty, configs) -> None:
    """Display detailed information on one or more configs (data base64 in JSON)."""
    found = [cli.call("GET", f"/configs/{ref}") for ref in configs]
    if not pretty:
        print_json(found)
        return
    for c in found:
        click.echo(f"ID:          {c['id']}\nName:        {c['spec']['name']}")
        if c["spec"]["labels"]:
            click.echo("Labels:")
            for k, v in sorted(c["spec"]["labels"].items()):
                click.echo(f" - {k}={v}")
        click.echo(f"Created at:  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(c['meta']['created_at']))} UTC")
        click.echo(f"Updated at:  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(c['meta']['updated_at']))} UTC")
        click.echo("Data:")
        click.echo(_text(c["spec"].get("data", "")))
        click.echo()


@config.command()
@click.argument("configs", nargs=-1, required=True)
@pass_cli
def rm(cli: Cli, configs) -> None:
    """Remove one or more configs."""
    for ref in configs:
        cli.call("DELETE", f"/configs/{ref}")
        click.echo(ref)
