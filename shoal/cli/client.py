"""How the CLI reaches a daemon: the local Unix socket (SHOAL_SOCKET or --socket), or a
manager's remote API over mutual TLS (-H/--host or SHOAL_HOST, certificates in
SHOAL_CERT_PATH or ~/.shoal: ca.pem, cert.pem, key.pem, as `shoal swarm client-cert` writes
them). DOCKER_* variables are the docker CLI's and are not read here."""
from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union
from urllib.parse import urlencode

import click

from common import errors
from common.apipath import api_path  # noqa: F401  (the CLI modules take it from here)
from common.unixhttp import DEFAULT_SOCKET, UnixClient

REMOTE_PORT = 2376
# The remote listener serves shoal's own API under this prefix (shoal/dockerapi/remote.py).
REMOTE_PREFIX = "/shoal"
DEFAULT_CERT_PATH = "~/.shoal"
CERT_FILES = ("ca.pem", "cert.pem", "key.pem")
_CONNECT_TIMEOUT = 5.0
_HOST_FORMS = "use tcp://HOST[:PORT] (port 2376 by default) or unix:///PATH"
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


@dataclass(frozen=True)
class HostAddr:
    scheme: str          # "unix" or "tcp"
    path: str = ""       # unix
    host: str = ""       # tcp: an IP address or a DNS name, without brackets
    port: int = 0

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_host(value: str) -> HostAddr:
    """A -H/SHOAL_HOST value; ValueError naming what is wrong, for the option's message."""
    if not isinstance(value, str) or not value:
        raise ValueError("it is empty")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError("it contains spaces or control characters")
    scheme, sep, rest = value.partition("://")
    if not sep:
        raise ValueError("it has no scheme")
    if scheme == "unix":
        if not rest.startswith("/"):
            raise ValueError("a unix socket path must be absolute (unix:///run/shoal/shoal.sock)")
        return HostAddr("unix", path=rest)
    if scheme != "tcp":
        raise ValueError(f"scheme {scheme!r} is not served (only tcp and unix)")
    if any(c in rest for c in "/?#@"):
        raise ValueError("a tcp address is HOST[:PORT] alone, without a path, query or user")
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket:
            raise ValueError("an IPv6 address opened with '[' is not closed with ']'")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        if tail and not tail.startswith(":"):
            raise ValueError(f"unexpected {tail!r} after the IPv6 address")
        port_text = tail[1:] if tail else None
    else:
        if rest.count(":") > 1:
            raise ValueError("an IPv6 address goes in brackets: tcp://[::1]:2376")
        host, colon, port_text_raw = rest.partition(":")
        port_text = port_text_raw if colon else None
        if not host:
            raise ValueError("the host is missing")
        if not _valid_host(host):
            raise ValueError(f"{host!r} is neither an IPv4 address nor a host name "
                             "(IPv6 goes in brackets: tcp://[::1]:2376)")
    port = REMOTE_PORT
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5 \
                or not 0 < int(port_text) < 65536:
            raise ValueError(f"port {port_text!r} must be a number from 1 to 65535")
        port = int(port_text)
    return HostAddr("tcp", host=host, port=port)


def _valid_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        pass
    if not host.isascii() or len(host) > 253 or host[-1:].isdigit() and \
            all(p.isdigit() for p in host.split(".")):
        return False     # "1.2.3" or "999.1.1.1": a mistyped address, not a name
    return all(_DNS_LABEL.match(label) for label in host.rstrip(".").split("."))


def cert_dir_default() -> str:
    return os.environ.get("SHOAL_CERT_PATH") or DEFAULT_CERT_PATH


class _TlsConnection(http.client.HTTPSConnection):
    """Checks, after the handshake, that the server is a manager of the swarm whose CA we hold.

    The manager is dialed by IP or by any name, so its certificate cannot name what we dialed
    (common/pki.client_ssl_context does the same for nodes); holding a certificate from our CA
    proves it is a node, and its role that it is a manager. A worker's certificate is refused:
    a worker must not be able to pose as a manager and read what the CLI sends.
    """

    def connect(self) -> None:
        super().connect()
        from common import pki   # cryptography: only when talking TLS
        try:
            ident = pki.identity_from_der(self.sock.getpeercert(binary_form=True) or b"")
        except errors.ShoalError as exc:
            self.close()
            raise errors.Unauthorized(f"tcp://{self.host}:{self.port} is not a shoal manager: "
                                      f"{exc.message}") from None
        if not ident.is_manager:
            self.close()
            raise errors.Unauthorized(
                f"tcp://{self.host}:{self.port} presents the certificate of worker node "
                f"{ident.node_id}; shoal's CLI talks to managers only")


