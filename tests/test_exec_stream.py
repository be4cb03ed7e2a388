"""The exec stream: its frames (common/execstream.py), and a real runc container exec'd into
through a websocket served as the node serves it (worker/executor/execio.py): a terminal that
resizes, exit codes, stdin streamed, ^C through the terminal.

The runc tests need root, runc and busybox-static.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from aiohttp import web

import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from common import errors, execstream as xs
from common.httpclient import Endpoint
from worker.executor import ContainerConfig, Executor, execio
from worker.images import ImageStore


# ---- frames ---------------------------------------------------------------------------------
@pytest.mark.parametrize("frame", [
    xs.Start(["sh", "-c", "echo hi"], tty=True, stdin=True, rows=24, cols=80),
    xs.Start(["true"]), xs.Resize(50, 132), xs.Eof(), xs.Exit(0), xs.Exit(255),
    xs.Error("no such task", 404), xs.Data(xs.STDIN, b"\x03"), xs.Data(xs.STDOUT, b""),
    xs.Data(xs.STDERR, bytes(range(256)))])
def test_every_frame_comes_back_as_it_was_sent(frame):
    assert xs.decode(xs.encode(frame)) == frame


@pytest.mark.parametrize("message, says", [
    (b"", "channel byte"), (b"\x07data", "channel byte"), ("not json", "one JSON object"),
    ("[1]", '"type"'), ('{"type": "launch"}', "unknown exec frame type"),
    ('{"type": "start", "argv": []}', "argv"), ('{"type": "start", "argv": ["a\\u0000"]}', "argv"),
    ('{"type": "start", "argv": "ls"}', "argv"),
    ('{"type": "start", "argv": ["ls"], "tty": "yes"}', "tty must be true or false"),
    ('{"type": "start", "argv": ["ls"], "user": "root"}', "unknown field(s) user"),
    ('{"type": "resize", "rows": 0, "cols": 80}', "rows must be an integer 1..65535"),
    ('{"type": "resize", "rows": 24, "cols": 70000}', "cols"),
    ('{"type": "resize", "rows": true, "cols": 80}', "rows"),
    ('{"type": "exit", "code": 256}', "0..255"), ('{"type": "exit", "code": 1.5}', "0..255"),
    ('{"type": "error", "message": 3}', "message")])
def test_a_malformed_frame_is_refused_naming_what_is_wrong(message, says):
    with pytest.raises(errors.InvalidArgument) as exc:
        xs.decode(message)
    assert says in exc.value.message


# ---- a real container -----------------------------------------------------------------------
needs_runc = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runc, mounts, cgroups)"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)"),
    pytest.mark.skipif(not ib.busybox_available(), reason="needs busybox-static (/bin/busybox)"),
]


def needs_runc_mark(fn):
    for mark in needs_runc:
        fn = mark(fn)
    return fn


@pytest.fixture(scope="module")
def images_root(tmp_path_factory) -> Path:
    return ib.busybox_store(tmp_path_factory.mktemp("images"))


class Session:
    """A client's side of one exec: what it got, per channel, and the exit frame."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.out = bytearray()
        self.err = bytearray()
        self.code: int | None = None

    async def send(self, frame: xs.Frame) -> None:
        await xs.send(self.ws, frame)

    async def read_until(self, needle: bytes, timeout: float = 10) -> None:
        async def read() -> None:
            while needle not in self.out:
                if not await self._one():
                    raise AssertionError(f"stream ended without {needle!r}: {bytes(self.out)!r}")
        try:
            await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {needle!r} within {timeout}s: {bytes(self.out)!r} "
                                 f"{bytes(self.err)!r}") from None

    async def finish(self, timeout: float = 15) -> int:
        async def read() -> None:
            while await self._one():
                pass
        await asyncio.wait_for(read(), timeout)
        assert self.code is not None, (bytes(self.out), bytes(self.err))
        return self.code

    async def _one(self) -> bool:
        msg = await self.ws.receive()
        if msg.type not in (web.WSMsgType.TEXT, web.WSMsgType.BINARY):
            return False
        frame = xs.decode(msg.data)
        if isinstance(frame, xs.Data):
            (self.out if frame.channel == xs.STDOUT else self.err).extend(frame.data)
        elif isinstance(frame, xs.Exit):
            self.code = frame.code
        elif isinstance(frame, xs.Error):
            raise xs.error_for(frame.status, frame.message)
        return True


