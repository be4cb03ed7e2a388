"""A private dockerd for a benchmark: Debian's docker.io 20.10 unpacked at
/opt/shoal-test/docker-cli (dockerd and the CLI), containerd and its shims from Debian's
`containerd` package (`apt-get download` + `dpkg-deb -x` into /opt/shoal-test/containerd if
missing), the system's runc. Nothing is installed as a service: containerd and dockerd run by
PID with a temp data root, exec root, containerd root/state and sockets, inside a network
namespace the caller made (bench/_privnet.py), no bridge and no iptables; they are stopped by
PID (SIGTERM, then SIGKILL), anything still mounted under the temp dir is unmounted and the dir
removed."""
from __future__ import annotations

import os
import signal
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench import _privnet

DOCKER_ROOT = Path("/opt/shoal-test/docker-cli")
CONTAINERD_ROOT = Path("/opt/shoal-test/containerd")
DOCKERD = DOCKER_ROOT / "usr/sbin/dockerd"
DOCKER = DOCKER_ROOT / "usr/bin/docker"
CONTAINERD = CONTAINERD_ROOT / "usr/bin/containerd"


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


def docker_version() -> str:
    try:
        return subprocess.run([str(DOCKERD), "--version"], capture_output=True, text=True
                              ).stdout.split(",")[0].replace("Docker version ", "").strip()
    except OSError:
        return "?"


def mounts_under(path: Path) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == str(path) or mp.startswith(str(path) + "/"):
                out.append(mp)
    return out


def unmount_under(path: Path) -> None:
    for mp in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


class PrivateDockerd:
    """containerd + dockerd in `netns` for the duration of a `with` block (see the top)."""

    def __init__(self, netns: str, insecure_registries: tuple[str, ...] = ()) -> None:
        self.netns = netns
        self.insecure = insecure_registries
        self.tmp = Path(tempfile.mkdtemp(prefix="shoal-dockerd-", dir="/tmp"))
        self.procs: list[subprocess.Popen] = []
        self.sock = self.tmp / "docker.sock"
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.sock}", DOCKER_BUILDKIT="0",
                        DOCKER_CONFIG=str(self.tmp / "cli"),
                        PATH=f"{CONTAINERD_ROOT}/usr/bin:{DOCKER_ROOT}/usr/bin:"
                             f"{DOCKER_ROOT}/usr/sbin:{os.environ.get('PATH', '/usr/bin:/bin')}")

    def log_tail(self, name: str, n: int = 25) -> str:
        try:
            lines = (self.tmp / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + ln for ln in lines[-n:])

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        p = _privnet.spawn(self.netns, argv, self.tmp / f"{name}.log", env=self.env,
                           cwd=self.tmp)
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
            "--ip-masq=false", *[f"--insecure-registry={r}" for r in self.insecure]])
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
        unmount_under(self.tmp)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "PrivateDockerd":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
