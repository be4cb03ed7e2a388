"""The build's disk-bound work in a child process, off the daemon's event loop:
`python -m worker.images.build.helper` reads one JSON request on stdin and answers one JSON
object on stdout ({"error": ...} for a refusal the user should see); with `--serve` it answers
one request per line until its stdin closes, so that a build (HelperProcess) pays the child's
start and imports once rather than for every step (that was two thirds of a cold build).

  resolve       {tree, is_context, ignore, sources}  -> {sources: [[parts...]...], kinds, hash}
  copy          {tree, is_context, ignore, sources, rootfs, dest, into_dir, uid, gid, mode}
  difftar       {upper, blob, settle}                -> {diff_id, blob_digest, size,
                                                         layer_size (with settle)}
  unpack-layer  {blob, dest}                         -> {diff_id, blob_digest, size}
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import stat
import sys
from pathlib import Path
from typing import Any, Optional

from common import errors


def _tree(req: dict):
    from worker.images.build.ignore import IgnoreRules
    from worker.images.build.sources import SourceTree
    return SourceTree(req["tree"], req["is_context"], IgnoreRules(req.get("ignore", "")),
                      req.get("what", "the build context"))


def _resolve(req: dict) -> dict:
    from worker.images.build.sources import content_hash
    tree = _tree(req)
    try:
        h = hashlib.sha256()
        found, kinds = [], []
        for src in req["sources"]:
            for parts in tree.resolve(src):
                st = tree.lstat(parts)
                found.append(list(parts))
                kinds.append("dir" if st is not None and stat.S_ISDIR(st.st_mode) else "file")
                h.update(("\0src\0" + "/".join(parts)).encode(errors="surrogateescape"))
                content_hash(tree, parts, h)
        return {"sources": found, "kinds": kinds, "hash": "sha256:" + h.hexdigest()}
    finally:
        tree.close()


def _copy(req: dict) -> dict:
    from worker.images.build.copyin import Owner, copy_source
    tree = _tree(req)
    try:
        owner = Owner(req.get("uid"), req.get("gid"), req.get("mode"))
        for parts in req["sources"]:
            copy_source(tree, tuple(parts), Path(req["rootfs"]), req["dest"], req["into_dir"],
                        owner)
        return {}
    finally:
        tree.close()


def _difftar(req: dict) -> dict:
    from worker.images.build.difftar import settle, write_layer
    result = write_layer(Path(req["upper"]), Path(req["blob"]))
    if req.get("settle"):
        try:
            result["layer_size"] = settle(Path(req["upper"]))
        except OSError:
            pass  # not settled: the caller unpacks the blob instead
    return result


def _unpack_layer(req: dict) -> dict:
    # the store's own unpacker (worker/images/unpack.py), refusing as its child does
    import lzma
    import tarfile

    from worker.images.unpack import unpack_layer
    try:
        return unpack_layer(Path(req["blob"]), Path(req["dest"]))
    except (OSError, ValueError, tarfile.TarError, EOFError, lzma.LZMAError) as exc:
        return {"error": f"unpack-layer {req['blob']}: {exc}"}


_OPS = {"resolve": _resolve, "copy": _copy, "difftar": _difftar, "unpack-layer": _unpack_layer}


def _answer(req: dict) -> dict:
    from worker.images.build.sources import SourceError
    try:
        return _OPS[req["op"]](req)
    except (SourceError, errors.ShoalError) as exc:
        return {"error": str(exc)}
    except OSError as exc:
        return {"error": f"{exc.filename or ''}: {exc.strerror}".lstrip(": ")}


def main(argv: list[str]) -> int:
    if argv == ["--serve"]:
        # Anything unexpected ends the child with its traceback: the client reports it.
        while line := sys.stdin.buffer.readline():
            sys.stdout.write(json.dumps(_answer(json.loads(line))) + "\n")
            sys.stdout.flush()
        return 0
    sys.stdout.write(json.dumps(_answer(json.loads(sys.stdin.read()))))
    return 0


class HelperError(Exception):
    """The helper refused (the message is for the user)."""


class HelperProcess:
    """One `--serve` child answering a build's requests in turn: started by start() (or the
    first call), ended by close() (killed if a request is still in flight: a cancelled build
    must not leave a copy running)."""

    # a `resolve` answer lists every source a COPY matched: far more than asyncio's 64 KiB
    LINE_LIMIT = 64 << 20

    def __init__(self) -> None:
        self._proc: Optional[asyncio.subprocess.Process] = None
        self._stderr: Optional[asyncio.Task] = None
        self._err_tail = bytearray()
        self._lock = asyncio.Lock()

    async def _start(self) -> asyncio.subprocess.Process:
        from worker.images.trees import finish_then_cancel
        proc = await finish_then_cancel(asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.images.build.helper", "--serve",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=self.LINE_LIMIT))
        self._err_tail.clear()
        self._stderr = asyncio.get_running_loop().create_task(self._keep_stderr(proc))
        return proc

    async def _keep_stderr(self, proc: asyncio.subprocess.Process) -> None:
        # drained all along, so a chatty child never blocks on a full pipe
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(1 << 16):
            self._err_tail += chunk
            del self._err_tail[:-4000]

    async def start(self) -> None:
        """Start the child now (it starts while the build goes on), not at the first call."""
        async with self._lock:
            if self._proc is None:
                self._proc = await self._start()

    async def call(self, op: str, **req: Any) -> dict:
        async with self._lock:
            if self._proc is None:
                self._proc = await self._start()
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps({"op": op, **req}).encode() + b"\n")
                await proc.stdin.drain()
                line = await proc.stdout.readline()
            except (ConnectionError, ValueError):  # the child died, or sent an endless line
                line = b""
            except BaseException:
                await self.close()
                raise
            result: Optional[dict] = None
            try:
                result = json.loads(line) if line else None
            except ValueError:
                pass
            if not isinstance(result, dict):
                await self.close()
                raise errors.ShoalError(f"build helper ({op}) failed: "
                                        f"{self._err_tail.decode(errors='replace').strip()}")
        if "error" in result:
            raise HelperError(result["error"])
        return result

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self._lock.locked() or proc.returncode is not None:
            if proc.returncode is None:
                proc.kill()
        else:
            assert proc.stdin is not None
            proc.stdin.close()  # the child's loop ends at EOF
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
        if self._stderr is not None:
            await self._stderr


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
