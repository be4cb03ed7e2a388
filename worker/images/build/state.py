"""A stage's state between steps (layers, runtime config, history) and the step cache."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from common.fsutil import read_json, write_json


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class State:
    layers: list[str] = field(default_factory=list)      # diff ids, lowest first
    config: dict = field(default_factory=dict)            # Env, Cmd, WorkingDir, ...
    history: list[dict] = field(default_factory=list)
    architecture: str = ""
    base_id: str = ""

    def digest(self) -> str:
        return hashlib.sha256(canonical({"layers": self.layers, "config": self.config,
                                         "history": self.history, "base": self.base_id})
                              ).hexdigest()

    def copy(self) -> "State":
        return copy.deepcopy(self)

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.config.get("Env") or []:
            k, _, v = item.partition("=")
            out[k] = v
        return out

    def set_env(self, key: str, value: str) -> None:
        env = list(self.config.get("Env") or [])
        for i, item in enumerate(env):
            if item.partition("=")[0] == key:
                env[i] = f"{key}={value}"
                break
        else:
            env.append(f"{key}={value}")
        self.config["Env"] = env


class StepCache:
    """<build-root>/cache/<key>.json: what a step produced (its layer, the config after it,
    its history entry). The key covers the parent state, the instruction after substitution
    and, for COPY/ADD, the content hash of the sources."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(parent: State, text: str, content: str = "") -> str:
        return hashlib.sha256(canonical([parent.digest(), text, content])).hexdigest()

    def get(self, key: str) -> Optional[dict]:
        rec = read_json(self.root / f"{key}.json", None)
        return rec if isinstance(rec, dict) else None

    def put(self, key: str, rec: dict) -> None:
        write_json(self.root / f"{key}.json", rec)
