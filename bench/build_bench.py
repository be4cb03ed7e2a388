"""Image build, push and pull benchmarks (issue 17), in process on this host: the real builder
(each RUN in a runc container over overlayfs, as `shoald` runs it), the real push and pull
code, and a local Debian docker-registry on 127.0.0.1.

- a 10-step Dockerfile (FROM, 4 RUN, 2 COPY, ENV, WORKDIR, CMD) built cold (--no-cache) and
  fully cached (every step CACHED);
- a push and a pull of a ~50 MB image (one layer of random, incompressible bytes) to and from
  the local registry: each push to a fresh, empty registry, each pull into an empty store.

Median of N by the wall clock.

Docker comparison (on by default, --no-docker to skip): the same 10-step build with Debian's
docker.io 20.10 and its legacy default builder (DOCKER_BUILDKIT=0), on a private dockerd that
lives only for the benchmark. Nothing is installed as a service: dockerd and the docker CLI come
from Debian's docker.io unpacked at /opt/shoal-test/docker-cli, containerd and its shims from
Debian's `containerd` package (`apt-get download` + `dpkg-deb -x` into /opt/shoal-test/containerd
if missing), runc is the system one. containerd and dockerd run by PID with a temp data root,
exec root, containerd root/state and sockets, inside a fresh network namespace (loopback only,
made here and always removed), no bridge and no iptables; they are stopped by PID (SIGTERM, then
SIGKILL), anything still mounted under the temp dir is unmounted and the dir removed. The same
busybox base is `docker load`ed (no network). Buildah is not available.

Run as root: .venv/bin/python bench/build_bench.py [--trials 5] [--size-mb 50] [--no-docker]
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import subprocess
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import imagebuild  # noqa: E402
from worker.images import ImageStore  # noqa: E402
from worker.images import push as image_push  # noqa: E402
from worker.images.build.builder import BuildOptions, Builder  # noqa: E402

TEN_STEPS = """\
FROM busybox:1
RUN mkdir -p /app/bin /app/etc
COPY a.txt /app/etc/a.txt
RUN echo "one" > /app/one && cat /app/etc/a.txt > /app/two
COPY sub /app/sub
ENV APP_HOME=/app MODE=bench
RUN ls -R /app > /app/listing
WORKDIR /app
RUN sh -c 'for i in 1 2 3 4 5; do echo $i >> counts; done'
CMD ["cat", "/app/listing"]
"""


DOCKER_ROOT = Path("/opt/shoal-test/docker-cli")
CONTAINERD_ROOT = Path("/opt/shoal-test/containerd")
DOCKERD = DOCKER_ROOT / "usr/sbin/dockerd"
DOCKER = DOCKER_ROOT / "usr/bin/docker"
CONTAINERD = CONTAINERD_ROOT / "usr/bin/containerd"
CLONE_NEWNET = 0x40000000


class DockerUnavailable(Exception):
    pass


def ensure_containerd() -> None:
    """Debian's containerd unpacked (not installed) into CONTAINERD_ROOT, only if missing."""
    if CONTAINERD.exists() and (CONTAINERD_ROOT / "usr/bin/containerd-shim-runc-v2").exists():
        return
    with tempfile.TemporaryDirectory(prefix="shoal-containerd-deb-") as dl:
        r = subprocess.run(["apt-get", "download", "containerd"], cwd=dl, capture_output=True,
                           text=True, timeout=300)
        debs = list(Path(dl).glob("containerd_*.deb"))
        if not debs:
            raise DockerUnavailable(f"apt-get download containerd failed: {r.stderr.strip()}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(CONTAINERD_ROOT)], check=True)
    if not CONTAINERD.exists():
        raise DockerUnavailable(f"no {CONTAINERD} in Debian's containerd package")


def _mounts_under(path: Path) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == str(path) or mp.startswith(str(path) + "/"):
                out.append(mp)
    return out


class PrivateDockerd:
    """containerd + dockerd for the duration of a `with` block, everything private (see top)."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="shoal-dockerd-", dir="/tmp"))
        self.netns = f"shoal-bench-{os.getpid()}"
        self.procs: list[subprocess.Popen] = []
        self.sock = self.tmp / "docker.sock"
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.sock}", DOCKER_BUILDKIT="0",
                        DOCKER_CONFIG=str(self.tmp / "cli"),
                        PATH=f"{CONTAINERD_ROOT}/usr/bin:{DOCKER_ROOT}/usr/bin:"
                             f"{DOCKER_ROOT}/usr/sbin:{os.environ.get('PATH', '/usr/bin:/bin')}")
        self.netns_made = False

    def log_tail(self, name: str, n: int = 25) -> str:
        try:
            lines = (self.tmp / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + ln for ln in lines[-n:])

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        nsfd = os.open(f"/var/run/netns/{self.netns}", os.O_RDONLY)
        libc = ctypes.CDLL(None, use_errno=True)

        def enter_netns() -> None:
            if libc.setns(nsfd, CLONE_NEWNET) != 0:
                os._exit(127)
        log = open(self.tmp / f"{name}.log", "wb")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, env=self.env, pass_fds=(nsfd,),
                                 preexec_fn=enter_netns, cwd=self.tmp)
        finally:
            log.close()
            os.close(nsfd)
        self.procs.append(p)
        return p

    def _wait_for(self, p: subprocess.Popen, sock: Path, name: str, timeout: float,
                  probe=None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise DockerUnavailable(f"{name} exited with status {p.returncode}; log tail:\n"
                                        + self.log_tail(name))
            if sock.exists() and (probe is None or probe()):
                return
            time.sleep(0.1)
        raise DockerUnavailable(f"{name} not ready after {timeout:.0f}s; log tail:\n"
                                + self.log_tail(name))

    def start(self) -> "PrivateDockerd":
        for b in (DOCKERD, DOCKER):
            if not b.exists():
                raise DockerUnavailable(f"{b} missing (Debian's docker.io is not unpacked)")
        ensure_containerd()
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        self.netns_made = True
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True,
                       capture_output=True)
        t = self.tmp
        (t / "cli").mkdir()
        (t / "containerd.toml").write_text(
            "version = 2\n"
            f'root = "{t}/containerd-root"\nstate = "{t}/containerd-state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{t}/containerd.sock"\n'
            f'[ttrpc]\n  address = "{t}/containerd.sock.ttrpc"\n'
            f'[debug]\n  address = "{t}/containerd-debug.sock"\n'
            '[metrics]\n  address = ""\n')
        ctrd = self._spawn("containerd", [str(CONTAINERD), "--config", str(t / "containerd.toml")])
        self._wait_for(ctrd, t / "containerd.sock", "containerd", 30)
        (t / "daemon.json").write_text("{}\n")
        dockerd = self._spawn("dockerd", [
            str(DOCKERD), "--config-file", str(t / "daemon.json"),
            "-H", f"unix://{self.sock}", "--containerd", str(t / "containerd.sock"),
            "--data-root", str(t / "data"), "--exec-root", str(t / "exec"),
            "--pidfile", str(t / "dockerd.pid"),
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
            "--ip-masq=false"])
        self._wait_for(dockerd, self.sock, "dockerd", 60,
                       probe=lambda: subprocess.run([str(DOCKER), "version"], env=self.env,
                                                    capture_output=True).returncode == 0)
        return self

    def docker(self, *args: str, timeout: float = 300) -> str:
        r = subprocess.run([str(DOCKER), *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {r.returncode}: {r.stdout[-2000:]}"
                               f"{r.stderr[-2000:]}\ndockerd log tail:\n"
                               + self.log_tail("dockerd"))
        return r.stdout

    def stop(self) -> None:
        for p in reversed(self.procs):  # dockerd first, then containerd
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
        # shims left behind by a killed containerd: stop those whose pid file is ours
        for pidfile in self.tmp.glob("containerd-state/**/shim.pid"):
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        if self.netns_made:
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
            self.netns_made = False
        for mp in sorted(_mounts_under(self.tmp), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "PrivateDockerd":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def docker_builds(ctx: Path, trials: int, base_tar: Path
                  ) -> tuple[list[float], list[float], str]:
    """Cold (--no-cache) and fully cached docker builds of ctx, legacy builder, and dockerd's
    storage driver."""
    cold, cached = [], []
    with PrivateDockerd() as d:
        driver = d.docker("info", "--format", "{{.Driver}}").strip()
        d.docker("load", "-i", str(base_tar))
        for _ in range(trials):
            t0 = time.monotonic()
            out = d.docker("build", "--no-cache", "-t", "bench:10", str(ctx))
            cold.append(time.monotonic() - t0)
            assert "Using cache" not in out, out
            t0 = time.monotonic()
            out = d.docker("build", "-t", "bench:10", str(ctx))
            cached.append(time.monotonic() - t0)
            assert out.count("Using cache") == 9, out
        assert d.docker("run", "--rm", "--network=none", "bench:10").count("\n") > 5
    return cold, cached, driver


def timed(fn) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


async def build(store: ImageStore, broot: Path, ctx: Path, *, no_cache: bool,
                tags: list[str]) -> tuple[str, list[dict]]:
    events: list[dict] = []
    image_id = await Builder(store, broot).build(
        BuildOptions(ctx, tags=tags, no_cache=no_cache), events.append)
    return image_id, events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--no-docker", action="store_true",
                        help="skip the comparison with docker's builder (private dockerd)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (runc, overlay mounts)")
    if shutil.which("runc") is None or not imagebuild.busybox_available():
        sys.exit("needs runc and busybox-static")
    if not imagebuild.LocalRegistry.available():
        sys.exit("needs Debian's docker-registry")

    cold, cached, pushes, pulls = [], [], [], []
    dcold: list[float] = []
    dcached: list[float] = []
    docker_why = "skipped (--no-docker)" if args.no_docker else ""
    driver = "?"
    with tempfile.TemporaryDirectory(prefix="shoal-buildbench-") as tmp:
        tmp = Path(tmp)
        store_root = imagebuild.busybox_store(tmp / "images")
        broot = tmp / "build"
        ctx = tmp / "ctx"
        (ctx / "sub").mkdir(parents=True)
        (ctx / "Dockerfile").write_text(TEN_STEPS)
        (ctx / "a.txt").write_text("a\n" * 1000)
        for i in range(20):
            (ctx / "sub" / f"f{i}").write_bytes(os.urandom(4096))

        big = tmp / "bigctx"
        big.mkdir()
        (big / "Dockerfile").write_text(
            f"FROM busybox:1\nRUN head -c {args.size_mb * 1024 * 1024} /dev/urandom > /blob\n"
            'CMD ["ls", "-l", "/blob"]\n')

        async def go() -> None:
            store = ImageStore(store_root)
            for _ in range(args.trials):
                t0 = time.monotonic()
                _, events = await build(store, broot, ctx, no_cache=True, tags=["bench:10"])
                cold.append(time.monotonic() - t0)
                assert not any("cached" in e for e in events), events
                t0 = time.monotonic()
                _, events = await build(store, broot, ctx, no_cache=False, tags=["bench:10"])
                cached.append(time.monotonic() - t0)
                assert sum("cached" in e for e in events) == 9, events

            for trial in range(args.trials):
                reg = imagebuild.LocalRegistry(tmp / f"registry{trial}").start()
                try:
                    name = f"{reg.host}/bench/big:1"
                    insecure = frozenset({reg.host})
                    image_id, _ = await build(store, broot, big, no_cache=True, tags=[name])
                    t0 = time.monotonic()
                    await image_push.push(store, name, insecure_registries=insecure)
                    pushes.append(time.monotonic() - t0)
                    other_root = tmp / f"pulled{trial}"
                    other = ImageStore(other_root)
                    t0 = time.monotonic()
                    pulled = await other.pull(name, insecure_registries=insecure)
                    pulls.append(time.monotonic() - t0)
                    assert pulled.id == image_id
                    shutil.rmtree(other_root, ignore_errors=True)
                finally:
                    reg.stop()
                    shutil.rmtree(tmp / f"registry{trial}", ignore_errors=True)
        asyncio.run(go())

        if not args.no_docker:
            base_tar = imagebuild.build_docker_save_tar(tmp / "busybox-save.tar", "busybox:1")
            try:
                dcold, dcached, driver = docker_builds(ctx, args.trials, base_tar)
            except DockerUnavailable as e:
                docker_why = f"dockerd cannot run here: {e}"
            except Exception as e:  # noqa: BLE001 - shoal's figures are still printed
                docker_why = f"docker build failed: {type(e).__name__}: {e}"

    def show(what: str, runs: list[float], extra: str = "") -> None:
        print(f"{what:<48} median {statistics.median(runs):7.3f}s "
              f"(min {min(runs):.3f}, max {max(runs):.3f}){extra}")

    mb = args.size_mb
    print(f"image build/push/pull, in process, local docker-registry, {args.trials} trials")
    show("10-step build, cold (--no-cache)", cold)
    show("10-step build, fully cached", cached)
    show(f"push of a {mb} MB random layer (empty registry)", pushes,
         f"  ~{mb / statistics.median(pushes):.0f} MB/s")
    show(f"pull of a {mb} MB random layer (empty store)", pulls,
         f"  ~{mb / statistics.median(pulls):.0f} MB/s")
    if dcold and dcached:
        print(f"docker.io {docker_version()} (private dockerd, legacy builder, DOCKER_BUILDKIT=0, "
              f"storage driver {driver}), same Dockerfile, context and busybox base:")
        show("docker: 10-step build, cold (--no-cache)", dcold,
             f"  shoal/docker {statistics.median(cold) / statistics.median(dcold):.2f}")
        show("docker: 10-step build, fully cached", dcached,
             f"  shoal/docker {statistics.median(cached) / statistics.median(dcached):.2f}")
        print("docker push/pull: not compared (the private dockerd lives in its own network "
              "namespace and cannot reach the registry on the host's 127.0.0.1)")
    else:
        print(f"docker comparison: not made - {docker_why}")
    print("buildah comparison: not made - buildah is not available")


def docker_version() -> str:
    try:
        return subprocess.run([str(DOCKERD), "--version"], capture_output=True, text=True
                              ).stdout.split(",")[0].replace("Docker version ", "").strip()
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
