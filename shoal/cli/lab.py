"""`shoal lab`: a multi-host cluster on one Linux machine, hosts as network namespaces.

Registered by the main CLI with ``main.add_command(lab)``.
"""
from __future__ import annotations

import functools
import json
import signal
import subprocess

import click

from shoal.lab import netlab
from shoal.lab.netlab import Lab, LabError


def _check_name(ctx, param, value):
    try:
        return netlab.validate_name(value)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None


name_option = click.option(
    "--name", default="lab", show_default=True, callback=_check_name,
    help="Lab name: 1 to 8 lowercase letters or digits.")


def _errors(fn):
    """Lab errors become one clear ClickException (exit 1)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LabError as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper


def _progress(msg: str) -> None:
    click.echo(msg, err=True)


def _name_flag(name: str) -> str:
    return "" if name == "lab" else f" --name {name}"


def _load(name: str) -> Lab:
    netlab.require_root()
    return Lab.load(name, progress=_progress)


@click.group(name="lab")
def lab():
    """A multi-host cluster on this machine: hosts are network namespaces (needs root)."""


@lab.command("up")
@click.option("--managers", default=3, show_default=True,
              type=click.IntRange(0, netlab.MAX_MANAGERS))
@click.option("--workers", default=2, show_default=True,
              type=click.IntRange(0, netlab.MAX_WORKERS))
@click.option("--no-form", is_flag=True, help="Start the daemons but do not form a cluster.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds for the whole bring-up.")
@name_option
@_errors
def up_cmd(managers, workers, no_form, timeout, name):
    """Create the hosts, start a shoald on each and form the cluster."""
    netlab.require_root()
    the_lab = Lab(name, progress=_progress)
    the_lab.up(managers, workers, form=not no_form, timeout=timeout)  # tears down on failure
    flag = _name_flag(name)
    if not no_form:
        res = the_lab.cli("manager1", "node", "ls", check=False)
        click.echo(res.stdout.rstrip("\n"))
        if res.returncode != 0:
            click.echo(f"warning: `shoal node ls` on manager1 failed: {res.stderr.strip()}",
                       err=True)
    click.echo()
    click.echo(f"lab {name!r} is up: {managers} managers, {workers} workers on "
               f"{netlab.SUBNET}.0/{netlab.PREFIXLEN}")
    hints = [
        (f"shoal lab exec{flag} manager1 -- shoal node ls", "run a command on a host"),
        (f"shoal lab ls{flag}", "hosts, addresses, PIDs"),
        (f"shoal lab kill|stop|start|partition|heal{flag} HOST", "inject faults"),
        (f"shoal lab add{flag} --role worker|manager", "one more host"),
        (f"shoal lab down{flag}", "remove everything"),
    ]
    width = max(len(cmd) for cmd, _ in hints)
    for cmd, what in hints:
        click.echo(f"  {cmd.ljust(width)}   {what}")


@lab.command("ls")
@name_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@_errors
def ls_cmd(name, fmt):
    """List the lab's hosts."""
    hosts = _load(name).hosts()
    if fmt == "json":
        click.echo(json.dumps([h.to_dict() for h in hosts], indent=2))
        return
    rows = [("HOST", "ROLE", "ADDRESS", "STATE", "PID")]
    for h in hosts:
        state = h.state
        if h.partitioned and state != "partitioned":
            state += ",partitioned"
        rows.append((h.name, h.role, h.address, state, str(h.pid or "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@lab.command("exec", context_settings={"ignore_unknown_options": True,
                                       "allow_interspersed_args": False})
@name_option
@click.argument("host")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
@_errors
def exec_cmd(ctx, name, host, cmd):
    """Run CMD inside HOST (SHOAL_SOCKET and DOCKER_HOST set; `shoal` runs this CLI).

    Example: shoal lab exec manager1 -- shoal node ls
    """
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise click.ClickException("no command given: e.g. `shoal lab exec manager1 -- shoal "
                                   "node ls`")
    the_lab = _load(name)
    full, env = the_lab.command(host, cmd)
    proc = subprocess.Popen(full, env=env)
    # Ctrl-C reaches the command (same process group); let it decide, as ssh/docker exec do
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, old)
    ctx.exit(128 - code if code < 0 else code)


def _fault(verb: str, help_text: str):
    @lab.command(verb, help=help_text)
    @name_option
    @click.argument("host")
    @_errors
    def cmd(name, host):
        the_lab = _load(name)
        before = the_lab.host(host)
        getattr(the_lab, verb)(host)
        after = the_lab.host(host)
        detail = {
            "kill": f"SIGKILL to shoald (pid {before.pid})",
            "stop": f"stopped shoald (pid {before.pid})",
            "start": f"started shoald (pid {after.pid})",
            "partition": f"cut off the underlay ({after.address} unreachable)",
            "heal": "reconnected to the underlay",
        }[verb]
        click.echo(f"{host}: {detail}")
    cmd.__name__ = f"{verb}_cmd"
    return cmd


_fault("kill", "SIGKILL HOST's shoald.")
_fault("stop", "SIGTERM HOST's shoald (SIGKILL after 10 s).")
_fault("start", "Start HOST's shoald again with the same data root.")
_fault("partition", "Cut HOST off the underlay network (undo with heal).")
_fault("heal", "Reconnect a partitioned HOST.")


@lab.command("add")
@name_option
@click.option("--role", type=click.Choice(["worker", "manager"]), default="worker",
              show_default=True)
@_errors
def add_cmd(name, role):
    """Add one more host (managerN or workerN) and join it to the cluster."""
    the_lab = _load(name)
    host = the_lab.add_host(role)
    h = the_lab.host(host)
    click.echo(f"{host}: {h.address}, shoald pid {h.pid}"
               f"{', joined' if the_lab.formed else ''}")


@lab.command("down")
@name_option
@_errors
def down_cmd(name):
    """Remove the lab: processes, namespaces, state."""
    netlab.require_root()
    the_lab = Lab(name, progress=_progress)
    existed = the_lab.exists()
    the_lab.down()
    click.echo(f"lab {name!r} removed" if existed else f"no lab named {name!r}: nothing to remove")
