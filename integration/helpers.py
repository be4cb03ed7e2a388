"""Small helpers the multi-host tests share."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, TypeVar

import pytest

if TYPE_CHECKING:
    import subprocess
    from shoal.lab.netlab import Lab

T = TypeVar("T")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def unique_lab_name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(2)}"[:8]


def wait_until(check: Callable[[], T], timeout: float = 20.0, interval: float = 0.2,
               what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the system is converging; remember why it is not there yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc})" if last_exc else ""))


def node_table(lab, host: str) -> dict[str, dict]:
    return {n["hostname"]: n for n in lab.cli_json(host, "node", "ls")}


def leader_of(lab, host: str) -> str | None:
    for name, n in node_table(lab, host).items():
        if n["manager_status"] == "leader":
            return name
    return None


@contextlib.contextmanager
def busybox_lab(prefix: str, *, managers: int, workers: int,
                tags: Iterable[str] = ("busybox:1",),
                daemon_args: Sequence[str] = (), up_timeout: float = 60) -> Iterator["Lab"]:
    """A lab whose every host has busybox imported under `tags`, with a 1 s heartbeat, and
    `daemon_args` added to every shoald's; `lab.layout` is the busybox OCI layout. Always
    torn down, and the per-task tmpfs of secrets and configs (under /run, outside the lab's
    directories) with it. `up_timeout`: for starting and forming it (Lab.up)."""
    from shoal.lab.netlab import Lab, default_daemon_argv
    from tests import imagebuild
    from worker.secrets import SecretMounts
    d = Path(tempfile.mkdtemp(prefix="shoal-img-"))
    extra = list(daemon_args)
    lab = Lab(unique_lab_name(prefix),
              daemon_argv=(lambda **kw: default_daemon_argv(**kw) + extra) if extra else None)
    try:
        layout = imagebuild.build_busybox_oci_layout(d / "busybox", tag="1")
        lab.layout = layout
        lab.up(managers=managers, workers=workers, timeout=up_timeout)
        lab.cli("manager1", "swarm", "update", "--dispatcher-heartbeat", "1s")
        for h in lab.hosts():
            for tag in tags:
                lab.cli(h.name, "image", "import", str(layout), tag, timeout=120)
        yield lab
    finally:
        hosts = []
        with contextlib.suppress(Exception):
            hosts = lab.hosts()
        lab.down()
        for h in hosts:
            SecretMounts(h.data_root).cleanup_all()
        shutil.rmtree(d, ignore_errors=True)


_REGISTRY_CONFIG = """\
version: 0.1
log: {{level: error, accesslog: {{disabled: true}}}}
storage: {{filesystem: {{rootdirectory: {root}}}, delete: {{enabled: true}}}}
http: {{addr: {addr}}}
"""


@contextlib.contextmanager
def registry_in_lab(lab, host: str, addr: str, workdir: Path) -> Iterator[None]:
    """Debian's docker-registry serving plain HTTP on `addr` inside `host`, its storage under
    `workdir`; stopped by its PID when the block ends, also on failure."""
    import subprocess
    from tests.imagebuild import REGISTRY_BIN
    config = workdir / "registry.yml"
    config.write_text(_REGISTRY_CONFIG.format(root=workdir / "data", addr=addr))
    cmd, env = lab.command(host, [REGISTRY_BIN, "serve", str(config)])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        yield
    finally:
        stop_process(proc)


def stop_process(proc: "subprocess.Popen", grace: float = 10.0) -> None:
    """Stop a process this test started (by its PID): SIGTERM, then SIGKILL after `grace`."""
    import subprocess
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
