"""Leaderboard statistics: aggregates, paired deltas against the baseline, Holm-corrected tests,
ranks and the Friedman/Nemenyi critical-difference analysis.

Conventions
-----------
* **Direction.** A metric whose name contains ``hd95``, ``hausdorff`` or ``loss`` is
  lower-is-better; every other metric is higher-is-better (:func:`higher_is_better`).
* **Δ** is always ``strategy − baseline`` in the metric's own units (the raw difference).
  **gain** is the sign-adjusted Δ: ``gain = Δ`` for higher-is-better metrics and ``gain = −Δ``
  for lower-is-better ones, so **positive gain always means "better than the baseline"**.
  Ranks use the same direction (rank 1 = best).
* **Seed test.** Per (dataset, backbone, strategy): paired t-test (``scipy.stats.ttest_rel``)
  over the seeds where both the strategy and the baseline are done. p is NaN (and ``note``
  says why) with fewer than ``MIN_SEEDS`` = 3 pairs or when the differences have zero variance
  (t undefined). Two pairs would give a t-test with 1 degree of freedom, whose p is driven by
  how close two numbers happen to be (|t| = |mean| / (|d1 − d2| / 2)), not by evidence; so no
  test, no mark. Holm correction across the strategies of each (dataset, backbone) family.
* **Post-processing.** A strategy whose runs also log ``<metric>_raw`` (the score before its
  own post-processing, e.g. ``anatomical_postprocess``) is stated twice by :func:`raw_effects`:
  against the baseline run and against its own raw output, same seeds, same rules.
* **Cross-dataset test.** Per (backbone, strategy): Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``, two-sided) on the per-dataset mean Δ. Needs ≥ 2 datasets (NaN
  and a note otherwise); with fewer than 6 datasets the exact two-sided test cannot reach
  p < 0.05 (its smallest p is 2/2^n). Holm correction across the strategies of each backbone.
* ``significant`` = Holm-adjusted p < alpha (default 0.05), two-sided; read the sign of
  ``gain`` for the direction.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from dkbench.leaderboard.collect import STATUS_ORDER

LOWER_IS_BETTER_TOKENS = ("hd95", "hausdorff", "loss")
ALPHA = 0.05
#: Fewest paired seeds for a test and therefore for any significance mark (star, bold, the word).
MIN_SEEDS = 3
RAW_SUFFIX = "_raw"
#: Fewest complete datasets for the Friedman + Nemenyi analysis (and so for average ranks and the CD
#: diagram): Demšar (JMLR 2006) warns the tests are unreliable on very few data sets; below this the
#: ranks of a handful of blocks would be read as a finding that no test backs.
CD_MIN_DATASETS = 5
CELL = ["dataset", "backbone", "strategy"]
RANK_DECIMALS = 12


def higher_is_better(metric: str) -> bool:
    return not any(token in str(metric).lower() for token in LOWER_IS_BETTER_TOKENS)


def direction(metric: str) -> float:
    """+1 for higher-is-better metrics, −1 for lower-is-better ones (gain = direction · Δ)."""
    return 1.0 if higher_is_better(metric) else -1.0


def _done(long: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    done = long[(long["status"] == "done") & long["metric"].notna()]
    return done if metric is None else done[done["metric"] == metric]


def _cells(long: pd.DataFrame) -> pd.DataFrame:
    """Unique (dataset, backbone, strategy) in grid order."""
    return long[CELL].drop_duplicates().reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# aggregates


def aggregate(long: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """mean, std (ddof=1) and n of the done seeds per (dataset, backbone, strategy, metric).

    Every grid cell × metric appears (n = 0, mean NaN where nothing is done), with the number of
    seeds in each status (``n_done``, ``n_failed``, ``n_incompatible``, ``n_incomplete``,
    ``n_missing``) and the distinct non-done ``reasons``. ``metrics`` defaults to every metric
    seen in a done run (sorted)."""
    done = _done(long)
    if metrics is None:
        metrics = sorted(done["metric"].unique())
    stats_ = (done.groupby(CELL + ["metric"])["value"].agg(["mean", "std", "count"])
              .rename(columns={"count": "n"}).reset_index())
    grid = _cells(long).merge(pd.DataFrame({"metric": list(metrics)}), how="cross")
    agg = grid.merge(stats_, on=CELL + ["metric"], how="left")
    agg["n"] = agg["n"].fillna(0).astype(int)

    seeds = long.drop_duplicates(CELL + ["seed"])
    counts = (pd.crosstab([seeds[c] for c in CELL], seeds["status"])
              .reindex(columns=list(STATUS_ORDER), fill_value=0).add_prefix("n_").reset_index())
    counts.columns.name = None
    reasons = (seeds[seeds["status"] != "done"].groupby(CELL)["reason"]
               .agg(lambda r: "; ".join(dict.fromkeys(str(x) for x in r if str(x)))).rename("reasons").reset_index())
    agg = agg.merge(counts, on=CELL, how="left").merge(reasons, on=CELL, how="left")
    agg["reasons"] = agg["reasons"].fillna("")
    return agg


# --------------------------------------------------------------------------------------------
# multiple comparisons


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values of one family; NaN entries stay NaN and are not counted.

    Sorted ascending, p_(i) becomes max_{j≤i} min(1, (m − j + 1) · p_(j))."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    out[ok] = adjusted
    return out


def holm_by(df: pd.DataFrame, pcol: str, by: list[str]) -> pd.Series:
    """Holm within each group of ``by`` (a family); returns the adjusted column."""
    if df.empty:
        return pd.Series(dtype=float, index=df.index)
    return df.groupby(by, sort=False, dropna=False)[pcol].transform(lambda s: holm(s.to_numpy()))


# --------------------------------------------------------------------------------------------
# paired deltas vs baseline (seeds)


def paired_deltas(long: pd.DataFrame, baseline: str, metric: str, alpha: float = ALPHA) -> pd.DataFrame:
    """Δ = strategy − baseline per (dataset, backbone, seed), summarised per (dataset, backbone,
    strategy): ``n_pairs``, ``mean_strategy``/``mean_baseline`` (over the paired seeds),
    ``delta`` (mean Δ), ``delta_std``, ``gain`` (sign-adjusted: positive = better), ``t``, ``p``
    (paired t-test, two-sided), ``p_holm`` (Holm across strategies within dataset × backbone),
    ``significant`` (p_holm < alpha) and ``note`` (why p is NaN)."""
    sign = direction(metric)
    done = _done(long, metric)
    by_cell = {key: grp.set_index("seed")["value"] for key, grp in done.groupby(CELL, sort=False)}
    status = aggregate(long, [metric]).set_index(CELL)
    rows = []
    for dataset, backbone, strategy in _cells(long).itertuples(index=False):
        if strategy == baseline:
            continue
        row = dict(dataset=dataset, backbone=backbone, strategy=strategy, metric=metric,
                   higher_is_better=sign > 0, n_pairs=0, mean_strategy=np.nan, mean_baseline=np.nan,
                   delta=np.nan, delta_std=np.nan, gain=np.nan, t=np.nan, p=np.nan, note="")
        s_ser, b_ser = by_cell.get((dataset, backbone, strategy)), by_cell.get((dataset, backbone, baseline))
        if s_ser is not None and b_ser is not None:
            block = pd.concat({strategy: s_ser, baseline: b_ser}, axis=1, join="inner").dropna()
        else:
            block = pd.DataFrame(columns=[strategy, baseline])
        n = len(block)
        row["n_pairs"] = n
        if n == 0:
            who = [f"{s}: {_status_word(status, (dataset, backbone, s))}" for s in (strategy, baseline)]
            row["note"] = "no paired seeds (" + ", ".join(who) + ")"
            rows.append(row)
            continue
        s_vals, b_vals = block[strategy].to_numpy(float), block[baseline].to_numpy(float)
        d = s_vals - b_vals
        row.update(mean_strategy=s_vals.mean(), mean_baseline=b_vals.mean(), delta=d.mean(),
                   delta_std=d.std(ddof=1) if n > 1 else np.nan, gain=sign * d.mean())
        row.update(paired_test(s_vals, b_vals))
        rows.append(row)
    out = pd.DataFrame(rows, columns=_DELTA_COLUMNS[:-2])
    out["p_holm"] = holm_by(out, "p", ["dataset", "backbone", "metric"]).astype(float)
    out["significant"] = (out["p_holm"] < alpha) & (out["n_pairs"] >= MIN_SEEDS)
    return out[_DELTA_COLUMNS]


def paired_test(x: np.ndarray, y: np.ndarray) -> dict:
    """Paired t-test of x vs y (same seeds) under the MIN_SEEDS rule: t, p and a note."""
    n = len(x)
    d = x - y
    if n < MIN_SEEDS:
        return {"note": f"n={n}<{MIN_SEEDS} paired seeds: no test"}
    if np.allclose(d, d[0], rtol=0, atol=1e-12):
        return {"note": "zero variance of differences: t-test undefined"}
    res = sps.ttest_rel(x, y)
    return {"t": float(res.statistic), "p": float(res.pvalue)}


_DELTA_COLUMNS = ["dataset", "backbone", "strategy", "metric", "higher_is_better", "n_pairs", "mean_strategy",
                  "mean_baseline", "delta", "delta_std", "gain", "t", "p", "note", "p_holm", "significant"]


def _status_word(status: pd.DataFrame, key: tuple) -> str:
    if key not in status.index:
        return "not in grid"
    row = status.loc[key]
    if isinstance(row, pd.DataFrame):
        row = row.iloc[0]
    parts = [f"{int(row[f'n_{s}'])} {s}" for s in STATUS_ORDER if row.get(f"n_{s}", 0)]
    return ", ".join(parts) or "no runs"


# --------------------------------------------------------------------------------------------
# post-processing: against the baseline and against the run's own raw output

RAW_COLUMNS = ["dataset", "backbone", "strategy", "metric", "higher_is_better", "n_raw", "mean_raw", "mean_post",
               "delta_vs_raw", "p_vs_raw", "significant_vs_raw", "note_vs_raw", "n_baseline", "mean_baseline",
               "delta_raw_vs_baseline", "delta_vs_baseline", "p_holm_vs_baseline", "significant_vs_baseline"]


def raw_effects(long: pd.DataFrame, deltas: pd.DataFrame, baseline: str, metrics: list[str],
                alpha: float = ALPHA) -> pd.DataFrame:
    """One row per (dataset, backbone, strategy, metric) whose runs also log ``metric + "_raw"``.

    Post-processing can look good against its own raw output and still not beat a plain
    baseline (or the reverse), so both are stated: ``delta_vs_raw`` = post − raw over the seeds
    where both are logged (paired t-test, MIN_SEEDS rule; one comparison per cell, so no Holm),
    ``delta_raw_vs_baseline`` = raw − baseline and ``delta_vs_baseline`` = post − baseline over
    the seeds paired with the baseline (p Holm-adjusted as in :func:`paired_deltas`, taken from
    ``deltas``). The two Δ against the baseline decompose the effect into the trained model's
    part and the post-processing's part."""
    done = _done(long)
    value = {key: grp.set_index("seed")["value"] for key, grp in done.groupby(CELL + ["metric"], sort=False)}
    by_delta = deltas.set_index(["dataset", "backbone", "strategy", "metric"])
    rows = []
    for metric in metrics:
        raw_metric = metric + RAW_SUFFIX
        for dataset, backbone, strategy in _cells(long).itertuples(index=False):
            raw = value.get((dataset, backbone, strategy, raw_metric))
            post = value.get((dataset, backbone, strategy, metric))
            if raw is None or post is None or strategy == baseline:
                continue
            pair = pd.concat({"post": post, "raw": raw}, axis=1, join="inner").dropna()
            row = dict(dataset=dataset, backbone=backbone, strategy=strategy, metric=metric,
                       higher_is_better=higher_is_better(metric), n_raw=len(pair),
                       mean_raw=pair["raw"].mean(), mean_post=pair["post"].mean(),
                       delta_vs_raw=(pair["post"] - pair["raw"]).mean(), p_vs_raw=np.nan, note_vs_raw="",
                       n_baseline=0, mean_baseline=np.nan, delta_raw_vs_baseline=np.nan, delta_vs_baseline=np.nan,
                       p_holm_vs_baseline=np.nan, significant_vs_baseline=False)
            test = paired_test(pair["post"].to_numpy(float), pair["raw"].to_numpy(float))
            row.update(p_vs_raw=test.get("p", np.nan), note_vs_raw=test.get("note", ""))
            base = value.get((dataset, backbone, baseline, metric))
            if base is not None:
                trio = pd.concat({"post": post, "raw": raw, "base": base}, axis=1, join="inner").dropna()
                row.update(n_baseline=len(trio), mean_baseline=trio["base"].mean(),
                           delta_raw_vs_baseline=(trio["raw"] - trio["base"]).mean(),
                           delta_vs_baseline=(trio["post"] - trio["base"]).mean())
            key = (dataset, backbone, strategy, metric)
            if key in by_delta.index:
                d = by_delta.loc[key]
                row.update(p_holm_vs_baseline=float(d["p_holm"]), significant_vs_baseline=bool(d["significant"]))
            rows.append(row)
    out = pd.DataFrame(rows, columns=RAW_COLUMNS[:10] + RAW_COLUMNS[11:])
    out.insert(10, "significant_vs_raw", (out["p_vs_raw"] < alpha) & (out["n_raw"] >= MIN_SEEDS))
    return out[RAW_COLUMNS]


