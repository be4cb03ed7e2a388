"""`shoal swarm ...`"""
from __future__ import annotations

import sys

import click

from common.durations import format_duration, parse_duration
from shoal.cli.client import Cli, pass_cli
from shoal.cli.output import print_json


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


def _spec_overrides(heartbeat_period: float | None, cert_expiry: float | None,
                    autolock: bool | None = None, task_history_limit: int | None = None,
                    snapshot_interval: int | None = None, max_snapshots: int | None = None,
                    addr_pools: tuple[str, ...] = (), addr_pool_mask: int | None = None) -> dict:
    spec: dict = {}
    if task_history_limit is not None:
        spec["orchestration"] = {"task_history_retention_limit": task_history_limit}
    raft = {k: v for k, v in (("snapshot_interval", snapshot_interval),
                              ("keep_old_snapshots", max_snapshots)) if v is not None}
    if raft:
        spec["raft"] = raft
    networking: dict = {}
    if addr_pools:
        networking["default_addr_pools"] = list(addr_pools)
    if addr_pool_mask is not None:
        networking["subnet_size"] = addr_pool_mask
    if networking:
        spec["networking"] = networking
    if heartbeat_period is not None:
        spec["dispatcher"] = {"heartbeat_period": heartbeat_period}
    if cert_expiry is not None:
        spec["ca_config"] = {"node_cert_expiry": cert_expiry}
    if autolock is not None:
        spec["encryption_config"] = {"auto_lock_managers": autolock}
    return spec


def _print_unlock_key(key: str) -> None:
    click.echo("To unlock a swarm manager after it restarts, run the `shoal swarm unlock`\n"
               "command and provide the following key:\n")
    click.echo(f"    {key}\n")
    click.echo("Please remember to store this key in a password manager, since without it you\n"
               "will not be able to restart the manager.")


@click.group()
def swarm() -> None:
    """Manage the swarm."""


@swarm.command()
@click.option("--advertise-addr", help="IP address other nodes reach this node at")
@click.option("--listen-addr", help="IP[:PORT] to listen on for cluster traffic (default 0.0.0.0:2377)")
@click.option("--dispatcher-heartbeat", "heartbeat_period", type=DURATION,
              help="Heartbeat period of the agents (default 5s)")
@click.option("--cert-expiry", type=DURATION, help="Validity of node certificates (default 90d)")
@click.option("--autolock", is_flag=True,
              help="Lock managers: a restarted manager needs the unlock key (`shoal swarm unlock`)")
@click.option("--task-history-limit", type=click.IntRange(0), help="Task history retention limit (default 5)")
@click.option("--snapshot-interval", type=click.IntRange(1),
              help="Number of log entries between raft snapshots (default 10000)")
@click.option("--max-snapshots", type=click.IntRange(0),
              help="Number of additional raft snapshots to retain (default 0)")
@click.option("--default-addr-pool", "addr_pools", multiple=True, metavar="CIDR",
              help="Address pool for overlay subnets (repeatable; default 10.0.0.0/8)")
@click.option("--default-addr-pool-mask-length", "addr_pool_mask", type=int,
              help="Prefix length of the subnets taken from the pools (default 24)")
@click.option("--data-path-port", type=int,
              help="UDP port of the overlays' VXLAN traffic, 1024-49151 (default 4789)")
@click.option("--force-new-cluster", is_flag=True,
              help="Force create a new cluster from current state")
@pass_cli
def init(cli: Cli, advertise_addr, listen_addr, heartbeat_period, cert_expiry, autolock,
         task_history_limit, snapshot_interval, max_snapshots, addr_pools, addr_pool_mask,
         data_path_port, force_new_cluster=False) -> None:
    """Initialize a swarm: this node becomes its first manager."""
    if force_new_cluster:  # shoal/cli/swarm_recovery.py
        return swarm_recovery.init_force_new_cluster(cli, advertise_addr)
    spec = _spec_overrides(heartbeat_period, cert_expiry, True if autolock else None,
                           task_history_limit, snapshot_interval, max_snapshots, addr_pools,
                           addr_pool_mask)
    result = cli.call("POST", "/swarm/init", {
        "advertise_addr": advertise_addr, "listen_addr": listen_addr, "spec": spec or None,
        "data_path_port": data_path_port})
    tokens = cli.call("GET", "/swarm")["join_tokens"]
    info = cli.call("GET", "/info")
    addr = info["swarm"]["remote_managers"][0]
    click.echo(f"Swarm initialized: current node ({result['node_id']}) is now a manager.\n")
    click.echo("To add a worker to this swarm, run the following command:\n")
    click.echo(f"    shoal swarm join --token {tokens['worker']} {addr}\n")
    click.echo("To add a manager to this swarm, run 'shoal swarm join-token manager' and follow "
               "the instructions.")
    if result.get("unlock_key"):
        click.echo("")
        _print_unlock_key(result["unlock_key"])


