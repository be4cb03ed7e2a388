"""What is wrong with a Compose file, said with its file, line and key path."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from common import errors

Path = tuple  # keys and list indexes from the document's root


@dataclass(frozen=True)
class Mark:
    file: str
    line: int      # 1-based, as editors count
    column: int    # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


def dotted(path: Path) -> str:
    """services.web.ports[0]: how the issue's messages name a key."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


@dataclass
class Marks:
    """Where each key path was written; after a merge, the file that set it last wins."""
    by_path: dict[Path, Mark] = field(default_factory=dict)

    def at(self, path: Path) -> Optional[Mark]:
        """The mark of `path`, or of its nearest ancestor that has one (a list merged from two
        files has no marks of its own for the shifted items)."""
        for end in range(len(path), -1, -1):
            mark = self.by_path.get(tuple(path[:end]))
            if mark is not None:
                return mark
        return None

    def update(self, other: "Marks") -> None:
        self.by_path.update(other.by_path)


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str
    mark: Optional[Mark] = None

    def __str__(self) -> str:
        where = f"{self.mark}: " if self.mark else ""
        return f"{where}{dotted(self.path)}: {self.message}"


class ComposeError(errors.InvalidArgument):
    """One or more problems; the message lists them all, one per line, so a user fixes a file
    in one pass rather than one error per deploy."""

    def __init__(self, problems: list[Problem], headline: str = "") -> None:
        self.problems = problems
        lines = [headline] if headline else []
        lines += [f"  {p}" if headline else str(p) for p in problems]
        super().__init__("\n".join(lines))


class Collector:
    """Gathers problems (and warnings) while a file is checked, each with its mark."""

    def __init__(self, marks: Marks) -> None:
        self.marks = marks
        self.problems: list[Problem] = []

    def add(self, path: Path, message: str) -> None:
        self.problems.append(Problem(tuple(path), message, self.marks.at(tuple(path))))

    def raise_if_any(self, headline: str = "") -> None:
        if self.problems:
            raise ComposeError(self.problems, headline)