# --------------------------------------------------------------------------------------------
# across datasets


def wilcoxon_min_datasets(alpha: float = ALPHA) -> int:
    """Fewest datasets with which the exact two-sided Wilcoxon signed-rank test can reach p < alpha:
    its smallest p, all signs alike, is 2 / 2^n (6 for alpha = 0.05: 2/64 ≈ 0.031, while 5 give 0.0625)."""
    n = 1
    while 2.0 / 2 ** n >= alpha:
        n += 1
    return n


def cross_dataset_tests(deltas: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Per (backbone, strategy, metric): Wilcoxon signed-rank test (two-sided) on the per-dataset
    mean Δ, Holm-corrected across strategies within each backbone × metric. Columns:
    ``n_datasets``, ``mean_gain``, ``median_gain``, ``n_better`` (datasets with gain > 0),
    ``statistic``, ``p``, ``p_holm``, ``significant``, ``note``."""
    rows = []
    for (backbone, strategy, metric), grp in deltas.groupby(["backbone", "strategy", "metric"], sort=False):
        gains = grp["gain"].dropna().to_numpy(float)
        deltas_ = grp["delta"].dropna().to_numpy(float)
        n = len(deltas_)
        row = dict(backbone=backbone, strategy=strategy, metric=metric, n_datasets=n,
                   mean_gain=gains.mean() if n else np.nan, median_gain=np.median(gains) if n else np.nan,
                   n_better=int((gains > 0).sum()), statistic=np.nan, p=np.nan, note="")
        if n < 2:
            row["note"] = f"{n} dataset(s) with a Δ: needs ≥ 2"
        elif np.all(deltas_ == 0):
            row["note"] = "all Δ are zero"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = sps.wilcoxon(deltas_)
            row.update(statistic=float(res.statistic), p=float(res.pvalue))
            if n < wilcoxon_min_datasets(alpha):
                row["note"] = (f"n={n}<{wilcoxon_min_datasets(alpha)}: exact two-sided test cannot reach "
                               f"p<{alpha} (min p = {2 / 2 ** n:.4g})")
        rows.append(row)
    cols = ["backbone", "strategy", "metric", "n_datasets", "mean_gain", "median_gain", "n_better",
            "statistic", "p", "note"]
    out = pd.DataFrame(rows, columns=cols)
    out["p_holm"] = holm_by(out, "p", ["backbone", "metric"]).astype(float)
    out["significant"] = out["p_holm"] < alpha
    return out


# --------------------------------------------------------------------------------------------
# ranks


def ranks(agg: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rank of each strategy within each (dataset, backbone) by mean ``metric`` (1 = best, ties
    get the average rank, direction-aware; means are compared after rounding to
    ``RANK_DECIMALS`` decimals). NaN means stay unranked. ``complete_block`` is True
    when every strategy that has a value somewhere for that backbone has one in this block."""
    sub = agg[agg["metric"] == metric][CELL + ["mean"]].copy()
    # round away float noise so that mathematically equal means tie
    sub["rank"] = sub["mean"].round(RANK_DECIMALS).groupby([sub["dataset"], sub["backbone"]]).rank(
        ascending=not higher_is_better(metric), method="average", na_option="keep")
    present = sub.groupby(["backbone", "strategy"])["mean"].transform(lambda s: s.notna().any())
    sub["complete_block"] = (sub["mean"].notna() | ~present).groupby([sub["dataset"], sub["backbone"]]).transform("all")
    return sub.reset_index(drop=True)


def average_ranks(rank_df: pd.DataFrame) -> pd.DataFrame:
    """Mean rank per (backbone, strategy) over the complete blocks (datasets) of that backbone,
    plus backbone ``"(all)"`` over every complete dataset × backbone block. Columns:
    ``backbone``, ``strategy``, ``avg_rank``, ``n_blocks``; ``attrs["dropped_blocks"]`` counts
    the incomplete blocks left out."""
    parts, dropped = [], 0
    groups = [(b, g) for b, g in rank_df.groupby("backbone", sort=False)] + [("(all)", rank_df)]
    for backbone, grp in groups:
        means, rk = _wide(grp, "mean"), _wide(grp, "rank")
        complete, n_drop, _ = complete_blocks(means)
        if backbone != "(all)":
            dropped += n_drop
        avg = rk.loc[complete.index, complete.columns].mean(axis=0).reindex(means.columns)
        parts.append(pd.DataFrame({"backbone": backbone, "strategy": avg.index, "avg_rank": avg.to_numpy(),
                                   "n_blocks": len(complete)}))
    out = pd.concat(parts, ignore_index=True)
    out.attrs["dropped_blocks"] = dropped
    return out


def _wide(df: pd.DataFrame, value: str) -> pd.DataFrame:
    """blocks (dataset, backbone) × strategies table of ``value``, in grid order, NaNs kept."""
    wide = df.set_index(["dataset", "backbone", "strategy"])[value].unstack("strategy")
    blocks = pd.MultiIndex.from_frame(df[["dataset", "backbone"]].drop_duplicates())
    return wide.reindex(index=blocks, columns=list(dict.fromkeys(df["strategy"])))


def complete_blocks(wide: pd.DataFrame) -> tuple[pd.DataFrame, int, list[str]]:
    """Drop treatments (columns) without any value, then blocks (rows) with any NaN.
    Returns (complete table, number of dropped blocks, dropped treatments)."""
    empty = [c for c in wide.columns if wide[c].isna().all()]
    kept = wide.drop(columns=empty)
    complete = kept.dropna(axis=0, how="any") if kept.shape[1] else kept.iloc[0:0]
    return complete, len(kept) - len(complete), empty


# --------------------------------------------------------------------------------------------
# critical difference


@dataclass
class CDResult:
    path: Path
    metric: str
    omnibus: str
    pvalue: float
    cd: float | None
    posthoc: str | None
    meanranks: pd.Series
    n_blocks: int
    n_datasets: int
    dropped_blocks: int
    dropped_strategies: list[str] = field(default_factory=list)
    message: str = ""


def critical_difference(agg: pd.DataFrame, metric: str, out_png: str | Path, *, alpha: float = ALPHA,
                        min_datasets: int = CD_MIN_DATASETS, vector: tuple[str, ...] = ()
                        ) -> tuple[CDResult | None, str]:
    """Friedman + Nemenyi (autorank, nonparametric) with blocks = dataset × backbone and
    treatments = strategies, and the CD diagram saved to ``out_png`` (and beside it with each suffix
    of ``vector``, e.g. ``(".svg", ".pdf")``).

    Strategies with no value at all are dropped, then incomplete blocks (autorank would accept
    the NaNs silently); the message says how many. Returns ``(None, reason)`` when fewer than
    ``min_datasets`` datasets or fewer than 3 strategies remain, else ``(CDResult, message)``."""
    sub = agg[agg["metric"] == metric]
    wide = _wide(sub, "mean")
    complete, dropped, empty = complete_blocks(wide)
    n_datasets = complete.index.get_level_values("dataset").nunique() if len(complete) else 0
    msg = f"{len(complete)} complete dataset×backbone block(s) over {n_datasets} dataset(s); " \
          f"dropped {dropped} incomplete block(s)"
    if empty:
        msg += f" and strateg{'y' if len(empty) == 1 else 'ies'} without any result: {', '.join(empty)}"
    if n_datasets < min_datasets:
        return None, f"not computed: {n_datasets} complete dataset(s) < {min_datasets} needed ({msg})"
    if complete.shape[1] < 3:
        return None, f"not computed: {complete.shape[1]} strategies < 3 needed ({msg})"

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from autorank import autorank, plot_stats

    data = complete.copy()
    data.index = [f"{d}/{b}" for d, b in data.index]
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = autorank(data, alpha=alpha, verbose=False, force_mode="nonparametric",
                              order="descending" if higher_is_better(metric) else "ascending")
            ax = plot_stats(result, allow_insignificant=True)
    except Exception as err:  # autorank refuses degenerate inputs (e.g. all ties)
        plt.close("all")
        return None, f"not computed: autorank failed ({type(err).__name__}: {err}; {msg})"
    fig = ax.figure
    pv = float(result.pvalue)
    caption = f"{metric}: {str(result.omnibus).capitalize()} p={pv:.3g}"
    if result.cd is not None:
        caption += f", {str(result.posthoc).capitalize()} CD={result.cd:.2f}"
    caption += f" ({len(complete)} dataset×backbone blocks; rank 1 = best)"
    fig.text(0.5, 0.0, caption, ha="center", va="top", fontsize=9)  # below the axis: the top holds the CD bar
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=150, bbox_inches="tight")
    if vector:  # the same figure as vector graphics for a paper
        from dkbench.leaderboard.plots import save_vector

        save_vector(fig, out_png, vector)
    plt.close(fig)
    verdict = "significant" if pv < alpha else "not significant"
    message = f"Friedman p={pv:.3g} ({verdict} at α={alpha}); " + (
        f"Nemenyi CD={result.cd:.3f}; " if result.cd is not None else "") + msg
    res = CDResult(path=out_png, metric=metric, omnibus=str(result.omnibus), pvalue=pv,
                   cd=None if result.cd is None else float(result.cd), posthoc=result.posthoc,
                   meanranks=result.rankdf["meanrank"].astype(float), n_blocks=len(complete),
                   n_datasets=n_datasets, dropped_blocks=dropped, dropped_strategies=empty, message=message)
    return res, message
