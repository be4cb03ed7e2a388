"""`shoal dashboard`: the web dashboard of this manager, on 127.0.0.1, until Ctrl-C.

Like `jupyter notebook`, it prints a link with a one-time token and stays in the foreground:
the daemon serves the dashboard while this command runs (its request stays open), and stops
when it ends, however it ends.
"""
from __future__ import annotations

import click

from shoal.cli.client import Cli, pass_cli


@click.command()
@click.option("--port", default=8090, show_default=True, type=click.IntRange(1, 65535),
              help="The TCP port on 127.0.0.1 of this manager to serve the dashboard on")
@pass_cli
def dashboard(cli: Cli, port: int) -> None:
    """Serve the live web dashboard on this manager's 127.0.0.1 until Ctrl-C.

    Open the printed link in a browser on this host (or through an SSH tunnel: ssh -L
    PORT:127.0.0.1:PORT MANAGER). The link's token works once; it becomes a session cookie."""
    if cli.remote is not None:
        raise click.UsageError("the dashboard listens on the manager's own 127.0.0.1: run "
                               "`shoal dashboard` on the manager (with an SSH tunnel to reach "
                               "it from here), not through -H")
    try:
        for record in cli.stream("POST", "/dashboard", {"port": port}):
            if "url" in record:
                click.echo("The dashboard of this manager is served at (the link works once; "
                           "open it in a browser on this host, or through `ssh -L "
                           f"{record['port']}:127.0.0.1:{record['port']}`):\n\n"
                           f"    {record['url']}\n\nPress Ctrl-C to stop it.")
    except KeyboardInterrupt:
        click.echo("dashboard stopped")
        return
    # The stream ended without us: the daemon stopped (or lost its manager role).
    raise click.ClickException("the daemon stopped serving the dashboard")
