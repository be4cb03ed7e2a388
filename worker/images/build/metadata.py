"""The instructions that only change the image config (ENV, LABEL, CMD, ...): pure functions
of the stage's state and the instruction, values substituted as Docker does."""
from __future__ import annotations

import posixpath
import re
from typing import Mapping

from worker.images.build.dockerfile import (Instruction, SubstitutionError, expand,
                                            expand_words, key_values, parse_duration)
from worker.images.build.state import State

_PORT = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?(?:/(tcp|udp|sctp))?$", re.I)


def command(ins: Instruction, state: State) -> list[str]:
    """CMD/ENTRYPOINT/HEALTHCHECK CMD: the exec form as is, the shell form through SHELL."""
    if ins.exec_form is not None:
        return list(ins.exec_form)
    shell = list(state.config.get("Shell") or ["/bin/sh", "-c"])
    return shell + [ins.rest]


def workdir(ins: Instruction, state: State, env: Mapping[str, str], escape: str) -> str:
    path = expand(ins.rest, env, escape)
    if not path:
        raise SubstitutionError("WORKDIR is empty after substitution")
    return posixpath.normpath(posixpath.join(state.config.get("WorkingDir") or "/", path))


def apply(ins: Instruction, state: State, env: Mapping[str, str], escape: str,
          cmd_set_here: bool) -> None:
    """Change `state.config` as `ins` says (not WORKDIR, RUN, COPY, ADD, ARG, FROM)."""
    cfg = state.config
    cmd = ins.cmd
    if cmd == "ENV":
        for k, v in key_values(ins, env, escape):
            state.set_env(k, v)
    elif cmd == "LABEL":
        labels = dict(cfg.get("Labels") or {})
        labels.update(key_values(ins, env, escape))
        cfg["Labels"] = labels
    elif cmd == "USER":
        user = expand(ins.rest, env, escape)
        if not user:
            raise SubstitutionError("USER is empty after substitution")
        cfg["User"] = user
    elif cmd == "EXPOSE":
        ports = dict(cfg.get("ExposedPorts") or {})
        for word in expand_words(ins.rest, env, escape):
            m = _PORT.match(word)
            if not m or int(m.group(1)) > 65535:
                raise SubstitutionError(f"EXPOSE {word!r}: not a port (PORT or PORT/PROTO)")
            ports[f"{word.split('/')[0]}/{(m.group(3) or 'tcp').lower()}"] = {}
        cfg["ExposedPorts"] = ports
    elif cmd == "VOLUME":
        vols = dict(cfg.get("Volumes") or {})
        paths = ins.exec_form if ins.exec_form is not None else expand_words(
            ins.rest, env, escape)
        for p in paths:
            if not p.strip():
                raise SubstitutionError("VOLUME names an empty path")
            vols[p] = {}
        cfg["Volumes"] = vols
    elif cmd == "CMD":
        cfg["Cmd"] = command(ins, state)
    elif cmd == "ENTRYPOINT":
        cfg["Entrypoint"] = command(ins, state)
        if not cmd_set_here:
            # Docker's rule: a new ENTRYPOINT drops the Cmd the base image had.
            cfg["Cmd"] = None
    elif cmd == "SHELL":
        cfg["Shell"] = list(ins.exec_form or [])
    elif cmd == "STOPSIGNAL":
        cfg["StopSignal"] = expand(ins.rest, env, escape)
    elif cmd == "HEALTHCHECK":
        cfg["Healthcheck"] = healthcheck(ins, state)
    elif cmd == "MAINTAINER":
        pass  # deprecated; kept in the history entry only


def healthcheck(ins: Instruction, state: State) -> dict:
    if ins.rest.strip().upper() == "NONE":
        return {"Test": ["NONE"]}
    body = ins.rest.strip()[3:].strip()
    sub = Instruction(ins.line, "CMD", body, rest=body)
    if body.startswith("["):
        import json
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            sub.exec_form = value
    test = ["CMD", *sub.exec_form] if sub.exec_form is not None else ["CMD-SHELL", body]
    out: dict = {"Test": test}
    names = {"interval": "Interval", "timeout": "Timeout", "start-period": "StartPeriod",
             "start-interval": "StartInterval"}
    for flag, value in ins.flags.items():
        if flag == "retries":
            out["Retries"] = int(value)
        else:
            out[names[flag]] = parse_duration(value)
    return out
