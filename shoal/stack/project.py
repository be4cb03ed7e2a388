"""A stack's files read into one project: each file parsed, interpolated with the environment
and the `.env` file, put in long form, and merged in order."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, Mapping, Optional

from dotenv import dotenv_values

from shoal.stack.interpolate import interpolate
from shoal.stack.merge import merge, normalize_service, strip
from shoal.stack.problems import Collector, ComposeError, Mark, Marks, Problem
from shoal.stack import yamlfile

MAX_FILE_BYTES = 4 << 20  # a Compose file is text someone wrote; anything bigger is a mistake


@dataclass
class Project:
    data: dict
    marks: Marks
    directory: FsPath           # relative paths in the files are relative to the first file's
    env: dict[str, str]         # what interpolation saw: .env, then the shell's environment
    files: list[str]
    warnings: list[str] = field(default_factory=list)
    # Found while reading (bad interpolation, a malformed short form): reported together with
    # what the conversion finds, so one run lists every mistake.
    problems: list[Problem] = field(default_factory=list)

    def raise_if_any(self) -> None:
        if self.problems:
            raise ComposeError(self.problems, "the Compose file has errors:")


def read_env_file(path: FsPath) -> dict[str, str]:
    try:
        values = dotenv_values(path, interpolate=True)
    except (OSError, UnicodeDecodeError) as exc:
        raise ComposeError([Problem((), f"cannot read the env file: {exc}", Mark(str(path), 1, 1))]) from None
    return {k: v if v is not None else "" for k, v in values.items()}


def load_project(files: list[str], *, env_file: Optional[str] = None,
                 environ: Optional[Mapping[str, str]] = None) -> Project:
    if not files:
        raise ComposeError([Problem((), "no Compose file given: use -c FILE")])
    environ = dict(os.environ if environ is None else environ)
    first = FsPath(files[0]) if files[0] != "-" else FsPath.cwd() / "-"
    directory = first.resolve().parent
    dotenv_path = FsPath(env_file) if env_file else directory / ".env"
    env: dict[str, str] = {}
    if env_file or dotenv_path.is_file():
        if env_file and not dotenv_path.is_file():
            raise ComposeError([Problem((), f"env file {env_file} not found")])
        env.update(read_env_file(dotenv_path))
    env.update(environ)  # the shell wins over .env, as in Compose
    merged: Any = {}
    marks = Marks()
    unset: set[str] = set()
    found: list[Problem] = []
    for name in files:
        data, file_marks = _read(name)
        problems = Collector(file_marks)
        data = interpolate(data, env, problems, unset)
        services = data.get("services") if isinstance(data, dict) else None
        if isinstance(services, dict):
            data = {**data, "services": {k: normalize_service(v, problems, ("services", k))
                                         for k, v in services.items()}}
        found += problems.problems
        merged = merge(merged, data) if merged else strip(data)
        marks.update(file_marks)
    warnings = [f"The {v} variable is not set. Defaulting to a blank string." for v in sorted(unset)]
    return Project(merged, marks, directory, env, list(files), warnings, found)


def _read(name: str) -> tuple[dict, Marks]:
    import sys
    try:
        if name == "-":
            raw = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            with open(name, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ComposeError([Problem((), f"cannot read {name}: {exc.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ComposeError([Problem((), f"{name} is larger than {MAX_FILE_BYTES >> 20} MiB")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ComposeError([Problem((), f"{name} is not UTF-8 text (byte {exc.start})")]) from None
    data, marks = yamlfile.load(text, name)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ComposeError([Problem((), "a Compose file is a mapping with services, networks, "
                                    "volumes, secrets and configs at its top", marks.at(()))])
    return data, marks