@swarm.command()
@click.option("--token", required=True, help="Token for entry into the swarm")
@click.option("--advertise-addr", help="IP address other nodes reach this node at")
@click.option("--listen-addr", help="IP[:PORT] to listen on for cluster traffic")
@click.argument("remote")
@pass_cli
def join(cli: Cli, token, advertise_addr, listen_addr, remote) -> None:
    """Join a swarm as a node and/or manager. REMOTE is a manager's IP[:PORT]."""
    result = cli.call("POST", "/swarm/join", {"remote_addr": remote, "token": token,
                                              "advertise_addr": advertise_addr,
                                              "listen_addr": listen_addr}, timeout=90)
    click.echo(f"This node joined a swarm as a {result['role']}.")


@swarm.command("join-token")
@click.option("-q", "--quiet", is_flag=True, help="Only display the token")
@click.option("--rotate", is_flag=True, help="Rotate the join token")
@click.argument("role", type=click.Choice(["worker", "manager"]))
@pass_cli
def join_token(cli: Cli, quiet, rotate, role) -> None:
    """Manage join tokens."""
    if rotate:
        cli.call("POST", "/swarm/update", params={f"rotate_{role}_token": "true"})
        if not quiet:
            click.echo(f"Successfully rotated {role} join token.\n")
    cluster = cli.call("GET", "/swarm")
    token = cluster["join_tokens"][role]
    if quiet:
        click.echo(token)
        return
    addr = cli.call("GET", "/info")["swarm"]["node_addr"]
    click.echo(f"To add a {role} to this swarm, run the following command:\n")
    click.echo(f"    shoal swarm join --token {token} {addr}:2377\n")


@swarm.command()
@click.option("-f", "--force", is_flag=True, help="Leave even if this node is a manager")
@pass_cli
def leave(cli: Cli, force) -> None:
    """Leave the swarm."""
    cli.call("POST", "/swarm/leave", params={"force": "true" if force else "false"})
    click.echo("Node left the swarm.")


@swarm.command()
@click.option("--format", "fmt", type=click.Choice(["json", "pretty"]), default="json", show_default=True)
@pass_cli
def inspect(cli: Cli, fmt) -> None:
    """Display the swarm's settings (the CA key is never shown)."""
    cluster = cli.call("GET", "/swarm")
    if fmt == "json":
        print_json(cluster)
        return
    spec = cluster["spec"]
    click.echo(f"ID: {cluster['id']}")
    click.echo(f"Heartbeat Period: {format_duration(spec['dispatcher']['heartbeat_period'])}")
    click.echo(f"Node Certificate Expiry: {format_duration(spec['ca_config']['node_cert_expiry'])}")
    click.echo(f"Task History Retention Limit: {spec['orchestration']['task_history_retention_limit']}")
    click.echo(f"Raft Snapshot Interval: {spec['raft']['snapshot_interval']}")
    click.echo(f"Raft Old Snapshots Kept: {spec['raft'].get('keep_old_snapshots', 0)}")
    click.echo(f"Default Address Pools: {', '.join(spec['networking']['default_addr_pools'])}")
    click.echo(f"Subnet Size: {spec['networking']['subnet_size']}")
    click.echo(f"Data Path Port: {cluster.get('data_path_port', 4789)}")
    click.echo(f"CA Digest: {cluster['root_ca']['digest']}")
    autolock = (spec.get("encryption_config") or {}).get("auto_lock_managers", False)
    click.echo(f"Autolock Managers: {str(autolock).lower()}")


@swarm.command()
@click.option("--dispatcher-heartbeat", "heartbeat_period", type=DURATION, help="Heartbeat period")
@click.option("--cert-expiry", type=DURATION, help="Validity of node certificates")
@click.option("--autolock", type=click.BOOL, metavar="true|false",
              help="Change the manager autolocking setting")
@click.option("--task-history-limit", type=click.IntRange(0), help="Task history retention limit")
@click.option("--snapshot-interval", type=click.IntRange(1),
              help="Number of log entries between raft snapshots")
@click.option("--max-snapshots", type=click.IntRange(0),
              help="Number of additional raft snapshots to retain")
@pass_cli
def update(cli: Cli, heartbeat_period, cert_expiry, autolock, task_history_limit,
           snapshot_interval, max_snapshots) -> None:
    """Update the swarm's settings."""
    cluster = cli.call("GET", "/swarm")
    spec = cluster["spec"]
    for key, value in _spec_overrides(heartbeat_period, cert_expiry, autolock, task_history_limit,
                                      snapshot_interval, max_snapshots).items():
        spec.setdefault(key, {}).update(value)
    result = cli.call("POST", "/swarm/update", {"spec": spec},
                      params={"version": str(cluster["meta"]["version"])})
    click.echo("Swarm updated.")
    if result.get("unlock_key"):
        _print_unlock_key(result["unlock_key"])


