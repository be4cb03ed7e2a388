"""Small helpers the multi-host tests share."""
from __future__ import annotations

import os
import secrets
import time
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def unique_lab_name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(2)}"[:8]


def wait_until(check: Callable[[], T], timeout: float = 20.0, interval: float = 0.2,
               what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the system is converging; remember why it is not there yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc})" if last_exc else ""))


def node_table(lab, host: str) -> dict[str, dict]:
    return {n["hostname"]: n for n in lab.cli_json(host, "node", "ls")}


def leader_of(lab, host: str) -> str | None:
    for name, n in node_table(lab, host).items():
        if n["manager_status"] == "leader":
            return name
    return None
