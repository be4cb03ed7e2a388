"""`shoal swarm backup`, `shoal swarm restore` and `swarm init --force-new-cluster`'s call."""
from __future__ import annotations

import base64
import sys
from pathlib import Path

import click

from common.fsutil import write_private
from shoal.cli.client import Cli, pass_cli


def _passphrase_from_stdin(given: bool) -> str | None:
    """As `docker login --password-stdin`: the whole of stdin, without the final newline."""
    if not given:
        return None
    if sys.stdin.isatty():
        value = click.prompt("Passphrase", hide_input=True, default="", show_default=False)
    else:
        value = sys.stdin.read()
    value = value.rstrip("\r\n")
    if not value:
        raise click.UsageError("--passphrase-stdin: stdin held no passphrase")
    return value


def init_force_new_cluster(cli: Cli, advertise_addr: str | None) -> None:
    """`swarm init --force-new-cluster`: raft restarts here alone, keeping the swarm's state."""
    result = cli.call("POST", "/swarm/force-new-cluster", {"advertise_addr": advertise_addr},
                      timeout=120)
    token = cli.call("GET", "/swarm")["join_tokens"]["worker"]
    addr = cli.call("GET", "/info")["swarm"]["remote_managers"][0]
    click.echo(f"Swarm initialized: current node ({result['node_id']}) is now a manager.\n")
    if result.get("removed_managers"):
        click.echo("These managers are no longer members and were demoted (remove them with "
                   "'shoal node rm'): " + ", ".join(result["removed_managers"]) + "\n")
    click.echo("To add a worker to this swarm, run the following command:\n")
    click.echo(f"    shoal swarm join --token {token} {addr}\n")
    click.echo("To add a manager to this swarm, run 'shoal swarm join-token manager' and follow "
               "the instructions.")


@click.command()
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="File to write the backup to (created 0600)")
@click.option("--passphrase-stdin", is_flag=True,
              help="Encrypt with a passphrase read from stdin (required unless autolock is on; "
                   "then the unlock key encrypts it)")
@pass_cli
def backup(cli: Cli, output: str, passphrase_stdin: bool) -> None:
    """Back up the swarm, encrypted, while it runs.

    Every object at one raft index, the CA and the keys a restore needs. With autolock on and
    no passphrase, the unlock key encrypts it."""
    target = Path(output)
    if not target.parent.is_dir():
        raise click.UsageError(f"-o {output}: directory {target.parent} does not exist")
    passphrase = _passphrase_from_stdin(passphrase_stdin)
    result = cli.call("POST", "/swarm/backup",
                      {"passphrase": passphrase} if passphrase is not None else {}, timeout=300)
    # 0600 from the moment it exists, fsynced, renamed into place: never half a backup.
    write_private(target, base64.b64decode(result["file"]))
    click.echo(f"Swarm backup written to {target} ({result['size']} bytes, store index "
               f"{result['store_index']}, raft index {result['raft_index']}, encrypted with the "
               f"{result['encrypted_with']}).")


@click.command()
@click.option("-i", "--input", "input_", required=True,
              type=click.Path(exists=True, dir_okay=False), help="Backup file to restore")
@click.option("--advertise-addr", help="IP address other nodes reach this node at")
@click.option("--listen-addr", help="IP[:PORT] to listen on for cluster traffic (default 0.0.0.0:2377)")
@click.option("--passphrase-stdin", is_flag=True,
              help="Read the backup's passphrase (or, for a backup of an autolocked swarm, "
                   "the unlock key) from stdin")
@pass_cli
def restore(cli: Cli, input_: str, advertise_addr, listen_addr, passphrase_stdin: bool) -> None:
    """Restore a swarm from a backup on a fresh host.

    The host must have no swarm state; it becomes the swarm's only manager."""
    blob = Path(input_).read_bytes()
    passphrase = _passphrase_from_stdin(passphrase_stdin)
    result = cli.call("POST", "/swarm/restore",
                      {"backup": base64.b64encode(blob).decode(), "passphrase": passphrase,
                       "advertise_addr": advertise_addr, "listen_addr": listen_addr},
                      timeout=300)
    click.echo(f"Swarm restored: current node ({result['node_id']}) is now its only manager "
               f"(store index {result['store_index']}).")
    if result.get("removed_managers"):
        click.echo("The other managers were removed from the swarm's managers: "
                   + ", ".join(result["removed_managers"]) + ".")
    click.echo("To add a manager to this swarm, run 'shoal swarm join-token manager' and follow "
               "the instructions.")
