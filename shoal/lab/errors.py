"""What lab operations raise: LabError, and LabCommandError for a failed command in a host."""
from __future__ import annotations

import subprocess


class LabError(Exception):
    """A lab operation failed; the message names the problem and, where there is one, the fix."""


class LabCommandError(LabError):
    """A command run inside a lab host exited non-zero (``check=True``)."""

    def __init__(self, message: str, result: subprocess.CompletedProcess) -> None:
        super().__init__(message)
        self.result = result
