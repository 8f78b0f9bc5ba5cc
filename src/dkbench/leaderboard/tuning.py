"""The tuned protocol beside the default one (`dkbench report suite=X protocol=tuned`).

One row per (dataset, backbone, strategy): the default protocol's score (`<suite>/`), the tuned
protocol's (`<suite>@tuned/`: the seeds at the trial chosen on validation), the chosen setting and
its validation score, and an **oracle**: the best *test* score among the trials (at the trial
seed). The oracle is an upper bound on what tuning could find if test data were allowed to choose;
it is never used for ranking or significance (Gulrajani & Lopez-Paz 2021 report it the same way).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from dkbench.leaderboard import stats
from dkbench.leaderboard.collect import collect_runs
from dkbench.runner.tuning import TUNED_SUFFIX, chosen_path, read_chosen

COLUMNS = ["dataset", "backbone", "strategy", "default_mean", "default_std", "default_n", "tuned_mean", "tuned_std",
           "tuned_n", "tuned_minus_default", "chosen_trial", "chosen_params", "chosen_validation", "trials_done",
           "oracle_test", "oracle_trial", "incompatible"]


def _scores(runs_dir: Path, suite: dict, name: str, metric: str) -> pd.DataFrame:
    long = collect_runs(runs_dir, {**suite, "name": name})
    scores = stats.aggregate(long, [metric])[["dataset", "backbone", "strategy", "mean", "std", "n"]]
    cells = long.groupby(["dataset", "backbone", "strategy"])["status"]
    incompatible = cells.agg(lambda s: bool(len(s)) and (s == "incompatible").all()).rename("incompatible")
    return scores.merge(incompatible.reset_index(), on=["dataset", "backbone", "strategy"], how="left")


def _oracle(record: dict, metric: str) -> tuple[float, Any]:
    """The best test `metric` among the recorded trials (test-selected: a bound, never a result)."""
    best, which = math.nan, None
    for trial in record["trials"]:
        try:
            value = float(json.loads((Path(trial["run_dir"]) / "metrics.json").read_text())[metric])
        except (OSError, KeyError, ValueError, TypeError):
            continue
        if math.isfinite(value) and not (value <= best):
            best, which = value, trial["trial"]
    return best, which


def _short(params: dict[str, Any]) -> str:
    if not params:
        return "defaults"
    parts = []
    for key, value in sorted(params.items()):
        name = key.removeprefix("strategy.options.").removeprefix("model.optimizer.")
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts)


def tuning_table(runs_dir: str | Path, suite: dict, metric: str) -> pd.DataFrame:
    runs_dir = Path(runs_dir)
    default = _scores(runs_dir, suite, suite["name"], metric)
    tuned = _scores(runs_dir, suite, suite["name"] + TUNED_SUFFIX, metric)
    merged = default.merge(tuned, on=["dataset", "backbone", "strategy"], suffixes=("_d", "_t"))
    rows = []
    for r in merged.itertuples(index=False):
        cell = (r.dataset, r.backbone, r.strategy)
        record = read_chosen(chosen_path(runs_dir, suite["name"], *cell)) or {}
        oracle, oracle_trial = _oracle(record, metric) if record else (math.nan, None)
        chosen = next((t for t in record.get("trials", []) if t["trial"] == record.get("trial")), {})
        rows.append({
            "dataset": r.dataset, "backbone": r.backbone, "strategy": r.strategy,
            "default_mean": r.mean_d, "default_std": r.std_d, "default_n": int(r.n_d),
            "tuned_mean": r.mean_t, "tuned_std": r.std_t, "tuned_n": int(r.n_t),
            "tuned_minus_default": r.mean_t - r.mean_d,
            "chosen_trial": record.get("trial"), "chosen_params": _short(record.get("params", {})) if record else "",
            "chosen_validation": chosen.get(record.get("selected_by", ""), math.nan) if record else math.nan,
            "trials_done": len(record.get("trials", [])), "oracle_test": oracle, "oracle_trial": oracle_trial,
            "incompatible": bool(r.incompatible_t),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def budget_line(runs_dir: str | Path, suite: dict) -> str:
    """The budget and selection rule as recorded in the chosen.json files (one line)."""
    records = [read_chosen(p) for p in sorted((Path(runs_dir) / f"{suite['name']}{TUNED_SUFFIX}").glob("*/*/chosen.json"))]
    records = [r for r in records if r]
    if not records:
        return "no cell has finished its trials yet"
    budgets = {json.dumps(r["budget"], sort_keys=True) for r in records}
    budget = records[0]["budget"]
    same = "the same for every cell, baseline included" if len(budgets) == 1 else "NOT the same in every cell"
    return (f"{budget['trials']} {budget['sampler']}-search trials per dataset × backbone × strategy ({same}; "
            f"trial 0 = the defaults), each at seed {budget['trial_seed']}; selection: {records[0]['rule']}; then "
            f"the suite's seeds at the chosen setting. Oracle = the best test score among the trials: an upper "
            f"bound, never used for ranking or significance.")


def _fmt(mean: float, std: float, n: int) -> str:
    if not n:
        return "—"
    return f"{mean:.3f} ± {std:.3f} (n={n})" if n > 1 else f"{mean:.3f} (n=1)"


def render_tuning_markdown(table: pd.DataFrame, budget: str, metric: str) -> str:
    lines = [f"## Tuned protocol: default vs tuned ({metric})", "", f"Budget: {budget}", "",
             "| dataset | backbone | strategy | default | tuned | tuned − default | chosen setting | chosen val | "
             "oracle (test-selected, bound) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        diff = "—" if not (r.default_n and r.tuned_n) else f"{r.tuned_minus_default:+.3f}"
        unchosen = r.chosen_trial is None or (isinstance(r.chosen_trial, float) and math.isnan(r.chosen_trial))
        chosen = ("incompatible (not run)" if r.incompatible else "trials unfinished") if unchosen \
            else f"trial {int(r.chosen_trial)}: {r.chosen_params}"
        val = "—" if r.chosen_validation is None or math.isnan(r.chosen_validation) else f"{r.chosen_validation:.3f}"
        oracle = "—" if math.isnan(r.oracle_test) else f"{r.oracle_test:.3f} (trial {int(r.oracle_trial)})"
        lines.append(f"| {r.dataset} | {r.backbone} | {r.strategy} | {_fmt(r.default_mean, r.default_std, r.default_n)} "
                     f"| {_fmt(r.tuned_mean, r.tuned_std, r.tuned_n)} | {diff} | {chosen} | {val} | {oracle} |")
    return "\n".join(lines) + "\n"
