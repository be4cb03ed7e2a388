"""Every benchmark's figures as JSON beside its printout, for bench/compare.py.

A bench names each figure, its unit, which direction is better ("higher" for rates, "lower"
for times) and its samples (one per trial or round); the headline value is their median. The
file also records the machine, because a figure means nothing without it, and the load
average around the run, because this machine is often shared.

Use: results = Results("raft_bench"); add_json_option(parser, "raft_bench");
results.add("sequential commits/s", samples, "commits/s", "higher"); results.write(args.json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = 1
BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BETTER = ("higher", "lower")


def default_path(bench: str) -> Path:
    return BENCH_DIR / "results" / f"{bench}.json"


def add_json_option(parser: argparse.ArgumentParser, bench: str) -> None:
    parser.add_argument("--json", type=Path, default=default_path(bench), metavar="PATH",
                        help=f"where the figures go as JSON (default: {default_path(bench)})")


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version()}


def _commit() -> str | None:
    # Read-only: which code produced the figures (and whether the tree had local changes).
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+local changes' if dirty else ''}" if head else None


@dataclass
class Figure:
    unit: str
    better: str              # "higher" or "lower"
    samples: list[float]
    value: float = 0.0       # the median of the samples

    def __post_init__(self) -> None:
        if self.better not in BETTER:
            raise ValueError(f"better must be one of {BETTER}, not {self.better!r}")
        if not self.samples:
            raise ValueError("a figure needs at least one sample")
        self.value = statistics.median(self.samples)


@dataclass
class Results:
    bench: str
    args: dict = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    load_at_start: float = field(default_factory=lambda: round(os.getloadavg()[0], 2))

    def add(self, name: str, samples: list[float], unit: str, better: str) -> Figure:
        figure = Figure(unit, better, [float(s) for s in samples])
        self.figures[name] = figure
        return figure

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "bench": self.bench,
            "taken_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": _commit(),
            "machine": machine(),
            "load_avg_1m": {"start": self.load_at_start, "end": round(os.getloadavg()[0], 2)},
            "args": self.args,
            "figures": {name: asdict(f) for name, f in self.figures.items()},
        }

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        print(f"figures written to {path}")
        return path
