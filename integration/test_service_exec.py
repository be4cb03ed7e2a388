"""Issue 19: `shoal service exec` on real shoald processes: from manager2 into a task that runs
on the worker (the stream goes manager2 → worker1's 2377 over mutual TLS), exit codes, stdin,
an interactive terminal driven through a pseudo-terminal, and a worker's certificate refused.

One busybox lab (3 managers, 1 worker) serves the module; tests build on its services.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import struct
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from integration.helpers import busybox_lab, needs_root, wait_until

pytestmark = [needs_root, pytest.mark.lab]

IMAGE = "busybox:1"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lab():
    with busybox_lab("exec", managers=3, workers=1) as lab:
        lab.cli("manager1", "service", "create", "--detach", "--name", "web",
                "--constraint", "node.role==worker", "--resolve-image", "never",
                IMAGE, "sleep", "100000", timeout=60)
        lab.cli("manager1", "service", "create", "--detach", "--name", "other",
                "--constraint", "node.hostname==manager3", "--resolve-image", "never",
                IMAGE, "sleep", "100000", timeout=60)
        for name in ("web", "other"):
            wait_until(lambda: running_task(lab, name), timeout=60, what=f"{name} running")
        yield lab


def running_task(lab, service: str) -> dict | None:
    tasks = lab.cli_json("manager1", "service", "ps", service)
    live = [t for t in tasks if t["status"]["state"] == "running"]
    return live[0] if live else None


def test_exec_from_another_manager_runs_in_the_workers_task(lab):
    task = running_task(lab, "web")
    assert task["node_hostname"] == "worker1"
    r = lab.cli("manager2", "service", "exec", "web", "--", "hostname", check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == task["id"][:12]  # the task's container, not manager2
    # SERVICE.SLOT and the task id name the same task
    for ref in ("web.1", task["id"]):
        r = lab.cli("manager3", "service", "exec", ref, "--", "hostname", check=False)
        assert (r.returncode, r.stdout.strip()) == (0, task["id"][:12]), r.stderr
    # the exec is recorded on the manager that served it: who, which task, which command
    log = lab.log("manager2", lines=400)
    assert (f"exec by root on the local socket of manager2 into task web.1.{task['id']} "
            f"({task['id']}) on node {task['node_id']}: ['hostname']") in log, log[-2000:]
    # ...and in its cluster events
    events = lab.cli("manager2", "events", "--since", "5m", "--until", "0s", "--filter",
                     "event=exec", "--format", "json").stdout
    execs = [json.loads(ln) for ln in events.splitlines() if ln.strip()]
    assert any(e["id"] == task["id"] and e["attributes"]["command"] == "hostname"
               and e["attributes"]["who"] == "root on the local socket of manager2"
               for e in execs), events


def test_the_commands_exit_status_is_the_clis(lab):
    r = lab.cli("manager2", "service", "exec", "web", "--", "sh", "-c", "echo out; echo err >&2; exit 7",
                check=False)
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
    r = lab.cli("manager2", "service", "exec", "nosuch", "--", "true", check=False)
    assert r.returncode == 1 and "no such service or task: nosuch" in r.stderr


def test_stdin_is_streamed_with_i(lab):
    r = lab.exec("manager2", ["shoal", "service", "exec", "-i", "web", "--", "sh", "-c",
                              "wc -l; cat /proc/self/cmdline >/dev/null"],
                 input="one\ntwo\nthree\n", timeout=30)
    assert (r.returncode, r.stdout.strip()) == (0, "3"), r.stderr
    # the worker serves its own tasks from its own socket too
    r = lab.exec("worker1", ["shoal", "service", "exec", "-i", "web", "--", "cat"],
                 input="from the worker\n", timeout=30)
    assert (r.returncode, r.stdout) == (0, "from the worker\n"), r.stderr
    # ... and `container exec -i` streams into a container of the node it runs on
    task = running_task(lab, "web")
    r = lab.exec("worker1", ["shoal", "container", "exec", "-i", task["id"], "--", "sh", "-c",
                             "cat; exit 4"], input="piped\n", timeout=30)
    assert (r.returncode, r.stdout) == (4, "piped\n"), r.stderr
    # ... but not another node's: only managers know those, and a worker never relays
    r = lab.exec("worker1", ["shoal", "service", "exec", "other", "--", "true"], timeout=30)
    assert r.returncode == 1 and "run the command on a manager" in r.stderr


class Terminal:
    """The CLI run under a pseudo-terminal of ours, as a person at a terminal runs it."""

    def __init__(self, lab, host: str, argv: list[str], rows: int, cols: int) -> None:
        full, env = lab.command(host, argv)
        self.master, slave = os.openpty()
        self.resize(rows, cols)
        pid = os.fork()
        if pid == 0:  # the child: its own session, our terminal its controlling one
            try:
                os.setsid()
                for fd in (0, 1, 2):
                    os.dup2(slave, fd)
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
                os.execvpe(full[0], full, env)
            finally:
                os._exit(127)
        os.close(slave)
        self.pid = pid
        self.reaped = False
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        # the kernel sends SIGWINCH to the terminal's foreground process group: the CLI
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def type(self, text: str) -> None:
        while self._read(0.3):  # what is on its way first (a cursor query to answer)
            pass
        os.write(self.master, text.encode())

    def expect(self, needle: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while needle.encode() not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"no {needle!r} on the terminal: {self.seen[-500:]!r}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 4096)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return False
            raise
        self.seen += chunk
        # busybox's line editor asks where the cursor is, and holds the line typed until a
        # terminal answers: answer as one would
        for _ in range(chunk.count(b"\x1b[6n")):
            os.write(self.master, b"\x1b[1;1R")
        return bool(chunk)

    def close(self) -> None:
        """Whatever happened, the CLI is gone and its terminal closed."""
        if not self.reaped:  # never signal a pid that may have been reused
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        with contextlib.suppress(OSError):
            os.close(self.master)

    def wait(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._read(0.1)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.reaped = True
                return os.waitstatus_to_exitcode(status)
        raise AssertionError(f"the CLI did not exit: {self.seen[-500:]!r}")


def test_it_through_a_terminal_echoes_resizes_and_keeps_the_exit_status(lab):
    term = Terminal(lab, "manager2", ["shoal", "service", "exec", "-it", "web", "--", "sh"],
                    rows=24, cols=80)
    try:
        term.expect("# ")  # busybox sh's prompt, on the task's terminal
        term.type("stty size\r")
        term.expect("24 80")
        term.type("echo he''llo\r")
        term.expect("echo he''llo")  # echoed by the task's terminal
        term.expect("hello")
        term.resize(40, 100)
        # the SIGWINCH travels CLI → manager2 → worker1 → runc: ask until the size is there
        # (how soon is not this test's business)
        deadline = time.monotonic() + 20
        while b"40 100" not in term.seen:
            assert time.monotonic() < deadline, term.seen[-300:]
            term.type("stty size\r")
            with contextlib.suppress(AssertionError):
                term.expect("40 100", timeout=1)
        term.type("exit 3\r")
        assert term.wait() == 3
    finally:
        term.close()
    # ^C typed at the CLI's terminal reaches the task's terminal, which interrupts the command
    term = Terminal(lab, "manager2", ["shoal", "service", "exec", "-it", "web", "--", "sh",
                                      "-c", "echo ready; exec sleep 60"], rows=24, cols=80)
    try:
        term.expect("ready")
        time.sleep(0.5)
        term.type("\x03")
        assert term.wait() == 130  # 128 + SIGINT, as a shell reports it
    finally:
        term.close()


def test_a_workers_certificate_cannot_exec_into_another_nodes_task(lab):
    other = running_task(lab, "other")
    worker = lab.host("worker1")
    target = lab.host(other["node_hostname"]).address
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        import aiohttp
        from common import pki
        from common.nodestate import NodeFiles
        ca, cert, key = NodeFiles(Path({worker.data_root!r})).load_certs()
        ctx = pki.client_ssl_context(ca, cert, key)
        async def main():
            async with aiohttp.ClientSession() as s:
                try:
                    ws = await s.ws_connect("wss://{target}:2377/worker/exec/{other['id']}",
                                            ssl=ctx)
                except aiohttp.WSServerHandshakeError as exc:
                    print(exc.status)
                    return
                await ws.close()
                print("upgraded")
        asyncio.run(main())
    """)
    r = lab.exec("worker1", [sys.executable, "-c", script], timeout=30)
    assert r.stdout.strip() == "403", (r.stdout, r.stderr)
    # a task of that node still answers its managers
    r = lab.cli("manager1", "service", "exec", "other", "--", "hostname", check=False)
    assert (r.returncode, r.stdout.strip()) == (0, other["id"][:12]), r.stderr
