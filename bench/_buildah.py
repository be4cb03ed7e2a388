"""A private buildah for a benchmark: Debian 12's `buildah` package unpacked, not installed
(`apt-get download` + `dpkg-deb -x` into /opt/shoal-test/buildah, only if missing; its
libraries are already on a machine with skopeo), run rootful by the bench's PID with its own
storage (overlay driver, graph and run roots in a temp dir), registries.conf and signature
policy, inside the bench's tools network namespace (bench/_privnet.py), RUN steps in the
system's runc with no network. Its temp dir is unmounted (containers/storage keeps a private
mount of its overlay dir) and removed at the end."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench import _privnet
from bench._dockerd import unmount_under

BUILDAH_ROOT = Path("/opt/shoal-test/buildah")
BUILDAH = BUILDAH_ROOT / "usr/bin/buildah"


class BuildahUnavailable(Exception):
    pass


def ensure_buildah() -> str:
    """Debian's buildah unpacked into BUILDAH_ROOT if missing; returns its version line."""
    if not BUILDAH.exists():
        with tempfile.TemporaryDirectory(prefix="shoal-buildah-deb-") as dl:
            r = subprocess.run(["apt-get", "download", "buildah"], cwd=dl, capture_output=True,
                               text=True, timeout=300)
            debs = list(Path(dl).glob("buildah_*.deb"))
            if not debs:
                raise BuildahUnavailable("apt-get download buildah failed: "
                                         f"{r.stderr.strip()[-500:]}")
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(BUILDAH_ROOT)], check=True)
    r = subprocess.run([str(BUILDAH), "--version"], capture_output=True, text=True)
    if r.returncode != 0:  # e.g. a library of its Depends missing here
        raise BuildahUnavailable(f"{BUILDAH} --version: {r.stderr.strip()[-500:]}")
    return r.stdout.strip()


class PrivateBuildah:
    def __init__(self, netns: str, insecure_registry: str) -> None:
        self.netns = netns
        self.insecure = insecure_registry
        self.tmp = Path(tempfile.mkdtemp(prefix="shoal-buildah-", dir="/tmp"))
        (self.tmp / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.tmp}/graph"\n'
            f'runroot = "{self.tmp}/run"\n')
        (self.tmp / "registries.conf").write_text(
            "unqualified-search-registries = []\n"
            f'[[registry]]\nlocation = "{insecure_registry}"\ninsecure = true\n')
        (self.tmp / "policy.json").write_text(
            '{"default": [{"type": "insecureAcceptAnything"}]}\n')
        self.env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(self.tmp / "storage.conf"),
                        CONTAINERS_REGISTRIES_CONF=str(self.tmp / "registries.conf"),
                        TMPDIR=str(self.tmp))

    def buildah(self, *args: str, timeout: float = 300) -> str:
        argv = [str(BUILDAH), args[0], *(["--signature-policy", str(self.tmp / "policy.json")]
                                         if args[0] in ("pull", "push", "bud") else []),
                *args[1:]]
        r = _privnet.run(self.netns, argv, env=self.env, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"buildah {' '.join(args)}: {r.returncode}: "
                               f"{r.stdout[-2000:]}{r.stderr[-2000:]}")
        return r.stdout

    def bud(self, ctx: Path, tag: str, no_cache: bool) -> str:
        # --layers: a layer (and a cache entry) per step, as docker's builder and shoal's
        return self.buildah("bud", "--runtime", "/usr/sbin/runc", "--network", "none",
                            "--layers", "--pull=never", *(["--no-cache"] if no_cache else []),
                            "-t", tag, str(ctx))

    def stop(self) -> None:
        try:
            _privnet.run(self.netns, [str(BUILDAH), "rm", "--all"], env=self.env, timeout=60)
        except (OSError, subprocess.SubprocessError):
            pass
        unmount_under(self.tmp)
        shutil.rmtree(self.tmp, ignore_errors=True)
