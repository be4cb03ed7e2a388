"""Issue 19: `container top | stats | kill` and `logs --since/--until` on real runc containers;
logs rotate by default (10m x 3) and are read in order across their rotated files.

Root only; needs runc and busybox-static (as tests/test_executor.py). The pure parts (times,
ps tables, CLI refusals) run everywhere."""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from common import errors
from common.logtime import parse_time
from common.model import LogDriver
from worker.executor import ContainerConfig, Executor
from worker.executor import stats as cstats
from worker.executor import top as ctop
from worker.executor.logs import DEFAULT_POLICY, LogWindow, log_policy
from worker.images import ImageStore

needs_runc = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runc, mounts, cgroups)"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)"),
    pytest.mark.skipif(not ib.busybox_available(), reason="needs busybox-static (/bin/busybox)"),
]


@pytest.fixture(scope="module")
def images_root(tmp_path_factory) -> Path:
    return ib.busybox_store(tmp_path_factory.mktemp("images"))


def run(coro):
    return asyncio.run(coro)


def config(cid: str, script: str, **kw) -> ContainerConfig:
    return ContainerConfig(id=cid, name=f"svc.1.{cid}", image="busybox:1",
                           command=["sh", "-c", script], **kw)


async def started(ex: Executor, cfg: ContainerConfig) -> int:
    await ex.create(cfg)
    return await ex.start(cfg.id)


async def until_logged(ex: Executor, cid: str, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in [e.line async for e in ex.logs(cid)]):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} never logged by {cid}")


# ---- the pure parts -------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("10m", 1_000_000 - 600), ("1h30m", 1_000_000 - 5400), ("1.5h", 1_000_000 - 5400),
    ("300ms", 1_000_000 - 0.3), ("1700000000", 1_700_000_000), ("1700000000.25", 1_700_000_000.25),
    ("2024-05-01T10:00:00Z", 1_714_557_600), ("2024-05-01T12:00:00+02:00", 1_714_557_600),
    ("2024-05-01T10:00:00.5Z", 1_714_557_600.5)])
def test_times_as_docker_reads_them(text, expected):
    assert parse_time(text, now=1_000_000) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterday", "10x", "2024-13-01", "-", "1e9"])
def test_a_bad_time_is_refused_naming_the_flag(text):
    with pytest.raises(errors.InvalidArgument, match="--until .*RFC 3339"):
        parse_time(text, "--until")


@pytest.mark.parametrize("args, flag", [
    (["container", "logs", "--since", "yesterday", "x"], "--since"),
    (["container", "logs", "--until", "10x", "x"], "--until"),
    (["service", "logs", "--since", "nope", "web"], "--since")])
def test_the_cli_refuses_a_bad_time_in_one_line_before_asking(args, flag):
    from shoal.cli import main
    result = CliRunner().invoke(main, ["--socket", "/nonexistent/shoal.sock", *args])
    assert result.exit_code == 2, result.output
    assert flag in result.output and "RFC 3339" in result.output


def test_ps_output_is_narrowed_to_the_containers_pids_threads_included():
    out = ("UID PID PPID C STIME TTY TIME CMD\n"
           "root 1 0 0 10:00 ? 00:00:01 /sbin/init splash\n"
           "root 42 1 0 10:00 ? 00:00:00 sleep 300\n"
           "root - - 0 10:00 ? 00:00:00 -\n"
           "root 43 1 0 10:00 ? 00:00:00 other\n")
    found = ctop.parse_ps(out, [42])
    assert found.titles == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert found.processes == [["root", "42", "1", "0", "10:00", "?", "00:00:00", "sleep 300"],
                               ["root", "-", "-", "0", "10:00", "?", "00:00:00", "-"]]
    with pytest.raises(errors.InvalidArgument, match="no PID column"):
        ctop.parse_ps("USER COMMAND\nroot init\n", [1])


def test_no_log_options_means_docker_like_rotation():
    assert log_policy(None) == DEFAULT_POLICY
    assert log_policy(LogDriver("json-file", {})) == DEFAULT_POLICY
    assert (DEFAULT_POLICY.max_size, DEFAULT_POLICY.max_files) == (10_000_000, 3)
    # named options are Docker's, with its defaults for the rest (max-file 1)
    assert log_policy(LogDriver("json-file", {"max-size": "1k"})).max_files == 1


