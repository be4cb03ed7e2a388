"""RUN: the command in a real runc container over the step's overlay rootfs, with no network
(a namespace of its own with loopback only) unless the build asks for the host's."""
from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from pathlib import Path
from typing import Callable, Optional

from common import errors
from common.fsutil import write_json
from worker.executor.ocispec import (BASE_MOUNTS, DEFAULT_PATH, MASKED_PATHS, READONLY_PATHS,
                                     capabilities, in_rootfs, merge_env, resolve_user)
from worker.executor.runc import runtime_path

OUTPUT_KEPT = 64 << 10  # bytes of the step's output kept for the error message
# The mount points runc makes if the image lacks them: left out of the layer, as Docker does.
_STUBS = ("proc", "dev", "sys")


class RunFailed(Exception):
    def __init__(self, code: int, output: str) -> None:
        super().__init__(f"exited with code {code}")
        self.code, self.output = code, output


async def run_step(runtime: str, state_dir: Path, bundle: Path, rootfs: Path, argv: list[str],
                   config: dict, extra_env: list[str], host_network: bool,
                   on_output: Callable[[str], None]) -> None:
    """Run `argv` as the stage's config says (Env, WorkingDir, User) in the mounted `rootfs`;
    raises RunFailed with the output's tail on a non-zero exit."""
    runc = runtime_path(runtime)
    uid, gid, extra_gids, home = resolve_user(rootfs, config.get("User") or "")
    env = merge_env([DEFAULT_PATH], list(config.get("Env") or []), extra_env)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={home}")
    cwd = config.get("WorkingDir") or "/"
    wd = in_rootfs(rootfs, cwd)
    if not wd.exists():
        wd.mkdir(parents=True, mode=0o755)
    missing_stubs = [s for s in _STUBS if not os.path.lexists(rootfs / s)]
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if not host_network:
        namespaces.append({"type": "network"})
    cid = f"shoal-build-{secrets.token_hex(8)}"
    spec = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False,
                    "user": {"uid": uid, "gid": gid, "additionalGids": extra_gids},
                    "args": argv, "env": env, "cwd": cwd,
                    "capabilities": capabilities([], [], root=uid == 0),
                    "noNewPrivileges": True},
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": "buildkitsandbox",
        "mounts": [m for m in BASE_MOUNTS if m["destination"] != "/sys/fs/cgroup"],
        "linux": {"namespaces": namespaces, "cgroupsPath": f"/{cid}",
                  "resources": {"devices": [{"allow": False, "access": "rwm"}]},
                  "maskedPaths": MASKED_PATHS, "readonlyPaths": READONLY_PATHS},
    }
    bundle.mkdir(mode=0o700, exist_ok=True)
    write_json(bundle / "config.json", spec)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        runc, "--root", str(state_dir), "run", "--bundle", str(bundle), cid,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    kept = bytearray()
    try:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            kept += line
            if len(kept) > OUTPUT_KEPT:
                del kept[:len(kept) - OUTPUT_KEPT]
            on_output(line.decode(errors="replace").rstrip("\n"))
        code = await proc.wait()
    except BaseException:
        # cancelled (the client went away): the container must not outlive the build
        await _kill(runc, state_dir, cid, proc)
        raise
    finally:
        _remove_stubs(rootfs, missing_stubs)
    if code != 0:
        raise RunFailed(code, kept.decode(errors="replace"))


def _remove_stubs(rootfs: Path, names: list[str]) -> None:
    for name in names:
        try:
            os.rmdir(rootfs / name)
        except OSError:
            pass  # not empty: the command wrote there, which the layer keeps


async def _kill(runc: str, state_dir: Path, cid: str,
                proc: asyncio.subprocess.Process) -> None:
    for args in (("kill", cid, "KILL"), ("delete", "--force", cid)):
        killer = await asyncio.create_subprocess_exec(
            runc, "--root", str(state_dir), *args, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await killer.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def shell_argv(shell: Optional[list[str]], instruction_args: str | list[str]) -> list[str]:
    if isinstance(instruction_args, list):
        if not instruction_args:
            raise errors.InvalidArgument("RUN has an empty command")
        return list(instruction_args)
    return list(shell or ["/bin/sh", "-c"]) + [instruction_args]
