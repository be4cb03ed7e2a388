"""The Dockerfile parser and Docker's variable substitution: pure functions, hostile input.

Every input either parses or raises BuildError naming the line; nothing else escapes (the
tests hold this with Hypothesis). Substitution is done at build time (builder.py) because it
sees the base image's ENV, as Docker's does; the parser only checks shapes.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

from common import errors

# The instructions Docker substitutes variables in (its `replaceEnvAllowed`).
SUBSTITUTED = frozenset({"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER",
                         "VOLUME", "WORKDIR", "ARG"})
KNOWN = frozenset({"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL",
                   "EXPOSE", "VOLUME", "CMD", "ENTRYPOINT", "HEALTHCHECK", "STOPSIGNAL",
                   "SHELL", "ONBUILD", "MAINTAINER"})
# The flags each instruction takes; anything else is refused rather than ignored.
FLAGS: dict[str, frozenset[str]] = {
    "FROM": frozenset({"platform"}),
    "RUN": frozenset({"network"}),
    "COPY": frozenset({"from", "chown", "chmod", "link"}),
    "ADD": frozenset({"chown", "chmod", "link"}),
    "HEALTHCHECK": frozenset({"interval", "timeout", "start-period", "start-interval",
                              "retries"}),
}
_DIRECTIVE = re.compile(r"^#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STAGE = re.compile(r"^[a-z][a-z0-9._-]*$")
_FLAG = re.compile(r"^--([a-z][a-z0-9-]*)(?:=(.*))?$", re.S)


class BuildError(errors.InvalidArgument):
    """A build failure that names where: `Dockerfile:7: RUN exited with code 2`."""

    def __init__(self, where: str, line: int, message: str, output: str = "") -> None:
        self.where, self.line, self.detail, self.output = where, line, message, output
        super().__init__(f"{where}:{line}: {message}" if line else f"{where}: {message}")


@dataclass
class Instruction:
    line: int                       # where it starts (1-based), for errors
    cmd: str                        # upper case
    text: str                       # the arguments as written (continuations joined)
    flags: dict[str, str] = field(default_factory=dict)
    exec_form: Optional[list[str]] = None   # the JSON form, when written so
    rest: str = ""                  # the arguments after the flags, shell form

    def show(self) -> str:
        flags = " ".join(f"--{k}={v}" for k, v in self.flags.items())
        return " ".join(p for p in (self.cmd, flags, self.rest) if p)


@dataclass
class Stage:
    index: int
    name: str                       # "" when the stage has no AS name
    base: str                       # FROM's image, before meta-arg substitution
    line: int
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    where: str                      # the file's name, for errors
    escape: str
    meta_args: list[Instruction]    # the ARGs before the first FROM
    stages: list[Stage]

    def error(self, line: int, message: str, output: str = "") -> BuildError:
        return BuildError(self.where, line, message, output)


# ---- lines ----------------------------------------------------------------------------------
def parse(text: str, where: str = "Dockerfile") -> Dockerfile:
    escape = "\\"
    lines = text.replace("\r\n", "\n").split("\n")
    body_start = 0
    seen: set[str] = set()
    for i, line in enumerate(lines):
        m = _DIRECTIVE.match(line)
        if not m:
            break
        key, value = m.group(1).lower(), m.group(2)
        if key in seen:
            raise BuildError(where, i + 1, f"the parser directive {key!r} is given twice")
        seen.add(key)
        if key == "escape":
            if value not in ("\\", "`"):
                raise BuildError(where, i + 1, f"escape directive {value!r}: the escape "
                                 "character must be \\ or `")
            escape = value
        # `syntax` names a BuildKit frontend image: shoal has its own parser, so it is read
        # and not acted on, as a Docker without BuildKit does; unknown directives are comments.
        body_start = i + 1
    instructions = _logical_lines(lines, body_start, escape, where)
    return _stages(instructions, escape, where)


def _logical_lines(lines: list[str], start: int, escape: str,
                   where: str) -> list[Instruction]:
    out: list[Instruction] = []
    pending: list[str] = []
    first = 0
    for i in range(start, len(lines)):
        raw = lines[i]
        stripped = raw.strip()
        if pending and (stripped.startswith("#") or not stripped):
            continue  # comments and blank lines inside a continuation are dropped, as Docker does
        if not pending:
            if not stripped or stripped.startswith("#"):
                continue
            first = i + 1
        body = raw.rstrip(" \t")
        if body.endswith(escape):  # Docker's rule: a trailing escape continues, whatever precedes
            pending.append(body[:-1])
            continue
        pending.append(raw)
        out.append(_instruction("".join(pending), first, escape, where))
        pending = []
    if pending:
        out.append(_instruction("".join(pending), first, escape, where))
    return out


def _instruction(line: str, number: int, escape: str, where: str) -> Instruction:
    if "\x00" in line:
        raise BuildError(where, number, "the line holds a NUL byte")
    parts = line.strip().split(None, 1)
    if not parts:
        raise BuildError(where, number, "a line continuation leads to no instruction")
    cmd = parts[0].upper()
    text = parts[1].strip() if len(parts) > 1 else ""
    if cmd not in KNOWN:
        raise BuildError(where, number, f"unknown instruction: {parts[0]}")
    if cmd == "ONBUILD":
        raise BuildError(where, number, "ONBUILD is not supported: shoal builds no image meant "
                         "to trigger steps in another build; write the steps in the Dockerfile "
                         "that uses the image")
    ins = Instruction(number, cmd, text)
    rest = text
    if cmd in FLAGS:
        rest = _take_flags(ins, rest, where)
    ins.rest = rest
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None  # not JSON: the shell form, as Docker falls back
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            ins.exec_form = value
    _check_shape(ins, where)
    return ins


def _take_flags(ins: Instruction, rest: str, where: str) -> str:
    while rest.startswith("--"):
        word, _, after = rest.partition(" ")
        word2, _, after2 = rest.partition("\t")
        if len(word2) < len(word):
            word, after = word2, after2
        m = _FLAG.match(word)
        if not m:
            raise BuildError(where, ins.line, f"{ins.cmd}: malformed flag {word!r}")
        name, value = m.group(1), m.group(2)
        if name not in FLAGS[ins.cmd]:
            raise BuildError(where, ins.line, f"{ins.cmd}: unknown flag --{name}")
        if value is None:
            raise BuildError(where, ins.line, f"{ins.cmd}: flag --{name} needs a value "
                             f"(--{name}=VALUE)")
        if name in ins.flags:
            raise BuildError(where, ins.line, f"{ins.cmd}: flag --{name} is given twice")
        ins.flags[name] = value
        rest = after.lstrip()
    return rest


def _check_shape(ins: Instruction, where: str) -> None:
    def fail(msg: str) -> BuildError:
        return BuildError(where, ins.line, f"{ins.cmd} {msg}")

    cmd, rest = ins.cmd, ins.rest
    if cmd == "FROM":
        if "platform" in ins.flags:
            raise fail("--platform is not supported: a node builds for its own platform only")
        words = rest.split()
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
            raise fail("takes IMAGE [AS NAME]")
        if len(words) == 3 and not _STAGE.match(words[2].lower()):
            raise fail(f"stage name {words[2]!r}: lower-case letters, digits, '.', '_', '-', "
                       "starting with a letter")
    elif cmd in ("RUN", "CMD", "ENTRYPOINT", "SHELL") and not rest and cmd != "CMD":
        raise fail("needs an argument")
    elif cmd == "RUN" and ins.flags.get("network", "host") not in ("host", "none", "default"):
        raise fail(f"--network={ins.flags['network']}: only host, none and default are known")
    elif cmd == "SHELL" and not ins.exec_form:
        raise fail("takes the JSON form: SHELL [\"executable\", \"parameters\"]")
    elif cmd in ("COPY", "ADD"):
        words = ins.exec_form if ins.exec_form is not None else split_words(rest)
        if len(words) < 2:
            raise fail("takes SRC... DEST")
        if ins.flags.get("link") not in (None, "", "true", "false"):
            raise fail("--link takes true or false")
    elif cmd in ("ENV", "LABEL", "ARG", "WORKDIR", "USER", "EXPOSE", "VOLUME", "STOPSIGNAL",
                 "MAINTAINER") and not rest:
        raise fail("needs an argument")
    elif cmd == "ARG":
        names = split_words(rest)
        if len(names) != 1:
            raise fail("takes one NAME[=DEFAULT]")
        if not _NAME.match(names[0].split("=", 1)[0]):
            raise fail(f"name {names[0].split('=', 1)[0]!r} is not a variable name")
    elif cmd == "HEALTHCHECK":
        if not rest:
            raise fail("takes NONE or CMD ...")
        head = rest.split(None, 1)[0].upper()
        if head == "NONE":
            if rest.strip().upper() != "NONE" or ins.flags:
                raise fail("NONE takes no other arguments")
        elif head != "CMD" or not rest[3:].strip():
            raise fail("takes NONE or CMD COMMAND")
        for name, value in ins.flags.items():
            if name == "retries":
                if not value.isascii() or not value.isdigit():
                    raise fail(f"--retries={value!r} is not a number")
            elif parse_duration(value) is None:
                raise fail(f"--{name}={value!r} is not a duration (like 30s or 1m30s)")


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
            "h": 3600 * 10**9}


def parse_duration(text: str) -> Optional[int]:
    """A Go duration (Docker's HEALTHCHECK flags) in nanoseconds; None if malformed."""
    if text == "0":
        return 0
    pos, total = 0, 0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        total += int(float(m.group(1)) * _UNIT_NS[m.group(2)])
        pos = m.end()
    return total if pos == len(text) and text else None


def _stages(instructions: list[Instruction], escape: str, where: str) -> Dockerfile:
    meta: list[Instruction] = []
    stages: list[Stage] = []
    names: set[str] = set()
    for ins in instructions:
        if ins.cmd == "FROM":
            words = ins.rest.split()
            name = words[2].lower() if len(words) == 3 else ""
            if name and name in names:
                raise BuildError(where, ins.line, f"FROM: stage name {name!r} is used twice")
            names.add(name)
            stages.append(Stage(len(stages), name, words[0], ins.line))
        elif not stages:
            if ins.cmd != "ARG":
                raise BuildError(where, ins.line, f"{ins.cmd} before the first FROM: only ARG "
                                 "may come before FROM")
            meta.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise BuildError(where, 0, "the Dockerfile has no FROM instruction")
    return Dockerfile(where, escape, meta, stages)


# ---- words and substitution -------------------------------------------------------------------
class SubstitutionError(ValueError):
    """A malformed ${...} or a ${VAR:?message} with VAR unset; the builder names the line."""


def split_words(text: str, escape: str = "\\") -> list[str]:
    """Whitespace-separated words, quotes and escapes kept (expand() removes them later)."""
    words: list[str] = []
    cur: list[str] = []
    quote = ""
    in_word = False
    i = 0
    while i < len(text):
        c = text[i]
        if not quote and c.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            i += 1
            continue
        in_word = True
        if c == escape and i + 1 < len(text) and quote != "'":
            cur.append(text[i:i + 2])
            i += 2
            continue
        if quote and c == quote:
            quote = ""
        elif not quote and c in "'\"":
            quote = c
        cur.append(c)
        i += 1
    if in_word:
        words.append("".join(cur))
    return words


def expand(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Docker's ProcessWord: $VAR, ${VAR}, ${VAR:-w}, ${VAR-w}, ${VAR:+w}, ${VAR+w},
    ${VAR:?msg}, ${VAR?msg}; single quotes literal, double quotes substituted, quotes removed."""
    out, _ = _expand(word, 0, env, escape, "")
    return out


_MAX_NESTING = 32  # ${A:-${B:-...}} deeper than this is refused, not a RecursionError


def _expand(s: str, i: int, env: Mapping[str, str], escape: str, stop: str,
            depth: int = 0) -> tuple[str, int]:
    if depth > _MAX_NESTING:
        raise SubstitutionError(f"substitutions nested more than {_MAX_NESTING} deep")
    out: list[str] = []
    quote = ""
    while i < len(s):
        c = s[i]
        if not quote and stop and c == stop:
            return "".join(out), i
        if c == escape:
            if i + 1 < len(s):
                nxt = s[i + 1]
                if quote == '"' and nxt not in ('"', "$", escape):
                    out.append(c)  # inside "", the escape only escapes what it must
                out.append(nxt)
                i += 2
            else:
                out.append(c)
                i += 1
            continue
        if c == "'" and quote != '"':
            end = s.find("'", i + 1)
            if end < 0:
                raise SubstitutionError("unmatched single quote")
            out.append(s[i + 1:end])
            i = end + 1
            continue
        if c == '"':
            quote = "" if quote else '"'
            i += 1
            continue
        if c == "$":
            value, i = _variable(s, i + 1, env, escape, depth)
            out.append(value)
            continue
        out.append(c)
        i += 1
    if quote:
        raise SubstitutionError("unmatched double quote")
    if stop:
        raise SubstitutionError("missing '}'")
    return "".join(out), i


def _variable(s: str, i: int, env: Mapping[str, str], escape: str,
              depth: int) -> tuple[str, int]:
    if i >= len(s):
        return "$", i
    if s[i] != "{":
        m = re.match(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]", s[i:])
        if not m:
            return "$", i
        return env.get(m.group(0), ""), i + m.end()
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", s[i + 1:])
    if not m:
        raise SubstitutionError(f"bad substitution: ${s[i:i + 20]}")
    name = m.group(0)
    j = i + 1 + m.end()
    if j >= len(s):
        raise SubstitutionError(f"missing '}}' after ${{{name}")
    if s[j] == "}":
        return env.get(name, ""), j + 1
    op = s[j:j + 2] if s[j] == ":" else s[j]
    if op not in (":-", ":+", ":?", "-", "+", "?"):
        raise SubstitutionError(f"bad substitution: unsupported modifier {s[j]!r} in "
                                f"${{{name}...}}")
    word, end = _expand(s, j + len(op), env, escape, "}", depth + 1)
    is_set = name in env
    non_empty = bool(env.get(name))
    have = non_empty if op.startswith(":") else is_set
    if op.endswith("-"):
        value = env[name] if have else word
    elif op.endswith("+"):
        value = word if have else ""
    else:
        if not have:
            raise SubstitutionError(f"{name}: {word or 'is not set'}")
        value = env[name]
    return value, end + 1


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    return [expand(w, env, escape) for w in split_words(text, escape)]


def key_values(ins: Instruction, env: Mapping[str, str], escape: str) -> list[tuple[str, str]]:
    """ENV and LABEL: `k=v k2="v 2"`, or the legacy `ENV k v w` (one pair, the rest its value)."""
    words = split_words(ins.rest, escape)
    if ins.cmd == "ENV" and words and "=" not in words[0]:
        name = words[0]
        value = ins.rest[len(name):].strip()
        if not value:
            raise SubstitutionError(f"ENV {name} needs a value (ENV NAME=VALUE)")
        return [(name, expand(value, env, escape))]
    pairs: list[tuple[str, str]] = []
    for w in words:
        if "=" not in w:
            raise SubstitutionError(f"{ins.cmd} takes NAME=VALUE pairs ({w!r} has no '=')")
        k, v = w.split("=", 1)
        k = expand(k, env, escape)
        if not k:
            raise SubstitutionError(f"{ins.cmd}: a pair has an empty name")
        pairs.append((k, expand(v, env, escape)))
    return pairs


Args = Union[list[str], str]