# ---- top ------------------------------------------------------------------------------------
def test_top_lists_the_containers_processes(images_root, ex_root):
    pytestmark_apply(needs_runc)

    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await started(ex, config("topme", "sleep 301 & sleep 302 & wait"))
        cgroup = ex.meta("topme")["cgroup"]
        deadline = time.monotonic() + 5
        while len(ctop.cgroup_pids(cgroup)) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        found = await ctop.top(cgroup, ctop.ps_args(None))
        assert found.titles == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
        commands = [row[-1] for row in found.processes]
        assert "sleep 301" in commands and "sleep 302" in commands
        assert len(found.processes) == 3  # sh, two sleeps: none of the host's
        assert str(ex.inspect("topme").pid) in [row[1] for row in found.processes]
        aux = await ctop.top(cgroup, ctop.ps_args("aux"))
        assert aux.titles[:2] == ["USER", "PID"] and len(aux.processes) == 3
        with pytest.raises(errors.InvalidArgument, match="ps --no-such-option"):
            await ctop.top(cgroup, ["--no-such-option"])
        await ex.remove("topme")
    run(scenario())


# ---- stats ----------------------------------------------------------------------------------
def test_stats_show_memory_pids_and_cpu(images_root, ex_root):
    pytestmark_apply(needs_runc)

    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        pid = await started(ex, config("busy", "sleep 300 & while :; do :; done"))
        cgroup = ex.meta("busy")["cgroup"]
        first = cstats.sample(cgroup, pid)
        await asyncio.sleep(1.0)
        second = cstats.sample(cgroup, pid)
        s = cstats.compute("busy", "svc.1.busy", first, second)
        assert s.mem_usage > 0 and 0 < s.mem_limit <= cstats.host_memory()
        assert 0 < s.mem_percent < 100
        assert s.pids >= 2  # the shell and its sleep
        assert s.cpu_percent > 5  # a busy loop: most of a CPU, less on a shared machine
        assert (s.net_rx, s.net_tx) == (0, 0)  # loopback only: not counted, as docker's
        await ex.remove("busy")
        limited = ContainerConfig(id="small", name="svc.1.small", image="busybox:1",
                                  command=["sleep", "300"], memory_limit=64 << 20)
        pid = await started(ex, limited)
        s = cstats.compute("small", "", None, cstats.sample(ex.meta("small")["cgroup"], pid))
        assert s.mem_limit == 64 << 20 and s.cpu_percent == 0.0  # one sample: no CPU % yet
        await ex.remove("small")
    run(scenario())


# ---- kill -----------------------------------------------------------------------------------
def test_kill_sends_the_signal_named_or_numbered(images_root, ex_root):
    pytestmark_apply(needs_runc)

    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        trap = ("trap 'echo got TERM; exit 7' TERM; trap 'echo got HUP; exit 8' HUP; "
                "echo ready; while :; do sleep 0.1; done")
        for cid, signal, code, said in (("term", "TERM", 7, "got TERM"),
                                        ("hup", "sighup", 8, "got HUP"),
                                        ("nine", "9", 137, None)):
            await started(ex, config(cid, trap))
            await until_logged(ex, cid, "ready")
            sent = await ex.kill(cid, signal)
            info = await asyncio.wait_for(ex.wait(cid), 10)
            assert info.exit_code == code, (signal, info)
            lines = [e.line async for e in ex.logs(cid)]
            assert said is None or said in lines
            assert sent.name == {"TERM": "SIGTERM", "sighup": "SIGHUP", "9": "SIGKILL"}[signal]
            with pytest.raises(errors.Conflict, match="not running"):
                await ex.kill(cid)  # an exited container, as docker's 409
            await ex.remove(cid)
        await started(ex, config("sig", "sleep 300"))
        with pytest.raises(errors.InvalidArgument, match="unknown signal 'SIGNOPE'.*--signal"):
            await ex.kill("sig", "SIGNOPE")
        assert ex.inspect("sig").state == "running"
        await ex.kill("sig")  # KILL by default
        assert (await asyncio.wait_for(ex.wait("sig"), 10)).exit_code == 137
        await ex.remove("sig")
        with pytest.raises(errors.NotFound):
            await ex.kill("no-such-container")
    run(scenario())


