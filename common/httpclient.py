"""The HTTP client every part uses: the CLI to its daemon over the Unix socket, agents and
managers to managers over mutual TLS on 2377.

Failures become ShoalErrors with messages a person can act on: no daemon, unreachable manager,
a timeout, or the server's own error body.
"""
from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from typing import Any, Optional

import aiohttp
from yarl import URL

from common import errors
from common.unixhttp import DEFAULT_SOCKET, daemon_unreachable, parse_body as _parse

__all__ = ["DEFAULT_SOCKET", "ApiClient", "ConnectionLost", "Endpoint"]


class ConnectionLost(errors.Unavailable):
    """The request may have reached the server (it was sent, no answer came back): unlike a
    failed connect, the server may have acted on it."""


@dataclass
class Endpoint:
    """Where an API lives: a Unix socket path, or host:port reached over TLS."""

    unix_path: Optional[str] = None
    addr: Optional[str] = None
    ssl_context: Optional[ssl.SSLContext] = None

    @property
    def base_url(self) -> str:
        return "http://localhost" if self.unix_path else f"https://{self.addr}"

    def describe(self) -> str:
        return f"unix://{self.unix_path}" if self.unix_path else f"{self.addr}"


# How long an idle connection stays open for the next request. aiohttp's 15 s is shorter than
# the heartbeat period of a large swarm (up to 100 s, manager/dispatcher): each heartbeat paid
# a new TLS handshake, and 5,000 nodes made handshakes a third of the leader's time (issue 20).
# Servers keep idle connections longer (SERVER_KEEPALIVE), so it is the client that closes.
IDLE_CONNECTION_KEPT = 150.0
SERVER_KEEPALIVE = 180.0


class ApiClient:
    def __init__(self, endpoint: Endpoint, *, connect_timeout: float = 3.0) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self._session: Optional[aiohttp.ClientSession] = None

    async def __aenter__(self) -> "ApiClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self.endpoint.unix_path:
                connector = aiohttp.UnixConnector(path=self.endpoint.unix_path)
            else:
                connector = aiohttp.TCPConnector(ssl=self.endpoint.ssl_context or False,
                                                 force_close=False, limit=200,
                                                 keepalive_timeout=IDLE_CONNECTION_KEPT)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, path: str) -> URL:
        # `path` is already encoded: quoted segments, or the path a follower forwards as it was
        # sent. Taken as is: re-encoding would resolve a quoted '..' name away.
        return URL(self.endpoint.base_url + path, encoded=True)

    async def request(self, method: str, path: str, body: Any = None, *,
                      params: dict | None = None, timeout: float = 30.0,
                      raw: bytes | None = None, headers: dict | None = None) -> Any:
        status, data = await self.request_raw(method, path, body, params=params, timeout=timeout,
                                              raw=raw, headers=headers)
        parsed = _parse(data)
        if status >= 400:
            if isinstance(parsed, dict) and "message" in parsed:
                raise errors.from_dict(parsed, status)
            raise errors.ShoalError(f"{method} {path} failed with HTTP {status}: {data[:200]!r}")
        return parsed

    async def request_raw(self, method: str, path: str, body: Any = None, *,
                          params: dict | None = None, timeout: float = 30.0,
                          raw: bytes | None = None,
                          headers: dict | None = None) -> tuple[int, bytes]:
        session = self._get_session()
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        tmo = aiohttp.ClientTimeout(total=timeout, connect=min(self.connect_timeout, timeout),
                                    sock_connect=min(self.connect_timeout, timeout))
        try:
            async with session.request(method, self._url(path), data=data,
                                       params=params, headers=hdrs, timeout=tmo) as resp:
                return resp.status, await resp.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise self._unreachable(exc) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise errors.Unauthorized(
                f"TLS verification of {self.endpoint.describe()} failed: {exc.certificate_error}") from None
        except aiohttp.ClientConnectorError as exc:
            raise self._unreachable(exc) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise ConnectionLost(
                f"{self.endpoint.describe()} closed the connection ({exc}); if it is a manager, "
                f"it may be restarting or this node's certificate was refused") from None
        except asyncio.TimeoutError as exc:
            cls = (errors.Unavailable if isinstance(exc, aiohttp.ConnectionTimeoutError)
                   else ConnectionLost)
            raise cls(
                f"no answer from {self.endpoint.describe()} within {timeout:g}s "
                f"(the manager is unreachable or has no quorum)") from None

    async def open_stream(self, method: str, path: str, *, params: dict | None = None,
                          connect_timeout: float = 10.0) -> aiohttp.ClientResponse:
        """A response to read incrementally (no total timeout); raises on an error status."""
        session = self._get_session()
        tmo = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout)
        try:
            resp = await session.request(method, self._url(path), params=params,
                                         timeout=tmo)
        except (FileNotFoundError, ConnectionRefusedError, aiohttp.ClientConnectorError) as exc:
            raise self._unreachable(exc) from None
        except asyncio.TimeoutError:
            raise errors.Unavailable(f"no answer from {self.endpoint.describe()}") from None
        if resp.status >= 400:
            body = _parse(await resp.read())
            resp.release()
            if isinstance(body, dict) and "message" in body:
                raise errors.from_dict(body, resp.status)
            raise errors.ShoalError(f"{method} {path} failed with HTTP {resp.status}")
        return resp

    def _unreachable(self, exc: Exception) -> errors.ShoalError:
        if self.endpoint.unix_path:
            return daemon_unreachable(self.endpoint.unix_path)
        return errors.Unavailable(f"cannot reach manager {self.endpoint.addr}: {_reason(exc)}")


def _reason(exc: Exception) -> str:
    os_err = getattr(exc, "os_error", None)
    return (os_err.strerror if os_err is not None and os_err.strerror else str(exc)) or type(exc).__name__
