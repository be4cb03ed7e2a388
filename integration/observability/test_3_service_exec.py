"""Issue 19: `shoal service exec` on the package's lab. `web` has 2 replicas, both constrained
to worker3, so `web.2` is a task on worker3; the CLI runs on manager2, whose shoald relays the
stream to worker3's 2377 over mutual TLS with its own node certificate. Exit codes, stdin, an
interactive terminal driven through a pseudo-terminal (echo, resize, ^C, `exit 3`), and worker
certificates refused. `other` runs on manager3, for the cases of a task on another manager.
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

from integration.helpers import needs_root, node_table, wait_until
from integration.observability.support import (IMAGE, create_service, lab_settled, running,
                                               services, wait_running)

pytestmark = [needs_root, pytest.mark.lab]

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def obs(lab):
    lab_settled(lab)
    with services(lab, "web", "other"):
        create_service(lab, "web", "--replicas", "2", "--constraint", "node.hostname==worker3",
                       IMAGE, "sleep", "100000")
        create_service(lab, "other", "--constraint", "node.hostname==manager3",
                       IMAGE, "sleep", "100000")
        wait_running(lab, "web", 2)
        wait_running(lab, "other", 1)
        yield lab


def task_at(lab, service: str, slot: int) -> dict:
    [task] = [t for t in running(lab, service) if t["slot"] == slot]
    return task


def test_exec_from_manager2_runs_in_web_2_on_worker3(obs):
    lab = obs
    task = task_at(lab, "web", 2)
    assert (task["name"].split(".")[:2], task["node_hostname"]) == (["web", "2"], "worker3")
    r = lab.cli("manager2", "service", "exec", "web.2", "--", "hostname", check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == task["id"][:12]  # the task's container, not manager2
    # the task id names the same task, from any manager; the service alone names one of its
    r = lab.cli("manager3", "service", "exec", task["id"], "--", "hostname", check=False)
    assert (r.returncode, r.stdout.strip()) == (0, task["id"][:12]), r.stderr
    r = lab.cli("manager1", "service", "exec", "web", "--", "hostname", check=False)
    assert r.returncode == 0 and r.stdout.strip() in {t["id"][:12] for t in running(lab, "web")}
    # the exec is recorded on the manager that served it: who, which task, which command
    log = lab.log("manager2", lines=400)
    assert (f"exec by root on the local socket of manager2 into task web.2.{task['id']} "
            f"({task['id']}) on node {task['node_id']}: ['hostname']") in log, log[-2000:]
    # ... and worker3 ran it for manager2 (the stream went manager2 -> worker3's 2377)
    m2_id = node_table(lab, "manager2")["manager2"]["id"]
    relayed = f"exec relayed by manager {m2_id} into task {task['id']}: ['hostname']"
    assert relayed in lab.log("worker3", lines=400), lab.log("worker3", lines=50)
    # ... and in its cluster events
    events = lab.cli("manager2", "events", "--since", "5m", "--until", "0s", "--filter",
                     "event=exec", "--format", "json").stdout
    execs = [json.loads(ln) for ln in events.splitlines() if ln.strip()]
    assert any(e["id"] == task["id"] and e["attributes"]["command"] == "hostname"
               and e["attributes"]["who"] == "root on the local socket of manager2"
               for e in execs), events


def test_the_commands_exit_status_is_the_clis(obs):
    lab = obs
    r = lab.cli("manager2", "service", "exec", "web.2", "--", "sh", "-c",
                "echo out; echo err >&2; exit 7", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
    r = lab.cli("manager2", "service", "exec", "nosuch", "--", "true", check=False)
    assert r.returncode == 1 and "no such service or task: nosuch" in r.stderr


def test_stdin_is_streamed_with_i(obs):
    lab = obs
    r = lab.exec("manager2", ["shoal", "service", "exec", "-i", "web.2", "--", "sh", "-c",
                              "wc -l; cat /proc/self/cmdline >/dev/null"],
                 input="one\ntwo\nthree\n", timeout=30)
    assert (r.returncode, r.stdout.strip()) == (0, "3"), r.stderr
    # the worker serves its own tasks from its own socket too
    r = lab.exec("worker3", ["shoal", "service", "exec", "-i", "web.2", "--", "cat"],
                 input="from the worker\n", timeout=30)
    assert (r.returncode, r.stdout) == (0, "from the worker\n"), r.stderr
    # ... and `container exec -i` streams into a container of the node it runs on
    task = task_at(lab, "web", 2)
    r = lab.exec("worker3", ["shoal", "container", "exec", "-i", task["id"], "--", "sh", "-c",
                             "cat; exit 4"], input="piped\n", timeout=30)
    assert (r.returncode, r.stdout) == (4, "piped\n"), r.stderr
    # ... but not another node's: only managers know those, and a worker never relays
    for worker in ("worker3", "worker1"):
        r = lab.exec(worker, ["shoal", "service", "exec", "other", "--", "true"], timeout=30)
        assert r.returncode == 1 and "run the command on a manager" in r.stderr, r.stderr


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


def test_it_web_2_from_manager2_echoes_resizes_and_exits_3(obs):
    lab = obs
    task = task_at(lab, "web", 2)
    assert task["node_hostname"] == "worker3"
    term = Terminal(lab, "manager2", ["shoal", "service", "exec", "-it", "web.2", "--", "sh"],
                    rows=24, cols=80)
    try:
        term.expect("# ")  # busybox sh's prompt, on the task's terminal
        term.type("hostname; stty size\r")
        term.expect(task["id"][:12])   # web.2's container on worker3
        term.expect("24 80")
        term.type("echo he''llo\r")
        term.expect("echo he''llo")  # echoed by the task's terminal
        term.expect("hello")
        term.resize(40, 100)
        # the SIGWINCH travels CLI → manager2 → worker3 → runc: ask until the size is there
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
    term = Terminal(lab, "manager2", ["shoal", "service", "exec", "-it", "web.2", "--", "sh",
                                      "-c", "echo ready; exec sleep 60"], rows=24, cols=80)
    try:
        term.expect("ready")
        # SIGINT must reach `sleep`, not the `sh` before its exec: wait until sleep runs
        wait_until(lambda: "sleep 60" in lab.cli("worker3", "container", "top",
                                                 task["id"]).stdout,
                   timeout=20, what="sleep 60 running in web.2")
        term.type("\x03")
        assert term.wait() == 130  # 128 + SIGINT, as a shell reports it
    finally:
        term.close()


def exec_with_node_certificate(lab, holder: str, target_host: str, task_id: str) -> str:
    """What /worker/exec/{task} on `target_host`'s 2377 answers a client holding `holder`'s node
    certificate: the HTTP status of a refused upgrade, or "upgraded"."""
    holder_root = lab.host(holder).data_root
    target = lab.host(target_host).address
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        import aiohttp
        from common import pki
        from common.nodestate import NodeFiles
        ca, cert, key = NodeFiles(Path({holder_root!r})).load_certs()
        ctx = pki.client_ssl_context(ca, cert, key)
        async def main():
            async with aiohttp.ClientSession() as s:
                try:
                    ws = await s.ws_connect("wss://{target}:2377/worker/exec/{task_id}",
                                            ssl=ctx)
                except aiohttp.WSServerHandshakeError as exc:
                    print(exc.status)
                    return
                await ws.close()
                print("upgraded")
        asyncio.run(main())
    """)
    r = lab.exec(holder, [sys.executable, "-c", script], timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_workers_certificate_cannot_open_an_exec(obs):
    lab = obs
    web2 = task_at(lab, "web", 2)
    other = task_at(lab, "other", 1)
    # another worker's certificate, into web.2 on worker3 and into a task on a manager
    assert exec_with_node_certificate(lab, "worker1", "worker3", web2["id"]) == "403"
    assert exec_with_node_certificate(lab, "worker1", "manager3", other["id"]) == "403"
    # not even worker3's own, into its own task: only a manager's certificate opens one
    assert exec_with_node_certificate(lab, "worker3", "worker3", web2["id"]) == "403"
    # the same request with a manager's certificate is upgraded (the refusal is the cert's)
    assert exec_with_node_certificate(lab, "manager2", "worker3", web2["id"]) == "upgraded"
    # a task of that node still answers its managers
    r = lab.cli("manager1", "service", "exec", "other", "--", "hostname", check=False)
    assert (r.returncode, r.stdout.strip()) == (0, other["id"][:12]), r.stderr
