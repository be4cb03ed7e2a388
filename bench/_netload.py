"""Traffic programs for bench/network_bench.py; standard library only, so the host's python3 can
run them inside a busybox container (with /usr, /lib, /lib64 bind-mounted) as well as in a
lab namespace through nsenter.

  recv PORT                      accept one TCP stream, read it to EOF; print JSON {bytes, seconds}
  send HOST PORT SECONDS         stream zeros to HOST:PORT for SECONDS; print JSON {bytes, seconds}
  serve PORT                     a tiny HTTP/1.1 server (fixed 2-byte body; keep-alive unless the
                                 request says `Connection: close`)
  load HOST PORT SECONDS CONC [keepalive]
                                 CONC concurrent clients send GET requests for SECONDS: by default
                                 one new TCP connection per request (the server closes it), with
                                 `keepalive` one connection per client; print JSON {requests,
                                 errors, seconds}

Timing is measured by the receiving / loading side from its first byte / request to the end.
"""
from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

# 1 MiB writes and reads. iperf3 writes 128 KiB by default, and gets lower figures with them here.
CHUNK = 1 << 20


def recv(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port), backlog=1)
    print("listening", flush=True)  # the driver waits for this line before starting the sender
    conn, _ = srv.accept()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    n = conn.recv_into(view)
    t0 = time.monotonic()
    while n:
        total += n
        n = conn.recv_into(view)
    elapsed = time.monotonic() - t0
    print(json.dumps({"bytes": total, "seconds": elapsed}), flush=True)


def send(host: str, port: int, seconds: float) -> None:
    deadline = time.monotonic() + 10  # the receiver may still be starting
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"cannot connect to {host}:{port}")
            time.sleep(0.05)
    data = memoryview(bytes(CHUNK))
    total = 0
    t0 = time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        sock.sendall(data)
        total += CHUNK
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # wait for the receiver to close: everything sent has been read
    print(json.dumps({"bytes": total, "seconds": time.monotonic() - t0}), flush=True)


BODY = b"ok"
RESPONSE_CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                  % len(BODY)) + BODY
RESPONSE_KEEP = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY


class _Http(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            if b"connection: close" in head.lower():
                self.transport.write(RESPONSE_CLOSE)
                self.transport.close()
                return
            self.transport.write(RESPONSE_KEEP)


def serve(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Http, "0.0.0.0", port, backlog=1024, reuse_address=True)
        print("serving", flush=True)
        await server.serve_forever()
    asyncio.run(main())


REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
REQUEST_KEEP = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def load(host: str, port: int, seconds: float, conc: int, keepalive: bool) -> None:
    counts = {"requests": 0, "errors": 0}

    async def one_shot(end: float) -> None:
        while time.monotonic() < end:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
                writer.write(REQUEST_CLOSE)
                data = await asyncio.wait_for(reader.read(), 5)  # to EOF: the server closes
                writer.close()
                if data.startswith(b"HTTP/1.1 200") and data.endswith(BODY):
                    counts["requests"] += 1
                else:
                    counts["errors"] += 1
            except (OSError, asyncio.TimeoutError):
                counts["errors"] += 1

    async def persistent(end: float) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        want = len(RESPONSE_KEEP)
        while time.monotonic() < end:
            writer.write(REQUEST_KEEP)
            try:
                data = await asyncio.wait_for(reader.readexactly(want), 5)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                counts["errors"] += 1
                return
            if data == RESPONSE_KEEP:
                counts["requests"] += 1
            else:
                counts["errors"] += 1
        writer.close()

    async def main() -> float:
        t0 = time.monotonic()
        end = t0 + seconds
        worker = persistent if keepalive else one_shot
        await asyncio.gather(*(worker(end) for _ in range(conc)))
        return time.monotonic() - t0

    elapsed = asyncio.run(main())
    print(json.dumps({**counts, "seconds": elapsed}), flush=True)


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "recv":
        recv(int(rest[0]))
    elif cmd == "send":
        send(rest[0], int(rest[1]), float(rest[2]))
    elif cmd == "serve":
        serve(int(rest[0]))
    elif cmd == "load":
        load(rest[0], int(rest[1]), float(rest[2]), int(rest[3]), rest[4:] == ["keepalive"])
    else:
        raise SystemExit(__doc__)
