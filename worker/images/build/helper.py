"""The build's disk-bound work in a child process, off the daemon's event loop:
`python -m worker.images.build.helper` reads one JSON request on stdin and answers one JSON
object on stdout ({"error": ...} for a refusal the user should see).

  resolve  {tree, is_context, ignore, sources}      -> {sources: [[parts...]...], kinds, hash}
  copy     {tree, is_context, ignore, sources, rootfs, dest, into_dir, uid, gid, mode}
  difftar  {upper, blob}                             -> {diff_id, blob_digest, size}
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
    from worker.images.build.difftar import write_layer
    return write_layer(Path(req["upper"]), Path(req["blob"]))


def main() -> int:
    req = json.loads(sys.stdin.read())
    from worker.images.build.sources import SourceError
    try:
        result = {"resolve": _resolve, "copy": _copy, "difftar": _difftar}[req["op"]](req)
    except (SourceError, errors.ShoalError) as exc:
        result = {"error": str(exc)}
    except OSError as exc:
        result = {"error": f"{exc.filename or ''}: {exc.strerror}".lstrip(": ")}
    sys.stdout.write(json.dumps(result))
    return 0


class HelperError(Exception):
    """The helper refused (the message is for the user)."""


async def run_helper(op: str, **req: Any) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.images.build.helper",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await proc.communicate(json.dumps({"op": op, **req}).encode())
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    result: Optional[dict] = None
    try:
        result = json.loads(out)
    except ValueError:
        pass
    if proc.returncode != 0 or not isinstance(result, dict):
        raise errors.ShoalError(f"build helper ({op}) failed: "
                                f"{err.decode(errors='replace').strip()[-2000:]}")
    if "error" in result:
        raise HelperError(result["error"])
    return result


if __name__ == "__main__":
    sys.exit(main())
