"""What `container logs` and `service logs` share: --since/--until as docker's CLI reads them
(common/logtime.py) and the timestamps it prints."""
from __future__ import annotations

import time

import click

from common import errors
from common.logtime import optional_time

SINCE_HELP = ("Show logs since a time: RFC 3339 (2024-05-01T10:00:00Z), Unix seconds or "
              "relative (10m)")
UNTIL_HELP = "Show logs before a time: RFC 3339, Unix seconds or relative (10m)"


def log_window(since: str, until: str) -> dict[str, str]:
    """--since/--until as Unix seconds for the API (relative times are the caller's now, as
    the docker CLI computes them); a bad value is a usage error naming its flag."""
    params = {}
    for flag, text in (("--since", since), ("--until", until)):
        try:
            value = optional_time(text, flag)
        except errors.InvalidArgument as exc:
            raise click.BadParameter(exc.message.removeprefix(f"{flag} "),
                                     param_hint=flag) from None
        if value is not None:
            params[flag[2:]] = f"{value:.6f}"
    return params


def rfc3339_nano(ts: float) -> str:
    """docker's timestamp on a log line: 2024-05-01T10:00:00.123456000Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}000Z"
