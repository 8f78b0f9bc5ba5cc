"""Leaderboard: hand-made run folders with known values → exact aggregates, tests, ranks, report.

Fixture suite: 6 datasets × 2 backbones × 3 strategies × 3 seeds (108 runs). Per dataset index
``i`` (0..5), backbone offset ``o`` (bb1: 0, bb2: 0.05) and seed ``k``:

* baseline: ``0.70 + 0.02 i + o + 0.01 k``
* sA: baseline + ``0.01 (i + 1) + 0.01 (k + 1)`` → Δ mean ``0.03 + 0.01 i``, Δ sd 0.01
* sB: baseline + ``M[i] + 0.01 (k − 1)`` with ``M = [.03, .02, −.01, .04, −.05, .06]``
* ``test/hd95 = 10 (1 − auroc)`` (lower is better), ``test/acc = auroc − 0.1``.

bb2 holds the anomalies: d1/sA seed 2 failed, d2/sB incompatible (3 seeds), d3/sA seed 1 has no
folder (missing), d4/baseline seed 2 still "running" (incomplete). One folder outside the grid.
"""

from __future__ import annotations

import json
import re
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from dkbench.leaderboard import build_report, collect_runs
from dkbench.leaderboard import stats as lb
from dkbench.leaderboard.collect import status_counts

DATASETS = ["d1", "d2", "d3", "d4", "d5", "d6"]
BACKBONES = ["bb1", "bb2"]
STRATEGIES = ["baseline", "sA", "sB"]
SEEDS = [0, 1, 2]
M = [0.03, 0.02, -0.01, 0.04, -0.05, 0.06]
OFFSET = {"bb1": 0.0, "bb2": 0.05}
SUITE = {"name": "toy", "datasets": DATASETS, "backbones": BACKBONES, "strategies": STRATEGIES, "seeds": SEEDS,
         "baseline": "baseline", "rank_metric": "test/auroc", "metrics": ["test/auroc", "test/acc"]}

FAILED = ("d1", "bb2", "sA", 2)
INCOMPATIBLE = [("d2", "bb2", "sB", k) for k in SEEDS]
MISSING = ("d3", "bb2", "sA", 1)
INCOMPLETE = ("d4", "bb2", "baseline", 2)


def auroc(dataset: str, backbone: str, strategy: str, seed: int) -> float:
    i = DATASETS.index(dataset)
    base = 0.70 + 0.02 * i + OFFSET[backbone] + 0.01 * seed
    if strategy == "sA":
        return base + 0.01 * (i + 1) + 0.01 * (seed + 1)
    if strategy == "sB":
        return base + M[i] + 0.01 * (seed - 1)
    return base


def write_run(root: Path, suite: str, dataset: str, backbone: str, strategy: str, seed: int, status: str = "done",
              **details) -> None:
    path = root / suite / dataset / f"{backbone}__{strategy}" / f"seed_{seed}"
    path.mkdir(parents=True)
    (path / "status.json").write_text(json.dumps({"status": status, "config_hash": "abc123", **details}))
    if status != "done":
        return
    a = auroc(dataset, backbone, strategy, seed)
    metrics = {"test/auroc": a, "test/acc": a - 0.1, "test/hd95": 10 * (1 - a), "test/loss": 1 - a,
               "val/auroc": a + 0.001, "test/notes": "not a number", "selection": {"monitor": "val/auroc"},
               "wall_time_s": 1.5, "train_images_per_s": 100.0, "epochs_trained": 3}
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "metadata.json").write_text(json.dumps({
        "dataset": dataset, "backbone": backbone, "strategy": {"strategy": strategy}, "seed": seed,
        "task": "binary-class", "config_hash": "abc123"}))
    (path / "predictions.csv").write_text("index,target,prob_0,prob_1\n0,1,0.2,0.8\n")
    (path / "config.yaml").write_text("seed: 0\n")
    (path / "DONE").write_text(json.dumps({"config_hash": "abc123", "status": "done"}))


def make_runs(root: Path) -> Path:
    for d in DATASETS:
        for b in BACKBONES:
            for s in STRATEGIES:
                for k in SEEDS:
                    key = (d, b, s, k)
                    if key == MISSING:
                        continue
                    if key == FAILED:
                        write_run(root, "toy", *key, status="failed", error="RuntimeError: CUDA out of memory")
                    elif key in INCOMPATIBLE:
                        write_run(root, "toy", *key, status="incompatible", reason="sB needs masks")
                    elif key == INCOMPLETE:
                        write_run(root, "toy", *key, status="running")
                    else:
                        write_run(root, "toy", *key)
    write_run(root, "toy", "d1", "bb1", "sA", 7, status="running")  # seed 7: outside the grid
    return root


def done_values(dataset, backbone, strategy) -> dict[int, float]:
    bad = {FAILED, MISSING, INCOMPLETE, *INCOMPATIBLE}
    return {k: auroc(dataset, backbone, strategy, k) for k in SEEDS if (dataset, backbone, strategy, k) not in bad}


