"""`shoal secret ...` and `shoal config ...`, and the parsing of `service create --secret/--config`.

The two kinds share their commands and their reference syntax; a config's inspect --pretty also
prints its data, which a secret's answers never carry.
"""
from __future__ import annotations

import base64
import binascii
import sys
import time

import click

from common.durations import format_duration
from shoal.cli.client import Cli, api_path, pass_cli
from shoal.cli.output import format_option, print_json, print_listing

# The manager checks the size too; the CLI only spares sending a body it would refuse.
MAX_DATA_SIZE = 500 * 1024
_REFERENCE_KEYS = ("source", "src", "target", "uid", "gid", "mode")


def parse_reference_option(noun: str, text: str) -> dict:
    """`--NOUN NAME` or `--NOUN source=NAME,target=PATH,uid=0,gid=0,mode=0444` -> a reference
    as the API takes it (NOUN_name, target, uid, gid, mode). Target, uid, gid and mode default
    on the manager."""
    flag = f"--{noun}"
    text = text.strip()
    if not text:
        raise click.BadParameter(f"{flag} needs a {noun} name")
    if "=" not in text:
        return {f"{noun}_name": text}
    kv: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{part!r} in {text!r}: expected key=value pairs separated "
                                     "by commas")
        if key not in _REFERENCE_KEYS:
            raise click.BadParameter(f"unknown {noun} option {key!r} in {text!r}: one of "
                                     "source, target, uid, gid, mode")
        kv[key] = value.strip()
    name = kv.get("source") or kv.get("src")
    if not name:
        raise click.BadParameter(f"{flag} {text!r} needs source=NAME")
    ref: dict = {f"{noun}_name": name}
    if kv.get("target"):
        ref["target"] = kv["target"]
    for key in ("uid", "gid"):
        if key in kv:
            if not kv[key].isdigit():
                raise click.BadParameter(f"{flag} {text!r}: {key} must be a numeric id")
            ref[key] = kv[key]
    if "mode" in kv:
        try:
            mode = int(kv["mode"], 8)
        except ValueError:
            raise click.BadParameter(f"{flag} {text!r}: mode {kv['mode']!r} is not an octal "
                                     "file mode (e.g. 0400)") from None
        if not 0 <= mode <= 0o777:
            raise click.BadParameter(f"{flag} {text!r}: mode must be between 0 and 0777")
        ref["mode"] = mode
    return ref


def parse_labels(values) -> dict:
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


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"


def _text(data_b64: str) -> str:
    try:
        raw = base64.b64decode(data_b64)
    except (binascii.Error, ValueError):
        return data_b64
    return raw.decode("utf-8", errors="replace")


def _read_data(noun: str, file: str) -> bytes:
    if file == "-":
        data = sys.stdin.buffer.read(MAX_DATA_SIZE + 1)
    else:
        try:
            with open(file, "rb") as f:
                data = f.read(MAX_DATA_SIZE + 1)
        except OSError as exc:
            raise click.BadParameter(f"cannot read {file}: {exc.strerror}", param_hint="FILE")
    if len(data) > MAX_DATA_SIZE:
        raise click.ClickException(f"{noun} data is larger than the limit of {MAX_DATA_SIZE} "
                                   "bytes (500 KB)")
    return data


def data_object_group(noun: str, *, shows_data: bool) -> click.Group:
    """The `shoal NOUN` command group: create, ls, inspect, rm."""
    plural = f"{noun}s"
    group = click.Group(noun, help=f"Manage swarm {plural}.")

    @group.command(help=f"Create a {noun} from FILE, or from standard input with '-'.")
    @click.option("-l", "--label", multiple=True, help=f"{noun.capitalize()} labels (KEY=VALUE)")
    @click.argument("name")
    @click.argument("file")
    @pass_cli
    def create(cli: Cli, label, name, file) -> None:
        data = _read_data(noun, file)
        created = cli.call("POST", api_path(plural, "create"), {
            "name": name, "labels": parse_labels(label),
            "data": base64.b64encode(data).decode("ascii")})
        click.echo(created["id"])

    @group.command("ls", help=f"List {plural}.")
    @click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
    @format_option()
    @pass_cli
    def ls(cli: Cli, quiet, fmt) -> None:
        print_listing(cli.call("GET", api_path(plural)), quiet=quiet, fmt=fmt,
                      headers=["ID", "NAME", "CREATED", "UPDATED"],
                      rows=lambda items: [[r["id"], r["spec"]["name"], _ago(r["meta"]["created_at"]),
                                           _ago(r["meta"]["updated_at"])] for r in items])

    what = "data base64 in JSON" if shows_data else "never their data"
    @group.command(help=f"Display detailed information on one or more {plural} ({what}).")
    @click.option("--pretty", is_flag=True, help="Print in a human friendly format")
    @click.argument("refs", nargs=-1, required=True, metavar=plural.upper() + "...")
    @pass_cli
    def inspect(cli: Cli, pretty, refs) -> None:
        found = [cli.call("GET", api_path(plural, ref)) for ref in refs]
        if not pretty:
            print_json(found)
            return
        for obj in found:
            click.echo(f"ID:          {obj['id']}\nName:        {obj['spec']['name']}")
            if obj["spec"]["labels"]:
                click.echo("Labels:")
                for k, v in sorted(obj["spec"]["labels"].items()):
                    click.echo(f" - {k}={v}")
            click.echo(f"Created at:  {_utc(obj['meta']['created_at'])}")
            click.echo(f"Updated at:  {_utc(obj['meta']['updated_at'])}")
            if shows_data:
                click.echo("Data:")
                click.echo(_text(obj["spec"].get("data", "")))
            click.echo()

    @group.command(help=f"Remove one or more {plural}.")
    @click.argument("refs", nargs=-1, required=True, metavar=plural.upper() + "...")
    @pass_cli
    def rm(cli: Cli, refs) -> None:
        for ref in refs:
            cli.call("DELETE", api_path(plural, ref))
            click.echo(ref)

    return group


secret = data_object_group("secret", shows_data=False)
config = data_object_group("config", shows_data=True)
