"""`shoal container top | stats | kill`, as docker's (cli/command/container/{top,stats,kill}.go),
on this node's containers (a service's task or a standalone one)."""
from __future__ import annotations

import json
import sys

import click

from common import errors
from shoal.cli.client import Cli, api_path, pass_cli
from shoal.cli.output import print_table

STATS_HEADERS = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O",
                 "BLOCK I/O", "PIDS"]


def binary_size(n: float) -> str:
    """docker's units.BytesSize: 1.5MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.4g}{unit}"
        n /= 1024
    return f"{n:.4g}TiB"


def decimal_size(n: float) -> str:
    """docker's units.HumanSizeWithPrecision(n, 3): 1.5MB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}TB"


def stats_row(s: dict) -> list[str]:
    return [s["id"][:12], s["name"], f"{s['cpu_percent']:.2f}%",
            f"{binary_size(s['mem_usage'])} / {binary_size(s['mem_limit'])}",
            f"{s['mem_percent']:.2f}%",
            f"{decimal_size(s['net_rx'])} / {decimal_size(s['net_tx'])}",
            f"{decimal_size(s['blk_read'])} / {decimal_size(s['blk_write'])}", str(s["pids"])]


def register(group: click.Group) -> None:
    group.add_command(container_top)
    group.add_command(container_stats)
    group.add_command(container_kill)


@click.command("top", context_settings={"ignore_unknown_options": True,
                                        "allow_interspersed_args": False})
@click.argument("ref", metavar="CONTAINER")
@click.argument("ps_args", nargs=-1, type=click.UNPROCESSED, metavar="[ps OPTIONS]")
@pass_cli
def container_top(cli: Cli, ref, ps_args) -> None:
    """Display the running processes of a container (ps -ef, or the ps OPTIONS given)."""
    params = {"ps_args": " ".join(ps_args)} if ps_args else None
    answer = cli.call("GET", api_path("containers", ref, "top"), params=params)
    print_table(answer["titles"], answer["processes"])


@click.command("stats")
@click.option("-a", "--all", "show_all", is_flag=True,
              help="Accepted for docker's sake: stopped containers use nothing to show")
@click.option("--no-stream", is_flag=True, help="Print one sample and exit (default: refresh "
              "every second)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="table, or a JSON object per container and sample")
@click.argument("refs", nargs=-1, metavar="[CONTAINER...]")
@pass_cli
def container_stats(cli: Cli, show_all, no_stream, fmt, refs) -> None:
    """Display a live stream of containers' resource usage (CPU, memory, network and block
    I/O, PIDs); every running container of this node when none is named."""
    params: list = [("stream", "false" if no_stream else "true")] + \
        [("container", ref) for ref in refs]
    tty = sys.stdout.isatty() and not no_stream
    try:
        for record in cli.stream("GET", "/containers/stats", params=params):
            if "error" in record:
                raise click.ClickException(str(record["error"]))
            rows = record.get("stats", [])
            if fmt == "json":
                for s in rows:
                    click.echo(json.dumps(s))
                continue
            if tty:
                click.echo("\033[2J\033[H", nl=False)  # redrawn in place, as docker's
            print_table(STATS_HEADERS, [stats_row(s) for s in rows])
    except KeyboardInterrupt:
        pass


@click.command("kill")
@click.option("-s", "--signal", "signal", default="KILL", show_default=True,
              help="Signal to send: a name (KILL, SIGTERM, HUP) or a number (9)")
@click.argument("refs", nargs=-1, required=True, metavar="CONTAINER...")
@pass_cli
def container_kill(cli: Cli, signal, refs) -> None:
    """Kill one or more running containers (a task's is then handled by its restart policy)."""
    failed = False
    for ref in refs:
        try:
            cli.call("POST", api_path("containers", ref, "kill"), params={"signal": signal})
            click.echo(ref)
        except errors.ShoalError as exc:  # docker goes on with the others, then fails
            if len(refs) == 1:
                raise
            click.echo(f"Error: {exc.message}", err=True)
            failed = True
    if failed:
        sys.exit(1)
