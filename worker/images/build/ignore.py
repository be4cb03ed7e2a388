""".dockerignore: Docker's patterns (filepath.Match plus `**`), `!` exceptions, last match wins."""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from common import errors


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern
    exclude: bool          # False for a `!` exception


class IgnoreRules:
    def __init__(self, text: str = "") -> None:
        self.patterns: list[_Pattern] = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exclude = not line.startswith("!")
            if not exclude:
                line = line[1:].strip()
            # Docker cleans each pattern and takes it relative to the context's root.
            cleaned = posixpath.normpath(line).lstrip("/")
            if cleaned in ("", "."):
                continue
            try:
                regex = re.compile(_regex(cleaned), re.S)
            except re.error as exc:
                raise errors.InvalidArgument(f".dockerignore:{number}: bad pattern {line!r} "
                                             f"({exc})") from None
            self.patterns.append(_Pattern(regex, exclude))

    def ignored(self, rel: str) -> bool:
        """Whether the context path `rel` ('a/b/c', no leading slash) is left out. A pattern
        that matches a parent directory covers what is inside, as in Docker's matcher."""
        if not self.patterns:
            return False
        parts = rel.split("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        result = False
        for p in self.patterns:
            if any(p.regex.fullmatch(c) for c in candidates):
                result = p.exclude
        return result

    def may_hold_exceptions(self, rel_dir: str) -> bool:
        """Whether an ignored directory must still be walked: an exception may name a path
        inside it (Docker walks in then too)."""
        return any(not p.exclude for p in self.patterns)


def _regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    out.append("(?:.*/)?")  # `**/` matches zero or more directories
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern.startswith("[!", i) or
                               pattern.startswith("[^", i) else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                body = body.replace("\\", "\\\\").replace("[", "\\[")
                out.append(f"[{body}]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)
