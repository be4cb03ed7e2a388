"""What the observability modules share: the lab's hosts, its metrics address and scrapes, the
tasks of a service as the CLI lists them, `shoal events` followed in the background, and the
clean-up that leaves the shared lab as the next module expects it."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from typing import Callable, Iterator, Optional

from prometheus_client.parser import text_string_to_metric_families

from integration.helpers import node_table, stop_process, wait_until

MANAGERS = ("manager1", "manager2", "manager3")
WORKERS = ("worker1", "worker2", "worker3")
HOSTS = MANAGERS + WORKERS
METRICS_ADDR = "127.0.0.1:9323"
IMAGE = "busybox:1"

_SCRAPE = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
           f"'http://{METRICS_ADDR}/metrics', timeout=10).read().decode())")

Samples = dict[tuple[str, tuple], float]


# ---- metrics -----------------------------------------------------------------------------
def scrape_text(lab, host: str) -> str:
    """GET /metrics from inside the host (the listener is on its namespace's loopback)."""
    return lab.exec(host, [sys.executable, "-c", _SCRAPE], check=True, timeout=30).stdout


def scrape(lab, host: str) -> Samples:
    """Every sample, parsed by prometheus_client's own parser (which raises on bad text)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(scrape_text(lab, host))
            for s in family.samples}


def get(found: Samples, metric: str, /, **labels: str) -> float:
    return found.get((metric, tuple(sorted(labels.items()))), 0.0)


def series(found: Samples, metric: str, **labels: str) -> list[float]:
    """The values of every series of `metric` whose labels include `labels`."""
    want = set(labels.items())
    return [v for (name, lbls), v in found.items() if name == metric and want <= set(lbls)]


# ---- tasks and services ------------------------------------------------------------------
def tasks_of(lab, service: str, via: str = "manager1") -> list[dict]:
    return lab.cli_json(via, "service", "ps", service)


def running(lab, service: str, via: str = "manager1") -> list[dict]:
    """The service's tasks meant to run and running, by slot."""
    return sorted((t for t in tasks_of(lab, service, via) if t["desired_state"] == "running"
                   and t["status"]["state"] == "running"), key=lambda t: t["slot"])


def wait_running(lab, service: str, count: int, timeout: float = 90,
                 via: str = "manager1") -> list[dict]:
    def enough() -> Optional[list[dict]]:
        up = running(lab, service, via)
        return up if len(up) == count else None
    return wait_until(enough, timeout=timeout, what=f"{count} running tasks of {service}")


def create_service(lab, name: str, *args: str, via: str = "manager1") -> None:
    """`service create -d` of busybox, pinned to no registry (every host imported it)."""
    lab.cli(via, "service", "create", "--detach", "--name", name, "--resolve-image", "never",
            *args, timeout=90)


def remove_services(lab, *names: str) -> None:
    """Remove the services and wait until no task of theirs is left anywhere, so the next module
    starts on a quiet lab (their containers gone from the nodes' metrics too)."""
    for name in names:
        lab.cli("manager1", "service", "rm", name, check=False, timeout=60)

    def gone() -> bool:
        listed = {s["spec"]["name"] for s in lab.cli_json("manager1", "service", "ls")}
        return not listed & set(names)
    wait_until(gone, timeout=60, what=f"services {names} removed")


@contextlib.contextmanager
def services(lab, *names: str) -> Iterator[None]:
    """The module's services are removed when the block ends, whatever happened."""
    try:
        yield
    finally:
        remove_services(lab, *names)


def lab_settled(lab, timeout: float = 120) -> dict[str, dict]:
    """Every node ready and active, every manager leader or reachable: what each module may
    assume when it starts, and must leave behind."""
    def settled() -> Optional[dict[str, dict]]:
        table = node_table(lab, "manager1")
        ok = (sorted(table) == sorted(HOSTS)
              and all(n["status"] == "ready" and n["availability"] == "active"
                      for n in table.values())
              and all(table[m]["manager_status"] in ("leader", "reachable") for m in MANAGERS))
        return table if ok else None
    return wait_until(settled, timeout=timeout, what="6 ready, active nodes, 3 managers up")


# ---- events ------------------------------------------------------------------------------
def event_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Follow:
    """`shoal events ARGS` running inside a host, its output in a file; stopped by its PID."""

    def __init__(self, lab, host: str, *args: str) -> None:
        cmd, env = lab.command(host, ["shoal", "events", *args])
        self.out = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def events(self) -> list[dict]:
        self.out.seek(0)
        return event_lines(self.out.read().decode())

    def wait_for(self, what: str, match: Callable[[dict], bool], timeout: float = 60) -> dict:
        def seen() -> Optional[dict]:
            assert self.proc.poll() is None, f"shoal events exited: {self.events()}"
            return next((e for e in self.events() if match(e)), None)
        return wait_until(seen, timeout=timeout, interval=0.3, what=what)

    def stop(self) -> None:
        stop_process(self.proc)
