"""Tables and JSON on stdout, the way the docker CLI prints them."""
from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Sequence

import click


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    line = lambda cells: "   ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()
    click.echo(line(list(headers)))
    for r in rows:
        click.echo(line(r))


def print_listing(items: list[dict], *, quiet: bool, fmt: str, headers: Sequence[str],
                  rows: Callable[[list[dict]], Iterable[Sequence[Any]]]) -> None:
    """What every `ls` prints: the IDs alone with -q, the objects as JSON with --format json,
    else a table of `rows(items)`."""
    if quiet:
        for item in items:
            click.echo(item["id"])
    elif fmt == "json":
        print_json(items)
    else:
        print_table(headers, rows(items))


def format_option(default: str = "table"):
    return click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=default,
                        show_default=True, help="Output format")
