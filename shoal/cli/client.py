"""How the CLI reaches its daemon: the local Unix socket (SHOAL_SOCKET or --socket)."""
from __future__ import annotations

import os
from typing import Any, Iterator

import click

from common import errors
from common.apipath import api_path  # noqa: F401  (the CLI modules take it from here)
from common.unixhttp import DEFAULT_SOCKET, UnixClient


class Cli:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._client = UnixClient(socket_path)

    def call(self, method: str, path: str, body: Any = None, *, params: dict | None = None,
             timeout: float = 60.0) -> Any:
        return self._client.request(method, path, body, params=params, timeout=timeout)

    def stream(self, method: str, path: str, body: Any = None, *,
               params: dict | None = None) -> Iterator[dict]:
        """An NDJSON response, one parsed object at a time (logs -f, an attached run)."""
        return self._client.stream(method, path, body, params=params)


def socket_path_default() -> str:
    return os.environ.get("SHOAL_SOCKET", DEFAULT_SOCKET)


pass_cli = click.make_pass_decorator(Cli)


class ShoalGroup(click.Group):
    """Turns every ShoalError into a one-line message and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.ShoalError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            ctx.exit(1)
