"""Per-image paired comparison of segmentation strategies against the baseline.

Seeds give a handful of pairs per cell; a test split gives hundreds of images. Segmentation
runs save each test image's Dice / IoU / HD95 in `predictions.csv`, so a strategy and the
baseline can be paired image by image: the per-image value is averaged over the seeds both
finished (seed noise shrinks, the image stays the unit), Δ = strategy − baseline per image, and
a two-sided Wilcoxon signed-rank test over images says whether the strategy moves the image
distribution (Holm-adjusted across strategies within dataset × backbone). This complements,
not replaces, the seed-level t-test: images of one test split are not independent datasets.

The images are the test's unit, but every per-image value comes from the same one or two trained
models when few seeds are done: a small p then says those models differ on these images, not
that the strategy does. So, as for the seed test, a significance mark (``significant``) also
needs ≥ ``MIN_SEEDS`` = 3 seeds per strategy (paired with the baseline's); p is still reported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from dkbench.leaderboard.collect import cell_dir
from dkbench.leaderboard.stats import ALPHA, MIN_SEEDS, direction, holm_by

COLUMNS = ["dataset", "backbone", "strategy", "metric", "seeds", "n_images", "mean_strategy", "mean_baseline",
           "delta", "median_delta", "share_better", "p", "p_holm", "significant"]


def _per_image(runs_dir: Path, suite: str, dataset: str, backbone: str, strategy: str, seeds: list,
               column: str) -> pd.DataFrame | None:
    """Images × seeds table of one cell's per-image values (None if any file lacks them)."""
    frames = []
    for seed in seeds:
        path = cell_dir(runs_dir, suite, dataset, backbone, strategy, seed) / "predictions.csv"
        if not path.exists():
            return None
        df = pd.read_csv(path, usecols=lambda c: c in ("id", column))
        if column not in df:
            return None
        frames.append(df.set_index("id")[column].rename(seed))
    return pd.concat(frames, axis=1) if frames else None


def per_image_deltas(runs_dir: str | Path, long: pd.DataFrame, baseline: str, metric: str,
                     alpha: float = ALPHA) -> pd.DataFrame:
    """One row per (dataset, backbone, strategy ≠ baseline) whose runs saved per-image `metric`
    (e.g. ``test/dice`` → column ``dice``); empty for classification suites. ``significant`` =
    Holm p < alpha and ≥ MIN_SEEDS paired seeds."""
    column = metric.split("/", 1)[-1]
    done = long[long["status"] == "done"].drop_duplicates(["dataset", "backbone", "strategy", "seed"])
    if done.empty:
        return pd.DataFrame(columns=COLUMNS)
    suite = str(done["suite"].iloc[0])
    rows = []
    seeds_of = done.groupby(["dataset", "backbone", "strategy"])["seed"].apply(set).to_dict()
    for (dataset, backbone, strategy), seeds in seeds_of.items():
        base_seeds = seeds_of.get((dataset, backbone, baseline))
        if strategy == baseline or not base_seeds:
            continue
        common = sorted(seeds & base_seeds)
        if not common:
            continue
        ours = _per_image(Path(runs_dir), suite, dataset, backbone, strategy, common, column)
        theirs = _per_image(Path(runs_dir), suite, dataset, backbone, baseline, common, column)
        if ours is None or theirs is None:
            continue
        paired = pd.concat([ours.mean(1).rename("s"), theirs.mean(1).rename("b")], axis=1, join="inner").dropna()
        diff = (paired["s"] - paired["b"]).to_numpy()
        p = np.nan
        if len(diff) >= 6 and np.any(diff != 0):
            p = float(wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)
        rows.append({"dataset": dataset, "backbone": backbone, "strategy": strategy, "metric": metric,
                     "seeds": len(common), "n_images": len(diff), "mean_strategy": paired["s"].mean(),
                     "mean_baseline": paired["b"].mean(), "delta": diff.mean(), "median_delta": np.median(diff),
                     "share_better": float(np.mean(direction(metric) * diff > 0)), "p": p})
    out = pd.DataFrame(rows, columns=COLUMNS[:-2])
    out["p_holm"] = holm_by(out, "p", ["dataset", "backbone"]).astype(float) if len(out) else pd.Series(dtype=float)
    out["significant"] = (out["p_holm"] < alpha) & (out["seeds"] >= MIN_SEEDS)
    return out[COLUMNS]
