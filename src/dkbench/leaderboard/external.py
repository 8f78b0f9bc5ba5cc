"""External validation beside internal: a suite's `external: {dataset: [others]}` test sets.

One row per (training dataset, other dataset, backbone, strategy): the internal test score and the
external one (`<run>/external/<other>/metrics.json`, written by `dkbench evaluate` or the sweep),
each mean ± std over the seeds that have it, n beside it, and the paired drop (external − internal)
over the seeds that have both.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from dkbench.leaderboard.collect import cell_dir
from dkbench.runner.run_folder import external_folder

COLUMNS = ["dataset", "external", "backbone", "strategy", "metric", "internal_mean", "internal_std", "internal_n",
           "external_mean", "external_std", "external_n", "paired_change", "paired_n"]


def _score(path: Path, metric: str) -> float:
    try:
        value = float(json.loads(path.read_text())[metric])
    except (OSError, ValueError, KeyError, TypeError):
        return math.nan
    return value


def _stats(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan, math.nan, 0
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan, len(values)


def external_table(runs_dir: str | Path, suite: dict[str, Any], metric: str) -> pd.DataFrame:
    rows = []
    for dataset, others in (suite.get("external") or {}).items():
        for other in others or []:
            for backbone in suite["backbones"]:
                for strategy in suite["strategies"]:
                    internal, external = [], []
                    for seed in suite["seeds"]:
                        run = cell_dir(runs_dir, suite["name"], dataset, backbone, strategy, seed)
                        internal.append(_score(run / "metrics.json", metric) if (run / "DONE").exists() else math.nan)
                        external.append(_score(external_folder(run, other) / "metrics.json", metric))
                    pairs = [e - i for i, e in zip(internal, external) if math.isfinite(i) and math.isfinite(e)]
                    (im, isd, inn), (em, esd, en) = _stats(internal), _stats(external)
                    rows.append([dataset, other, backbone, strategy, metric, im, isd, inn, em, esd, en,
                                 statistics.mean(pairs) if pairs else math.nan, len(pairs)])
    return pd.DataFrame(rows, columns=COLUMNS)


def _fmt(mean: float, std: float, n: int) -> str:
    if not n:
        return "—"
    return f"{mean:.3f} ± {std:.3f} (n={n})" if n > 1 else f"{mean:.3f} (n=1)"


def render_external_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return ""
    metric = table["metric"].iloc[0]
    lines = [f"## External validation ({metric}: internal test split vs another dataset's)", "",
             "| trained on | tested on | backbone | strategy | internal | external | external − internal (paired) |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        change = "—" if not r.paired_n else f"{r.paired_change:+.3f} (n={r.paired_n})"
        lines.append(f"| {r.dataset} | {r.external} | {r.backbone} | {r.strategy} | "
                     f"{_fmt(r.internal_mean, r.internal_std, r.internal_n)} | "
                     f"{_fmt(r.external_mean, r.external_std, r.external_n)} | {change} |")
    return "\n".join(lines) + "\n"
