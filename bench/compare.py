"""Set a benchmark run against the baseline kept in the repository, and flag what got worse.

    bench/compare.py check bench/results/raft_bench.json        # against bench/baseline/raft_bench.json
    bench/compare.py record bench/baseline/raft_bench.json RUN1.json RUN2.json [...]

A baseline holds two runs or more of one bench on one machine (the machine is in the file).
The noise of a figure is what it measures itself: the spread (max - min) of its values across
the baseline's runs, floored at --min-noise of its median (10 % by default), since two runs that
happen to agree say little about a third. A figure of the run is then
  - better: no worse than the baseline's median;
  - worse within noise: worse, but by no more than that noise;
  - worse beyond noise: worse by more: flagged;
  - missing: in the baseline, not in the run: flagged (a bench that stops giving a figure hides
    its regressions);
  - new: in the run only: shown, not judged.
Which direction is better is each figure's own, set by the bench that measures it and recorded
in the baseline ("higher" for rates such as commits/s, "lower" for durations and memory); the
baseline's word wins. Exit status 1 when anything is flagged, so a script can stop on it.

Figures taken on another machine (CPU model or core count) are compared all the same, with a
warning: record a baseline of your own machine first (two runs, interleaved with nothing else
you changed) before reading anything into them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
MIN_NOISE = 0.10
FLAGGED = ("worse beyond noise", "missing")


@dataclass
class Verdict:
    name: str
    status: str                   # better | worse within noise | worse beyond noise | missing | new
    baseline: float | None = None  # the median of the baseline's runs
    current: float | None = None
    change: float | None = None    # relative to the baseline, positive when better
    noise: float | None = None     # the allowed relative worsening
    unit: str = ""
    better: str = ""

    @property
    def flagged(self) -> bool:
        return self.status in FLAGGED


def baseline_figures(runs: list[dict]) -> dict[str, dict]:
    """Per figure: unit, better, the value of each run that has it, their median and spread."""
    figures: dict[str, dict] = {}
    for run in runs:
        for name, fig in run["figures"].items():
            entry = figures.setdefault(name, {"unit": fig.get("unit", ""), "better": fig["better"],
                                              "values": []})
            entry["values"].append(fig["value"])
    for entry in figures.values():
        values = entry["values"]
        entry["median"] = statistics.median(values)
        entry["spread"] = max(values) - min(values)
    return figures


def judge(name: str, base: dict | None, run: dict | None, min_noise: float = MIN_NOISE) -> Verdict:
    if run is None:
        return Verdict(name, "missing", baseline=base["median"], unit=base["unit"], better=base["better"])
    if base is None:
        return Verdict(name, "new", current=run["value"], unit=run.get("unit", ""), better=run["better"])
    center, current, better = base["median"], run["value"], base["better"]
    allowed = max(base["spread"], min_noise * abs(center))
    gain = current - center if better == "higher" else center - current
    if gain >= 0:
        status = "better"
    elif -gain <= allowed:
        status = "worse within noise"
    else:
        status = "worse beyond noise"
    relative = (lambda x: x / abs(center)) if center else (lambda x: None)
    return Verdict(name, status, baseline=center, current=current, change=relative(gain),
                   noise=relative(allowed), unit=base["unit"], better=better)


def compare(baseline: dict, run: dict, min_noise: float = MIN_NOISE) -> list[Verdict]:
    base = baseline_figures(baseline["runs"])
    figures = run["figures"]
    names = list(base) + [n for n in figures if n not in base]
    return [judge(n, base.get(n), figures.get(n), min_noise) for n in names]


def machine_warning(baseline: dict, run: dict) -> str | None:
    a, b = baseline.get("machine", {}), run.get("machine", {})
    differ = [k for k in ("cpu", "cores") if a.get(k) != b.get(k)]
    if not differ:
        return None
    return ("warning: the run's machine differs from the baseline's ("
            + ", ".join(f"{k}: {b.get(k)} here, {a.get(k)} in the baseline" for k in differ)
            + "): the figures are not comparable; record a baseline on this machine")


def record(runs: list[dict]) -> dict:
    benches = {r["bench"] for r in runs}
    if len(benches) != 1:
        raise SystemExit(f"the runs are of different benches: {sorted(benches)}")
    if len(runs) < 2:
        raise SystemExit("a baseline needs two runs at least: its noise is their spread")
    machines = {json.dumps(r["machine"], sort_keys=True) for r in runs}
    if len(machines) != 1:
        raise SystemExit("the runs were taken on different machines")
    summary = baseline_figures(runs)
    return {"format": 1, "bench": runs[0]["bench"], "machine": runs[0]["machine"],
            "figures": {n: {k: e[k] for k in ("unit", "better", "median", "spread", "values")}
                        for n, e in summary.items()},
            "runs": runs}


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read {path}: {exc}") from None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.4g}"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:+.1f}%"


def report(verdicts: list[Verdict]) -> str:
    lines = [f"{'figure':<46} {'baseline':>10} {'run':>10} {'change':>8} {'noise':>7}  verdict"]
    for v in verdicts:
        noise = "" if v.noise is None else f"{v.noise * 100:.1f}%"
        lines.append(f"{v.name:<46} {_fmt(v.baseline):>10} {_fmt(v.current):>10} {_pct(v.change):>8} "
                     f"{noise:>7}  {v.status}{' <<' if v.flagged else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    check = sub.add_parser("check", help="compare a run with its bench's baseline")
    check.add_argument("run", type=Path)
    check.add_argument("--baseline", type=Path, help="default: bench/baseline/<bench>.json")
    check.add_argument("--min-noise", type=float, default=MIN_NOISE,
                       help=f"the least relative worsening ignored (default {MIN_NOISE})")
    rec = sub.add_parser("record", help="write a baseline from two runs or more")
    rec.add_argument("out", type=Path)
    rec.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args(argv)

    if args.cmd == "record":
        baseline = record([_load(p) for p in args.runs])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(baseline, indent=1) + "\n")
        print(f"baseline of {baseline['bench']} from {len(args.runs)} runs written to {args.out}")
        for name, fig in baseline["figures"].items():
            print(f"  {name}: {', '.join(_fmt(v) for v in fig['values'])} {fig['unit']} "
                  f"({fig['better']} is better)")
        return 0

    run = _load(args.run)
    path = args.baseline or BENCH_DIR / "baseline" / f"{run['bench']}.json"
    if not path.is_file():
        print(f"no baseline at {path}: record one with `bench/compare.py record`", file=sys.stderr)
        return 2
    baseline = _load(path)
    if baseline["bench"] != run["bench"]:
        print(f"{path} is a baseline of {baseline['bench']}, the run is of {run['bench']}",
              file=sys.stderr)
        return 2
    warning = machine_warning(baseline, run)
    if warning:
        print(warning)
    verdicts = compare(baseline, run, args.min_noise)
    print(f"{run['bench']}: run of {run.get('taken_at')} ({run.get('commit')}) against the baseline "
          f"in {path} ({len(baseline['runs'])} runs)")
    print(report(verdicts))
    flagged = [v.name for v in verdicts if v.flagged]
    if flagged:
        print(f"flagged: {', '.join(flagged)}")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
