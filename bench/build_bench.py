"""Image build, push and pull benchmarks (issue 17): shoal next to docker's and buildah's
builders in the same run, rounds interleaved (the order of the tools turns every round), so
that a loaded machine weighs on all of them alike; the table gives medians and shoal's ratio.

- a 10-step Dockerfile (FROM, 4 RUN, 2 COPY, ENV, WORKDIR, CMD) built cold (--no-cache) and
  fully cached (every step CACHED);
- a 50 MB image (busybox plus one layer of random, incompressible bytes, a Dockerfile `COPY`
  of one file) built, pushed to an empty registry, removed, and pulled back (its base layer is
  still there, for every tool).

shoal runs in process on this host, as `shoald` runs it: the real builder (each RUN in a runc
container over overlayfs), the real push and pull code. docker: Debian's docker.io 20.10 with
its legacy default builder (DOCKER_BUILDKIT=0), on a private dockerd that lives only for the
benchmark (bench/_dockerd.py). buildah: Debian 12's buildah 1.28, rootful, overlay storage,
`bud --layers` (bench/_buildah.py). The same busybox base for all, loaded from one `docker
save` archive (no network).

The registry is Debian's docker-registry in a network namespace of its own, one veth away from
the host (shoal) and from the namespace of dockerd and buildah (bench/_privnet.py: addresses
10.250.17.0/29 assigned here, no default route, no NAT; everything made is removed at the end,
also on failure or SIGTERM). A fresh, empty registry for each tool in each round.

Run as root: .venv/bin/python bench/build_bench.py [--rounds 5] [--size-mb 50]
                 [--no-docker] [--no-buildah] [--json PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import _privnet  # noqa: E402
from bench._buildah import BuildahUnavailable, PrivateBuildah, ensure_buildah  # noqa: E402
from bench._dockerd import DockerUnavailable, PrivateDockerd, docker_version  # noqa: E402
from bench._nsregistry import NsRegistry  # noqa: E402
from bench._results import Results, add_json_option  # noqa: E402
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
BIG_STEPS = 'FROM busybox:1\nCOPY blob /blob\nCMD ["ls", "-l", "/blob"]\n'
REGISTRY_PORT = 5000

COLD, CACHED = "10-step build, cold (--no-cache)", "10-step build, fully cached"
BIG_BUILD, PUSH, PULL = ("{mb} MB image: build (COPY, --no-cache)",
                         "{mb} MB image: push to an empty registry",
                         "{mb} MB image: pull after removing it")


class Tool(Protocol):
    name: str

    def build(self, ctx: Path, tag: str, no_cache: bool) -> tuple[str, int]:
        """Build; returns the image id and how many steps the cache had."""

    def push(self, ref: str) -> None: ...

    def remove(self, ref: str) -> None: ...

    def pull(self, ref: str) -> str:
        """Pull; returns the image id."""


class Shoal:
    name = "shoal"

    def __init__(self, store_root: Path, build_root: Path, registry: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = ImageStore(store_root)
        self.builder = Builder(self.store, build_root)
        self.insecure = frozenset({registry})

    def build(self, ctx: Path, tag: str, no_cache: bool) -> tuple[str, int]:
        events: list[dict] = []
        image_id = self.loop.run_until_complete(self.builder.build(
            BuildOptions(ctx, tags=[tag], no_cache=no_cache), events.append))
        return image_id, sum("cached" in e for e in events)

    def push(self, ref: str) -> None:
        self.loop.run_until_complete(
            image_push.push(self.store, ref, insecure_registries=self.insecure))

    def remove(self, ref: str) -> None:
        self.store.remove(ref)

    def pull(self, ref: str) -> str:
        return self.loop.run_until_complete(
            self.store.pull(ref, insecure_registries=self.insecure)).id

    def close(self) -> None:
        # the store deletes removed layers in the background: let that finish
        pending = asyncio.all_tasks(self.loop)
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()


class Docker:
    name = "docker"

    def __init__(self, d: PrivateDockerd) -> None:
        self.d = d

    def build(self, ctx: Path, tag: str, no_cache: bool) -> tuple[str, int]:
        out = self.d.docker("build", *(["--no-cache"] if no_cache else []), "-t", tag, str(ctx))
        return self._id(tag), out.count("Using cache")

    def _id(self, ref: str) -> str:
        return self.d.docker("image", "inspect", "--format", "{{.Id}}", ref).strip()

    def push(self, ref: str) -> None:
        self.d.docker("push", ref)

    def remove(self, ref: str) -> None:
        self.d.docker("rmi", ref)

    def pull(self, ref: str) -> str:
        self.d.docker("pull", ref)
        return self._id(ref)


class Buildah:
    name = "buildah"

    def __init__(self, b: PrivateBuildah) -> None:
        self.b = b

    def build(self, ctx: Path, tag: str, no_cache: bool) -> tuple[str, int]:
        out = self.b.bud(ctx, tag, no_cache)
        return self._id(tag), out.count("Using cache")

    def _id(self, ref: str) -> str:
        return "sha256:" + self.b.buildah("images", "--noheading", "--no-trunc", "--format",
                                          "{{.ID}}", ref).split()[0].removeprefix("sha256:")

    def push(self, ref: str) -> None:
        self.b.buildah("push", "--tls-verify=false", ref, f"docker://{ref}")

    def remove(self, ref: str) -> None:
        self.b.buildah("rmi", ref)

    def pull(self, ref: str) -> str:
        self.b.buildah("pull", "--tls-verify=false", ref)
        return self._id(ref)


def timed(fn, *args):
    t0 = time.monotonic()
    result = fn(*args)
    return time.monotonic() - t0, result


def ten_steps(tool: Tool, ctx: Path, figures: dict) -> None:
    t, (_, hits) = timed(tool.build, ctx, "bench:10", True)
    assert hits == 0, f"{tool.name}: a --no-cache build used the cache ({hits} steps)"
    figures[tool.name, COLD].append(t)
    t, (_, hits) = timed(tool.build, ctx, "bench:10", False)
    assert hits == 9, f"{tool.name}: a rebuild found {hits} of 9 steps in its cache"
    figures[tool.name, CACHED].append(t)


def push_pull(tool: Tool, ctx: Path, ref: str, registry: NsRegistry, figures: dict) -> None:
    registry.start()  # fresh and empty
    try:
        t, (built, _) = timed(tool.build, ctx, ref, True)
        figures[tool.name, BIG_BUILD].append(t)
        figures[tool.name, PUSH].append(timed(tool.push, ref)[0])
        tool.remove(ref)
        t, pulled = timed(tool.pull, ref)
        assert pulled == built, f"{tool.name} pulled {pulled}, pushed {built}"
        figures[tool.name, PULL].append(t)
        tool.remove(ref)
    finally:
        registry.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--no-docker", action="store_true")
    parser.add_argument("--no-buildah", action="store_true")
    add_json_option(parser, "build_bench")
    args = parser.parse_args()
    results = Results("build_bench", args={k: v for k, v in vars(args).items() if k != "json"})
    if os.geteuid() != 0:
        sys.exit("run as root (runc, overlay mounts, network namespaces)")
    if shutil.which("runc") is None or not imagebuild.busybox_available():
        sys.exit("needs runc and busybox-static")
    if not imagebuild.LocalRegistry.available():
        sys.exit("needs Debian's docker-registry")
    # a SIGTERM unwinds like ^C: every `with` below removes what it made
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    figures: dict[tuple[str, str], list[float]] = defaultdict(list)
    skipped = {"docker": "--no-docker"} if args.no_docker else {}
    if args.no_buildah:
        skipped["buildah"] = "--no-buildah"
    about = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="shoal-buildbench-") as tmp_name, \
            _privnet.BenchNet() as net, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        ctx, big = _contexts(tmp, args.size_mb)
        base_tar = imagebuild.build_docker_save_tar(tmp / "busybox-save.tar", "busybox:1")
        registry = NsRegistry(net.registry, _privnet.REGISTRY_ADDR, REGISTRY_PORT,
                              tmp / "registry")
        stack.callback(registry.stop)
        shoal = Shoal(imagebuild.busybox_store(tmp / "images"), tmp / "build", registry.host)
        stack.callback(shoal.close)
        tools: list[Tool] = [shoal]
        if "docker" not in skipped:
            try:
                d = stack.enter_context(PrivateDockerd(net.tools, (registry.host,)))
                d.docker("load", "-i", str(base_tar))
                about["docker"] = (f"docker.io {docker_version()}, legacy builder "
                                   f"(DOCKER_BUILDKIT=0), storage driver "
                                   f"{d.docker('info', '--format', '{{.Driver}}').strip()}")
                tools.append(Docker(d))
            except (DockerUnavailable, RuntimeError) as exc:
                skipped["docker"] = f"dockerd cannot run here: {exc}"
        if "buildah" not in skipped:
            try:
                version = ensure_buildah()
                b = PrivateBuildah(net.tools, registry.host)
                stack.callback(b.stop)
                b.buildah("pull", f"docker-archive:{base_tar}")
                about["buildah"] = f"{version}, bud --layers, overlay storage, runc"
                tools.append(Buildah(b))
            except (BuildahUnavailable, RuntimeError, OSError) as exc:
                skipped["buildah"] = f"buildah cannot run here: {exc}"

        ref = f"{registry.host}/bench/big:1"
        for phase in (lambda t: ten_steps(t, ctx, figures),
                      lambda t: push_pull(t, big, ref, registry, figures)):
            for r in range(args.rounds):
                for tool in tools[r % len(tools):] + tools[:r % len(tools)]:
                    if tool.name in skipped:
                        continue
                    try:
                        phase(tool)
                    except Exception as exc:  # noqa: BLE001 - the others' figures still count
                        if tool is shoal:
                            raise
                        skipped[tool.name] = f"failed: {type(exc).__name__}: {exc}"
    report(figures, tools, skipped, about, args, load_before)
    record(results, figures, [t.name for t in tools], args.size_mb)
    results.write(args.json)


def _contexts(tmp: Path, size_mb: int) -> tuple[Path, Path]:
    ctx = tmp / "ctx"
    (ctx / "sub").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(TEN_STEPS)
    (ctx / "a.txt").write_text("a\n" * 1000)
    for i in range(20):
        (ctx / "sub" / f"f{i}").write_bytes(os.urandom(4096))
    big = tmp / "bigctx"
    big.mkdir()
    (big / "Dockerfile").write_text(BIG_STEPS)
    with open(big / "blob", "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    return ctx, big


def record(results: Results, figures: dict, names: list[str], size_mb: int) -> None:
    """Each tool's seconds, and shoal's ratio to each other tool round by round (the rounds
    interleave them, so a round's ratio compares like with like)."""
    for row in (COLD, CACHED, BIG_BUILD, PUSH, PULL):
        label = row.format(mb=size_mb)
        for n in names:
            if figures.get((n, row)):
                results.add(f"{n}: {label}, s", figures[n, row], "s", "lower")
        for n in names[1:]:
            pairs = list(zip(figures.get(("shoal", row), []), figures.get((n, row), [])))
            if pairs:
                results.add(f"shoal/{n}: {label}", [s / o for s, o in pairs], "ratio", "lower")


def report(figures: dict, tools: list, skipped: dict, about: dict, args,
           load_before: tuple[float, float, float]) -> None:
    names = [t.name for t in tools]
    print(f"image build/push/pull, {args.rounds} rounds interleaved; median (min-max) s; "
          f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} cores)")
    head = f"{'':44}" + "".join(f"{n:>22}" for n in names) + "".join(
        f"{'shoal/' + n:>15}" for n in names[1:])
    print(head)
    for row in (COLD, CACHED, BIG_BUILD, PUSH, PULL):
        label = row.format(mb=args.size_mb)
        line = f"{label:44}"
        medians = {}
        for n in names:
            runs = figures.get((n, row))
            if not runs:
                line += f"{'-':>22}"
                continue
            medians[n] = statistics.median(runs)
            line += f"{medians[n]:>8.3f} ({min(runs):.2f}-{max(runs):.2f})"
        for n in names[1:]:
            ok = "shoal" in medians and n in medians
            line += f"{medians['shoal'] / medians[n]:>15.2f}" if ok else f"{'-':>15}"
        print(line)
    for n, text in about.items():
        print(f"{n}: {text}")
    for n, why in skipped.items():
        print(f"{n}: not compared - {why}")


if __name__ == "__main__":
    main()
