"""Debian's docker-registry inside a network namespace, on one address, storage in a
directory of the caller's; stopped by PID (see tests/imagebuild.py LocalRegistry for the
host's-loopback twin the tests use)."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from bench import _privnet
from tests.imagebuild import REGISTRY_BIN


class NsRegistry:
    def __init__(self, netns: str, addr: str, port: int, workdir: Path) -> None:
        self.netns, self.workdir = netns, Path(workdir)
        self.host = f"{addr}:{port}"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 15.0) -> "NsRegistry":
        """A fresh, empty registry (the workdir's storage is wiped first)."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        config = self.workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: error, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.workdir / 'data'}}}, "
            "delete: {enabled: true}}\n"
            f"http: {{addr: {self.host}}}\n")
        self.proc = _privnet.spawn(self.netns, [REGISTRY_BIN, "serve", str(config)],
                                   self.workdir / "registry.log")
        deadline = time.monotonic() + timeout
        while True:
            try:  # from the host namespace: the address is one veth away
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("docker-registry did not start: "
                                   + (self.workdir / "registry.log").read_text()[-2000:])
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
