"""POST /images/build: build a Dockerfile on this node (worker/images/build), streaming the
progress as NDJSON records for `shoal image build`.

The CLI runs on this node and sends the context as a path, as `image load` does: the daemon
reads the directory itself (root, like the CLI's socket), through the builder's checks that
keep every read inside it. Records: {"id", "name"} a step begins, {"id", "log"} a line of its
output, {"id", "cached": true} or {"id", "done": seconds} it ends, {"warning"}, {"tagged"},
{"image"}; a failure is {"failed", "output"} (the step's output) then the last record,
{"error", "code", "line"}.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

from aiohttp import web

from common import errors
from common import httpstreams as streams
from common.httpserver import CTX, body_json, field
from common.imageref import parse_ref
from worker.images.build.builder import BuildOptions, Builder
from worker.images.build.dockerfile import BuildError

# One builder per build root: it owns <data-root>/build (its cache, and the scratch dirs it
# clears when it starts, which a second instance would pull from under a running build).
_builders: dict[Path, Builder] = {}


def _builder(d) -> Builder:
    root = Path(d.files.root) / "build"
    b = _builders.get(root)
    if b is None or b.store is not d.images:
        b = Builder(d.images, root, getattr(d.executor, "runtime", "runc"))
        _builders[root] = b
    return b


def _absolute(data: dict, name: str, required: bool) -> Optional[Path]:
    text = field(data, name, str, required=required)
    if not text:
        return None
    path = Path(text)
    if not path.is_absolute():
        raise errors.InvalidArgument(f"{name} {text!r} must be an absolute path (the daemon "
                                     "has no working directory of yours)", field=name)
    return path


def _options(data: dict) -> BuildOptions:
    context = _absolute(data, "context", True)
    assert context is not None
    if not context.is_dir():
        raise errors.InvalidArgument(f"build context {context} is not a directory on this "
                                     "node", field="context")
    dockerfile = _absolute(data, "dockerfile", False)
    tags = field(data, "tags", list, required=False) or []
    for t in tags:
        if not isinstance(t, str):
            raise errors.InvalidArgument("tags must be strings", field="tags")
        parse_ref(t)
    args = field(data, "build_args", dict, required=False) or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
        raise errors.InvalidArgument("build_args must map names to strings", field="build_args")
    network = field(data, "network", str, required=False) or "default"
    if network not in ("default", "none", "host"):
        raise errors.InvalidArgument(f"network {network!r}: only host, none and default are "
                                     "supported", field="network")
    return BuildOptions(context, dockerfile, list(tags), dict(args),
                        field(data, "target", str, required=False) or "",
                        bool(field(data, "no_cache", bool, required=False, default=False)),
                        network)


async def image_build(request: web.Request) -> web.StreamResponse:
    opts = _options(await body_json(request))
    builder = _builder(request.app[CTX])
    resp = await streams.start_ndjson(request)
    queue: asyncio.Queue[Optional[dict]] = asyncio.Queue()

    async def run() -> None:
        try:
            await builder.build(opts, queue.put_nowait)
        except BuildError as exc:
            # the output first, in a record of its own: clients stop at the error record
            queue.put_nowait({"failed": str(exc), "output": exc.output})
            queue.put_nowait({"error": str(exc), "code": exc.code, "line": exc.line})
        except errors.ShoalError as exc:
            queue.put_nowait({"error": exc.message, "code": exc.code})
        finally:
            queue.put_nowait(None)

    job = asyncio.ensure_future(run())
    try:
        while (record := await queue.get()) is not None:
            await streams.write_record(resp, record)
    except (ConnectionResetError, ConnectionError):
        pass  # the CLI went away: the build stops (below), as docker's does
    finally:
        if not job.done():
            job.cancel()
        # the build's RUN container and mounts are released before the handler returns
        await asyncio.gather(job, return_exceptions=True)
    return resp


image_build.local_only = True  # type: ignore[attr-defined]  # builds on this node itself


def routes() -> list[web.RouteDef]:
    return [web.post("/images/build", image_build)]
