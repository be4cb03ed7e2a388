"""`shoal secret ...`, and the parsing of `service create --secret`."""
from __future__ import annotations

import base64
import sys
import time

import click

from common.durations import format_duration
from shoal.cli.client import Cli, pass_cli
from shoal.cli.output import format_option, print_json, print_table

MAX_SECRET_SIZE = 500 * 1024
_SECRET_KEYS = {"source", "src", "target", "uid", "gid", "mode"}


def parse_secret_option(text: str) -> dict:
    """`--secret NAME` or `--secret source=NAME,target=PATH,uid=0,gid=0,mode=0444` -> a
    SecretReference as the API takes it (secret_name, target, uid, gid, mode). Target, uid,
    gid and mode default on the manager (/run/secrets/NAME, 0, 0, 0444)."""
    text = text.strip()
    if not text:
        raise click.BadParameter("--secret needs a secret name")
    if "=" not in text:
        return {"secret_name": text}
    kv: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{part!r} in {text!r}: expected key=value pairs separated by commas")
        if key not in _SECRET_KEYS:
            raise click.BadParameter(f"unknown secret option {key!r} in {text!r}: one of "
                                     "source, target, uid, gid, mode")
        kv[key] = value.strip()
    name = kv.get("source") or kv.get("src")
    if not name:
        raise click.BadParameter(f"--secret {text!r} needs source=NAME")
    ref: dict = {"secret_name": name}
    if kv.get("target"):
        ref["target"] = kv["target"]
    for key in ("uid", "gid"):
        if key in kv:
            if not kv[key].isdigit():
                raise click.BadParameter(f"--secret {text!r}: {key} must be a numeric id")
            ref[key] = kv[key]
    if "mode" in kv:
        try:
            mode = int(kv["mode"], 8)
        except ValueError:
            raise click.BadParameter(f"--secret {text!r}: mode {kv['mode']!r} is not an octal "
                                     "file mode (e.g. 0400)") from None
        if not 0 <= mode <= 0o777:
            raise click.BadParameter(f"--secret {text!r}: mode must be between 0 and 0777")
        ref["mode"] = mode
    return ref


def _labels(values) -> dict:
    out = {}
    for v in values:
        key, _, val = v.partition("=")
        if not key:
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE", param_hint="--label")
        out[key] = val
    return out


def _ago(ts: float) -> str:
    ago = max(0, time.time() - (ts or 0))
    return f"{format_duration(round(ago))} ago" if ago >= 1 else "less than a second ago"


@click.group()
def secret() -> None:
    """Manage swarm secrets."""


@secret.command()
@click.option("-l", "--label", multiple=True, help="Secret labels (KEY=VALUE)")
@click.argument("name")
@click.argument("file")
@pass_cli
def create(cli: Cli, label, name, file) -> None:
    """Create a secret from FILE, or from standard input with '-'."""
    if file == "-":
        data = sys.stdin.buffer.read(MAX_SECRET_SIZE + 1)
    else:
        try:
            with open(file, "rb") as f:
                data = f.read(MAX_SECRET_SIZE + 1)
        except OSError as exc:
            raise click.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="FILE")
    # The manager checks the size too; this only spares sending a too-large body.
    if len(data) > MAX_SECRET_SIZE:
        raise click.ClickException(f"secret data is larger than the limit of {MAX_SECRET_SIZE} "
                                   "bytes (500 KB)")
    created = cli.call("POST", "/secrets/create", {
        "name": name, "labels": _labels(label), "data": base64.b64encode(data).decode("ascii")})
    click.echo(created["id"])


@secret.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@format_option()
@pass_cli
def ls(cli: Cli, quiet, fmt) -> None:
    """List secrets."""
    rows = cli.call("GET", "/secrets")
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


@secret.command()
@click.option("--pretty", is_flag=True, help="Print in a human friendly format")
@click.argument("secrets", nargs=-1, required=True)
@pass_cli
def inspect(cli: Cli, pretty, secrets) -> None:
    """Display detailed information on one or more secrets (never their data)."""
    found = [cli.call("GET", f"/secrets/{ref}") for ref in secrets]
    if not pretty:
        print_json(found)
        return
    for s in found:
        click.echo(f"ID:          {s['id']}\nName:        {s['spec']['name']}")
        if s["spec"]["labels"]:
            click.echo("Labels:")
            for k, v in sorted(s["spec"]["labels"].items()):
                click.echo(f" - {k}={v}")
        click.echo(f"Created at:  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(s['meta']['created_at']))} UTC")
        click.echo(f"Updated at:  {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(s['meta']['updated_at']))} UTC")
        click.echo()


@secret.command()
@click.argument("secrets", nargs=-1, required=True)
@pass_cli
def rm(cli: Cli, secrets) -> None:
    """Remove one or more secrets."""
    for ref in secrets:
        cli.call("DELETE", f"/secrets/{ref}")
        click.echo(ref)