# ---- logs across rotated files --------------------------------------------------------------
def test_since_until_and_tail_across_rotated_files(images_root, ex_root):
    pytestmark_apply(needs_runc)

    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        script = ("for p in 1 2 3; do i=10; while [ $i -lt 30 ]; do echo p$p-$i; i=$((i+1)); "
                  "done; sleep 1.2; done")
        cfg = config("rot", script, log_driver=LogDriver(
            "json-file", {"max-size": "1k", "max-file": "9"}))
        await started(ex, cfg)
        await asyncio.wait_for(ex.wait("rot"), 20)
        everything = [e async for e in ex.logs("rot")]
        assert [e.line for e in everything] == \
            [f"p{p}-{i}" for p in (1, 2, 3) for i in range(10, 30)]
        assert (ex.containers_dir / "rot" / "container.log.3").exists()  # really rotated
        assert [e.ts for e in everything] == sorted(e.ts for e in everything)
        start2 = next(e.ts for e in everything if e.line == "p2-10")
        end2 = next(e.ts for e in everything if e.line == "p2-29")

        async def read(**kw) -> list[str]:
            return [e.line async for e in ex.logs("rot", **kw)]
        assert await read(window=LogWindow(since=start2)) == \
            [f"p{p}-{i}" for p in (2, 3) for i in range(10, 30)]
        assert await read(window=LogWindow(until=end2)) == \
            [f"p{p}-{i}" for p in (1, 2) for i in range(10, 30)]
        assert await read(window=LogWindow(since=start2, until=end2)) == \
            [f"p2-{i}" for i in range(10, 30)]
        assert await read(tail=3) == ["p3-27", "p3-28", "p3-29"]
        # tail counts first, then the window (as Docker's): 25 lines back reach into p2
        assert await read(tail=25, window=LogWindow(until=end2)) == \
            [f"p2-{i}" for i in range(25, 30)]
        assert await read(window=LogWindow(since=time.time() + 60)) == []
        await ex.remove("rot")
    run(scenario())


def test_following_stops_at_until(images_root, ex_root):
    pytestmark_apply(needs_runc)

    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await started(ex, config("ticker", "while :; do echo tick; sleep 0.2; done"))
        until = time.time() + 1.5
        t0 = time.monotonic()
        got = [e async for e in ex.logs("ticker", follow=True, window=LogWindow(until=until))]
        assert time.monotonic() - t0 < 5 and got and all(e.ts <= until for e in got)
        await ex.remove("ticker")
    run(scenario())


def test_default_rotation_bounds_a_chatty_containers_logs(images_root, ex_root):
    """45 MB of output with no log options: at most 3 files of 10 MB, and the raw stdout file
    freed behind the copy; the newest lines still read."""
    pytestmark_apply(needs_runc)

    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        line = "x" * 999
        await started(ex, config("chatty", f"yes {line} | head -c 45000000; echo last-line"))
        await asyncio.wait_for(ex.wait("chatty"), 120)
        assert [e.line async for e in ex.logs("chatty", tail=1)] == ["last-line"]
        cdir = ex.containers_dir / "chatty"
        logs = sorted(p.name for p in cdir.iterdir() if p.name.startswith("container.log"))
        assert logs == ["container.log", "container.log.1", "container.log.2"]
        kept = sum((cdir / name).stat().st_size for name in logs)
        assert 2 * 10_000_000 < kept <= 3 * 10_000_000  # full, rotated, bounded
        on_disk = sum(p.stat().st_blocks * 512 for p in cdir.iterdir() if p.name.endswith(".log")
                      or p.name.startswith("container.log"))
        assert on_disk < 3 * 10_000_000 + 11_000_000, on_disk  # ~30 MB plus one file at most
        await ex.remove("chatty")
    run(scenario())


def pytestmark_apply(marks) -> None:
    """Skip a real-runc test where runc cannot run (the pure tests above run anywhere)."""
    for mark in marks:
        if mark.args[0]:
            pytest.skip(mark.kwargs["reason"])
