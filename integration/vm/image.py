"""The VM lab's guest image: built once per machine, cached by a hash of everything it is made of.

The key covers build-image.sh, packages.txt, the guest-side files and shoal's Python
dependencies (from pyproject.toml), so changing any of them builds a new image and an
unchanged tree reuses the cached one. shoal itself is not in the image: the provisioning script
installs it from the source tree at every boot of a lab, as Vagrant does.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("SHOAL_VM_CACHE", "/var/cache/shoal-vm"))
INPUTS = ["build-image.sh", "packages.txt", "guest/shoal-vm-agent", "guest/shoal-vm-setup",
          "guest/shoal-vm-agent.service", "guest/shoal-vm-setup.service"]


@dataclass(frozen=True)
class Image:
    dir: Path

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs.img"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    def complete(self) -> bool:
        return (self.dir / "SHA256SUMS").is_file() and self.rootfs.is_file()


def python_requirements() -> list[str]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def image_key() -> str:
    h = hashlib.sha256()
    for rel in INPUTS:
        h.update(rel.encode() + b"\0" + (HERE / rel).read_bytes() + b"\0")
    h.update("\n".join(python_requirements()).encode())
    return h.hexdigest()[:16]


# What the host needs to build and boot guests: installed on first use (as scripts/setup.sh
# does for the rest), so a fresh CI machine runs the lab instead of skipping it.
HOST_PACKAGES = {"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils",
                 "debootstrap": "debootstrap", "mke2fs": "e2fsprogs"}


def ensure_host_tools(log=sys.stderr) -> None:
    missing = sorted({pkg for tool, pkg in HOST_PACKAGES.items() if shutil.which(tool) is None})
    if not missing:
        return
    print(f"vm lab: installing {' '.join(missing)}", file=log, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        r = subprocess.run(argv, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")


def ensure_image(log=sys.stderr) -> tuple[Image, float]:
    """The cached image, building it first when missing. Returns it and the build time (0: cached).

    A lock file serialises builds, so two test runs at once build it once.
    """
    ensure_host_tools(log)
    CACHE.mkdir(parents=True, exist_ok=True)
    image = Image(CACHE / image_key())
    if image.complete():
        return image, 0.0
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.complete():
            return image, 0.0
        t0 = time.monotonic()
        # the wheels are fetched with this Python's pip, so its settings (index, certificates) apply
        env = dict(os.environ, SHOAL_VM_HOST_PYTHON=sys.executable)
        r = subprocess.run(["bash", str(HERE / "build-image.sh"), str(image.dir),
                            *python_requirements()], stdout=log, stderr=subprocess.STDOUT, env=env)
        if r.returncode != 0 or not image.complete():
            raise RuntimeError(f"building the VM image failed (exit {r.returncode}); "
                               f"see the output above")
        # images of older inputs are never used again: keep the cache at one image
        for other in CACHE.iterdir():
            if other.is_dir() and other != image.dir and len(other.name) == 16:
                shutil.rmtree(other, ignore_errors=True)
        return image, time.monotonic() - t0


if __name__ == "__main__":
    img, took = ensure_image(sys.stdout)
    print(f"{img.dir} ({'built in %.0f s' % took if took else 'cached'})")
