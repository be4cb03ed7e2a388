"""`shoal swarm ca [--rotate]`: show the root CA, or rotate it and follow the rotation as
docker's `swarm ca` does (manager/controlapi/ca.py does the work)."""
from __future__ import annotations

import time

import click

from common.durations import parse_duration
from shoal.cli.client import Cli, pass_cli

_POLL = 1.0


def _duration(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (e.g. 2160h, 90d, 2m)", ctx, param) from None


def _progress_line(view: dict) -> str:
    """Docker's two phases: nodes get certificates of the new root (and trust both roots),
    then, the new root being the root, nodes drop the old one."""
    p = view["progress"]
    # A node that is down holds the rotation: name the laggards when they are few.
    waiting = f" (waiting for {', '.join(p['pending'])})" if 0 < len(p["pending"]) <= 3 else ""
    if view["rotating"]:
        return f"rotating... TLS certificates: {p['certs']}/{p['total']} nodes{waiting}"
    return f"rotating... CA certificates:  {p['trust']}/{p['total']} nodes{waiting}"


def _converged(view: dict) -> bool:
    p = view["progress"]
    return not view["rotating"] and p["certs"] == p["total"] and p["trust"] == p["total"]


@click.command("ca")
@click.option("--rotate", is_flag=True,
              help="Rotate the swarm's root CA: every node gets a certificate from a new root, "
                   "then the old root is no longer trusted")
@click.option("--cert-expiry", callback=_duration, metavar="DURATION",
              help="Validity of node certificates (with --rotate; e.g. 90d)")
@click.option("-d", "--detach", is_flag=True,
              help="Exit immediately instead of waiting for the rotation to converge")
@click.option("-q", "--quiet", is_flag=True, help="Suppress progress output")
@pass_cli
def ca(cli: Cli, rotate: bool, cert_expiry, detach: bool, quiet: bool) -> None:
    """Display and rotate the root CA."""
    if cert_expiry is not None and not rotate:
        raise click.UsageError("--cert-expiry goes with --rotate here; to change only the "
                               "expiry use 'shoal swarm update --cert-expiry'")
    if not rotate:
        click.echo(cli.call("GET", "/swarm/ca")["cert_pem"], nl=False)
        return
    body = {"cert_expiry": cert_expiry} if cert_expiry is not None else {}
    view = cli.call("POST", "/swarm/ca/rotate", body)
    if not quiet:
        click.echo(f"desired root digest: sha256:{view['desired_digest']}")
    if detach:
        return
    last = ""
    try:
        while not _converged(view):
            line = _progress_line(view)
            if line != last and not quiet:
                click.echo(f"  {line}")
                last = line
            time.sleep(_POLL)
            view = cli.call("GET", "/swarm/ca")
    except KeyboardInterrupt:
        raise click.ClickException("stopped waiting; the rotation goes on in the swarm") from None
    if not quiet:
        total = view["progress"]["total"]
        click.echo(f"  rotated TLS certificates:  {total}/{total} nodes")
        click.echo(f"  rotated CA certificates:   {total}/{total} nodes")
    click.echo(view["cert_pem"], nl=False)
