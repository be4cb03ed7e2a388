"""bench/compare.py's judgement, on made-up figures: no benchmark runs here."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import compare  # noqa: E402

MACHINE = {"cpu": "Test CPU", "cores": 2, "kernel": "6.0", "python": "3.11.7"}


def run(figures: dict[str, tuple[float, str]], machine: dict = MACHINE) -> dict:
    return {"format": 1, "bench": "fake_bench", "taken_at": "2026-12-05T00:00:00+00:00",
            "commit": "abc1234", "machine": machine,
            "figures": {name: {"unit": "u", "better": better, "value": value, "samples": [value]}
                        for name, (value, better) in figures.items()}}


@pytest.fixture
def baseline() -> dict:
    # Rates spread 9.5 % between the two runs (1000 and 1100, median 1050); times 2.0 and 2.2.
    return compare.record([
        run({"rate": (1000, "higher"), "time": (2.0, "lower"), "steady": (100, "higher")}),
        run({"rate": (1100, "higher"), "time": (2.2, "lower"), "steady": (100, "higher")}),
    ])


def verdicts(baseline: dict, figures: dict) -> dict[str, compare.Verdict]:
    return {v.name: v for v in compare.compare(baseline, run(figures))}


def test_better_in_each_direction(baseline):
    got = verdicts(baseline, {"rate": (1200, "higher"), "time": (1.5, "lower"), "steady": (100, "higher")})
    assert {n: v.status for n, v in got.items()} == {"rate": "better", "time": "better", "steady": "better"}
    assert got["rate"].change == pytest.approx(150 / 1050)
    assert got["time"].change == pytest.approx(0.6 / 2.1)
    assert not any(v.flagged for v in got.values())


def test_worse_within_the_noise_measured_between_the_runs(baseline):
    # 1000 is 4.8 % under the median 1050; the runs themselves were 100 apart (9.5 %), less
    # than the 10 % floor, so the floor is the noise. The times were 0.2 apart (9.5 %) too.
    got = verdicts(baseline, {"rate": (1000, "higher"), "time": (2.25, "lower"), "steady": (100, "higher")})
    assert got["rate"].status == "worse within noise"
    assert got["rate"].noise == pytest.approx(0.10)
    assert got["time"].status == "worse within noise"
    assert not any(v.flagged for v in got.values())


def test_worse_beyond_noise_is_flagged(baseline):
    got = verdicts(baseline, {"rate": (940, "higher"), "time": (2.4, "lower"), "steady": (100, "higher")})
    assert got["rate"].status == "worse beyond noise" and got["rate"].flagged
    assert got["time"].status == "worse beyond noise" and got["time"].flagged
    assert got["steady"].status == "better"


def test_two_runs_that_agree_still_leave_the_minimum_noise(baseline):
    # "steady" was 100 in both runs: a spread of 0, floored at 10 % of the median.
    assert verdicts(baseline, {"steady": (91, "higher")})["steady"].status == "worse within noise"
    assert verdicts(baseline, {"steady": (89, "higher")})["steady"].status == "worse beyond noise"


def test_the_baselines_direction_wins(baseline):
    # A run that claims lower is better for a rate is still judged as the baseline says.
    assert verdicts(baseline, {"rate": (900, "lower")})["rate"].status == "worse beyond noise"


def test_missing_figure_is_flagged_and_a_new_one_is_not(baseline):
    got = verdicts(baseline, {"rate": (1050, "higher"), "time": (2.1, "lower"), "extra": (5, "higher")})
    assert got["steady"].status == "missing" and got["steady"].flagged
    assert got["steady"].current is None
    assert got["extra"].status == "new" and not got["extra"].flagged


def test_record_needs_two_runs_of_one_bench_on_one_machine():
    with pytest.raises(SystemExit):
        compare.record([run({"rate": (1, "higher")})])
    other = run({"rate": (1, "higher")})
    other["bench"] = "another_bench"
    with pytest.raises(SystemExit):
        compare.record([run({"rate": (1, "higher")}), other])
    with pytest.raises(SystemExit):
        compare.record([run({"rate": (1, "higher")}),
                        run({"rate": (1, "higher")}, machine=dict(MACHINE, cores=8))])


def test_machine_warning():
    base = compare.record([run({"r": (1, "higher")}), run({"r": (1, "higher")})])
    assert compare.machine_warning(base, run({"r": (1, "higher")})) is None
    warning = compare.machine_warning(base, run({"r": (1, "higher")}, machine=dict(MACHINE, cores=8)))
    assert warning and "cores: 8 here, 2 in the baseline" in warning


def test_command_line_exit_status(tmp_path, capsys):
    runs = [tmp_path / "a.json", tmp_path / "b.json"]
    runs[0].write_text(json.dumps(run({"rate": (1000, "higher"), "time": (2.0, "lower")})))
    runs[1].write_text(json.dumps(run({"rate": (1100, "higher"), "time": (2.2, "lower")})))
    base = tmp_path / "baseline" / "fake_bench.json"
    assert compare.main(["record", str(base), *map(str, runs)]) == 0
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(run({"rate": (1060, "higher"), "time": (2.0, "lower")})))
    bad.write_text(json.dumps(run({"rate": (700, "higher"), "time": (2.0, "lower")})))
    assert compare.main(["check", str(good), "--baseline", str(base)]) == 0
    assert compare.main(["check", str(bad), "--baseline", str(base)]) == 1
    assert "flagged: rate" in capsys.readouterr().out
    assert compare.main(["check", str(good), "--baseline", str(tmp_path / "none.json")]) == 2
