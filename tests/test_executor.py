"""The executor on the real runc: lifecycle, exit codes, OOM, stop with grace, exec, mounts,
logs with timestamps, adoption by a restarted executor, and no leftovers after remove.

Root only; needs runc and busybox-static.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from common import errors, linux
from common.model import Mount
import imagebuild as ib  # tests/ is on sys.path under pytest (rootdir layout)
from worker.executor import ContainerConfig, Executor, cgroup_mounts
from worker.images import ImageStore

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runc, mounts, cgroups)"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (apt-get install runc)"),
    pytest.mark.skipif(not ib.busybox_available(), reason="needs busybox-static (/bin/busybox)"),
]


@pytest.fixture(scope="module")
def images_root(tmp_path_factory) -> Path:
    """One image store for the module (images: busybox:1, and env:1 with image settings)."""
    return ib.busybox_store(tmp_path_factory.mktemp("images"), {"env:1": {
        "Env": [ib.DEFAULT_PATH, "A=image", "B=image"], "WorkingDir": "/srv/app",
        "Entrypoint": ["sh", "-c"], "Cmd": ["echo from-image-cmd"]}})


def run(coro):
    return asyncio.run(coro)


def config(cid: str, *command: str, **kw) -> ContainerConfig:
    return ContainerConfig(id=cid, name=f"svc.1.{cid}", image=kw.pop("image", "busybox:1"),
                           command=list(command), **kw)


async def run_to_end(ex: Executor, cfg: ContainerConfig, remove: bool = True):
    await ex.create(cfg)
    await ex.start(cfg.id)
    info = await ex.wait(cfg.id)
    lines = [entry async for entry in ex.logs(cfg.id)]
    if remove:
        await ex.remove(cfg.id)
        assert_clean(ex, cfg.id)
    return info, lines


def assert_clean(ex: Executor, cid: str) -> None:
    """Nothing of the container is left: mount, cgroup dirs, runc state, directory."""
    bundle = ex.containers_dir / cid
    assert not [m.mount_point for m in linux.mountinfo()
                if m.mount_point == str(bundle) or m.mount_point.startswith(f"{bundle}/")]
    cgroup = f"{ex.cgroup_prefix}{cid}"
    for mnt, _, _ in cgroup_mounts():
        assert not os.path.exists(os.path.join(mnt, cgroup)), mnt
    assert not (ex.state_dir / cid).exists()
    assert not bundle.exists()
    assert not [p for p in ex.containers_dir.iterdir() if p.name.startswith(".trash")]
    assert cid not in {c.id for c in ex.list()}


def memory_cgroup() -> str:
    for mnt, fstype, opts in cgroup_mounts():
        if fstype == "cgroup" and "memory" in opts.split(","):
            return mnt
        if fstype == "cgroup2" and mnt == "/sys/fs/cgroup" and "memory" in \
                Path(mnt, "cgroup.controllers").read_text().split():
            return mnt
    return ""


# ---- lifecycle and logs ---------------------------------------------------------------------
def test_echo_hello_logs_with_timestamps(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        before = time.time()
        info, lines = await run_to_end(ex, config("hello", "sh", "-c",
                                                   "echo hello; echo oops >&2; printf tail"))
        after = time.time()
        assert info.exit_code == 0 and not info.oom_killed
        assert [(entry.stream, entry.line) for entry in lines if entry.stream == "stdout"] == \
            [("stdout", "hello"), ("stdout", "tail")]  # the last words without a newline too
        assert ("stderr", "oops") in [(entry.stream, entry.line) for entry in lines]
        assert all(before <= entry.ts <= after for entry in lines)
    run(scenario())


def test_exit_codes_and_signals(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        info, _ = await run_to_end(ex, config("three", "sh", "-c", "exit 3"))
        assert (info.exit_code, info.message) == (3, "exited with code 3")
        # SIGKILL the init from outside: 128 + 9
        await ex.create(config("killed", "sleep", "60"))
        pid = await ex.start("killed")
        assert ex.inspect("killed").state == "running"
        os.kill(pid, signal.SIGKILL)
        info = await asyncio.wait_for(ex.wait("killed"), 5)
        assert info.exit_code == 137 and "SIGKILL" in info.message
        assert ex.inspect("killed").state == "stopped"
        await ex.remove("killed")
        assert_clean(ex, "killed")
    run(scenario())


def test_image_and_service_settings(images_root, ex_root):
    """Entrypoint/Cmd merge, env merge, workdir (created), user by name, hostname."""
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        info, lines = await run_to_end(ex, ContainerConfig(id="envimg", image="env:1"))
        assert [entry.line for entry in lines] == ["from-image-cmd"]
        script = ('echo "$A $B $C|$(pwd)|$(id -u):$(id -g)|$(hostname)|$HOME"; '
                  'cat /etc/hostname; grep -c web-1 /etc/hosts; test -f /etc/resolv.conf')
        info, lines = await run_to_end(ex, ContainerConfig(
            id="settings", image="env:1", args=[script], env=["B=service", "C=3"],
            user="nobody", hostname="web-1"))
        assert info.exit_code == 0, lines
        assert [entry.line for entry in lines] == \
            ["image service 3|/srv/app|65534:65534|web-1|/nonexistent", "web-1", "1"]
    run(scenario())


def test_follow_and_tail(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await ex.create(config("chatty", "sh", "-c",
                               "for i in 1 2 3 4 5; do echo line$i; sleep 0.1; done"))
        await ex.start("chatty")
        seen = [entry.line async for entry in ex.logs("chatty", follow=True)]
        assert seen == [f"line{i}" for i in range(1, 6)]  # ends when the container does
        assert [e.line async for e in ex.logs("chatty", tail=2)] == ["line4", "line5"]
        assert [e.line async for e in ex.logs("chatty", tail=0)] == []
        stamps = [e.ts async for e in ex.logs("chatty")]
        assert stamps == sorted(stamps) and stamps[-1] - stamps[0] > 0.2  # read as written
        await ex.remove("chatty")
        assert_clean(ex, "chatty")
    run(scenario())


# ---- resources ------------------------------------------------------------------------------
def test_memory_limit_oom_killed(images_root, ex_root):
    if not memory_cgroup():
        pytest.skip("the kernel's memory cgroup controller is not available")
    limit = 16 << 20

    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        # dd allocates and fills one 64 MiB block: four times the limit
        info, lines = await run_to_end(ex, config(
            "oom", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1",
            memory_limit=limit))
        assert info.oom_killed, (info, lines)
        assert info.exit_code == 137
        assert info.message == f"OOM killed (memory limit {limit} bytes)"
        # under the limit: fine
        info, _ = await run_to_end(ex, config(
            "nooom", "dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=1",
            memory_limit=limit))
        assert (info.exit_code, info.oom_killed) == (0, False)
    run(scenario())


def test_cpu_and_pids_limits_reach_the_cgroup(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await ex.create(config("limits", "sh", "-c",
                               "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || "
                               "cat /sys/fs/cgroup/pids.max; "
                               "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || "
                               "cat /sys/fs/cgroup/cpu.max",
                               nano_cpus=500_000_000, pids_limit=64))
        await ex.start("limits")
        assert (await ex.wait("limits")).exit_code == 0
        lines = [e.line async for e in ex.logs("limits")]
        await ex.remove("limits")
        assert lines[0] == "64"
        assert lines[1] in ("50000", "50000 100000")
    run(scenario())


# ---- stop -----------------------------------------------------------------------------------
def test_stop_with_grace(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await ex.create(config("stubborn", "sh", "-c",
                               'trap "" TERM; echo ready; while :; do sleep 0.05; done'))
        await ex.create(config("polite", "sh", "-c",
                               'trap "exit 0" TERM; echo ready; while :; do sleep 0.05; done'))
        await ex.start("stubborn")
        await ex.start("polite")
        for cid in ("stubborn", "polite"):  # wait for the traps to be set
            for _ in range(100):
                if [e async for e in ex.logs(cid)]:
                    break
                await asyncio.sleep(0.02)
        t0 = time.monotonic()
        await ex.stop("polite", grace=5)
        polite = time.monotonic() - t0
        t0 = time.monotonic()
        await ex.stop("stubborn", "SIGTERM", 0.7)
        stubborn = time.monotonic() - t0
        assert polite < 1.0 and (await ex.wait("polite")).exit_code == 0
        assert 0.7 <= stubborn < 3.0 and (await ex.wait("stubborn")).exit_code == 137
        await ex.stop("polite")  # stopping a stopped container: nothing to do
        with pytest.raises(errors.NotFound):
            await ex.stop("nobody-here")
        for cid in ("stubborn", "polite"):
            await ex.remove(cid)
            assert_clean(ex, cid)
    run(scenario())


@pytest.mark.parametrize("grace", [float("nan"), float("inf"), -1.0])
def test_a_grace_period_that_is_no_duration_still_ends_in_sigkill(images_root, ex_root, monkeypatch, grace):
    """Issue 13, defect 4: NaN passed every check and the wait for its deadline spun forever
    without SIGKILL (infinity waited forever). Such a period gets the default (10 s, shortened
    here), so the stubborn container is killed."""
    monkeypatch.setattr("worker.executor.ocispec.DEFAULT_STOP_GRACE", 0.5)

    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await ex.create(config("stubborn", "sh", "-c",
                               'trap "" TERM; echo ready; while :; do sleep 0.05; done'))
        await ex.start("stubborn")
        for _ in range(100):  # wait for the trap to be set
            if [e async for e in ex.logs("stubborn")]:
                break
            await asyncio.sleep(0.02)
        await asyncio.wait_for(ex.stop("stubborn", "SIGTERM", grace), 15)
        assert (await ex.wait("stubborn")).exit_code == 137
        await ex.remove("stubborn")
    run(scenario())


def test_remove_running_and_created_containers_and_idempotence(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await ex.create(config("running", "sleep", "60"))
        await ex.start("running")
        await ex.create(config("created", "sleep", "60"))  # never started
        assert {c.id: c.state for c in ex.list()} == {"running": "running", "created": "created"}
        for cid in ("running", "created"):
            await ex.remove(cid)
            assert_clean(ex, cid)
            await ex.remove(cid)  # again: nothing to do, no error
    run(scenario())


# ---- exec, mounts ---------------------------------------------------------------------------
def test_exec(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        await ex.create(config("execd", "sleep", "60", env=["WHO=tester"]))
        await ex.start("execd")
        code, out = await ex.exec("execd", ["sh", "-c", "echo $WHO; cat /proc/1/cmdline; exit 4"],
                                  timeout=5)
        assert code == 4 and out.startswith("tester\nsleep")
        with pytest.raises(TimeoutError) as timeout:
            await ex.exec("execd", ["sleep", "30"], timeout=0.5)
        assert isinstance(timeout.value, errors.ShoalError)
        code, out = await ex.exec("execd", ["true"], timeout=5)  # the container is fine
        assert code == 0
        code, out = await ex.exec("execd", ["no-such-binary"], timeout=5)
        assert code != 0 and "no-such-binary" in out
        await ex.remove("execd")
        assert_clean(ex, "execd")
        with pytest.raises(errors.NotFound):
            await ex.exec("execd", ["true"], timeout=1)
    run(scenario())


def test_bind_volume_and_tmpfs_mounts(images_root, ex_root, tmp_path):
    host_dir = tmp_path / "hostdir"
    host_dir.mkdir()
    (host_dir / "from-host").write_text("hi from the host\n")
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    script = ("cat /in/from-host; echo written > /out/by-container; "
              "echo v > /vol/file; echo a > /anon/file; "
              "grep -q ' /scratch tmpfs ' /proc/mounts && echo tmpfs-ok; "
              "touch /in/nope 2>/dev/null || echo ro-ok; cat /run/secrets/s")

    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        info, lines = await run_to_end(ex, config(
            "mounts", "sh", "-c", script,
            mounts=[Mount(type="bind", source=str(host_dir), target="/in", read_only=True),
                    Mount(type="bind", source=str(host_dir), target="/out"),
                    Mount(type="volume", source="data", target="/vol"),
                    Mount(type="volume", source="", target="/anon"),
                    Mount(type="tmpfs", target="/scratch")],
            extra_binds=[(str(secret), "/run/secrets/s", True)]))
        assert info.exit_code == 0, lines
        assert [e.line for e in lines] == ["hi from the host", "tmpfs-ok", "ro-ok", "s3cret"]
        assert (host_dir / "by-container").read_text() == "written\n"
        assert (ex_root / "volumes" / "data" / "_data" / "file").read_text() == "v\n"  # named: kept
        with pytest.raises(errors.InvalidArgument, match="does not exist on this node"):
            await ex.create(config("badbind", "true", mounts=[
                Mount(type="bind", source=str(tmp_path / "missing"), target="/x")]))
        assert_clean(ex, "badbind")
    run(scenario())


def test_create_errors(images_root, ex_root):
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        with pytest.raises(errors.NotFound, match="shoal image load"):
            await ex.create(config("noimage", "true", image="missing:1"))
        with pytest.raises(errors.FailedPrecondition, match="no-such-command"):
            await ex.create(config("nocmd", "no-such-command"))
        assert_clean(ex, "nocmd")
        with pytest.raises(errors.InvalidArgument, match="not in the image's /etc/passwd"):
            await ex.create(config("nouser", "true", user="ghost"))
        assert_clean(ex, "nouser")
        await ex.create(config("dup", "true"))
        with pytest.raises(errors.Conflict):
            await ex.create(config("dup", "true"))
        await ex.remove("dup")
        assert_clean(ex, "dup")
    run(scenario())


def test_image_in_use_cannot_be_removed(images_root, ex_root):
    async def scenario():
        store = ImageStore(images_root)
        ex = Executor(ex_root, store)
        await ex.create(config("user", "true"))
        with pytest.raises(errors.Conflict, match="used by a container"):
            store.remove(store.get("busybox:1").id)
        await ex.remove("user")
        store.in_use = None
    run(scenario())


# ---- adoption -------------------------------------------------------------------------------
def test_restart_in_place_keeps_layer_log_and_id(images_root, ex_root):
    """`container run --restart`: the same container runs again with a new init. What it wrote
    to its filesystem and its log stay; whoever waited on the run that ended sees that run end."""
    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        script = "echo run >> /runs; echo run $(wc -l < /runs); exit $(wc -l < /runs)"
        await ex.create(config("again", "sh", "-c", script))
        first_pid = await ex.start("again")
        first_exit = asyncio.ensure_future(ex.wait("again"))
        assert (await first_exit).exit_code == 1
        follower = [e.line async for e in ex.logs("again", follow=True)]
        assert follower == ["run 1"]
        await ex.create(config("busy", "sleep", "60"))
        await ex.start("busy")
        with pytest.raises(errors.FailedPrecondition):  # only an exited container runs again
            await ex.restart("busy")
        await ex.remove("busy")

        pid = await ex.restart("again")
        assert pid != first_pid
        info = await asyncio.wait_for(ex.wait("again"), 10)
        assert (info.exit_code, info.message) == (2, "exited with code 2")  # /runs was kept
        assert ex.meta("again")["restart_count"] == 1
        await ex.restart("again")
        assert (await asyncio.wait_for(ex.wait("again"), 10)).exit_code == 3
        assert [e.line async for e in ex.logs("again")] == ["run 1", "run 2", "run 3"]
        assert ex.meta("again")["restart_count"] == 2 and ex.inspect("again").state == "stopped"
        # an attached `container run` asks for the first run: its exit and output only, even
        # when it looks after the restarts
        assert (await ex.wait("again", run=0)).exit_code == 1
        assert [e.line async for e in ex.logs("again", follow=True, run=0)] == ["run 1"]
        assert [e.line async for e in ex.logs("again", follow=True, run=1)] == ["run 1", "run 2"]
        assert [e.line async for e in ex.logs("again", follow=True)] == ["run 1", "run 2", "run 3"]

        # a restarted executor (daemon) finds the count and the last exit
        await ex.close()
        ex2 = Executor(ex_root, ImageStore(images_root))
        await ex2.adopt()
        assert ex2.meta("again")["restart_count"] == 2
        assert (await ex2.wait("again")).exit_code == 3
        await ex2.remove("again")
        assert_clean(ex2, "again")
    run(scenario())


def test_adopt_after_restart(images_root, ex_root):
    """A second executor on the same root (a restarted daemon) finds the running container,
    watches it, resumes its logs where the first stopped, and removes it cleanly."""
    async def scenario():
        ex1 = Executor(ex_root, ImageStore(images_root))
        await ex1.create(config("survivor", "sh", "-c",
                                "echo before; sleep 0.4; echo after; sleep 60",
                                labels={"shoal.task.id": "survivor"}))
        pid = await ex1.start("survivor")
        await ex1.create(config("quitter", "sh", "-c", "sleep 0.2; exit 5"))
        await ex1.start("quitter")
        await asyncio.sleep(0.1)
        assert [e.line async for e in ex1.logs("survivor")] == ["before"]
        await ex1.close()  # the daemon goes away; the containers do not
        await asyncio.sleep(0.6)  # "after" is written and quitter exits while nobody watches

        ex2 = Executor(ex_root, ImageStore(images_root))
        infos = {c.id: c for c in await ex2.adopt()}
        assert infos["survivor"].state == "running" and infos["survivor"].pid == pid
        assert infos["survivor"].labels == {"shoal.task.id": "survivor"}
        assert infos["quitter"].state == "stopped"
        # (in this test the init is still this process's child, so even its code is known;
        # after a real restart it would be None with a message saying why)
        info = await ex2.wait("quitter")
        assert info.exit_code in (5, None) and not info.oom_killed
        assert [e.line async for e in ex2.logs("survivor")] == ["before", "after"]
        await ex2.stop("survivor", grace=0.1)
        assert (await ex2.wait("survivor")).exit_code in (137, None)
        for cid in ("survivor", "quitter"):
            await ex2.remove(cid)
            assert_clean(ex2, cid)
    run(scenario())


def test_adopt_cleans_runc_containers_without_bundle(images_root, ex_root):
    async def scenario():
        ex1 = Executor(ex_root, ImageStore(images_root))
        await ex1.create(config("orphan", "sleep", "60"))
        await ex1.start("orphan")
        await ex1.close()
        # a crash between deleting the bundle and `runc delete`: only runc knows the container
        from worker.executor import _unmount
        _unmount(ex1.containers_dir / "orphan" / "rootfs")
        shutil.rmtree(ex1.containers_dir / "orphan")
        ex2 = Executor(ex_root, ImageStore(images_root))
        assert await ex2.adopt() == []
        assert not (ex2.state_dir / "orphan").exists()
        from worker.executor import _orphan_zombies
        assert _orphan_zombies() == []  # its killed init was reaped, not left a zombie
        for mnt, _, _ in cgroup_mounts():
            assert not os.path.exists(os.path.join(mnt, f"{ex2.cgroup_prefix}orphan"))
    run(scenario())


def test_adopt_from_another_process(images_root, ex_root):
    """The real restart: a daemon process starts a container and exits; the container runs on
    (reparented away from us), a new process adopts it; its exit code is then unknowable."""
    import subprocess
    import sys
    import textwrap
    script = textwrap.dedent(f"""
        import asyncio
        from pathlib import Path
        from worker.executor import ContainerConfig, Executor
        from worker.images import ImageStore

        async def main():
            ex = Executor(Path({str(ex_root)!r}), ImageStore(Path({str(images_root)!r})))
            await ex.create(ContainerConfig(id="detached", image="busybox:1", command=[
                "sh", "-c", "echo up; sleep 0.7; echo down; exit 7"]))
            print(await ex.start("detached"), flush=True)
        asyncio.run(main())
    """)
    # Were this process a subreaper (earlier tests made it one), the orphaned init would come
    # back to it and its exit code would be known: not the situation of a restarted daemon.
    linux.become_subreaper(False)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.strip())

    async def scenario():
        ex = Executor(ex_root, ImageStore(images_root))
        assert {c.id: c.state for c in await ex.adopt()} == {"detached": "running"}
        assert ex.inspect("detached").pid == pid
        info = await asyncio.wait_for(ex.wait("detached"), 5)
        assert info.exit_code is None and "unknown" in info.message
        assert [e.line async for e in ex.logs("detached")] == ["up", "down"]
        await ex.remove("detached")
        assert_clean(ex, "detached")
    run(scenario())


def test_overlay_with_a_deep_stack_of_long_paths(tmp_path):
    """Mount options are one page: past ~4000 bytes of lowerdir the layers are named through
    /proc/self/fd links. 60 layers with long paths, the top one listed first."""
    from worker.executor import _mount_overlay, _unmount
    base = tmp_path / ("long-directory-name-" * 4)
    lowers = []
    for i in range(60):
        d = base / f"layer-{i:03d}-{'x' * 60}"
        d.mkdir(parents=True)
        (d / f"file{i}").write_text(str(i))
        (d / "top").write_text(str(i))  # the highest layer must win
        lowers.append(d)
    assert len(":".join(map(str, lowers))) > 4096
    for sub in ("upper", "work", "merged"):
        (tmp_path / sub).mkdir()
    _mount_overlay(tmp_path / "merged", lowers, tmp_path / "upper", tmp_path / "work")
    try:
        assert (tmp_path / "merged" / "file0").read_text() == "0"
        assert (tmp_path / "merged" / "file59").read_text() == "59"
        assert (tmp_path / "merged" / "top").read_text() == "59"
    finally:
        _unmount(tmp_path / "merged")
    assert not linux.is_mountpoint(tmp_path / "merged")


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_joins_the_given_network_namespace(images_root, ex_root):
    import secrets
    import subprocess
    name = f"shoal-test-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "add", "probe0", "type", "veth", "peer", "name",
                        "probe1"], check=True)

        async def scenario():
            ex = Executor(ex_root, ImageStore(images_root))
            info, lines = await run_to_end(ex, config(
                "netns", "sh", "-c", "cat /proc/net/dev | tail -n +3 | cut -d: -f1",
                netns_path=f"/run/netns/{name}"))
            assert info.exit_code == 0
            assert sorted(e.line.strip() for e in lines) == ["lo", "probe0", "probe1"]
            with pytest.raises(errors.FailedPrecondition, match="does not exist"):
                await ex.create(config("nonetns", "true", netns_path="/run/netns/nope-none"))
            assert_clean(ex, "nonetns")
        run(scenario())
    finally:
        subprocess.run(["ip", "netns", "del", name])
