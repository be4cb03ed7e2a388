"""A blocking HTTP client for the daemon's Unix socket, from the standard library only.

The CLI is one short process per command: it makes one or two requests and exits. aiohttp and
an event loop cost it ~0.35 s of imports here and 10-15 s in an emulated VM, for nothing it
needs. The daemons keep using common.httpclient (aiohttp), which shares the error messages
defined here.
"""
from __future__ import annotations

import http.client
import json
import socket
import sys
from typing import Any, Iterator, Optional
from urllib.parse import urlencode

from common import errors

DEFAULT_SOCKET = "/run/shoal/shoal.sock"
_CONNECT_TIMEOUT = 3.0
# A manager answering from a replica that may be out of date says why
# (manager/controlapi/forwarding.py).
WARNING_HEADER = "Shoal-Warning"


def show_warning(resp: http.client.HTTPResponse) -> None:
    """The answer's warning on stderr, so that it never mixes with the output a script reads."""
    warning = resp.getheader(WARNING_HEADER)
    if warning:
        print(f"Warning: {warning}", file=sys.stderr)


def daemon_unreachable(path: str) -> errors.Unavailable:
    return errors.Unavailable(
        f"cannot connect to the shoal daemon at unix://{path}: is shoald running? Start it with "
        f"'systemctl start shoald' or 'shoald --advertise-addr IP' (or point SHOAL_SOCKET at its "
        f"socket)")


def parse_body(data: bytes) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")


def _maybe_applied(method: str, exc: errors.ShoalError) -> errors.ShoalError:
    """A write sent whose answer never came: the daemon may have made the change (it may have
    died right after). A read stays what it is."""
    if method in ("GET", "HEAD"):
        return exc
    return errors.OutcomeUnknown(f"the change may or may not have been applied: the request "
                                 f"was sent and no answer came ({exc.message}); check before "
                                 f"sending it again")


def error_for(method: str, path: str, status: int, data: bytes) -> errors.ShoalError:
    parsed = parse_body(data)
    if isinstance(parsed, dict) and "message" in parsed:
        return errors.from_dict(parsed, status)
    return errors.ShoalError(f"{method} {path} failed with HTTP {status}: {data[:200]!r}")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: Optional[float]) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(min(_CONNECT_TIMEOUT, self.timeout or _CONNECT_TIMEOUT))
            sock.connect(self.unix_path)
            sock.settimeout(self.timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class UnixClient:
    """The daemon's API on its Unix socket. A subclass reaching it another way (the CLI's TLS
    client) changes `_send` and the two messages below; reading the answers stays here."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def _no_answer(self, timeout: Optional[float]) -> errors.ShoalError:
        return errors.Unavailable(f"no answer from unix://{self.socket_path} within {timeout:g}s "
                                  f"(the manager is unreachable or has no quorum)")

    def _unreachable(self, exc: BaseException) -> errors.ShoalError:
        return errors.Unavailable(f"unix://{self.socket_path} closed the connection ({exc}); "
                                  f"shoald may be restarting")

    def _send(self, method: str, path: str, body: Any, params: Optional[dict],
              timeout: Optional[float]) -> tuple[_UnixConnection, http.client.HTTPResponse]:
        if not path.startswith("/") or "?" in path or "#" in path:
            # A name pasted into a path could carry its own query ('worker1?force=true&'):
            # segments are quoted (shoal.cli.client.api_path), queries go through params.
            raise ValueError(f"{path!r} is not a quoted API path")
        url = path + ("?" + urlencode(params) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn = _UnixConnection(self.socket_path, timeout)
        try:
            conn.connect()
        except (FileNotFoundError, ConnectionRefusedError):
            conn.close()
            raise daemon_unreachable(self.socket_path) from None
        except OSError as exc:
            conn.close()
            raise self._unreachable(exc) from None
        try:
            conn.request(method, url, body=data, headers=headers)
            return conn, conn.getresponse()
        except socket.timeout:
            conn.close()
            raise _maybe_applied(method, self._no_answer(timeout)) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _maybe_applied(method, self._unreachable(exc)) from None

    def request(self, method: str, path: str, body: Any = None, *, params: Optional[dict] = None,
                timeout: float = 60.0) -> Any:
        conn, resp = self._send(method, path, body, params, timeout)
        try:
            data = resp.read()
        except socket.timeout:
            raise _maybe_applied(method, self._no_answer(timeout)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _maybe_applied(method, self._unreachable(exc)) from None
        finally:
            conn.close()
        show_warning(resp)
        if resp.status >= 400:
            raise error_for(method, path, resp.status, data)
        return parse_body(data)

    def stream(self, method: str, path: str, body: Any = None, *,
               params: Optional[dict] = None) -> Iterator[dict]:
        """An NDJSON response, one parsed object at a time, for as long as the daemon sends."""
        conn, resp = self._send(method, path, body, params, None)
        show_warning(resp)
        try:
            if resp.status >= 400:
                raise error_for(method, path, resp.status, resp.read())
            while line := resp.readline():
                if line.strip():
                    record = json.loads(line)
                    if isinstance(record, dict) and "error" in record and "code" in record:
                        # the request failed after its stream had begun (manager.streams)
                        raise errors.from_dict({**record, "message": record["error"]}, 500)
                    yield record
        finally:
            conn.close()