@pytest.fixture
def node(images_root, ex_root):
    """`node(scenario)`: a running busybox container `box` and a websocket endpoint serving
    exec into it as a node does; `scenario(open_exec)` gets a function that starts an exec
    and returns its Session."""
    def runner(scenario):
        async def main():
            ex = Executor(ex_root, ImageStore(images_root))
            await ex.create(ContainerConfig(id="box", name="svc.1.box", image="busybox:1",
                                            command=["sleep", "1000"]))
            await ex.start("box")

            async def handler(request: web.Request) -> web.WebSocketResponse:
                ws = web.WebSocketResponse(max_msg_size=xs.MAX_FRAME)
                await ws.prepare(request)
                start = await xs.first_frame(ws)
                await execio.serve(ws, ex.exec_process("box", start.argv, tty=start.tty,
                                                       stdin=start.stdin), start)
                return ws
            app = web.Application()
            app.add_routes([web.get("/exec", handler)])
            runner_ = web.AppRunner(app)
            await runner_.setup()
            sock_dir = tempfile.mkdtemp(prefix="shoal-exec-test-")
            path = os.path.join(sock_dir, "s")
            site = web.UnixSite(runner_, path)
            await site.start()
            try:
                async def open_exec(start: xs.Start):
                    cm = xs.dial(Endpoint(unix_path=path), "/exec")
                    ws = await cm.__aenter__()
                    opened.append(cm)
                    await xs.send(ws, start)
                    return Session(ws)
                opened: list = []
                try:
                    await scenario(open_exec)
                finally:
                    for cm in opened:
                        await cm.__aexit__(None, None, None)
            finally:
                await runner_.cleanup()
                shutil.rmtree(sock_dir, ignore_errors=True)
                await ex.remove("box")
                await ex.close()
        asyncio.run(main())
    return runner


@needs_runc_mark
def test_a_terminal_resizes_and_the_command_sees_the_new_size(node):
    async def scenario(open_exec):
        s = await open_exec(xs.Start(["sh", "-c", "echo ready; while read x; do stty size; "
                                      "[ \"$x\" = q ] && break; done; test -t 0"],
                                     tty=True, stdin=True, rows=24, cols=80))
        # runc gives the container's terminal our size once the command runs, as docker's
        # does: a command asking at once can see 0x0 (the node tells runc again in the moments
        # after the command started, execio._size_again). So: once it runs, a moment, then ask.
        await s.read_until(b"ready")
        await asyncio.sleep(1.0)
        await s.send(xs.Data(xs.STDIN, b"a\r"))
        await s.read_until(b"24 80")  # the size the client started with
        # A resize reaches the container's terminal when runc handles the SIGWINCH it is sent,
        # a moment later: ask again until it shows (as a shell's next prompt would).
        await s.send(xs.Resize(50, 132))
        for attempt in range(20):
            await s.send(xs.Data(xs.STDIN, b"go\r"))
            try:
                await s.read_until(b"50 132", timeout=0.5)
                break
            except AssertionError:
                if attempt == 19:
                    raise
        assert b"go" in s.out  # the terminal echoes what is typed
        await s.send(xs.Data(xs.STDIN, b"q\r"))
        assert await s.finish() == 0
    node(scenario)


@needs_runc_mark
def test_the_exit_code_comes_back_with_and_without_a_terminal(node):
    async def scenario(open_exec):
        plain = await open_exec(xs.Start(["sh", "-c", "echo out; echo err >&2; exit 7"]))
        assert await plain.finish() == 7
        assert plain.out == b"out\n" and plain.err == b"err\n"  # kept apart without a terminal
        term = await open_exec(xs.Start(["sh", "-c", "exit 3"], tty=True, rows=24, cols=80))
        assert await term.finish() == 3
        missing = await open_exec(xs.Start(["no-such-command"]))
        assert await missing.finish() != 0
        assert b"no-such-command" in missing.err
    node(scenario)


@needs_runc_mark
def test_stdin_is_streamed_to_cat_and_its_end_ends_it(node):
    async def scenario(open_exec):
        s = await open_exec(xs.Start(["cat"], stdin=True))
        await s.send(xs.Data(xs.STDIN, b"first line\n"))
        await s.read_until(b"first line\n")  # streamed: out before the input ended
        await s.send(xs.Data(xs.STDIN, b"second\n"))
        await s.send(xs.Eof())
        assert await s.finish() == 0
        assert s.out == b"first line\nsecond\n"
        # without -i the command's stdin is empty: cat ends at once
        quiet = await open_exec(xs.Start(["cat"]))
        assert await quiet.finish() == 0 and quiet.out == b""
    node(scenario)


@needs_runc_mark
def test_ctrl_c_through_the_terminal_interrupts_sleep(node):
    async def scenario(open_exec):
        s = await open_exec(xs.Start(["sh", "-c", "echo ready; exec sleep 600"], tty=True,
                                     stdin=True, rows=24, cols=80))
        await s.read_until(b"ready")
        await asyncio.sleep(0.3)  # sleep is running (exec'd by the shell)
        await s.send(xs.Data(xs.STDIN, b"\x03"))
        assert await s.finish(timeout=10) == 130  # 128 + SIGINT, as a shell reports it
    node(scenario)


@needs_runc_mark
def test_a_client_that_goes_away_takes_its_command_with_it(node, ex_root):
    async def scenario(open_exec):
        s = await open_exec(xs.Start(["sh", "-c", "echo up; exec sleep 600"], stdin=True))
        await s.read_until(b"up")
        await s.ws.close()
        # gone within moments (how soon is not this test's business): looked for a while
        probe = await open_exec(xs.Start(["sh", "-c", "for i in $(seq 100); do ps -o args | "
                                          "grep -q '^sleep 600' || exit 0; sleep 0.1; done; "
                                          "exit 1"]))
        assert await probe.finish() == 0, bytes(probe.out)
    node(scenario)
