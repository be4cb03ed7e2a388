"""`shoal sim nodes`: simulated nodes, to measure managers at a scale no lab of real hosts has.

The nodes are real agents in every part the managers see (the join with a token and a CSR,
their own certificates, mutual TLS sessions with heartbeats, assignment streams and batched
status reports); only their executor is simulated: no container, image, disk or network work.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path

import click

from common import errors, tokens
from common.tuning import shrink_tls_buffers, tune_gc

STATUS_EVERY = 2.0  # seconds between two writes of DATA/status.json
# Which flag a SimulatedNodes field comes from, for its errors.
FLAGS = {"count": "--count", "manager": "--manager", "token": "--token",
         "name_prefix": "--name-prefix", "start_delay": "--start-delay",
         "fail_rate": "--fail-rate"}


@click.group()
def sim() -> None:
    """Simulated nodes for measuring managers (benchmarks, scale tests).

    Not for running workloads: a simulated node's tasks never run anything."""


def _check_manager(_ctx, _param, value: str) -> str:
    from worker.sim.nodes import parse_manager
    try:
        return parse_manager(value)
    except errors.ShoalError as exc:
        raise click.BadParameter(f"{exc.message.removeprefix('manager ')}; give a manager's "
                                 "IP:2377") from None


def _check_token(_ctx, _param, value: str) -> str:
    try:
        tokens.parse_token(value)
    except errors.ShoalError as exc:
        raise click.BadParameter(exc.message) from None
    return value


def _check_prefix(_ctx, _param, value: str) -> str:
    from worker.sim.nodes import PREFIX_RE
    if not PREFIX_RE.match(value):
        raise click.BadParameter(f"{value!r} is not usable in a hostname: use letters, digits "
                                 "and '-' (at most 41), like 'sim' or 'simB'")
    return value


@sim.command("nodes")
@click.option("--count", required=True, type=click.IntRange(min=1),
              help="How many simulated nodes this process runs")
@click.option("--manager", required=True, metavar="IP[:PORT]", callback=_check_manager,
              help="A manager's cluster address (port 2377 by default)")
@click.option("--token", required=True, callback=_check_token,
              help="The swarm's worker join token ('shoal swarm join-token -q worker')")
@click.option("--start-delay", default=0.5, show_default=True, type=click.FloatRange(min=0),
              metavar="SECONDS", help="Time a task takes from preparing to running")
@click.option("--fail-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              metavar="P", help="Chance (0 to 1) that a started task fails (exit code 1)")
@click.option("--name-prefix", default="sim", show_default=True, callback=_check_prefix,
              help="Hostnames are PREFIX-00000, PREFIX-00001, ...: give each process running "
                   "side by side its own")
@click.option("--concurrency", default=50, show_default=True, type=click.IntRange(min=1),
              help="Joins in flight at once")
@click.option("--data", "data", type=click.Path(file_okay=False, path_type=Path),
              help="Directory for status.json (the node ids and task runs, rewritten every "
                   "2 s); default: a new directory under /tmp")
def nodes(count: int, manager: str, token: str, start_delay: float, fail_rate: float,
          name_prefix: str, concurrency: int, data: Path | None) -> None:
    """Run COUNT simulated nodes in this process until SIGINT or SIGTERM.

    SIMULATED nodes for measuring managers: each joins the swarm through the real join path
    (token, CSR, its own certificate) and keeps a real session over mutual TLS (heartbeats,
    assignment stream, status reports), but its tasks run in a simulated executor (preparing,
    starting, running after --start-delay; failing at --fail-rate) that runs nothing. They
    listen on no port: `service logs` and `service exec` of their tasks say so.
    Stopping ends their sessions; the managers mark them Down after the heartbeat grace."""
    # The agents (aiohttp, the worker package) load only here: every other shoal command
    # starts without them.
    from worker.sim.nodes import SimulatedNodes
    workdir = data or Path(tempfile.mkdtemp(prefix=f"shoal-sim-{name_prefix}-"))
    tune_gc()   # hundreds of agents in one process allocate as much as a manager does
    shrink_tls_buffers()   # and hold as many connections
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sim_nodes = SimulatedNodes(count, manager, token, workdir, start_delay=start_delay,
                                   fail_rate=fail_rate, name_prefix=name_prefix,
                                   concurrency=concurrency)
        asyncio.run(_run(sim_nodes))
    except errors.InvalidArgument as exc:
        flag = FLAGS.get(exc.field or "", exc.field or "")
        raise click.UsageError(f"{flag}: {exc.message}" if flag else exc.message) from None
    except errors.ShoalError as exc:
        raise click.ClickException(exc.message) from None


async def _run(sim_nodes: "SimulatedNodes") -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    click.echo(f"joining {sim_nodes.count} simulated nodes ({sim_nodes.name_prefix}-00000...) "
               f"to {sim_nodes.manager}; status in {sim_nodes.workdir / 'status.json'}")
    t0 = time.monotonic()
    starting = asyncio.create_task(sim_nodes.start())
    waiting = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # stopped while joining: start() undoes what it did
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        click.echo("stopped before all nodes joined")
        return
    starting.result()  # a failed join ends the command with its error
    click.echo(f"{sim_nodes.count} simulated nodes joined in {time.monotonic() - t0:.1f} s; "
               "running until SIGINT or SIGTERM", err=False)
    sys.stdout.flush()
    while not stop.is_set():
        sim_nodes.write_status()
        try:
            await asyncio.wait_for(stop.wait(), STATUS_EVERY)
        except asyncio.TimeoutError:
            pass
    waiting.cancel()
    await sim_nodes.stop()
    sim_nodes.write_status()
    runs = sim_nodes.task_runs()
    click.echo(f"left: {sim_nodes.count} simulated nodes stopped; {len(runs)} tasks were "
               f"started {sum(runs.values())} times in all")
