"""`shoal login` and `shoal logout`: registry credentials in docker's own config.json.

The daemon checks the credentials against the registry (it knows the insecure registries and
the certs.d CAs); only then does the CLI write them, 0600, where `docker login` would.
"""
from __future__ import annotations

import sys

import click

from common import errors
from common.registryauth import DOCKER_HUB_KEY, Credentials, DockerConfig, registry_key
from shoal.cli.client import Cli, pass_cli


def _read_password(password: str | None, password_stdin: bool, username: str) -> str:
    if password_stdin:
        if password is not None:
            raise click.UsageError("--password and --password-stdin are mutually exclusive")
        text = sys.stdin.read()
        # as docker: one trailing newline is the end of the input, not of the password
        return text[:-1] if text.endswith("\n") else text
    if password is not None:
        click.echo("WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
                   err=True)
        return password
    if not sys.stdin.isatty():
        raise click.UsageError("no password: give it with --password-stdin (or run in a "
                               "terminal to be asked)")
    return click.prompt("Password", hide_input=True)


@click.command()
@click.option("-u", "--username", help="Username")
@click.option("-p", "--password", help="Password (prefer --password-stdin)")
@click.option("--password-stdin", is_flag=True, help="Take the password from stdin")
@click.argument("registry")
@pass_cli
def login(cli: Cli, username, password, password_stdin, registry) -> None:
    """Log in to a registry: HOST[:PORT]. shoal has no default registry."""
    key = registry_key(registry)
    if key == DOCKER_HUB_KEY:
        raise errors.InvalidArgument("shoal has no default registry: name the registry to log "
                                     "in to, as HOST[:PORT]", field="registry")
    if not username:
        if not sys.stdin.isatty() or password_stdin:
            raise click.UsageError("give the username with -u/--username")
        username = click.prompt("Username")
    creds = Credentials(username, _read_password(password, password_stdin, username))
    if not creds.password:
        raise click.UsageError("the password is empty")
    config = DockerConfig()  # read first: a damaged file is refused before any network call
    cli.call("POST", "/registry/login", {"registry": key, "auth": creds.plain()}, timeout=90)
    config.store(key, creds)
    click.echo(f"Login Succeeded (credentials in {config.path})")


@click.command()
@click.argument("registry")
def logout(registry) -> None:
    """Log out from a registry: forget its credentials."""
    key = registry_key(registry)
    config = DockerConfig()
    if config.erase(key):
        click.echo(f"Removing login credentials for {key}")
    else:
        click.echo(f"Not logged in to {key}")


WITH_REGISTRY_AUTH_HELP = "Send your registry credentials (shoal login) to the nodes that run the tasks"


def registry_auth_body(image: str, wanted: bool) -> dict:
    """With --with-registry-auth: {"registry_auth": ...} holding the caller's `shoal login`
    credentials for the registry `image` names (the managers keep them for the service's
    nodes); else {}."""
    if not wanted:
        return {}
    from common.imageref import parse_ref
    host = parse_ref(image).host
    if not host:
        raise errors.InvalidArgument(
            f"--with-registry-auth: image {image!r} names no registry, so there are no "
            "credentials to send: name the registry in the image (HOST:PORT/NAME:TAG)",
            field="with_registry_auth")
    config = DockerConfig()
    creds = config.credentials(host)
    if creds is None:
        raise errors.FailedPrecondition(
            f"--with-registry-auth: no credentials for {host} in {config.path}: run "
            f"'shoal login {host}' first", field="with_registry_auth")
    return {"registry_auth": creds.plain()}
