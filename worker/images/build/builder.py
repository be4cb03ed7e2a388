"""`image build`: a Dockerfile's stages run step by step into layers in the node's store.

A filesystem step (RUN, COPY, ADD, WORKDIR) works on an overlay of the layers so far with a
fresh upper dir (mounts.py); the upper dir becomes the step's layer (difftar.py), added to
the store like a pulled one. Every step is looked up in the step cache first (state.py).
Nothing is tagged until the last step is done, so a failed build leaves no image.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from common import errors
from worker.executor.ocispec import resolve_user
from worker.images.build import metadata
from worker.images.build.copyin import is_dir_in
from worker.images.build.dockerfile import (BuildError, Dockerfile, Instruction, Stage,
                                            SubstitutionError, expand, parse, split_words)
from worker.images.build.helper import HelperError, HelperProcess
from worker.images.build.mounts import StepDir, read_only_tree
from worker.images.build.runstep import RunFailed, run_step, shell_argv
from worker.images.build.state import State, StepCache, canonical
from worker.images.manifests import _sha256, host_arch
from worker.images.references import normalize_ref
from worker.images.store import ImageStore
from worker.images.trees import _rmtree_now

MAX_DOCKERFILE = 1 << 20
_ARCHIVE = re.compile(r"\.(tar|tar\.gz|tgz|tar\.bz2|tbz2?|tar\.xz|txz)$", re.I)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)

Emit = Callable[[dict], None]


@dataclass
class BuildOptions:
    context: Path
    dockerfile: Optional[Path] = None      # default: CONTEXT/Dockerfile
    tags: list[str] = field(default_factory=list)
    build_args: dict[str, str] = field(default_factory=dict)
    target: str = ""
    no_cache: bool = False
    network: str = "default"               # "host" lets RUN use the node's network


@dataclass
class _StageRun:
    stage: Stage
    state: State
    args: dict[str, str]                   # the ARGs declared in the stage, with values
    cmd_set: bool = False


class Builder:
    def __init__(self, store: ImageStore, root: Path, runtime: str = "runc") -> None:
        self.store = store
        self.root = Path(root)
        self.runtime = runtime
        self.work = self.root / "tmp"
        self.state_dir = self.root / "runc-state"
        self.cache = StepCache(self.root / "cache")
        self.work.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        for leftover in self.work.iterdir():  # a crash mid-step: nothing there is referenced
            _unmount_quietly(leftover / "rootfs")
            _rmtree_now(leftover)

    async def build(self, opts: BuildOptions, emit: Emit) -> str:
        """Build; returns the image id. Raises BuildError (naming the line) or ShoalError."""
        for t in opts.tags:
            normalize_ref(t)  # a bad tag fails before any work
        if opts.network not in ("default", "none", "host"):
            raise errors.InvalidArgument(f"--network {opts.network}: only host, none and "
                                         "default are supported", field="network")
        context = Path(opts.context)
        if not context.is_dir():
            raise errors.InvalidArgument(f"build context {context} is not a directory",
                                         field="context")
        df_path = Path(opts.dockerfile) if opts.dockerfile else context / "Dockerfile"
        df = parse(_read_dockerfile(df_path), df_path.name)
        ignore = _read_dockerignore(context)
        run = _Run(self, df, opts, str(context.resolve()), ignore, emit)
        image_id = await run.all()
        for name in sorted(set(opts.build_args) - run.consumed):
            emit({"warning": f"[Warning] One or more build-args [{name}] were not consumed"})
        return image_id


class _Run:
    """One build: the stages in order, numbered steps, the result."""

    def __init__(self, b: Builder, df: Dockerfile, opts: BuildOptions, context: str,
                 ignore: str, emit: Emit) -> None:
        self.b, self.df, self.opts, self.context, self.ignore, self.emit = \
            b, df, opts, context, ignore, emit
        self.done: dict[str, State] = {}   # by stage name and by index
        self.consumed: set[str] = set()
        self.meta: dict[str, str] = {}
        self.step = 0
        self.helper = HelperProcess()

    async def all(self) -> str:
        try:
            await self.helper.start()
            return await self._all()
        finally:
            await self.helper.close()

    async def _all(self) -> str:
        for ins in self.df.meta_args:
            name, value = self._arg(ins, self.meta, self.meta)
            if value is not None:
                self.meta[name] = value
        stages = self.df.stages
        last = stages[-1]
        if self.opts.target:
            found = [s for s in stages if s.name == self.opts.target.lower()]
            if not found:
                raise errors.InvalidArgument(f"target stage {self.opts.target!r} could not be "
                                             "found in the Dockerfile", field="target")
            last = found[0]
        final = State()
        for stage in stages[:last.index + 1]:
            final = await self._stage(stage, len(stages))
            self.done[str(stage.index)] = final
            if stage.name:
                self.done[stage.name] = final
        return await self._commit(final)

    # -- a stage -------------------------------------------------------------------------------
    async def _stage(self, stage: Stage, count: int) -> State:
        label = stage.name or f"stage-{stage.index}"
        total = len(stage.instructions) + 1
        try:
            base = expand(stage.base, self.meta, self.df.escape)
        except SubstitutionError as exc:
            raise self.df.error(stage.line, f"FROM: {exc}")
        if not base or any(c.isspace() for c in base):
            raise self.df.error(stage.line, f"FROM {stage.base}: {base!r} is not an image name")
        n = self._begin(f"[{label} 1/{total}] FROM {base}")
        state = self._base(base, stage)
        self.emit({"id": n, "done": 0.0})
        sr = _StageRun(stage, state, {})
        for i, ins in enumerate(stage.instructions, 2):
            n = self._begin(f"[{label} {i}/{total}] {ins.show()}")
            started = time.monotonic()
            try:
                cached = await self._instruction(sr, ins, n)
            except BuildError:
                raise
            except RunFailed as exc:
                raise self.df.error(ins.line, f"RUN exited with code {exc.code}", exc.output)
            except (SubstitutionError, HelperError) as exc:
                raise self.df.error(ins.line, f"{ins.cmd}: {exc}")
            except errors.ShoalError as exc:
                raise self.df.error(ins.line, f"{ins.cmd}: {exc.message}")
            except OSError as exc:
                raise self.df.error(ins.line, f"{ins.cmd}: {exc.strerror} "
                                    f"({exc.filename or ''})")
            self.emit({"id": n, "cached": True} if cached else
                      {"id": n, "done": round(time.monotonic() - started, 1)})
        return sr.state

    def _begin(self, name: str) -> int:
        self.step += 1
        self.emit({"id": self.step, "name": name})
        return self.step

    def _base(self, base: str, stage: Stage) -> State:
        if base.lower() in self.done and base.lower() != str(stage.index):
            return self.done[base.lower()].copy()
        if base == "scratch":
            return State(architecture=host_arch())
        image = self.b.store.get(base)
        if image is None:
            raise self.df.error(stage.line, f"FROM {base}: image not found on this node (import "
                                "it with 'shoal image load', pull it, or build it first)")
        history: list[dict] = []
        blob = self.b.store.root / "blobs" / "sha256" / image.id.split(":", 1)[1]
        try:
            history = list(json.loads(blob.read_bytes()).get("history") or [])
        except (OSError, ValueError, AttributeError):
            pass  # a base without its config blob: its history is unknown, not wrong
        self.b.store.layer_dirs(image)  # all there, or a clear error now
        return State(list(image.layers), dict(image.config or {}), history,
                     image.architecture or host_arch(), image.id)

    # -- one instruction -----------------------------------------------------------------------
    def _env(self, sr: _StageRun) -> dict[str, str]:
        # ENV wins over ARG of the same name, as in Docker
        return {**sr.args, **sr.state.env()}

    def _arg(self, ins: Instruction, scope: dict[str, str],
             env: dict[str, str]) -> tuple[str, Optional[str]]:
        word = split_words(ins.rest, self.df.escape)[0]
        name, eq, default = word.partition("=")
        self.consumed.add(name)
        if name in self.opts.build_args:
            return name, self.opts.build_args[name]
        if eq:
            return name, expand(default, env, self.df.escape)
        return name, self.meta.get(name) if scope is not self.meta else None

    async def _instruction(self, sr: _StageRun, ins: Instruction, n: int) -> bool:
        """Run `ins` on the stage; True if the cache had it."""
        env = self._env(sr)
        esc = self.df.escape
        if ins.cmd == "ARG":
            name, value = self._arg(ins, sr.args, env)
            if value is not None:
                sr.args[name] = value
            else:
                sr.args.pop(name, None)
            return False
        if ins.cmd == "RUN":
            argv = shell_argv(sr.state.config.get("Shell"),
                              ins.exec_form if ins.exec_form is not None else ins.rest)
            extra = [f"{k}={v}" for k, v in sorted(sr.args.items())
                     if k not in sr.state.env()]
            network = ins.flags.get("network", "default")
            host = self.opts.network == "host" if network == "default" else network == "host"
            text = canonical(["RUN", argv, extra, host]).decode()
            shown = "RUN " + (json.dumps(ins.exec_form) if ins.exec_form is not None
                              else " ".join(argv))

            async def fs(step: StepDir, rootfs: Path) -> None:
                await run_step(self.b.runtime, self.b.state_dir, step.path / "bundle", rootfs,
                               argv, sr.state.config, extra, host,
                               lambda line: self.emit({"id": n, "log": line}))
            return await self._fs_step(sr, text, "", shown + " # buildkit", fs)
        if ins.cmd in ("COPY", "ADD"):
            return await self._copy(sr, ins, env)
        if ins.cmd == "WORKDIR":
            path = metadata.workdir(ins, sr.state, env, esc)

            async def mkdir(step: StepDir, rootfs: Path) -> None:
                from worker.images.build.copyin import dest_parts, open_dest_dir
                os.close(open_dest_dir(rootfs, dest_parts(rootfs, path)))
            sr.state.config["WorkingDir"] = path
            return await self._fs_step(sr, f"WORKDIR {path}", "", f"WORKDIR {path}", mkdir,
                                       keep_empty=False)
        # config only
        if ins.cmd == "CMD":
            sr.cmd_set = True
        key = self.b.cache.key(sr.state, ins.cmd + " " + canonical(
            [ins.flags, ins.rest, ins.exec_form, sorted(env.items()), sr.cmd_set]).decode())
        rec = self._cached(key)
        if rec is not None:
            self._apply_cached(sr, rec)
            return True
        metadata.apply(ins, sr.state, env, esc, sr.cmd_set)
        entry = {"created": _now(), "created_by": f"{ins.cmd} {ins.rest}".strip(),
                 "comment": "buildkit.dockerfile.v0", "empty_layer": True}
        self._record(sr, key, None, entry)
        return False

    # -- filesystem steps ------------------------------------------------------------------
    async def _fs_step(self, sr: _StageRun, text: str, content: str, created_by: str,
                       action: Callable, keep_empty: bool = True, ro_tree: Optional[Path] = None
                       ) -> bool:
        key = self.b.cache.key(sr.state, text, content)
        rec = self._cached(key)
        if rec is not None:
            self._apply_cached(sr, rec)
            return True
        step = StepDir(self.b.work)
        try:
            with step.mounted(self._lowers(sr.state)) as rootfs:
                await action(step, rootfs)
            diff_id = None
            if keep_empty or not step.upper_empty():
                diff_id = await self._add_layer(step)
        finally:
            step.remove()
        entry = {"created": _now(), "created_by": created_by,
                 "comment": "buildkit.dockerfile.v0"}
        if diff_id is None:
            entry["empty_layer"] = True
        self._record(sr, key, diff_id, entry)
        return False

    def _lowers(self, state: State) -> list[Path]:
        return [self.b.store.root / "layers" / d.split(":", 1)[1] for d in state.layers]

    async def _add_layer(self, step: StepDir) -> str:
        blob = step.path / "layer.tar.gz"
        # settled, the upper dir is what unpacking the blob would make: it becomes the layer
        # (a rename), sparing a second write of every byte, unless it is on another filesystem
        result = await self.helper.call("difftar", upper=str(step.upper), blob=str(blob),
                                        settle=True)

        async def fetch() -> tuple[Path, bool]:
            return blob, True

        async def unpack(blob: Path, dest: Path) -> dict:
            if "layer_size" in result:  # settled
                try:
                    os.rename(step.upper, dest)
                    return {"diff_id": result["diff_id"], "blob_digest": result["blob_digest"],
                            "size": result["layer_size"]}
                except OSError:
                    pass
            return await self.helper.call("unpack-layer", blob=str(blob), dest=str(dest))
        await self.b.store._ensure_layer(result["diff_id"], "built layer", fetch,
                                         result["blob_digest"], unpack)
        return result["diff_id"]

    def _cached(self, key: str) -> Optional[dict]:
        if self.opts.no_cache:
            return None
        rec = self.b.cache.get(key)
        if rec is None:
            return None
        layer = rec.get("layer")
        if layer and (layer not in self.b.store._index["layers"] or not (
                self.b.store.root / "layers" / layer.split(":", 1)[1]).is_dir()):
            return None  # the layer was pruned since: build the step again
        return rec

    def _apply_cached(self, sr: _StageRun, rec: dict) -> None:
        if rec.get("layer"):
            sr.state.layers.append(rec["layer"])
        sr.state.config = rec["config"]
        sr.state.history.append(rec["history"])

    def _record(self, sr: _StageRun, key: str, diff_id: Optional[str], entry: dict) -> None:
        if diff_id:
            sr.state.layers.append(diff_id)
        sr.state.history.append(entry)
        self.b.cache.put(key, {"layer": diff_id, "config": sr.state.config, "history": entry})

    # -- COPY / ADD ------------------------------------------------------------------------
    async def _copy(self, sr: _StageRun, ins: Instruction, env: dict[str, str]) -> bool:
        esc = self.df.escape
        words = list(ins.exec_form) if ins.exec_form is not None else [
            expand(w, env, esc) for w in split_words(ins.rest, esc)]
        if ins.exec_form is not None:
            words = [expand(w, env, esc) for w in words]
        srcs, dest = words[:-1], words[-1]
        if not dest:
            raise SubstitutionError("the destination is empty")
        for s in srcs:
            if _URL.match(s):
                raise SubstitutionError(f"{s}: sources from URLs are not supported; download "
                                        "in a RUN step (with --network host) or put the file "
                                        "in the build context")
            if ins.cmd == "ADD" and _ARCHIVE.search(s):
                raise SubstitutionError(f"{s}: ADD would unpack this archive, which shoal does "
                                        "not do; COPY it and unpack it in a RUN step")
        if len(srcs) > 1 and not dest.endswith("/"):
            raise SubstitutionError("with more than one source, the destination must be a "
                                    "directory and end with a /")
        workdir = sr.state.config.get("WorkingDir") or "/"
        abs_dest = posixpath.join(workdir, dest)
        if dest.endswith("/") and not abs_dest.endswith("/"):
            abs_dest += "/"
        chown = expand(ins.flags.get("chown", ""), env, esc)
        mode = None
        if "chmod" in ins.flags:
            chmod = expand(ins.flags["chmod"], env, esc)
            if not re.fullmatch(r"[0-7]{3,4}", chmod):
                raise SubstitutionError(f"--chmod={chmod}: only octal modes are supported")
            mode = int(chmod, 8)
        source = expand(ins.flags.get("from", ""), env, esc)
        if source:
            tree_state = self._from_state(source, sr, ins)
            with read_only_tree(self.b.work, self._lowers(tree_state)) as tree:
                return await self._copy_from(sr, ins, str(tree), False, srcs, abs_dest, chown,
                                             mode, source)
        return await self._copy_from(sr, ins, self.context, True, srcs, abs_dest, chown, mode,
                                     "")

    def _from_state(self, source: str, sr: _StageRun, ins: Instruction) -> State:
        key = source.lower()
        if key == str(sr.stage.index) or key == sr.stage.name:
            raise SubstitutionError(f"--from={source} names this stage itself")
        if key in self.done:
            return self.done[key]
        image = self.b.store.get(source)
        if image is None:
            raise SubstitutionError(f"--from={source}: no earlier stage of that name and no "
                                    "such image on this node")
        return State(list(image.layers), dict(image.config or {}), [], image.architecture,
                     image.id)

    async def _copy_from(self, sr: _StageRun, ins: Instruction, tree: str, is_context: bool,
                         srcs: list[str], dest: str, chown: str, mode: Optional[int],
                         source: str) -> bool:
        req = {"tree": tree, "is_context": is_context,
               "ignore": self.ignore if is_context else "",
               "what": "the build context" if is_context else f"stage {source}"}
        found = await self.helper.call("resolve", sources=srcs, **req)
        text = canonical([ins.cmd, source, chown, mode, srcs, dest]).decode()
        shown = f"{ins.cmd} {'--from=' + source + ' ' if source else ''}" \
                f"{'--chown=' + chown + ' ' if chown else ''}{' '.join(srcs)} {dest}"

        async def copy(step: StepDir, rootfs: Path) -> None:
            uid = gid = None
            if chown:
                user, _, group = chown.partition(":")
                uid, gid, _, _ = resolve_user(rootfs, chown)
                if not group:
                    gid = uid  # Docker: a user without a group means that number for both
            into = len(found["sources"]) > 1 or dest.endswith("/") or is_dir_in(rootfs, dest)
            await self.helper.call("copy", sources=found["sources"], rootfs=str(rootfs),
                                   dest=dest, into_dir=into, uid=uid, gid=gid, mode=mode, **req)
        return await self._fs_step(sr, text, found["hash"], shown, copy)

    # -- the image -------------------------------------------------------------------------
    async def _commit(self, state: State) -> str:
        created = state.history[-1]["created"] if state.history and \
            state.history[-1].get("created") else _now()
        config = {"created": created, "architecture": state.architecture or host_arch(),
                  "os": "linux", "config": state.config,
                  "rootfs": {"type": "layers", "diff_ids": state.layers},
                  "history": state.history}
        data = canonical(config)
        image_id = _sha256(data)
        refs = [normalize_ref(t) for t in self.opts.tags]
        store = self.b.store
        store._store_blob(data, image_id)
        store._record(image_id, config, list(state.layers), refs)
        for r in refs:
            self.emit({"tagged": r})
        self.emit({"image": image_id})
        return image_id


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read_dockerfile(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DOCKERFILE + 1)
    except OSError as exc:
        raise errors.InvalidArgument(f"cannot read the Dockerfile {path}: {exc.strerror}",
                                     field="dockerfile")
    if len(data) > MAX_DOCKERFILE:
        raise errors.InvalidArgument(f"the Dockerfile {path} is larger than 1 MiB",
                                     field="dockerfile")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise BuildError(path.name, line, "the Dockerfile is not UTF-8 text")


def _read_dockerignore(context: Path) -> str:
    # read without following a link: a planted .dockerignore symlink reads nothing outside
    try:
        fd = os.open(context / ".dockerignore", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        # silently building without the rules would copy what the user meant to keep out
        raise errors.InvalidArgument(f"cannot read {context / '.dockerignore'} "
                                     f"({exc.strerror}; a symlink is not followed)",
                                     field="context")
    with os.fdopen(fd, "rb") as f:
        return f.read(MAX_DOCKERFILE).decode("utf-8", "replace")


def _unmount_quietly(path: Path) -> None:
    from worker.executor.rootfs import _unmount
    _unmount(path)
