"""Flags that `service create` and `service update` share, defined once: the update and
rollback policies and the health check."""
from __future__ import annotations

import shlex

import click

from common.durations import format_duration
from shoal.cli.swarm import DURATION

UPDATE_ACTIONS = ("pause", "continue", "rollback")
ROLLBACK_ACTIONS = ("pause", "continue")
_POLICY_FIELDS = ("parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order")
_HEALTH_FLAGS = ("health_cmd", "health_interval", "health_timeout", "health_retries",
                 "health_start_period")


def _apply(fn, options: list):
    for option in reversed(options):
        fn = option(fn)
    return fn


def policy_options(prefix: str, actions: tuple[str, ...]):
    """--PREFIX-parallelism, -delay, -failure-action, -monitor, -max-failure-ratio, -order."""
    def deco(fn):
        return _apply(fn, [
            click.option(f"--{prefix}-parallelism", type=click.IntRange(min=0),
                         help="Tasks replaced at once (0: all)"),
            click.option(f"--{prefix}-delay", type=DURATION, help="Delay between batches"),
            click.option(f"--{prefix}-failure-action", type=click.Choice(actions),
                         help="What to do when tasks of a batch fail"),
            click.option(f"--{prefix}-monitor", type=DURATION,
                         help="How long to watch each new task for failure"),
            click.option(f"--{prefix}-max-failure-ratio", type=click.FloatRange(0, 1),
                         help="Failure rate to tolerate"),
            click.option(f"--{prefix}-order", type=click.Choice(["stop-first", "start-first"]),
                         help="Stop the old task first, or start the new one first"),
        ])
    return deco


def update_policy_options(fn):
    """Both policies: --update-* and --rollback-*."""
    return policy_options("update", UPDATE_ACTIONS)(policy_options("rollback", ROLLBACK_ACTIONS)(fn))


def apply_policies(spec: dict, o: dict) -> None:
    """Set what the --update-* and --rollback-* flags say; leave the rest as it is."""
    for key, prefix in (("update_config", "update"), ("rollback_config", "rollback")):
        for name in _POLICY_FIELDS:
            value = o.get(f"{prefix}_{name}")
            if value is not None:
                spec.setdefault(key, {})[name] = value


def health_options(fn):
    """Docker's --health-* flags and --no-healthcheck."""
    return _apply(fn, [
        click.option("--health-cmd", help="Command to run to check health (run by /bin/sh -c "
                     "in the container; exit 0: healthy)"),
        click.option("--health-interval", type=DURATION, help="Time between checks (default 30s)"),
        click.option("--health-timeout", type=DURATION, help="Maximum time a check may run (default 30s)"),
        click.option("--health-retries", type=click.IntRange(min=1),
                     help="Consecutive failures needed to report unhealthy (default 3)"),
        click.option("--health-start-period", type=DURATION,
                     help="Start period during which failures do not count (default 0s)"),
        click.option("--no-healthcheck", is_flag=True, help="Disable any container-specified HEALTHCHECK"),
    ])


def apply_health(container: dict, o: dict) -> None:
    """Set the container's healthcheck from the flags, over what it had (update) or nothing
    (create). Unset fields stay 0: the worker takes them from the image, then Docker's defaults."""
    given = [f for f in _HEALTH_FLAGS if o.get(f) is not None]
    if o.get("no_healthcheck"):
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise click.BadParameter(f"--no-healthcheck turns health checks off; it cannot go "
                                     f"with {flags}", param_hint="--no-healthcheck")
        container["healthcheck"] = {"test": ["NONE"]}
        return
    if not given:
        return
    hc = dict(container.get("healthcheck") or {})
    if hc.get("test") == ["NONE"]:
        hc["test"] = []  # --health-* after --no-healthcheck: checks come back
    if o.get("health_cmd") is not None:
        cmd = o["health_cmd"].strip()
        if not cmd:
            raise click.BadParameter("an empty command checks nothing: give a command, or use "
                                     "--no-healthcheck", param_hint="--health-cmd")
        hc["test"] = ["CMD-SHELL", cmd]
    for flag, key in (("health_interval", "interval"), ("health_timeout", "timeout"),
                      ("health_retries", "retries"), ("health_start_period", "start_period")):
        if o.get(flag) is not None:
            hc[key] = o[flag]
    container["healthcheck"] = hc


def describe_health(hc: dict | None) -> str:
    """One line for `service inspect --pretty`."""
    if not hc:
        return "the image's, if any"
    test = hc.get("test") or []
    if test == ["NONE"]:
        return "disabled (--no-healthcheck)"
    if not test:
        what = "the image's command"
    elif test[0] == "CMD-SHELL":
        what = " ".join(test[1:])
    else:
        what = shlex.join(test[1:] if test[0] == "CMD" else test)
    parts = [what]
    for key in ("interval", "timeout", "start_period"):
        if hc.get(key):
            parts.append(f"{key}={format_duration(hc[key])}")
    if hc.get("retries"):
        parts.append(f"retries={hc['retries']}")
    return " ".join(parts)
