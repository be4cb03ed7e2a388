"""`shoal image build`: build a Dockerfile on this node, printing docker's plain progress."""
from __future__ import annotations

import os
import time
from typing import Optional

import click

from common import errors
from common.imageref import parse_ref
from common.registryauth import DockerConfig
from shoal.cli.client import Cli, pass_cli


def _build_args(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, eq, value = item.partition("=")
        if not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--build-arg")
        if not eq:
            # docker's rule: `--build-arg NAME` takes the value from the caller's environment
            env = os.environ.get(name)
            if env is None:
                continue
            value = env
        out[name] = value
    return out


class PlainProgress:
    """docker's `--progress=plain`: `#N [stage K/M] STEP`, its output, `#N CACHED|DONE`."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}

    def record(self, r: dict) -> None:
        n = r.get("id")
        if "name" in r:
            self.started[n] = time.monotonic()
            click.echo(f"#{n} {r['name']}")
        elif "log" in r:
            click.echo(f"#{n} {time.monotonic() - self.started.get(n, time.monotonic()):.3f} "
                       f"{r['log']}")
        elif "cached" in r:
            click.echo(f"#{n} CACHED\n")
        elif "done" in r:
            click.echo(f"#{n} DONE {r['done']:.1f}s\n")
        elif "warning" in r:
            click.echo(r["warning"], err=True)
        elif "failed" in r:
            output = (r.get("output") or "").rstrip("\n")
            if output:
                click.echo("------", err=True)
                for line in output.splitlines()[-20:]:
                    click.echo(f" > {line}", err=True)
                click.echo("------", err=True)
        elif "tagged" in r:
            click.echo(f"naming to {r['tagged']} done")
        elif "image" in r:
            click.echo(f"writing image {r['image']} done")


@click.command("build")
@click.option("-t", "--tag", "tags", multiple=True, metavar="NAME:TAG",
              help="Name the image (repeatable)")
@click.option("-f", "--file", "dockerfile", default=None, type=click.Path(dir_okay=False),
              help="The Dockerfile (default: CONTEXT/Dockerfile)")
@click.option("--build-arg", "build_args", multiple=True, metavar="NAME=VALUE",
              help="Set a build-time variable an ARG declares (repeatable)")
@click.option("--target", default="", help="Stop at this build stage")
@click.option("--no-cache", is_flag=True, help="Run every step, reusing no cached one")
@click.option("--network", type=click.Choice(["default", "none", "host"]), default="default",
              show_default=True, help="The network of RUN steps: none, or the node's (host)")
@click.option("--push", is_flag=True, help="Push the tags to their registries after the build")
@click.argument("context", type=click.Path(exists=True, file_okay=False))
@pass_cli
def image_build(cli: Cli, tags, dockerfile, build_args, target, no_cache, network, push,
                context) -> None:
    """Build an image from a Dockerfile on this node (RUN steps run in runc containers)."""
    if cli.remote is not None:
        raise errors.InvalidArgument("image build reads the context from this node's disk: "
                                     "run it on the node itself, not through -H tcp://...")
    for t in tags:
        parse_ref(t)  # a bad name fails before anything is built
    body = {"context": os.path.abspath(context),
            "dockerfile": os.path.abspath(dockerfile) if dockerfile else None,
            "tags": list(tags), "build_args": _build_args(build_args), "target": target,
            "no_cache": no_cache, "network": network}
    progress = PlainProgress()
    image_id: Optional[str] = None
    for record in cli.stream("POST", "/images/build", body):
        progress.record(record)
        image_id = record.get("image", image_id)
    if push:
        for t in tags:
            _push(cli, t)
    elif image_id and not tags:
        click.echo(image_id)


def _push(cli: Cli, ref: str) -> None:
    body: dict = {"ref": ref}
    host = parse_ref(ref).host
    creds = DockerConfig().credentials(host) if host else None
    if creds is not None:
        body["auth"] = creds.plain()
    for record in cli.stream("POST", "/images/push", body):
        if record.get("id") is None and record.get("status"):
            click.echo(record["status"])
