"""The exec stream: one websocket carrying a command's stdin, stdout and stderr and its control
messages, from the CLI to its node, and from a manager to the task's node (2377, mutual TLS).

Why a websocket: it is one full-duplex connection that aiohttp serves and dials on both sides,
through the same middlewares (auth on 2377) as every other request, and it frames messages, so
data and control never need an escape scheme.

Frames:
- binary: the first byte names the channel (0 stdin, 1 stdout, 2 stderr, as kubectl's
  channel.k8s.io), the rest is the data. With a terminal everything the command writes comes on
  stdout (one terminal for both, as `docker exec -t`).
- text: one JSON object with a "type":
    start  {argv, tty, stdin, rows, cols}  client → server, first and once
    resize {rows, cols}                    client → server, any time (TIOCSWINSZ on the pty)
    eof    {}                              client → server: stdin has ended
    exit   {code}                          server → client, last: the command's exit status
    error  {message, status}               server → client, last: the exec could not run
Every frame from the other side is decoded strictly here; a bad one is an InvalidArgument
naming what is wrong, never a crash of the pump that read it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional, Union

import aiohttp
from aiohttp import web

from common import errors
from common.httpclient import Endpoint

STDIN, STDOUT, STDERR = 0, 1, 2
CHANNELS = (STDIN, STDOUT, STDERR)
MAX_ARGV = 4096           # arguments in a start frame
MAX_FRAME = 1 << 20       # bytes in one websocket message (aiohttp's max_msg_size)
# 1..65535 as the kernel's winsize holds them (unsigned short)
_DIM_MAX = 0xFFFF


@dataclass
class Start:
    argv: list[str]
    tty: bool = False
    stdin: bool = False
    rows: int = 0
    cols: int = 0


@dataclass
class Resize:
    rows: int
    cols: int


@dataclass
class Eof:
    pass


@dataclass
class Exit:
    code: int


@dataclass
class Error:
    message: str
    status: int = 500


@dataclass
class Data:
    channel: int
    data: bytes = field(repr=False)


Frame = Union[Start, Resize, Eof, Exit, Error, Data]


# ---- encoding -------------------------------------------------------------------------------
def encode(frame: Frame) -> Union[str, bytes]:
    """The websocket message for `frame`: bytes for data, JSON text for the rest."""
    if isinstance(frame, Data):
        return bytes([frame.channel]) + frame.data
    if isinstance(frame, Start):
        obj: dict = {"type": "start", "argv": frame.argv, "tty": frame.tty,
                     "stdin": frame.stdin, "rows": frame.rows, "cols": frame.cols}
    elif isinstance(frame, Resize):
        obj = {"type": "resize", "rows": frame.rows, "cols": frame.cols}
    elif isinstance(frame, Eof):
        obj = {"type": "eof"}
    elif isinstance(frame, Exit):
        obj = {"type": "exit", "code": frame.code}
    elif isinstance(frame, Error):
        obj = {"type": "error", "message": frame.message, "status": frame.status}
    else:
        raise TypeError(f"not an exec frame: {frame!r}")
    return json.dumps(obj)


def decode(message: Union[str, bytes]) -> Frame:
    """One message as sent by the other side; InvalidArgument naming what is wrong."""
    if isinstance(message, (bytes, bytearray)):
        if not message or message[0] not in CHANNELS:
            raise errors.InvalidArgument(
                "an exec data frame starts with its channel byte (0 stdin, 1 stdout, 2 stderr)")
        return Data(message[0], bytes(message[1:]))
    try:
        obj = json.loads(message)
    except ValueError:
        raise errors.InvalidArgument("an exec control frame must be one JSON object") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise errors.InvalidArgument('an exec control frame is a JSON object with a "type"')
    kind = obj["type"]
    known = _FIELDS.get(kind)
    if known is None:
        raise errors.InvalidArgument(f"unknown exec frame type {kind!r} (one of "
                                     f"{', '.join(sorted(_FIELDS))})")
    extra = set(obj) - known - {"type"}
    if extra:
        raise errors.InvalidArgument(f"unknown field(s) {', '.join(sorted(extra))} in an exec "
                                     f"{kind} frame")
    if kind == "start":
        argv = obj.get("argv")
        if not isinstance(argv, list) or not argv or len(argv) > MAX_ARGV or not all(
                isinstance(a, str) and "\0" not in a for a in argv):
            raise errors.InvalidArgument("exec needs a command: argv is a non-empty list of "
                                         "strings without NUL", field="argv")
        return Start(argv, _bool(obj, "tty"), _bool(obj, "stdin"),
                     _dim(obj, "rows", 0), _dim(obj, "cols", 0))
    if kind == "resize":
        return Resize(_dim(obj, "rows", 1), _dim(obj, "cols", 1))
    if kind == "eof":
        return Eof()
    if kind == "exit":
        code = obj.get("code")
        if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
            raise errors.InvalidArgument("an exit frame's code is an integer 0..255", field="code")
        return Exit(code)
    message, status = obj.get("message"), obj.get("status", 500)
    if not isinstance(message, str) or not isinstance(status, int) or isinstance(status, bool):
        raise errors.InvalidArgument("an error frame has a message (text) and a status (int)")
    return Error(message, status)


_FIELDS = {"start": {"argv", "tty", "stdin", "rows", "cols"}, "resize": {"rows", "cols"},
           "eof": set(), "exit": {"code"}, "error": {"message", "status"}}


def _bool(obj: dict, name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise errors.InvalidArgument(f"{name} must be true or false", field=name)
    return value


def _dim(obj: dict, name: str, lo: int) -> int:
    value = obj.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= _DIM_MAX:
        raise errors.InvalidArgument(f"{name} must be an integer {lo}..{_DIM_MAX}", field=name)
    return value


# ---- reading a websocket --------------------------------------------------------------------
WebSocket = Union[web.WebSocketResponse, aiohttp.ClientWebSocketResponse]


async def frames(ws: WebSocket) -> AsyncIterator[Frame]:
    """The frames the other side sends, until it closes. A malformed frame raises."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            yield decode(msg.data)
        elif msg.type == aiohttp.WSMsgType.TEXT:
            yield decode(msg.data)
        elif msg.type == aiohttp.WSMsgType.ERROR:
            raise errors.Unavailable(f"the exec stream broke: {ws.exception()}")


