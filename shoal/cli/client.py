"""How the CLI reaches its daemon: the local Unix socket (SHOAL_SOCKET or --socket)."""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Iterator

import click

from common import errors
from common.httpclient import DEFAULT_SOCKET, ApiClient, Endpoint


class Cli:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def call(self, method: str, path: str, body: Any = None, *, params: dict | None = None,
             timeout: float = 60.0) -> Any:
        async def go() -> Any:
            async with ApiClient(Endpoint(unix_path=self.socket_path)) as client:
                return await client.request(method, path, body, params=params, timeout=timeout)
        return asyncio.run(go())


    def stream(self, method: str, path: str, *, params: dict | None = None) -> Iterator[dict]:
        """An NDJSON response, one parsed object at a time (for logs -f)."""
        loop = asyncio.new_event_loop()
        client = ApiClient(Endpoint(unix_path=self.socket_path))
        try:
            response = loop.run_until_complete(client.open_stream(method, path, params=params))
            while True:
                line = loop.run_until_complete(response.content.readline())
                if not line:
                    break
                if line.strip():
                    yield json.loads(line)
        finally:
            loop.run_until_complete(client.close())
            loop.close()


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
