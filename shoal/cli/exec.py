"""`shoal service exec` and `shoal container exec -i/-t`: a command in a task's container,
streamed both ways (the stream itself: shoal/cli/execsession.py, loaded only when used)."""
from __future__ import annotations

import sys

import click

from shoal.cli.client import Cli, api_path, pass_cli


def _argv(argv) -> list[str]:
    argv = list(argv)
    return argv[1:] if argv and argv[0] == "--" else argv


def add_service_exec(service_group: click.Group) -> None:
    @service_group.command("exec", context_settings={"ignore_unknown_options": True,
                                                     "allow_interspersed_args": False})
    @click.option("-i", "--interactive", is_flag=True, help="Keep stdin open and stream it")
    @click.option("-t", "--tty", "tty_", is_flag=True, help="Allocate a pseudo-TTY")
    @click.argument("ref")
    @click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
    @pass_cli
    def service_exec(cli: Cli, interactive, tty_, ref, argv) -> None:
        """Run a command in a task of a service: SERVICE[.SLOT|TASK] -- CMD [ARG...].

        SERVICE picks its running task of the lowest slot. Works from any manager (the task
        may run on any node) and, for its own tasks, on a worker. The exit status is the
        command's; each exec is recorded on the manager (who, task, command)."""
        from shoal.cli.execsession import run_exec
        sys.exit(run_exec(cli, api_path("services", ref, "exec"), _argv(argv), tty_=tty_,
                          interactive=interactive))


def container_exec_interactive(cli: Cli, ref: str, argv: list[str], *, tty_: bool,
                               interactive: bool) -> None:
    """`container exec -i/-t`: the same stream, to a container of this node."""
    from shoal.cli.execsession import run_exec
    sys.exit(run_exec(cli, api_path("containers", ref, "exec"), _argv(argv), tty_=tty_,
                      interactive=interactive))