def t_p_df(t: float, df: int) -> float:
    """Two-sided Student-t p by hand (closed forms for df 1 and 2)."""
    t = abs(t)
    return 1 - 2 / math.pi * math.atan(t) if df == 1 else 1 - t / math.sqrt(t * t + 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return make_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def long(runs) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return collect_runs(runs, SUITE)


@pytest.fixture(scope="module")
def agg(long) -> pd.DataFrame:
    return lb.aggregate(long)


@pytest.fixture(scope="module")
def deltas(long) -> pd.DataFrame:
    return lb.paired_deltas(long, "baseline", "test/auroc")


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_report(runs, SUITE, tmp_path_factory.mktemp("report"))


# ------------------------------------------------------------------------------------------ collect


def test_collect_counts_and_reasons(runs, long):
    assert list(long.columns) == ["suite", "dataset", "backbone", "strategy", "seed", "metric", "value", "status",
                                  "reason"]
    assert status_counts(long).to_dict() == {"done": 102, "failed": 1, "incompatible": 3, "incomplete": 1,
                                             "missing": 1}
    cell = long.set_index(["dataset", "backbone", "strategy", "seed"])
    assert cell.loc[FAILED, "reason"] == "RuntimeError: CUDA out of memory"
    assert cell.loc[MISSING, "reason"] == "not run" and cell.loc[MISSING, "status"] == "missing"
    assert cell.loc[INCOMPATIBLE[0], "reason"] == "sB needs masks"
    assert cell.loc[INCOMPLETE, "status"] == "incomplete"
    for key in (FAILED, MISSING, INCOMPLETE, *INCOMPATIBLE):  # one row, metric NaN
        assert np.isnan(cell.loc[key, "value"]) and pd.isna(cell.loc[key, "metric"])
    done = long[long["status"] == "done"]
    assert set(done["metric"]) == {"test/auroc", "test/acc", "test/hd95", "test/loss", "val/auroc"}
    assert len(done) == 102 * 5
    assert long.attrs["out_of_grid"] == 1
    with pytest.warns(UserWarning, match="1 run folder"):
        collect_runs(runs, SUITE)


# ------------------------------------------------------------------------------------------ stats


def test_aggregate_mean_std_n(agg):
    a = agg.set_index(["dataset", "backbone", "strategy", "metric"])
    for d in DATASETS:
        for b in BACKBONES:
            for s in STRATEGIES:
                vals = list(done_values(d, b, s).values())
                row = a.loc[(d, b, s, "test/auroc")]
                assert row["n"] == len(vals)
                if vals:
                    assert row["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
                    assert row["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    row = a.loc[("d1", "bb1", "sA", "test/auroc")]  # 0.72, 0.74, 0.76 by hand
    assert (row["mean"], row["std"], row["n"]) == (pytest.approx(0.74), pytest.approx(0.02), 3)
    failed = a.loc[("d1", "bb2", "sA", "test/auroc")]
    assert failed["n"] == 2 and failed["n_failed"] == 1 and "CUDA" in failed["reasons"]
    inc = a.loc[("d2", "bb2", "sB", "test/auroc")]
    assert inc["n"] == 0 and np.isnan(inc["mean"]) and inc["n_incompatible"] == 3


def test_holm_against_hand_computation():
    np.testing.assert_allclose(lb.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(lb.holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])  # NaN not counted
    np.testing.assert_allclose(lb.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    assert lb.holm([]).size == 0


def test_paired_deltas_and_t_test(deltas):
    d = deltas.set_index(["dataset", "backbone", "strategy"])
    for ds in DATASETS:
        for b in BACKBONES:
            for s in ("sA", "sB"):
                sv, bv = done_values(ds, b, s), done_values(ds, b, "baseline")
                seeds = sorted(set(sv) & set(bv))
                row = d.loc[(ds, b, s)]
                assert row["n_pairs"] == len(seeds)
                if not seeds:
                    assert np.isnan(row["delta"]) and np.isnan(row["p"]) and "no paired seeds" in row["note"]
                    continue
                x, y = np.array([sv[k] for k in seeds]), np.array([bv[k] for k in seeds])
                assert row["delta"] == pytest.approx((x - y).mean(), abs=1e-12)
                if len(seeds) < lb.MIN_SEEDS:  # no test, no mark
                    assert np.isnan(row["p"]) and not row["significant"] and f"n={len(seeds)}<3" in row["note"]
                    continue
                assert row["p"] == pytest.approx(sps.ttest_rel(x, y).pvalue, rel=1e-9)
    # by hand: d1/bb1/sA Δ = [.02, .03, .04] → t = 0.03 / (0.01/√3) = 3√3, df 2
    row = d.loc[("d1", "bb1", "sA")]
    assert row["delta"] == pytest.approx(0.03) and row["t"] == pytest.approx(3 * math.sqrt(3))
    assert row["p"] == pytest.approx(t_p_df(3 * math.sqrt(3), 2), rel=1e-9)  # 0.0351
    # d1/bb2/sA: seed 2 failed → Δ = [.02, .03]: a t-test would have 1 df (t = 5): not run
    assert np.isnan(d.loc[("d1", "bb2", "sA"), "p"]) and d.loc[("d1", "bb2", "sA"), "n_pairs"] == 2
    assert d.loc[("d2", "bb2", "sB"), "note"].startswith("no paired seeds (sB: 3 incompatible")
    # Holm within d1/bb1: both p = 0.0351 → both 0.0702 (not significant)
    h = t_p_df(3 * math.sqrt(3), 2)
    assert d.loc[("d1", "bb1", "sA"), "p_holm"] == pytest.approx(2 * h)
    assert d.loc[("d1", "bb1", "sB"), "p_holm"] == pytest.approx(2 * h)
    assert not d.loc[("d1", "bb1", "sA"), "significant"]
    # d6/bb1: sA t = 0.08√3/0.01, sB t = 0.06√3/0.01 → Holm [2 p_A, max(2 p_A, p_B)], both < 0.05
    pa, pb = t_p_df(8 * math.sqrt(3), 2), t_p_df(6 * math.sqrt(3), 2)
    assert d.loc[("d6", "bb1", "sA"), "p_holm"] == pytest.approx(2 * pa)
    assert d.loc[("d6", "bb1", "sB"), "p_holm"] == pytest.approx(max(2 * pa, pb))
    assert d.loc[("d6", "bb1", "sA"), "significant"] and d.loc[("d6", "bb1", "sB"), "significant"]


def test_zero_variance_and_single_pair_give_nan_p():
    rows = [dict(suite="s", dataset="d", backbone="b", strategy=s, seed=k, metric="test/auroc", value=v,
                 status="done", reason="") for s, vals in {"baseline": [0.5, 0.6], "x": [0.6, 0.7]}.items()
            for k, v in enumerate(vals)]
    out = lb.paired_deltas(pd.DataFrame(rows), "baseline", "test/auroc")
    assert np.isnan(out.loc[0, "p"]) and "n=2<3" in out.loc[0, "note"]
    three = rows + [dict(rows[0], seed=2, value=0.7), dict(rows[2], seed=2, value=0.8)]
    out3 = lb.paired_deltas(pd.DataFrame(three), "baseline", "test/auroc")
    assert np.isnan(out3.loc[0, "p"]) and "zero variance" in out3.loc[0, "note"]
    assert out.loc[0, "delta"] == pytest.approx(0.1)
    one = lb.paired_deltas(pd.DataFrame(rows[:1] + rows[2:3]), "baseline", "test/auroc")
    assert np.isnan(one.loc[0, "p"]) and "n=1<3" in one.loc[0, "note"]


def test_cross_dataset_wilcoxon_and_holm(deltas):
    c = lb.cross_dataset_tests(deltas).set_index(["backbone", "strategy"])
    # bb1/sA: 6 positive per-dataset means → exact p = 2/2^6; sB: |Δ| ranks 3,2,1,4,5,6 with 1 and 5
    # negative → W = 6, 14 of 64 sign patterns have W ≤ 6 → p = 28/64
    assert c.loc[("bb1", "sA"), "p"] == pytest.approx(2 / 64)
    assert c.loc[("bb1", "sB"), "p"] == pytest.approx(28 / 64)
    assert c.loc[("bb1", "sA"), "p_holm"] == pytest.approx(2 * 2 / 64)
    assert c.loc[("bb1", "sB"), "p_holm"] == pytest.approx(28 / 64)
    assert not c["significant"].any()
    assert c.loc[("bb1", "sB"), "n_better"] == 4 and c.loc[("bb1", "sA"), "n_datasets"] == 6
    # bb2/sB: d2 incompatible → 5 datasets → note that p<0.05 is unreachable
    assert c.loc[("bb2", "sB"), "n_datasets"] == 5 and "cannot reach p<0.05" in c.loc[("bb2", "sB"), "note"]
    per = deltas[(deltas["backbone"] == "bb2") & (deltas["strategy"] == "sB")]["delta"].dropna()
    assert c.loc[("bb2", "sB"), "p"] == pytest.approx(sps.wilcoxon(per.to_numpy()).pvalue)
    one = lb.cross_dataset_tests(deltas[deltas["dataset"] == "d1"])
    assert one["p"].isna().all() and one["note"].str.contains("needs ≥ 2").all()


def test_lower_is_better_flips_direction(long):
    assert not lb.higher_is_better("test/hd95") and not lb.higher_is_better("test/loss")
    assert lb.higher_is_better("test/auroc") and lb.higher_is_better("test/dice")
    up = lb.paired_deltas(long, "baseline", "test/auroc").set_index(["dataset", "backbone", "strategy"])
    down = lb.paired_deltas(long, "baseline", "test/hd95").set_index(["dataset", "backbone", "strategy"])
    valid = up["delta"].notna()
    np.testing.assert_allclose(down.loc[valid, "delta"], -10 * up.loc[valid, "delta"], atol=1e-9)
    np.testing.assert_allclose(down.loc[valid, "gain"], 10 * up.loc[valid, "gain"], atol=1e-9)
    assert (down.loc[("d1", "bb1", "sA"), "delta"] < 0) and (down.loc[("d1", "bb1", "sA"), "gain"] > 0)
    agg = lb.aggregate(long)
    r_up, r_down = lb.ranks(agg, "test/auroc"), lb.ranks(agg, "test/hd95")
    np.testing.assert_array_equal(r_up["rank"].to_numpy(), r_down["rank"].to_numpy())


def test_ranks_with_ties_and_average(agg):
    r = lb.ranks(agg, "test/auroc").set_index(["dataset", "backbone", "strategy"])["rank"]
    expected_bb1 = {"d1": (3, 1.5, 1.5), "d2": (3, 1, 2), "d3": (2, 1, 3), "d4": (3, 1, 2), "d5": (2, 1, 3),
                    "d6": (3, 1, 2)}
    expected_bb2 = {"d1": (3, 2, 1), "d2": (2, 1, np.nan), "d3": (2, 1, 3), "d4": (3, 1, 2), "d5": (2, 1, 3),
                    "d6": (3, 1, 2)}
    for b, expected in (("bb1", expected_bb1), ("bb2", expected_bb2)):
        for d, ranks_ in expected.items():
            np.testing.assert_array_equal([r[(d, b, s)] for s in STRATEGIES], ranks_)
    avg = lb.average_ranks(lb.ranks(agg, "test/auroc")).set_index(["backbone", "strategy"])
    assert avg.loc[("bb1", "sA"), "avg_rank"] == pytest.approx(6.5 / 6)
    assert avg.loc[("bb1", "sB"), "avg_rank"] == pytest.approx(13.5 / 6)
    assert avg.loc[("bb1", "baseline"), "avg_rank"] == pytest.approx(16 / 6)
    # bb2: d2 block incomplete → averaged over 5 blocks
    assert avg.loc[("bb2", "sA"), "avg_rank"] == pytest.approx(1.2)
    assert avg.loc[("bb2", "sB"), "avg_rank"] == pytest.approx(2.2)
    assert avg.loc[("bb2", "baseline"), "avg_rank"] == pytest.approx(2.6)
    assert avg.loc[("bb2", "sA"), "n_blocks"] == 5
    assert avg.loc[("(all)", "baseline"), "avg_rank"] == pytest.approx(29 / 11)
    assert avg.attrs["dropped_blocks"] == 1


def test_critical_difference(agg, tmp_path):
    res, msg = lb.critical_difference(agg, "test/auroc", tmp_path / "cd.png")
    assert res is not None and res.path.exists() and res.path.stat().st_size > 1000
    assert res.n_blocks == 11 and res.dropped_blocks == 1 and res.n_datasets == 6
    assert "dropped 1 incomplete block" in msg
    # autorank's mean ranks equal ours over the same complete blocks
    assert res.meanranks["sA"] == pytest.approx(12.5 / 11)
    assert res.meanranks["baseline"] == pytest.approx(29 / 11)
    # 4 datasets → refused with a reason
    four = agg[agg["dataset"].isin(DATASETS[:4])]
    none, reason = lb.critical_difference(four, "test/auroc", tmp_path / "cd4.png")
    assert none is None and "4 complete dataset(s) < 5" in reason and not (tmp_path / "cd4.png").exists()
    # 5 datasets on bb2, but d2 is incomplete → dropped before autorank → only 4 left
    five = agg[agg["dataset"].isin(DATASETS[:5]) & (agg["backbone"] == "bb2")]
    none, reason = lb.critical_difference(five, "test/auroc", tmp_path / "cd5.png")
    assert none is None and "dropped 1 incomplete block" in reason and "4 complete dataset(s)" in reason


# ------------------------------------------------------------------------------------------ report


def test_report_files_and_content(report):
    paths = report["paths"]
    for name in ("leaderboard.md", "leaderboard.html", "leaderboard.csv", "leaderboard.tex", "runs_long.csv",
                 "deltas.csv", "heatmap_delta.png", "bars.png", "cd_diagram.png"):
        assert paths[name].exists() and paths[name].stat().st_size > 0, name
    md = report["markdown"]
    assert md == paths["leaderboard.md"].read_text()
    for word in ("missing", "failed", "incompatible", "incomplete", "cannot reach p < 0.05"):
        assert word in md
    assert report["counts"] == {"done": 102, "failed": 1, "incompatible": 3, "incomplete": 1, "missing": 1}
    html = paths["leaderboard.html"].read_text()
    assert html.count("data:image/png;base64,") == 3  # cd + heatmap + bars, all embedded
    assert 'src="http' not in html and "<link" not in html
    tex = paths["leaderboard.tex"].read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and r"$\Delta$" in tex
    assert len(pd.read_csv(paths["runs_long.csv"])) == 102 * 5 + 6
    lb_csv = pd.read_csv(paths["leaderboard.csv"])
    assert {"mean", "std", "n", "n_failed", "n_missing"} <= set(lb_csv.columns)


def test_report_without_cd(runs, tmp_path):
    suite = {**SUITE, "datasets": DATASETS[:4]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = build_report(runs, suite, tmp_path)
    assert "cd_diagram.png" not in out["paths"] and not (tmp_path / "cd_diagram.png").exists()
    md = out["markdown"]
    # one sentence says why there are no ranks, CD diagram or Wilcoxon tests, once; no table of them
    assert md.count("this report states no ranking or test across datasets") == 1
    assert "not computed: 4 complete dataset(s) < 5" not in md and "4 complete dataset(s) < 5 needed" in md
    assert "fewer than 6 datasets" in md and "### Average ranks" not in md and "### Wilcoxon" not in md
    assert "cannot reach p<0.05" not in md  # the per-row note of the Wilcoxon table is gone with it
    assert r"\label{tab:ranks}" not in (tmp_path / "leaderboard.tex").read_text()


def test_read_cell_edge_cases(tmp_path):
    from dkbench.leaderboard.collect import read_cell

    write_run(tmp_path, "s", "d1", "bb1", "sA", 0)
    done = tmp_path / "s" / "d1" / "bb1__sA" / "seed_0"
    (done / "status.json").write_text(json.dumps({"status": "running"}))  # DONE is written before status.json
    status, _, metrics = read_cell(done)
    assert status == "done" and set(metrics) == {"test/auroc", "test/acc", "test/hd95", "test/loss", "val/auroc"}
    (done / "DONE").unlink()
    (done / "status.json").write_text(json.dumps({"status": "done"}))
    assert read_cell(done)[0] == "incomplete"
    (done / "status.json").unlink()
    assert read_cell(done)[:2] == ("incomplete", "interrupted (no status.json)")
    assert read_cell(tmp_path / "nowhere")[:2] == ("missing", "not run")


def test_heatmap_variants(deltas, long, tmp_path):
    from dkbench.leaderboard import plots

    assert plots.heatmap_delta(deltas, tmp_path / "avg.png", average_backbones=True).stat().st_size > 1000
    hd = lb.paired_deltas(long, "baseline", "test/hd95")
    assert plots.heatmap_delta(hd, tmp_path / "hd95.png").stat().st_size > 1000


def test_module_entry_point(runs, tmp_path, capsys):
    from dkbench.leaderboard.__main__ import main

    suite_file = tmp_path / "suite.json"
    suite_file.write_text(json.dumps({**SUITE, "datasets": DATASETS[:2], "backbones": ["bb1"]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main([str(runs), str(suite_file), str(tmp_path / "out")])
    assert "# Leaderboard: toy" in capsys.readouterr().out and (tmp_path / "out" / "leaderboard.md").exists()


def test_read_cell_takes_val_scores_of_the_selected_epoch_from_the_csv_log(tmp_path):
    import json

    from dkbench.leaderboard.collect import read_cell

    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(
        "epoch,step,val/acc,val/auroc,train/loss\n0,5,0.6,0.70,\n0,5,,,0.9\n1,10,0.9,0.95,\n1,10,,,0.5\n2,15,0.8,0.90,\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"test/acc": 0.5, "selection": {"best_epoch": 1}}))
    (tmp_path / "DONE").write_text("{}")
    status, _, values = read_cell(tmp_path)
    assert status == "done" and values == {"test/acc": 0.5, "val/acc": 0.9, "val/auroc": 0.95}


# ------------------------------------------------------------------------------------------ evidence rules
# (issue 10: no significance mark from fewer than 3 paired seeds; Δ and p for every listed metric;
# bars from 0 with CIs; post-processing stated against the baseline and its own raw output)


def write_values(root: Path, suite: str, dataset: str, strategy: str, seed: int, metrics: dict) -> None:
    """A done run folder holding exactly ``metrics`` (backbone ``net``)."""
    path = root / suite / dataset / f"net__{strategy}" / f"seed_{seed}"
    path.mkdir(parents=True)
    (path / "status.json").write_text(json.dumps({"status": "done", "config_hash": "h"}))
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "metadata.json").write_text(json.dumps({"dataset": dataset, "backbone": "net", "seed": seed,
                                                    "strategy": {"strategy": strategy}, "config_hash": "h"}))
    (path / "DONE").write_text(json.dumps({"config_hash": "h", "status": "done"}))


def seg_suite(root: Path, n_seeds: int, name: str) -> dict:
    """Baseline vs a post-processing strategy with a large, consistent effect on Dice and HD95:
    raw Dice = baseline + 0.02 + 0.001 k, post-processed = raw + 0.10 + 0.002 k; raw HD95 = baseline + 0.5,
    post-processed HD95 = raw − 3 + 0.1 k (seed k)."""
    seeds = list(range(n_seeds))
    for k in seeds:
        base = 0.60 + 0.01 * k + 0.003 * k * k
        write_values(root, name, "seg", "baseline", k, {"test/dice": base, "test/hd95": 20.0 - k})
        raw = base + 0.02 + 0.001 * k
        write_values(root, name, "seg", "post", k, {
            "test/dice": raw + 0.10 + 0.002 * k, "test/dice_raw": raw,
            "test/hd95": 17.5 - k + 0.1 * k, "test/hd95_raw": 20.5 - k})
    return {"name": name, "datasets": ["seg"], "backbones": ["net"], "strategies": ["baseline", "post"],
            "seeds": seeds, "baseline": "baseline", "rank_metric": "test/dice", "metrics": ["test/dice", "test/hd95"]}


def _report(root: Path, suite: dict, out: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_report(root, suite, out)


def test_two_seeds_give_no_mark_and_p_reads_n_lt_3(tmp_path):
    suite = seg_suite(tmp_path / "runs", 2, "two")
    result = _report(tmp_path / "runs", suite, tmp_path / "out")
    d = result["tables"].deltas.set_index("metric")
    assert (d["n_pairs"] == 2).all() and d["p"].isna().all() and not d["significant"].any()
    md = result["markdown"]
    board = md.split("## Leaderboard (test/dice)")[1].split("##")[0]
    assert re.search(r"\+0\.12\d \(n=2\)", board) and "n<3" in board
    assert not re.search(r"[+-]\d\.\d{3}\*", md), "a significance star from 2 seeds"
    assert "significant" not in board.lower()
    # the post-processing section gives no mark either
    raw = result["tables"].raw_effects
    assert len(raw) == 2 and not raw["significant_vs_raw"].any() and not raw["significant_vs_baseline"].any()
    assert (raw["note_vs_raw"] == "n=2<3 paired seeds: no test").all()


def test_three_seeds_with_a_large_consistent_effect_give_a_mark(tmp_path):
    suite = seg_suite(tmp_path / "runs", 3, "three")
    result = _report(tmp_path / "runs", suite, tmp_path / "out")
    d = result["tables"].deltas.set_index("metric")
    assert (d["n_pairs"] == 3).all() and d["significant"].all()
    board = result["markdown"].split("## Leaderboard (test/dice)")[1].split("\n## ")[0]
    assert re.search(r"\+0\.12\d\* \(n=3\)", board)
    from dkbench.leaderboard.render import delta_text

    row = dict(d.loc["test/dice"])
    assert delta_text({**row, "n_pairs": 2}) == "+0.123 (n=2)"  # the renderer itself refuses n < 3
    assert delta_text(row) == "+0.123* (n=3)"


def test_every_listed_metric_gets_delta_and_p_in_markdown(tmp_path):
    suite = seg_suite(tmp_path / "runs", 3, "all")
    md = _report(tmp_path / "runs", suite, tmp_path / "out")["markdown"]
    hd = md.split("### Leaderboard (test/hd95)")[1].split("\n## ")[0]
    assert "net Δ" in hd and "net p" in hd
    assert "-2.400* (n=3)" in hd  # post − baseline HD95 = −2.5 + 0.1 k, k = 0, 1, 2
    per_dataset = md.split("## Δ vs baseline per dataset")[1].split("\n## ")[0]
    assert "### test/dice" in per_dataset and "### test/hd95" in per_dataset
    assert "test/dice_raw" not in hd


def test_post_processing_is_stated_against_baseline_and_own_raw_output(tmp_path):
    suite = seg_suite(tmp_path / "runs", 3, "raw")
    result = _report(tmp_path / "runs", suite, tmp_path / "out")
    r = result["tables"].raw_effects.set_index("metric")
    dice, hd = r.loc["test/dice"], r.loc["test/hd95"]
    # by construction: raw − baseline = 0.02 + 0.001 k, post − raw = 0.10 + 0.002 k (k = 0, 1, 2)
    assert dice["delta_raw_vs_baseline"] == pytest.approx(0.021)
    assert dice["delta_vs_raw"] == pytest.approx(0.102)
    assert dice["delta_vs_baseline"] == pytest.approx(0.123)
    assert dice["delta_vs_baseline"] == pytest.approx(dice["delta_raw_vs_baseline"] + dice["delta_vs_raw"])
    assert dice["significant_vs_raw"] and dice["significant_vs_baseline"] and dice["n_raw"] == 3
    assert hd["delta_vs_raw"] == pytest.approx(-2.9) and not hd["higher_is_better"]
    assert hd["delta_raw_vs_baseline"] == pytest.approx(0.5)
    md = result["markdown"]
    section = md.split("## Post-processing: against the baseline and against the run's own raw output")[1]
    section = section.split("\n## ")[0]
    for column in ("Δ post − raw", "Δ raw − baseline", "Δ post − baseline", "p (vs raw)"):
        assert column in section
    assert "+0.102* (n=3)" in section and "+0.021 (n=3)" in section
    assert (tmp_path / "out" / "raw_effects.csv").exists()
    # suites without raw scores render no such section
    assert "Post-processing" not in _report(*_toy_args(tmp_path))["markdown"]


def _toy_args(tmp_path):
    root = tmp_path / "toy_runs"
    make_runs(root)
    return root, {**SUITE, "datasets": DATASETS[:2]}, tmp_path / "toy_out"


def test_bars_start_at_zero_and_draw_95_ci(agg):
    from dkbench.leaderboard import plots

    fig = plots.bars_figure(agg, "test/auroc")
    try:
        for ax in fig.axes:
            if ax.get_title() in BACKBONES:
                assert ax.get_ylim()[0] == 0.0
                heights = [p.get_height() for p in ax.patches]
                assert max(heights) > 0.7 and all(p.get_y() == 0 for p in ax.patches)
        assert "95% t-CI" in fig._suptitle.get_text()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    # d1/bb1/sA: values 0.72, 0.74, 0.76 → std 0.02, n 3 → half width t(0.975, 2) · 0.02 / √3
    half = plots.ci95_half_width(0.02, 3)
    assert half == pytest.approx(sps.t.ppf(0.975, 2) * 0.02 / math.sqrt(3))
    assert np.isnan(plots.ci95_half_width(np.nan, 1))


def test_per_image_mark_needs_three_seeds(tmp_path):
    from dkbench.leaderboard.per_image import per_image_deltas

    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.8, 30)
    rows = []
    for n_seeds, name in ((2, "two"), (3, "three")):
        for seed in range(n_seeds):
            for strategy, dice in (("baseline", base), ("prior", base + 0.05)):
                run = tmp_path / name / "toy" / f"unet__{strategy}" / f"seed_{seed}"
                run.mkdir(parents=True)
                pd.DataFrame({"id": range(30), "dice": dice}).to_csv(run / "predictions.csv", index=False)
                rows.append({"suite": name, "dataset": "toy", "backbone": "unet", "strategy": strategy,
                             "seed": seed, "status": "done"})
    long = pd.DataFrame(rows)
    two = per_image_deltas(tmp_path, long[long["suite"] == "two"], "baseline", "test/dice")
    three = per_image_deltas(tmp_path, long[long["suite"] == "three"], "baseline", "test/dice")
    assert two.loc[0, "p_holm"] < 1e-5 and not two.loc[0, "significant"]  # p shown, no mark
    assert three.loc[0, "significant"]


def test_readme_shows_no_mark_from_fewer_than_three_seeds():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for line in readme.splitlines():
        if not line.startswith("|"):
            continue
        seeds = [int(n) for n in re.findall(r"\((?:n=)?(\d+)\)", line)]  # "(3)" tables, "(n=3)" matrices
        starred = re.search(r"\d\.\d+\*(?!\*)", line)  # "+0.05*" and "+0.05 ± 0.01*", not bold "**0.8**"
        if starred and seeds:
            assert min(seeds) >= lb.MIN_SEEDS, f"README row marks a result from {min(seeds)} seeds: {line}"


# ------------------------------------------------------------------------------------------ issue 19
# (statements only where enough datasets back them; the protocol in the header; vector figures)


def test_wilcoxon_needs_enough_datasets_to_reach_alpha():
    assert lb.wilcoxon_min_datasets(0.05) == 6  # 2/2^5 = 0.0625, 2/2^6 = 0.031
    assert lb.wilcoxon_min_datasets(0.01) == 8  # 2/2^7 = 0.0156, 2/2^8 = 0.0078
    assert 2 / 2 ** (lb.wilcoxon_min_datasets(0.05) - 1) >= 0.05


def test_six_datasets_show_ranks_cd_and_only_the_wilcoxon_rows_that_can_reach_alpha(report):
    md = report["markdown"]
    section = md.split("## Across datasets")[1].split("\n## ")[0]
    assert "### Average ranks" in section and "### Critical difference" in section and "### Wilcoxon" in section
    wilcoxon = section.split("### Wilcoxon")[1]
    rows = [line for line in wilcoxon.splitlines() if line.startswith("| ") and "backbone" not in line]
    # bb2/sB has a Δ on 5 datasets (d2 incompatible, so 2 metrics × 1 row) → left out, said once
    assert len(rows) == 2 * 2 * 2 - 2 and not any("bb2" in r and "sB" in r for r in rows)
    assert section.count("left out of the Wilcoxon table") == 1 and "cannot reach p<" not in section
    assert len(pd.read_csv(report["paths"]["cross_dataset.csv"])) == 8  # the CSV keeps every row
    tex = report["paths"]["leaderboard.tex"].read_text()
    assert r"\label{tab:ranks}" in tex and r"\label{tab:wilcoxon}" in tex


def test_header_states_the_protocol_the_runs_recorded(runs, report):
    from dkbench.leaderboard.protocol import read_protocol

    md = report["markdown"]
    header = md.split("## At a glance")[0]
    for word in ("**epochs**", "**model selection**", "**seeds**", "**tuning budget**", "**compute**"):
        assert word in header
    assert "No strategy here needs expert knowledge at test time." in header  # sA, sB declare none
    p = read_protocol(runs, SUITE, report["tables"].long)
    assert p.selection.startswith("the weights of the epoch with the best val/auroc (max) on the validation split")
    assert p.epochs == "max_epochs not recorded; trained 3"  # the fixture's config.yaml has no trainer
    assert p.seeds == "3 planned per cell (0, 1, 2); done per cell: 2–3"
    assert p.compute.startswith("102 done runs, 0.04 h") and p.budget.startswith("none: every strategy")
    assert p.code == "not recorded" and "**code**" in header  # the fixture's metadata.json has no git_sha


def test_protocol_states_per_dataset_epochs_disagreement_and_the_tuning_budget(tmp_path):
    from dkbench.leaderboard.protocol import read_protocol

    suite = {**SUITE, "name": "p@tuned", "datasets": ["d1", "d2"], "backbones": ["bb1"]}
    for d in suite["datasets"]:
        for s in STRATEGIES:
            for k in SEEDS:
                write_run(tmp_path, "p@tuned", d, "bb1", s, k)
                epochs = 8 if d == "d1" else (20 if (s, k) != ("sB", 2) else 10)
                run = tmp_path / "p@tuned" / d / f"bb1__{s}" / f"seed_{k}"
                (run / "config.yaml").write_text(f"trainer:\n  max_epochs: {epochs}\n")
                meta = json.loads((run / "metadata.json").read_text())  # a resumed sweep: d2 at a later commit
                sha = "a" * 40 if d == "d1" else "b" * 40 + ("-dirty" if (s, k) == ("sB", 2) else "")
                (run / "metadata.json").write_text(json.dumps({**meta, "git_sha": sha}))
            (tmp_path / "p@tuned" / d / f"bb1__{s}" / "chosen.json").write_text(json.dumps({
                "budget": {"trials": 8, "sampler": "random", "trial_seed": 1000},
                "rule": "best val/auroc (max) of 8 trials at seed 1000"}))
    long = collect_runs(tmp_path, suite)
    p = read_protocol(tmp_path, suite, long)
    assert p.epochs.startswith("max_epochs d1 8, d2 20 (8 runs); 10 (1 runs) — runs DISAGREE")
    assert p.budget.startswith("8 random-search trials per dataset × backbone × strategy at seed 1000 (the same in "
                               "every cell, baseline included)")
    assert p.code.startswith("git aaaaaaa (9 runs); bbbbbbb (8 runs); bbbbbbb-dirty (1 runs) — runs DISAGREE")
    assert "never recomputed" in p.code and "uncommitted" in p.code
    assert read_protocol(tmp_path, {**suite, "datasets": ["d1"]}, long[long["dataset"] == "d1"]).code == "git aaaaaaa"


def test_heatmap_and_cd_diagram_are_also_vector_figures(report):
    paths = report["paths"]
    for stem in ("heatmap_delta", "cd_diagram"):
        svg, pdf = paths[f"{stem}.svg"], paths[f"{stem}.pdf"]
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000
        text = svg.read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text
        assert "<text" in text  # svg.fonttype none: labels stay text, not paths
    assert "baseline" in paths["cd_diagram.svg"].read_text()


def test_html_page_carries_filters_toggle_links_and_its_own_script(runs, report):
    import os

    html_path = report["paths"]["leaderboard.html"]
    page = html_path.read_text()
    assert "<script>" in page and "src=" not in page.split("<script>")[1].split("</script>")[0]
    assert "data-filter='dataset' value='d1'" in page and "data-filter='metric' value='test/acc'" in page
    assert "name='mode' value='abs'" in page
    assert "data-delta-text='+0.030 ± 0.010 (n=3)'" in page and "data-abs-text='0.740 ± 0.020 (n=3)'" in page
    folder = os.path.relpath(runs / "toy" / "d1" / "bb1__sA", html_path.parent)
    assert f"class='runs' href='{folder}/'" in page and folder.startswith("..")  # relative: survives a copy
    assert "class='cfg' href='" in page and "seed_0/config.yaml'" in page
    assert page.count("<section class='matrix-block'") == 2  # test/auroc and test/acc


def test_publish_copies_the_leaderboard_with_every_figure_link_resolving(report, tmp_path):
    from dkbench.errors import RunConfigError
    from dkbench.leaderboard.publish import publish_report

    report_dir = report["paths"]["leaderboard.md"].parent
    docs = tmp_path / "docs"
    written = publish_report(report_dir, docs, "mine@tuned")
    md = docs / "mine_tuned_leaderboard.md"
    assert written[0] == md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md.read_text())
    assert sorted(links) == ["mine_tuned_bars.png", "mine_tuned_cd_diagram.png", "mine_tuned_heatmap_delta.png"]
    for link in links:  # every link resolves, to a copy of the report's own figure
        original = report_dir / link.removeprefix("mine_tuned_")
        assert (docs / link).read_bytes() == original.read_bytes()
        assert (docs / link).stat().st_ino != original.stat().st_ino  # a copy: a later report cannot change it
    assert md.read_text().replace("mine_tuned_", "") == report["markdown"]  # only the links differ
    with pytest.raises(RunConfigError, match="run `dkbench report suite=other` first"):
        publish_report(tmp_path / "no_report", docs, "other")
    with pytest.raises(RunConfigError, match="is a file"):
        publish_report(report_dir, md, "mine")