@swarm.command()
@pass_cli
def unlock(cli: Cli) -> None:
    """Unlock a locked manager: reads the unlock key from the terminal (or from stdin)."""
    if sys.stdin.isatty():
        key = click.prompt("Please enter unlock key", hide_input=True, default="",
                           show_default=False)
    else:
        key = sys.stdin.readline()
    cli.call("POST", "/swarm/unlock", {"unlock_key": key.strip()}, timeout=60)


@swarm.command("unlock-key")
@click.option("-q", "--quiet", is_flag=True, help="Only display the key")
@click.option("--rotate", is_flag=True, help="Rotate the unlock key")
@click.option("--previous", is_flag=True,
              help="Show the key from before the last rotation (for a manager that was down then)")
@pass_cli
def unlock_key(cli: Cli, quiet, rotate, previous) -> None:
    """Manage the unlock key."""
    if rotate and previous:
        raise click.UsageError("--rotate and --previous exclude each other")
    if rotate:
        key = cli.call("POST", "/swarm/update",
                       params={"rotate_manager_unlock_key": "true"})["unlock_key"]
        if not quiet:
            click.echo("Successfully rotated manager unlock key.\n")
    else:
        key = cli.call("GET", "/swarm/unlockkey",
                       params={"previous": "true"} if previous else None)["unlock_key"]
    if quiet:
        click.echo(key)
    elif previous:
        click.echo("The unlock key before the last rotation (a manager that was down or "
                   "restarting then is still locked with it):\n")
        click.echo(f"    {key}\n")
    else:
        _print_unlock_key(key)


class _ClientCertGroup(click.Group):
    """`client-cert NAME ...` creates (as the issue spells it); `ls` and `rm` are the others."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


@swarm.group("client-cert", cls=_ClientCertGroup)
def client_cert() -> None:
    """Client certificates for remote access (shoald --docker-tcp).

    \b
    shoal swarm client-cert NAME [--expiry 30d] -o DIR   issue one (DIR/ca.pem, cert.pem, key.pem)
    shoal swarm client-cert ls                         list them
    shoal swarm client-cert rm NAME                    revoke, on every manager
    """


@client_cert.command("create")
@click.argument("name")
@click.option("--expiry", type=DURATION, default="30d", show_default=True,
              help="Validity of the certificate")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for ca.pem, cert.pem and key.pem (DOCKER_CERT_PATH's layout)")
@pass_cli
def client_cert_create(cli: Cli, name: str, expiry: float, out_dir: str) -> None:
    """Issue a client certificate NAME. The key is made here and never leaves this machine."""
    from common import pki
    from shoal.cli import certfiles
    pki.check_client_name(name)
    target = certfiles.prepare_dir(out_dir)
    key_pem = pki.generate_key()
    result = cli.call("POST", "/swarm/client-certs",
                      {"name": name, "csr": pki.make_client_csr(key_pem, name).decode(),
                       "expiry": expiry})
    certfiles.write(target, result["ca_cert"].encode(), result["cert"].encode(), key_pem)
    click.echo(f"Client certificate {name} ({result['id']}) written to {target}, valid until "
               f"{_when(result['not_after'])}.")
    click.echo(f"Use it with: DOCKER_HOST=tcp://MANAGER:2376 DOCKER_TLS_VERIFY=1 "
               f"DOCKER_CERT_PATH={target} docker node ls")
    click.echo(f"        or: SHOAL_CERT_PATH={target} shoal -H tcp://MANAGER:2376 node ls")


@client_cert.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only display IDs")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@pass_cli
def client_cert_ls(cli: Cli, quiet: bool, fmt: str) -> None:
    """List the client certificates issued, revoked ones included."""
    certs = cli.call("GET", "/swarm/client-certs")
    if fmt == "json":
        print_json(certs)
        return
    if quiet:
        for c in certs:
            click.echo(c["id"])
        return
    click.echo(f"{'ID':<27}{'NAME':<40}{'STATE':<9}{'EXPIRES':<22}REVOKED")
    for c in certs:
        revoked = _when(c["revoked_at"]) if c["revoked_at"] else "-"
        click.echo(f"{c['id']:<27}{c['name']:<40}{c['state']:<9}{_when(c['not_after']):<22}"
                   f"{revoked}")


@client_cert.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="NAME|ID...")
@pass_cli
def client_cert_rm(cli: Cli, refs: tuple[str, ...]) -> None:
    """Revoke client certificates: every manager refuses them from then on."""
    from shoal.cli.client import api_path
    for ref in refs:
        for c in cli.call("DELETE", api_path("swarm", "client-certs", ref)):
            click.echo(f"revoked {c['name']} ({c['id']})")


def _when(ts: float) -> str:
    import time
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


from shoal.cli.swarm_ca import ca as _ca  # noqa: E402  (its own module: `swarm ca`)

swarm.add_command(_ca)

from shoal.cli import swarm_recovery  # noqa: E402  (its own module: backup, restore, --force-new-cluster)

swarm.add_command(swarm_recovery.backup)
swarm.add_command(swarm_recovery.restore)
