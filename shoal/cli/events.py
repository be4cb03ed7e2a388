"""`shoal events`: the cluster's events from this node's manager, live and from its history."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import click

from common.timespec import parse_time
from shoal.cli.client import Cli, pass_cli


def _bound(value: str | None, flag: str, now: float) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value, flag, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{flag}'") from None


@click.command()
@click.option("--since", metavar="TIME",
              help="Show events from this time on (RFC 3339, Unix seconds, or a duration ago "
                   "such as 10m), from the manager's history")
@click.option("--until", metavar="TIME",
              help="Stop at this time (same forms); one in the past ends the stream at once")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="type=service|node|task|network|secret|config|container, "
                   "event=create|update|remove|state|leader|exec, service=S, node=N, label=K[=V]; "
                   "repeat a key for either value")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="One readable line, or one JSON object, per event")
@pass_cli
def events(cli: Cli, since: str | None, until: str | None, filters: tuple[str, ...],
           fmt: str) -> None:
    """Stream the cluster's events (until Ctrl-C, or --until)."""
    now = time.time()
    # Durations count from this client's clock, as docker's: the daemon gets Unix seconds.
    start, end = _bound(since, "--since", now), _bound(until, "--until", now)
    if start is not None and end is not None and end < start:
        raise click.BadParameter(f"{until!r} is before --since {since!r}: give an --until "
                                 "after --since", param_hint="'--until'")
    params: dict[str, str] = {}
    if start is not None:
        params["since"] = f"{start:.9f}"
    if end is not None:
        params["until"] = f"{end:.9f}"
    if filters:
        params["filters"] = json.dumps(list(filters))
    try:
        for ev in cli.stream("GET", "/events", params=params):
            click.echo(json.dumps(ev, sort_keys=True) if fmt == "json" else line(ev))
    except KeyboardInterrupt:
        pass


def line(ev: dict) -> str:
    """TIME TYPE ACTION NAME (ID) DETAILS, as docker's readable events."""
    when = datetime.fromtimestamp(ev["time"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    who = f"{ev.get('name') or ev['id']} ({ev['id'][:12]})" if ev.get("name") else ev["id"]
    details: list[str] = []
    state = ev.get("state")
    if state:
        moved = f"{state['old']} -> {state['new']}" if state.get("old") else state["new"]
        if state.get("error"):
            moved += f" error: {state['error']}"
        elif state.get("message"):
            moved += f" ({state['message']})"
        details.append(moved)
    if ev["action"] == "leader":
        details.append(f"leader elected (term {ev.get('attributes', {}).get('term', '?')})")
    if ev["action"] == "exec":
        attrs = ev.get("attributes", {})
        details.append(f"by {attrs.get('who', '?')}: {attrs.get('command', '')}"
                       + (" (tty)" if attrs.get("tty") == "true" else ""))
    if ev.get("node_name") and ev["type"] in ("task", "container"):
        details.append(f"node={ev['node_name']}")
    for change in ev.get("changes", []):
        if ev["action"] == "state" and ev["type"] in ("task", "container") \
                and change["path"].startswith("status."):
            continue   # the state line says it
        if "old" in change:
            details.append(f"{change['path']}: {_short(change['old'])} -> {_short(change['new'])}")
        else:
            details.append(f"{change['path']} changed")
    return f"{when} {ev['type']} {ev['action']} {who}" + \
        (f" {', '.join(details)}" if details else "")


def _short(value: object) -> str:
    return json.dumps(value) if not isinstance(value, str) else (value or '""')
