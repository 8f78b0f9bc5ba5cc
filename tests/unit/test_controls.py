"""Shortcut controls: suite expansion of the ceiling cells, the gap-recovered arithmetic and its
interval, and the report's control rows (hand-made run folders with known values, no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats as sps

from dkbench.leaderboard import build_report, collect_runs
from dkbench.leaderboard.controls import collect_controls, recovered_fraction, recovery_table
from dkbench.runner.suite import expand_suite, validate_suite

SUITE = {
    "name": "ctl", "datasets": ["probe", "other"], "backbones": ["tinycnn"], "strategies": ["baseline", "sA", "sB"],
    "seeds": [0, 1, 2], "baseline": "baseline", "rank_metric": "test/auroc", "metrics": ["test/auroc"],
    "per_dataset": {"probe": ["trainer.max_epochs=8"], "other": ["trainer.max_epochs=20"]},
    "controls": {"probe": {"ceiling": "probe_clean"}},
}
VALID = {"dataset": ["probe", "probe_clean", "other"], "backbone": ["tinycnn"], "strategy": ["baseline", "sA", "sB"]}

# known values per seed k: floor 0.50 + 0.01k, ceiling 0.90 + 0.01k (gap 0.40 on every seed);
# sA = floor + 0.10 + 0.04k → fractions 0.25, 0.35, 0.45; sB = floor (fraction 0)
CEIL = {0: 0.90, 1: 0.91, 2: 0.92}
FLOOR = {0: 0.50, 1: 0.51, 2: 0.52}
SA = {0: 0.60, 1: 0.65, 2: 0.70}


def test_controls_add_only_the_ceiling_cells_with_the_controlled_datasets_budget():
    validate_suite(SUITE, VALID)
    cells = expand_suite(SUITE)
    grid = 2 * 1 * 3 * 3
    assert len(cells) == grid + 3  # baseline on probe_clean, one per seed: not every strategy
    extra = cells[grid:]
    assert {(c.dataset, c.strategy) for c in extra} == {("probe_clean", "baseline")}
    assert {c.seed for c in extra} == {0, 1, 2}
    assert "trainer.max_epochs=8" in extra[0].overrides  # the floor's budget, not probe_clean's own
    assert extra[0].label == "probe_clean/tinycnn__baseline/seed_0"


def test_controls_follow_the_datasets_actually_run_and_are_not_duplicated():
    only_other = {**SUITE, "datasets": ["other"]}
    assert all(c.dataset != "probe_clean" for c in expand_suite(only_other))
    both = {**SUITE, "datasets": ["probe", "probe_clean"]}  # ceiling also in the grid: no second copy
    labels = [c.label for c in expand_suite(both)]
    assert len(labels) == len(set(labels)) == 2 * 3 * 3


def test_invalid_controls_are_listed():
    bad = {**SUITE, "controls": {"probe": {"ceiling": "nosuch", "colour": 1}, "other": None,
                                 "probe_clean": {"ceiling": "probe", "strategy": "nope"}}}
    with pytest.raises(ValueError) as err:
        validate_suite(bad, VALID)
    msg = str(err.value)
    assert "unknown ceiling dataset 'nosuch'" in msg and "unknown key 'colour'" in msg
    assert "controls.other: needs a mapping" in msg and "unknown strategy 'nope'" in msg


def test_recovered_fraction_known_values_and_t_interval():
    res = recovered_fraction(SA, FLOOR, CEIL)
    assert res["n_pairs"] == 3
    assert res["recovered"] == pytest.approx(0.35)
    assert res["recovered_std"] == pytest.approx(0.10)
    half = sps.t.ppf(0.975, 2) * 0.10 / math.sqrt(3)
    assert (res["ci_low"], res["ci_high"]) == pytest.approx((0.35 - half, 0.35 + half))
    assert res["note"] == ""
    assert recovered_fraction(FLOOR, FLOOR, CEIL)["recovered"] == pytest.approx(0.0)
    assert recovered_fraction(CEIL, FLOOR, CEIL)["recovered"] == pytest.approx(1.0)


def test_two_seeds_give_a_fraction_but_no_interval_and_flat_seeds_are_left_out():
    two = recovered_fraction({0: 0.60, 1: 0.65}, FLOOR, CEIL)
    assert two["n_pairs"] == 2 and two["recovered"] == pytest.approx(0.30)
    assert math.isnan(two["ci_low"]) and "n=2<3" in two["note"]
    flat = recovered_fraction(SA, FLOOR, {**CEIL, 1: 0.51})  # ceiling = floor on seed 1
    assert flat["n_pairs"] == 2 and flat["recovered"] == pytest.approx(0.35)
    assert "seed(s) 1" in flat["note"]
    none = recovered_fraction(SA, FLOOR, {})
    assert none["n_pairs"] == 0 and math.isnan(none["recovered"]) and "no seed" in none["note"]


def _write(root: Path, dataset: str, strategy: str, seed: int, value: float) -> None:
    path = root / "ctl" / dataset / f"tinycnn__{strategy}" / f"seed_{seed}"
    path.mkdir(parents=True)
    (path / "status.json").write_text(json.dumps({"status": "done", "config_hash": "h"}))
    (path / "metrics.json").write_text(json.dumps({"test/auroc": value, "val/auroc": value}))
    (path / "DONE").write_text(json.dumps({"config_hash": "h", "status": "done"}))


def _runs(root: Path, with_ceiling: bool = True) -> Path:
    for k in SUITE["seeds"]:
        _write(root, "probe", "baseline", k, FLOOR[k])
        _write(root, "probe", "sA", k, SA[k])
        _write(root, "probe", "sB", k, FLOOR[k])
        for s in SUITE["strategies"]:
            _write(root, "other", s, k, 0.8)
        if with_ceiling:
            _write(root, "probe_clean", "baseline", k, CEIL[k])
    return root


def test_recovery_table_has_control_rows_and_the_report_shows_them(tmp_path):
    runs = _runs(tmp_path / "runs")
    long = collect_runs(runs, SUITE)
    assert long.attrs["out_of_grid"] == 0  # ceiling folders belong to the suite, not strays
    table = recovery_table(long, collect_controls(runs, SUITE), SUITE, "test/auroc")
    assert list(table["role"]) == ["ceiling", "floor", "strategy", "strategy"]
    ceiling = table.iloc[0]
    assert ceiling["on"] == "probe_clean" and ceiling["mean"] == pytest.approx(0.91) and ceiling["n"] == 3
    assert table.iloc[1]["mean"] == pytest.approx(0.51)
    sa = table[table["strategy"] == "sA"].iloc[0]
    assert sa["recovered"] == pytest.approx(0.35) and sa["n_pairs"] == 3
    result = build_report(runs, SUITE, tmp_path / "out")
    md = result["markdown"]
    assert "## Shortcut controls" in md
    assert "ceiling: baseline on probe_clean" in md and "floor: baseline on probe" in md
    assert "0.35 [" in md and "(n=3)" in md
    assert (tmp_path / "out" / "shortcut_recovery.csv").exists()


def test_missing_ceiling_gives_a_note_not_a_crash(tmp_path):
    runs = _runs(tmp_path / "runs", with_ceiling=False)
    result = build_report(runs, SUITE, tmp_path / "out")
    table = result["tables"].recovery
    sa = table[table["strategy"] == "sA"].iloc[0]
    assert math.isnan(sa["recovered"])
    assert "ceiling (baseline on probe_clean) has no done run" in sa["note"]
    assert "no done run" in result["markdown"]


def test_suite_without_controls_has_no_control_section(tmp_path):
    runs = _runs(tmp_path / "runs")
    plain = {k: v for k, v in SUITE.items() if k != "controls"}
    with pytest.warns(UserWarning, match="outside the suite grid"):  # probe_clean folders are strays here
        result = build_report(runs, plain, tmp_path / "out")
    assert result["tables"].recovery.empty and "Shortcut controls" not in result["markdown"]


def test_a_strategy_without_done_runs_says_why(tmp_path):
    runs = _runs(tmp_path / "runs")
    for k in SUITE["seeds"]:  # sB becomes incompatible: its rows carry the status, not a fraction
        path = runs / "ctl" / "probe" / "tinycnn__sB" / f"seed_{k}"
        for name in ("DONE", "metrics.json"):
            (path / name).unlink()
        (path / "status.json").write_text(json.dumps({"status": "incompatible", "reason": "needs masks"}))
    long = collect_runs(runs, SUITE)
    table = recovery_table(long, collect_controls(runs, SUITE), SUITE, "test/auroc")
    sb = table[table["strategy"] == "sB"].iloc[0]
    assert math.isnan(sb["recovered"]) and sb["note"] == "3 incompatible (needs masks)"
