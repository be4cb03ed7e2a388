"""Run inside a VM lab guest with the system python3 (standard library only, fast to start):

    python3 guest_tools.py get URL COUNT      one fresh connection per request; prints each body,
                                              or FAILED:<reason>, one per line
    python3 guest_tools.py api METHOD PATH [BODY]
                                              the local shoald API over its Unix socket (BODY:
                                              JSON to send); prints the JSON body (exit 1 on an
                                              HTTP error)

The shoal CLI imports aiohttp and costs 10-15 s per call under software emulation; these are for
the many polls and requests the tests make. Changes still go through the real CLI, except the
power-loss test's stream of small writes, which must come faster than one per CLI start.
"""
import http.client
import socket
import sys
import urllib.request

SOCKET = "/run/shoal/shoal.sock"


class UnixConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(SOCKET)


def get(url: str, count: int) -> None:
    for _ in range(count):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                print(r.read().decode(errors="replace").strip() or "EMPTY")
        except Exception as exc:
            print(f"FAILED:{type(exc).__name__}:{exc}".replace(" ", "_"))
        sys.stdout.flush()


def api(method: str, path: str, body: str = "") -> int:
    c = UnixConnection("localhost")
    if body:
        c.request(method, path, body=body.encode(), headers={"Content-Type": "application/json"})
    else:
        c.request(method, path)
    r = c.getresponse()
    print(r.read().decode())
    return 0 if r.status < 400 else 1


if __name__ == "__main__":
    if sys.argv[1] == "get":
        get(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "api":
        sys.exit(api(*sys.argv[2:5]))
    else:
        sys.exit(f"unknown command {sys.argv[1]!r}")
