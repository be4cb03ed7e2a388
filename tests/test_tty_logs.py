"""Terminals, kept-open stdin and the log driver, on the real runc: a tty container's output
reaches its log (and outlives a daemon restart), open_stdin keeps readers waiting, json-file
rotates with max-size/max-file and is still read in order, `none` keeps nothing.

Root only; needs runc and busybox-static.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from common import errors, linux
from common.model import LogDriver
from worker.executor import ContainerConfig, Executor, cgroup_mounts
from worker.executor import console, runc as runc_mod
from worker.executor.logs import _docker_size, log_policy
from worker.images import ImageStore

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runc, mounts, cgroups)"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)"),
    pytest.mark.skipif(not ib.busybox_available(), reason="needs busybox-static (/bin/busybox)"),
]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def images_root(tmp_path_factory) -> Path:
    return ib.busybox_store(tmp_path_factory.mktemp("images"))


@pytest.fixture
def console_dirs(monkeypatch) -> list[str]:
    """The private directories of the console sockets made during the test."""
    made: list[str] = []

    class Recorded(console.ConsoleSocket):
        def __init__(self) -> None:
            super().__init__()
            made.append(self.dir)
    monkeypatch.setattr(runc_mod, "ConsoleSocket", Recorded)
    return made


def run(coro):
    return asyncio.run(coro)


def config(cid: str, script: str, **kw) -> ContainerConfig:
    return ContainerConfig(id=cid, name=f"svc.1.{cid}", image="busybox:1",
                           command=["sh", "-c", script], **kw)


def rotating(size: str, files: int) -> LogDriver:
    return LogDriver(name="json-file", options={"max-size": size, "max-file": str(files)})


async def lines_of(ex: Executor, cid: str, **kw) -> list[str]:
    return [e.line async for e in ex.logs(cid, **kw)]


async def remove_clean(ex: Executor, cid: str) -> None:
    pump = console.pump_of(ex.containers_dir / cid)
    await ex.remove(cid)
    bundle = ex.containers_dir / cid
    assert not bundle.exists() and not (ex.state_dir / cid).exists()
    assert not [m for m in linux.mountinfo() if m.mount_point.startswith(str(bundle))]
    for mnt, _, _ in cgroup_mounts():
        assert not os.path.exists(os.path.join(mnt, f"{ex.cgroup_prefix}{cid}"))
    assert not console.pump_running(pump)  # a terminal's pump ends with its container
    assert pump is None or pump[0] not in console._PUMPS  # ... and was reaped if ours


# ---- tty ------------------------------------------------------------------------------------
def test_a_tty_container_writes_its_terminal_to_the_log(images_root, ex_root, console_dirs):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await ex.create(config("term", "tty; test -t 0 && echo stdin-is-a-tty; "
                                       "test -t 1 && echo stdout-is-a-tty; echo err >&2; "
                                       "printf last", tty=True))
        await ex.start("term")
        assert (await asyncio.wait_for(ex.wait("term"), 10)).exit_code == 0
        logged = [(e.stream, e.line) async for e in ex.logs("term")]
        assert re.fullmatch(r"/dev/pts/\d+", logged[0][1]), logged
        # one terminal for all three: Docker logs a tty's output as stdout
        assert logged[1:] == [("stdout", "stdin-is-a-tty"), ("stdout", "stdout-is-a-tty"),
                              ("stdout", "err"), ("stdout", "last")]
        # the raw copy is the terminal's (\r\n); the records are the program's lines
        assert b"stdin-is-a-tty\r\n" in (ex.containers_dir / "term" / "stdout.log").read_bytes()
        await remove_clean(ex, "term")

        await ex.create(config("plain", "test -t 0 || echo stdin-not-a-tty; tty"))
        await ex.start("plain")
        assert (await asyncio.wait_for(ex.wait("plain"), 10)).exit_code == 1  # `tty`: not a tty
        assert await lines_of(ex, "plain") == ["stdin-not-a-tty", "not a tty"]
        assert console.pump_of(ex.containers_dir / "plain") is None
        await remove_clean(ex, "plain")
    run(scenario())
    assert console_dirs and not [d for d in console_dirs if os.path.exists(d)]


def test_a_tty_container_restarted_in_place_gets_a_new_terminal(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await ex.create(config("again", "echo run-$(cat /n 2>/dev/null); echo x >> /n; exit 3",
                               tty=True))
        await ex.start("again")
        assert (await asyncio.wait_for(ex.wait("again"), 10)).exit_code == 3
        first = console.pump_of(ex.containers_dir / "again")
        await ex.restart("again")
        assert (await asyncio.wait_for(ex.wait("again"), 10)).exit_code == 3
        assert console.pump_of(ex.containers_dir / "again") != first
        assert await lines_of(ex, "again", follow=True) == ["run-", "run-x"]
        assert await lines_of(ex, "again", follow=True, run=0) == ["run-"]
        await remove_clean(ex, "again")
    run(scenario())


# ---- open_stdin -----------------------------------------------------------------------------
def test_open_stdin_keeps_a_reader_waiting(images_root, ex_root):
    """`read x` waits on a kept-open stdin (and on a terminal); on /dev/null it returns at
    once and the container ends."""
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        script = "echo waiting; read x; echo got"
        await ex.create(config("closed", script))
        await ex.create(config("open", script, open_stdin=True))
        await ex.create(config("term", script, tty=True))
        for cid in ("closed", "open", "term"):
            await ex.start(cid)
        assert (await asyncio.wait_for(ex.wait("closed"), 10)).exit_code == 0
        assert await lines_of(ex, "closed") == ["waiting", "got"]
        await asyncio.sleep(0.5)
        for cid in ("open", "term"):
            assert ex.inspect(cid).state == "running", cid
            assert await lines_of(ex, cid) == ["waiting"]
            await ex.stop(cid, grace=0.2)
            assert "got" not in await lines_of(ex, cid)
        for cid in ("closed", "open", "term"):
            await remove_clean(ex, cid)
    run(scenario())


# ---- daemon restarts ------------------------------------------------------------------------
def test_terminal_and_stdin_outlive_the_daemon(images_root, ex_root):
    """A daemon process starts a tty container and an open_stdin one, and exits. Neither
    container notices: the terminal's pump holds the master and keeps copying into the log
    (what it wrote while no daemon ran is there), and stdin is still open. A new daemon
    adopts them and their logs go on."""
    script = textwrap.dedent(f"""
        import asyncio
        from pathlib import Path
        from worker.executor import ContainerConfig, Executor
        from worker.images import ImageStore

        async def main():
            ex = Executor(Path({str(ex_root)!r}), ImageStore(Path({str(images_root)!r})))
            await ex.create(ContainerConfig(id="term", image="busybox:1", tty=True, command=[
                "sh", "-c", "echo up; sleep 0.6; echo down; read x; echo got"]))
            await ex.create(ContainerConfig(id="stdin", image="busybox:1", open_stdin=True,
                command=["sh", "-c", "echo waiting; read x; echo got"]))
            for cid in ("term", "stdin"):
                await ex.start(cid)
            await asyncio.sleep(0.2)
            print([e.line async for e in ex.logs("term")], flush=True)
        asyncio.run(main())
    """)
    linux.become_subreaper(False)  # the orphans must go elsewhere, as after a real restart
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['up']"

    async def scenario():
        await asyncio.sleep(0.8)  # "down" is written while no daemon runs
        ex = Executor(ex_root, ImageStore(images_root))
        states = {c.id: c.state for c in await ex.adopt()}
        assert states == {"term": "running", "stdin": "running"}
        assert await lines_of(ex, "term") == ["up", "down"]
        assert await lines_of(ex, "stdin") == ["waiting"]
        assert console.pump_running(console.pump_of(ex.containers_dir / "term"))
        for cid in ("term", "stdin"):
            await ex.stop(cid, grace=0.2)
            assert "got" not in await lines_of(ex, cid)
            await remove_clean(ex, cid)
    run(scenario())


def test_rotation_goes_on_after_adoption(images_root, ex_root):
    async def scenario():
        ex1 = Executor(ex_root, ImageStore(images_root))
        await ex1.create(config("chatty", "i=0; while [ $i -lt 60 ]; do echo a-$i; "
                                          "i=$((i+1)); done; sleep 0.5; i=0; "
                                          "while [ $i -lt 60 ]; do echo b-$i; i=$((i+1)); done",
                                log_driver=rotating("1k", 3)))
        await ex1.start("chatty")
        await asyncio.sleep(0.3)
        await ex1.close()
        ex2 = Executor(ex_root, ImageStore(images_root))
        await ex2.adopt()
        await asyncio.wait_for(ex2.wait("chatty"), 10)
        lines = await lines_of(ex2, "chatty")
        assert lines[-1] == "b-59" and lines == sorted(lines, key=_order)
        assert len(lines) == len(set(lines))
        assert _log_files(ex2, "chatty") <= {"container.log", "container.log.1", "container.log.2"}
        await remove_clean(ex2, "chatty")
    run(scenario())


def _order(line: str) -> tuple[str, int]:
    prefix, _, n = line.partition("-")
    return prefix, int(n)


def _log_files(ex: Executor, cid: str) -> set[str]:
    return {p.name for p in (ex.containers_dir / cid).iterdir()
            if p.name.startswith("container.log")}


# ---- json-file rotation ---------------------------------------------------------------------
@pytest.mark.parametrize("max_file", [1, 2, 3])
def test_max_size_and_max_file_rotate_the_log(images_root, ex_root, max_file):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await ex.create(config("big", "i=0; while [ $i -lt 12000 ]; do echo line-$i; "
                                      "i=$((i+1)); done", log_driver=rotating("1k", max_file)))
        await ex.start("big")
        assert (await asyncio.wait_for(ex.wait("big"), 30)).exit_code == 0
        lines = await lines_of(ex, "big")
        cdir = ex.containers_dir / "big"
        files = ["container.log"] + [f"container.log.{k}" for k in range(1, max_file)]
        assert _log_files(ex, "big") == set(files)
        sizes = [(cdir / f).stat().st_size for f in files]
        assert all(s <= 1000 for s in sizes), sizes  # Docker's 1k: 1000 bytes
        assert all(s >= 900 for s in sizes[1:]), sizes  # rotated ones are full
        # in order, whole, and the newest last: what the kept files hold, oldest first
        numbers = [int(x.split("-")[1]) for x in lines]
        assert numbers == list(range(numbers[0], 12000))
        held = sum(len((cdir / f).read_bytes().splitlines()) for f in files)
        assert len(lines) == held
        assert await lines_of(ex, "big", tail=3) == lines[-3:]
        assert await lines_of(ex, "big", tail=len(lines) + 50) == lines
        if max_file > 1:  # a tail that starts in a rotated file
            tail = await lines_of(ex, "big", tail=len(lines) - 2)
            assert tail == lines[2:]
        # the raw copy the container appends to is freed behind the tailer
        raw = (cdir / "stdout.log").stat()
        if _can_punch(cdir):
            assert raw.st_blocks * 512 < raw.st_size // 2, (raw.st_blocks, raw.st_size)
        await remove_clean(ex, "big")
    run(scenario())


def _can_punch(where: Path) -> bool:
    from worker.executor.logs import _punch_hole
    probe = where / ".punch-probe"
    probe.write_bytes(b"x" * 8192)
    fd = os.open(probe, os.O_RDWR)
    try:
        return _punch_hole(fd, 4096)
    finally:
        os.close(fd)
        probe.unlink()


def test_a_follower_reads_on_across_rotations(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await ex.create(config("slow", "i=0; while [ $i -lt 150 ]; do echo line-$i; "
                                       "usleep 4000; i=$((i+1)); done",
                               log_driver=rotating("1k", 2)))
        await ex.start("slow")
        seen = await asyncio.wait_for(lines_of(ex, "slow", follow=True), 20)
        numbers = [int(x.split("-")[1]) for x in seen]
        assert numbers == sorted(set(numbers)) and numbers[-1] == 149, numbers
        # far more than the two files hold at the end: the follower went from file to file
        assert len(numbers) > 60, numbers
        await remove_clean(ex, "slow")
    run(scenario())


def test_runs_keep_their_ends_in_a_rotated_log(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        script = ("n=$(($(cat /n 2>/dev/null || echo 0)+1)); echo $n > /n; i=0; "
                  "while [ $i -lt 30 ]; do echo r$n-$i; i=$((i+1)); done")
        await ex.create(config("runs", script, log_driver=rotating("2k", 3)))
        await ex.start("runs")
        await asyncio.wait_for(ex.wait("runs"), 10)
        await ex.restart("runs")
        await asyncio.wait_for(ex.wait("runs"), 10)
        first = await lines_of(ex, "runs", follow=True, run=0)
        assert first and first[-1] == "r1-29" and all(x.startswith("r1-") for x in first)
        assert (await lines_of(ex, "runs"))[-1] == "r2-29"
        await remove_clean(ex, "runs")
    run(scenario())


# ---- log driver none ------------------------------------------------------------------------
@pytest.mark.parametrize("tty", [False, True])
def test_log_driver_none_keeps_nothing_and_refuses_reading(images_root, ex_root, tty):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await ex.create(config("quiet", "echo hidden; echo hidden >&2; exit 4", tty=tty,
                               log_driver=LogDriver(name="none")))
        await ex.start("quiet")
        assert (await asyncio.wait_for(ex.wait("quiet"), 10)).exit_code == 4
        assert not [p.name for p in (ex.containers_dir / "quiet").iterdir()
                    if p.name.endswith((".log", ".log.1")) and p.name != "runc.log"]
        with pytest.raises(errors.FailedPrecondition,
                           match="configured logging driver does not support reading"):
            await lines_of(ex, "quiet")
        with pytest.raises(errors.FailedPrecondition):
            ex.check_logs("quiet")
        await remove_clean(ex, "quiet")
    run(scenario())


# ---- options --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, size", [("10k", 10_000), ("10m", 10_000_000), ("1g", 10**9),
                                        ("100", 100), ("1.5k", 1500), ("2KB", 2000),
                                        ("3 mb", 3_000_000)])
def test_docker_sizes(text, size):
    assert _docker_size(text) == size


@pytest.mark.parametrize("driver, says", [
    (LogDriver("json-file", {"max-size": "ten"}), "max-size"),
    (LogDriver("json-file", {"max-size": "0"}), "positive"),
    (LogDriver("json-file", {"max-size": "1k", "max-file": "0"}), "max-file"),
    (LogDriver("json-file", {"max-file": "x"}), "max-file"),
    (LogDriver("json-file", {"compress": "true"}), "compress"),
    (LogDriver("syslog"), "syslog"),
    (LogDriver("none", {"max-size": "1k"}), "no options"),
])
def test_bad_log_options_are_refused(driver, says):
    with pytest.raises(errors.InvalidArgument, match=says):
        log_policy(driver)


def test_a_bad_log_option_refuses_the_create_and_leaves_nothing(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        with pytest.raises(errors.InvalidArgument, match="max-file"):
            await ex.create(config("bad", "true", log_driver=rotating("1k", 0)))
        assert not (ex.containers_dir / "bad").exists() and ex.list() == []
    run(scenario())
    # the default (issue 19): rotated as Docker's advised 10m x 3 (tests/test_container_cmds.py)
    assert log_policy(None).keep and (log_policy(None).max_size, log_policy(None).max_files) == \
        (10_000_000, 3)