class TlsClient(UnixClient):
    """shoal's API on a manager's remote listener: UnixClient's calls, over TLS."""

    def __init__(self, addr: HostAddr, cert_dir: str) -> None:
        super().__init__(socket_path="")
        self.addr = addr
        self.cert_dir = Path(os.path.expanduser(cert_dir))
        self._context: Optional[ssl.SSLContext] = None

    def context(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = self._load_context()
        return self._context

    def _load_context(self) -> ssl.SSLContext:
        ca, cert, key = (self.cert_dir / name for name in CERT_FILES)
        for path in (ca, cert, key):
            if not path.is_file():
                raise errors.InvalidArgument(
                    f"no {path.name} in {self.cert_dir}: make the files with 'shoal swarm "
                    f"client-cert NAME -o DIR' on a manager and point SHOAL_CERT_PATH at DIR "
                    f"(default {DEFAULT_CERT_PATH})", field="SHOAL_CERT_PATH")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False      # see _TlsConnection
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=str(ca))
            ctx.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, ValueError) as exc:
            raise errors.InvalidArgument(
                f"cannot use the certificates in {self.cert_dir}: {exc}; ca.pem, cert.pem and "
                "key.pem must be PEM files as 'shoal swarm client-cert' writes them",
                field="SHOAL_CERT_PATH") from None
        return ctx

    def _no_answer(self, timeout: Optional[float]) -> errors.ShoalError:
        return errors.Unavailable(f"no answer from {self.addr} within {timeout:g}s")

    def _unreachable(self, exc: BaseException) -> errors.ShoalError:
        if isinstance(exc, ssl.SSLError):
            reason = exc.reason or str(exc)
            return errors.Unauthorized(
                f"TLS with {self.addr} failed ({reason}): the certificates in {self.cert_dir} "
                "must come from this swarm ('shoal swarm client-cert'), and the server must be "
                "one of its managers serving --docker-tcp")
        if isinstance(exc, (http.client.RemoteDisconnected, ConnectionResetError,
                            BrokenPipeError)):
            # With TLS 1.3 the server checks our certificate after the handshake looks done
            # to us: its refusal shows as a connection closed without an answer.
            return errors.Unauthorized(
                f"{self.addr} closed the connection without an answer: it refused the TLS "
                f"client certificate in {self.cert_dir} (it must come from this swarm's "
                "'shoal swarm client-cert'), or shoald there is stopping")
        if isinstance(exc, ConnectionRefusedError):
            return errors.Unavailable(f"cannot connect to {self.addr}: connection refused (is "
                                      "shoald running there with --docker-tcp?)")
        return errors.Unavailable(f"cannot talk to {self.addr}: {exc}")

    def _send(self, method: str, path: str, body: Any, params: Optional[dict],
              timeout: Optional[float]) -> tuple[_TlsConnection, http.client.HTTPResponse]:
        if not path.startswith("/") or "?" in path or "#" in path:
            raise ValueError(f"{path!r} is not a quoted API path")
        url = REMOTE_PREFIX + path + ("?" + urlencode(params) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn = _TlsConnection(self.addr.host, self.addr.port, context=self.context(),
                              timeout=min(_CONNECT_TIMEOUT, timeout or _CONNECT_TIMEOUT))
        try:
            conn.connect()
            conn.sock.settimeout(timeout)
            conn.request(method, url, body=data, headers=headers)
            return conn, conn.getresponse()
        except errors.ShoalError:
            conn.close()
            raise
        except socket.timeout:
            conn.close()
            raise self._no_answer(timeout) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc) from None


class Cli:
    def __init__(self, socket_path: str, host: Optional[str] = None,
                 cert_path: Optional[str] = None) -> None:
        """`host` (-H or SHOAL_HOST), when given, wins over `socket_path`; a bad one is a
        ValueError naming what is wrong."""
        self.socket_path = socket_path
        self.remote: Optional[HostAddr] = None
        self._client: Union[UnixClient, TlsClient]
        addr = parse_host(host) if host else None
        if addr is not None and addr.scheme == "tcp":
            self.remote = addr
            self._client = TlsClient(addr, cert_path or cert_dir_default())
        else:
            if addr is not None:
                self.socket_path = addr.path
            self._client = UnixClient(self.socket_path)

    def call(self, method: str, path: str, body: Any = None, *, params: dict | None = None,
             timeout: float = 60.0) -> Any:
        return self._client.request(method, path, body, params=params, timeout=timeout)

    def stream(self, method: str, path: str, body: Any = None, *,
               params: dict | None = None) -> Iterator[dict]:
        """An NDJSON response, one parsed object at a time (logs -f, an attached run)."""
        return self._client.stream(method, path, body, params=params)


def socket_path_default() -> str:
    return os.environ.get("SHOAL_SOCKET", DEFAULT_SOCKET)


def make_cli(socket_path: str, host: Optional[str], cert_path: Optional[str]) -> Cli:
    """The Cli for the global options, or a usage error naming the bad -H value."""
    try:
        return Cli(socket_path, host, cert_path)
    except ValueError as exc:
        raise click.BadParameter(f"{host!r}: {exc}; {_HOST_FORMS}",
                                 param_hint="'-H' / '--host' (or SHOAL_HOST)") from None


pass_cli = click.make_pass_decorator(Cli)


class ShoalGroup(click.Group):
    """Turns every ShoalError into a one-line message and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.OutcomeUnknown as exc:
            # Not a refusal: the change may be there. Its own label, so nobody reads it as one.
            click.echo(f"Outcome unknown: {exc.message}", err=True)
            ctx.exit(1)
        except errors.ShoalError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            ctx.exit(1)
