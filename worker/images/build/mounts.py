"""A build step's scratch tree: the layers so far as overlayfs lowers plus a fresh upper dir,
mounted for the step and always unmounted, also on failure."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

from worker.executor.rootfs import _mount_overlay, _unmount
from worker.images.trees import _rmtree_now


class StepDir:
    """<work>/<random>/{rootfs,upper,work,empty}; `rootfs` is mounted inside `mounted()`."""

    def __init__(self, work: Path) -> None:
        self.path = work / f"step-{secrets.token_hex(6)}"
        self.path.mkdir(mode=0o700, parents=True)
        for sub in ("rootfs", "upper", "work", "empty"):
            (self.path / sub).mkdir(mode=0o755)
        self.rootfs = self.path / "rootfs"
        self.upper = self.path / "upper"

    @contextlib.contextmanager
    def mounted(self, lowers: list[Path]) -> Iterator[Path]:
        # overlayfs needs a lower dir: `FROM scratch` has none, so an empty one stands in.
        _mount_overlay(self.rootfs, list(lowers) or [self.path / "empty"], self.upper,
                       self.path / "work")
        try:
            yield self.rootfs
        finally:
            _unmount(self.rootfs)

    def remove(self) -> None:
        _unmount(self.rootfs)  # no-op unless a crash between mount and unmount left it
        _rmtree_now(self.path)

    def upper_empty(self) -> bool:
        return not any(os.scandir(self.upper))


@contextlib.contextmanager
def read_only_tree(work: Path, lowers: list[Path]) -> Iterator[Path]:
    """A stage's finished tree, for `COPY --from`: overlay of its layers, nothing written."""
    step = StepDir(work)
    try:
        with step.mounted(lowers) as rootfs:
            yield rootfs
    finally:
        step.remove()