async def send(ws: WebSocket, frame: Frame) -> None:
    message = encode(frame)
    if isinstance(message, bytes):
        await ws.send_bytes(message)
    else:
        await ws.send_str(message)


async def first_frame(ws: WebSocket, timeout: float = 30.0) -> Start:
    """The start frame a client must send first."""
    try:
        msg = await ws.receive(timeout=timeout)
    except asyncio.TimeoutError:
        raise errors.InvalidArgument(f"no start frame within {timeout:g}s") from None
    if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        raise errors.InvalidArgument("the exec stream closed before its start frame")
    frame = decode(msg.data)
    if not isinstance(frame, Start):
        raise errors.InvalidArgument("an exec stream begins with a start frame")
    return frame


async def refuse(ws: web.WebSocketResponse, exc: BaseException) -> None:
    """Tell the client why its exec did not run (the upgrade is done: no HTTP status left)."""
    if isinstance(exc, errors.ShoalError):
        frame = Error(exc.message, exc.status)
    else:
        frame = Error(f"{type(exc).__name__}: {exc}", 500)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await send(ws, frame)
    await ws.close()


_BY_STATUS = {400: errors.InvalidArgument, 401: errors.Unauthorized,
              403: errors.PermissionDenied, 404: errors.NotFound, 412: errors.FailedPrecondition,
              503: errors.Unavailable}


def error_for(status: int, message: str) -> errors.ShoalError:
    """The ShoalError an error frame's (or a refused upgrade's) status stands for."""
    return _BY_STATUS.get(status, errors.ShoalError)(message)


# ---- dialing and relaying -------------------------------------------------------------------
@contextlib.asynccontextmanager
async def dial(endpoint: Endpoint, path: str, *, headers: Optional[dict] = None,
               connect_timeout: float = 10.0) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A websocket to `path` on `endpoint` (the local socket, or a node's 2377 with this node's
    certificate). A refused upgrade raises the ShoalError its status means."""
    connector = (aiohttp.UnixConnector(path=endpoint.unix_path) if endpoint.unix_path
                 else aiohttp.TCPConnector(ssl=endpoint.ssl_context or False))
    scheme = "ws://localhost" if endpoint.unix_path else f"wss://{endpoint.addr}"
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout,
                                    sock_connect=connect_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        try:
            ws = await session.ws_connect(scheme + path, headers=headers or {},
                                          max_msg_size=MAX_FRAME, heartbeat=None,
                                          autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            raise error_for(exc.status, f"{endpoint.describe()} refused the exec stream "
                                        f"{path}: HTTP {exc.status} {exc.message}") from None
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionRefusedError,
                asyncio.TimeoutError) as exc:
            raise errors.Unavailable(f"cannot reach {endpoint.describe()} for exec: "
                                     f"{exc or type(exc).__name__}") from None
        try:
            yield ws
        finally:
            await ws.close()


async def relay(downstream: web.WebSocketResponse,
                upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Copy messages both ways, unchanged, until either side closes; then close the other.
    The manager in the middle needs no knowledge of the frames beyond passing them on."""

    async def copy(src: WebSocket, dst: WebSocket) -> None:
        async for msg in src:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            else:
                break

    tasks = [asyncio.ensure_future(copy(downstream, upstream)),
             asyncio.ensure_future(copy(upstream, downstream))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # the node's side ending is the normal end (after its exit frame): let nothing of it
        # that is in flight be lost before closing the client's side
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await upstream.close()
        await downstream.close()
