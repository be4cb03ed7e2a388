"""The shoal command line, shaped like the docker CLI."""
from __future__ import annotations

import time

import click

from shoal import API_VERSION, __version__
from shoal.cli.client import Cli, ShoalGroup, make_cli, pass_cli, socket_path_default
from shoal.cli.output import format_option, print_json


@click.group(cls=ShoalGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--socket", "socket_path", default=socket_path_default, show_default="$SHOAL_SOCKET or /run/shoal/shoal.sock",
              help="The local daemon's API socket")
@click.option("-H", "--host", "host", envvar="SHOAL_HOST", metavar="tcp://HOST[:PORT]",
              help="A manager's remote API (shoald --docker-tcp) to talk to instead of the "
                   "local socket, over TLS with the certificates in --cert-path [$SHOAL_HOST]")
@click.option("--cert-path", "cert_path", envvar="SHOAL_CERT_PATH", metavar="DIR",
              help="ca.pem, cert.pem and key.pem for -H, as 'shoal swarm client-cert' writes "
                   "them [$SHOAL_CERT_PATH, default ~/.shoal]")
@click.pass_context
def main(ctx: click.Context, socket_path: str, host: str | None, cert_path: str | None) -> None:
    """shoal: run services on a swarm of Linux hosts."""
    ctx.obj = make_cli(socket_path, host, cert_path)


@main.command()
@format_option()
@pass_cli
def version(cli: Cli, fmt: str) -> None:
    """Show the shoal version information."""
    client = {"version": __version__, "api_version": API_VERSION}
    try:
        server = cli.call("GET", "/info", timeout=5)
        daemon = {"version": server["version"], "api_version": server["api_version"]}
    except Exception as exc:  # the client version is worth printing without a daemon too
        daemon = {"error": getattr(exc, "message", str(exc))}
    if fmt == "json":
        print_json({"client": client, "daemon": daemon})
        return
    click.echo(f"Client:\n Version:     {__version__}\n API version: {API_VERSION}")
    if "error" in daemon:
        click.echo(f"Daemon:\n {daemon['error']}")
    else:
        click.echo(f"Daemon:\n Version:     {daemon['version']}\n API version: {daemon['api_version']}")


@main.command()
@format_option()
@pass_cli
def info(cli: Cli, fmt: str) -> None:
    """Display system-wide information."""
    data = cli.call("GET", "/info", timeout=10)
    if fmt == "json":
        print_json(data)
        return
    sw = data["swarm"]
    click.echo(f"Hostname: {data['hostname']}")
    click.echo(f"Version: {data['version']}")
    click.echo(f"Data root: {data['data_root']}")
    click.echo(f"Swarm: {sw['state']}")
    if sw["state"] == "active":
        click.echo(f" NodeID: {sw['node_id']}")
        click.echo(f" Is Manager: {str(sw['is_manager']).lower()}")
        click.echo(f" ClusterID: {sw['cluster_id']}")
        click.echo(f" Node Address: {sw['node_addr']}")
        click.echo(f" Connected to managers: {str(sw['connected']).lower()}")
        if sw["is_manager"] and "managers" in sw:
            click.echo(f" Managers: {sw['managers']}")
            click.echo(f" Nodes: {sw['nodes']}")
            click.echo(f" Heartbeat Period: {sw.get('heartbeat_period', '')}s")
            click.echo(f" Raft: term {sw['raft']['term']}, commit index {sw['raft']['commit_index']}, "
                       f"this manager is {'the leader' if sw['leader'] else 'a follower'}")
            _echo_leader_loops(sw.get("leader_loops"))
        click.echo(" Manager Addresses:")
        for addr in sw["remote_managers"]:
            click.echo(f"  {addr}")


def _echo_leader_loops(loops: dict | None) -> None:
    """Only the leader runs them; a loop that failed is shown until the daemon restarts."""
    if not loops or not (loops["running"] or loops["failures"]):
        return
    failures = loops["failures"]
    if not failures:
        click.echo(" Leader loops: all running")
        return
    click.echo(" Leader loops: some failed and were restarted (details in the daemon's log)")
    for f in failures:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(f["last_at"]))
        now = "restarting" if f["restarting"] else \
            "running again" if loops["running"] else "not run here now: not the leader"
        click.echo(f"  {f['loop']}: failed {f['count']} time{'s' if f['count'] != 1 else ''}, "
                   f"last at {when} ({now}): {f['last_error']}")


from shoal.cli import container as _container, node as _node, service as _service, swarm as _swarm  # noqa: E402
from shoal.cli import service_update as _service_update  # noqa: E402,F401  (adds update/rollback)

main.add_command(_swarm.swarm)
main.add_command(_node.node)
main.add_command(_service.service)
main.add_command(_container.container)
main.add_command(_container.image)
from shoal.cli.data_objects import config as _config, secret as _secret  # noqa: E402
main.add_command(_secret)
main.add_command(_config)
from shoal.cli.network import network as _network; main.add_command(_network)  # noqa: E402,E702
from shoal.cli.volume import volume as _volume; main.add_command(_volume)  # noqa: E402,E702
from shoal.cli.system import system as _system; main.add_command(_system)  # noqa: E402,E702
from shoal.cli.stack import stack as _stack; main.add_command(_stack)  # noqa: E402,E702
from shoal.cli.events import events as _events; main.add_command(_events)  # noqa: E402,E702
from shoal.cli.dashboard import dashboard as _dashboard; main.add_command(_dashboard)  # noqa: E402,E702
from shoal.cli.sim import sim as _sim; main.add_command(_sim)  # noqa: E402,E702
from shoal.cli.login import login as _login, logout as _logout  # noqa: E402
main.add_command(_login)
main.add_command(_logout)
_service.node_ps_command(_node.node)
try:
    from shoal.cli.lab import lab as _lab
    main.add_command(_lab)
except ImportError:  # pragma: no cover - the lab needs pyroute2, which is a dependency anyway
    pass


if __name__ == "__main__":
    main()
