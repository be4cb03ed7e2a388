"""Image build, push and pull benchmarks (issue 17), in process on this host: the real builder
(each RUN in a runc container over overlayfs, as `shoald` runs it), the real push and pull
code, and a local Debian docker-registry on 127.0.0.1.

- a 10-step Dockerfile (FROM, 4 RUN, 2 COPY, ENV, WORKDIR, CMD) built cold (--no-cache) and
  fully cached (every step CACHED);
- a push and a pull of a ~50 MB image (one layer of random, incompressible bytes) to and from
  the local registry: each push to a fresh, empty registry, each pull into an empty store.

Median of N by the wall clock. Docker's own builder is not compared: no dockerd may run here
(it cannot be installed as a service on this machine) and buildah is not available.

Run as root: .venv/bin/python bench/build_bench.py [--trials 5] [--size-mb 50]
"""
from __future__ import annotations

import argparse
import asyncio
import os
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
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (runc, overlay mounts)")
    if shutil.which("runc") is None or not imagebuild.busybox_available():
        sys.exit("needs runc and busybox-static")
    if not imagebuild.LocalRegistry.available():
        sys.exit("needs Debian's docker-registry")

    cold, cached, pushes, pulls = [], [], [], []
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
    print("docker comparison: not made - docker's builder needs a running dockerd, which may not "
          "be installed as a service on this machine, and buildah is not available")


if __name__ == "__main__":
    main()
