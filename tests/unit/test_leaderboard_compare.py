"""`dkbench report suite=A compare=B`: two suites side by side with the difference per cell
(leaderboard/compare.py), from hand-made run folders with known values (no training).

Suite ``smoke`` narrowed to baseline + curriculum on probe × tinycnn, seeds k = 0, 1, 2:

* A (``smoke``): baseline 0.70 + 0.01 k; curriculum 0.72 + 0.01 k + 0.002 k²
* B (``smoke@tuned``): A + 0.05 + 0.001 k for the baseline, A + 0.10 + 0.004 k for curriculum
  → B − A = +0.051 and +0.104; Δ vs baseline grows by 0.05 + 0.003 k → +0.053.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats as sps

from dkbench.cli import main

SEEDS = [0, 1, 2]


def a_value(strategy: str, k: int) -> float:
    return 0.70 + 0.01 * k if strategy == "baseline" else 0.72 + 0.01 * k + 0.002 * k * k


def b_value(strategy: str, k: int) -> float:
    return a_value(strategy, k) + (0.05 + 0.001 * k if strategy == "baseline" else 0.10 + 0.004 * k)


def write(root: Path, suite: str, strategy: str, k: int, auroc: float) -> None:
    run = root / suite / "probe" / f"tinycnn__{strategy}" / f"seed_{k}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test/auroc": auroc, "test/acc": auroc - 0.2}))
    (run / "status.json").write_text(json.dumps({"status": "done"}))
    (run / "DONE").write_text("{}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cmp")
    for strategy in ("baseline", "curriculum"):
        for k in SEEDS:
            write(root / "runs", "smoke", strategy, k, a_value(strategy, k))
            write(root / "runs", "smoke@tuned", strategy, k, b_value(strategy, k))
    for suite in ("smoke", "smoke@tuned"):  # a strategy that cannot serve the probe: no row, one line
        for k in SEEDS:
            run = root / "runs" / suite / "probe" / "tinycnn__multiview" / f"seed_{k}"
            run.mkdir(parents=True)
            (run / "status.json").write_text(json.dumps({"status": "incompatible", "reason": "needs views"}))
    return root


def _args(root: Path, *extra: str) -> list[str]:
    return ["report", "suite=smoke", "suite.strategies=[baseline,curriculum,multiview]", f"paths.runs_dir={root / 'runs'}",
            f"paths.reports_dir={root / 'reports'}", *extra]


def test_compare_writes_the_difference_per_cell(runs, capsys):
    assert main(_args(runs, "compare=smoke@tuned")) == 0
    out = runs / "reports" / "smoke__vs__smoke@tuned"
    table = pd.read_csv(out / "compare.csv").set_index(["strategy", "metric"])
    base, cur = table.loc[("baseline", "test/auroc")], table.loc[("curriculum", "test/auroc")]
    assert base["diff"] == pytest.approx(0.051) and cur["diff"] == pytest.approx(0.104)
    assert cur["n_pairs"] == 3 and cur["mean_a"] == pytest.approx(0.73 + 0.002 * 5 / 3)
    diffs = [b_value("curriculum", k) - a_value("curriculum", k) for k in SEEDS]
    p = sps.ttest_rel([b_value("curriculum", k) for k in SEEDS], [a_value("curriculum", k) for k in SEEDS]).pvalue
    assert cur["p"] == pytest.approx(p) and sum(diffs) / 3 == pytest.approx(0.104)
    assert cur["gain_b_minus_a"] == pytest.approx(0.053) and cur["delta_a"] == pytest.approx(0.02 + 0.002 * 5 / 3)
    assert pd.isna(base["delta_a"])  # the baseline has no Δ vs itself
    md = (out / "compare.md").read_text()
    assert md.rstrip() in capsys.readouterr().out  # printed as written
    assert "| **B · doctors' training pattern** | curriculum | 0.733 → 0.837: +0.104* (n=3) |" in md
    assert "|  | baseline | 0.710 → 0.761: +0.051* (n=3) |" in md and "## test/acc" in md
    assert "left out: strategies multiview." in md and "| multiview" not in md.split("## Every cell")[0]
    page = (out / "compare.html").read_text()
    assert "<script>" in page and "data-delta-text='+0.104" in page and "data-filter='family' value='B'" in page


def test_compare_with_a_partly_shared_grid_says_what_was_left_out(runs):
    from dkbench.leaderboard.compare import shared_grid

    a = {"name": "a", "datasets": ["probe", "x"], "backbones": ["tinycnn"], "strategies": ["baseline", "s"],
         "seeds": SEEDS, "baseline": "baseline"}
    b = {**a, "name": "b", "datasets": ["probe"], "strategies": ["baseline", "s", "t"]}
    grid, left_out = shared_grid(a, b)
    assert grid["datasets"] == ["probe"] and grid["strategies"] == ["baseline", "s"]
    assert left_out == ["datasets: x (only in a)", "strategies: t (only in b)"]


def test_compare_refuses_itself_and_a_missing_suite_in_one_line(runs, capsys):
    assert main(_args(runs, "compare=smoke")) == 2
    err = capsys.readouterr().err.strip()
    assert "is the suite itself" in err and "compare=smoke@tuned" in err and len(err.splitlines()) == 1
    assert main(_args(runs, "compare=smoke@nothing")) == 2
    err = capsys.readouterr().err.strip()
    assert "no run folders of 'smoke@nothing'" in err and "compare_runs=" in err and len(err.splitlines()) == 1


def test_compare_reads_another_runs_folder(runs, tmp_path):
    other = tmp_path / "gpu_runs"
    for strategy in ("baseline", "curriculum"):
        for k in SEEDS:
            write(other, "smoke", strategy, k, a_value(strategy, k) + 0.001)  # same grid, another machine
    assert main(_args(runs, f"compare_runs={other}")) == 0
    table = pd.read_csv(runs / "reports" / "smoke__vs__smoke@gpu_runs" / "compare.csv")
    assert table["diff"].dropna().to_numpy() == pytest.approx([0.001] * 4)
    assert table[table["strategy"] == "multiview"]["diff"].isna().all()
