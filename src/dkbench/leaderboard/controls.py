"""Shortcut controls: how much of the gap a shortcut opens does each strategy close?

A suite lists ``controls: {D: {ceiling: C, strategy: S}}`` (see :mod:`dkbench.runner.suite`):
dataset D carries a spurious shortcut that fails at test, C is the same data without it. Then

* **ceiling** = S on C: what the task supports when nothing tempts the network away from it;
* **floor**   = S on D: what S does when the shortcut is there (S is the suite's baseline);
* **shortcut gap recovered** of a strategy X on D = (X − floor) / (ceiling − floor), 0 = no
  better than the shortcut-fooled baseline, 1 = as good as a baseline that never saw a shortcut.

Computed per training seed k from runs of the same seed (X_k, floor_k, ceiling_k), then
summarised as mean ± sd with a t interval over those seeds. Pairing by seed is what lets the
interval reflect the spread of the *fraction*, not three independent spreads added up. The
interval (like every test in the leaderboard) needs ``MIN_SEEDS`` complete seeds; below that the
fraction is shown with its n and no interval. A seed whose ceiling does not exceed its floor has
no gap to recover and is left out (the note says so). Missing controls give a note, never an
error: the rest of the report does not depend on them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from dkbench.leaderboard.collect import COLUMNS, cell_dir, cell_rows
from dkbench.leaderboard.stats import ALPHA, MIN_SEEDS

RECOVERY_COLUMNS = ["dataset", "backbone", "role", "strategy", "on", "metric", "n", "mean", "std", "n_pairs",
                    "recovered", "recovered_std", "ci_low", "ci_high", "note"]


def suite_controls(suite: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The suite's controls for datasets in its grid (the same rule the sweep expands)."""
    from dkbench.runner.suite import controls  # pure module (no torch), shared with the sweep

    return controls(suite)


def control_cells(suite: Mapping[str, Any]) -> set[tuple[str, str, str, str]]:
    """(dataset, backbone, strategy, seed as str) of every ceiling cell: run folders, not strays."""
    return {(spec["ceiling"], str(b), spec["strategy"], str(k))
            for spec in suite_controls(suite).values() for b in suite["backbones"] for k in suite["seeds"]}


def collect_controls(runs_dir: str | Path, suite: Mapping[str, Any]) -> pd.DataFrame:
    """Tidy long table (``collect.COLUMNS``) of the ceiling cells, read like grid cells."""
    rows = []
    for _, spec in suite_controls(suite).items():
        for backbone in suite["backbones"]:
            for seed in suite["seeds"]:
                base = dict(suite=suite["name"], dataset=spec["ceiling"], backbone=backbone,
                            strategy=spec["strategy"], seed=seed)
                rows += cell_rows(base, cell_dir(runs_dir, suite["name"], spec["ceiling"], backbone, spec["strategy"], seed))
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["value"] = out["value"].astype(float)
    return out


def _values(long: pd.DataFrame, dataset: str, backbone: str, strategy: str, metric: str) -> pd.Series:
    """Done values by seed (float), empty when none."""
    sel = long[(long["dataset"] == dataset) & (long["backbone"] == backbone) & (long["strategy"] == strategy)
               & (long["metric"] == metric) & (long["status"] == "done")]
    return sel.set_index("seed")["value"].astype(float).dropna()


def recovered_fraction(test: Mapping, floor: Mapping, ceiling: Mapping, alpha: float = ALPHA) -> dict[str, Any]:
    """Per-seed (test − floor) / (ceiling − floor) over the seeds all three have, summarised.

    Returns ``n_pairs``, ``recovered`` (mean), ``recovered_std`` (sd, ddof 1), ``ci_low``/``ci_high``
    (two-sided 1 − alpha t interval, only with ≥ MIN_SEEDS seeds) and ``note``."""
    seeds = [k for k in test if k in floor and k in ceiling]
    gaps = {k: float(ceiling[k]) - float(floor[k]) for k in seeds}
    flat = sorted(k for k, g in gaps.items() if not g > 0)
    used = [k for k in seeds if k not in flat]
    out: dict[str, Any] = dict(n_pairs=len(used), recovered=math.nan, recovered_std=math.nan,
                               ci_low=math.nan, ci_high=math.nan, note="")
    notes = []
    if flat:
        notes.append(f"ceiling ≤ floor on seed(s) {', '.join(str(k) for k in flat)}: no gap, left out")
    if not used:
        notes.append("no seed with test, floor and ceiling all done")
        out["note"] = "; ".join(notes)
        return out
    r = np.array([(float(test[k]) - float(floor[k])) / gaps[k] for k in used])
    out["recovered"] = float(r.mean())
    n = len(r)
    if n > 1:
        out["recovered_std"] = float(r.std(ddof=1))
    if n >= MIN_SEEDS:
        half = sps.t.ppf(1 - alpha / 2, n - 1) * out["recovered_std"] / math.sqrt(n)
        out["ci_low"], out["ci_high"] = out["recovered"] - half, out["recovered"] + half
    else:
        notes.append(f"n={n}<{MIN_SEEDS} paired seeds: no interval")
    out["note"] = "; ".join(notes)
    return out


def recovery_table(long: pd.DataFrame, control_long: pd.DataFrame, suite: Mapping[str, Any], metric: str,
                   alpha: float = ALPHA) -> pd.DataFrame:
    """Per controlled dataset × backbone: a ceiling row, a floor row, then every other strategy of
    the grid with its gap recovered (columns ``RECOVERY_COLUMNS``). Empty without controls."""
    rows = []
    for dataset, spec in suite_controls(suite).items():
        ceiling_name, control = spec["ceiling"], spec["strategy"]
        for backbone in suite["backbones"]:
            ceiling = _values(control_long, ceiling_name, str(backbone), control, metric)
            floor = _values(long, dataset, str(backbone), control, metric)
            missing = [f"{role} ({control} on {name}) has no done run"
                       for role, name, vals in (("ceiling", ceiling_name, ceiling), ("floor", dataset, floor))
                       if vals.empty]
            base = dict(dataset=dataset, backbone=backbone, metric=metric)
            for role, name, vals in (("ceiling", ceiling_name, ceiling), ("floor", dataset, floor)):
                rows.append({**base, "role": role, "strategy": control, "on": name, **_summary(vals),
                             "n_pairs": 0, "recovered": 1.0 if role == "ceiling" else 0.0,
                             "recovered_std": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                             "note": "by definition" if not vals.empty else "no done run"})
                if vals.empty:
                    rows[-1]["recovered"] = math.nan
            for strategy in suite["strategies"]:
                if strategy == control:
                    continue
                test = _values(long, dataset, str(backbone), strategy, metric)
                row = {**base, "role": "strategy", "strategy": strategy, "on": dataset, **_summary(test)}
                if test.empty:  # say why (incompatible, failed, not run) rather than leave a blank
                    row.update(n_pairs=0, recovered=math.nan, recovered_std=math.nan, ci_low=math.nan,
                               ci_high=math.nan, note=_status_text(long, dataset, str(backbone), strategy))
                elif missing:
                    row.update(n_pairs=0, recovered=math.nan, recovered_std=math.nan, ci_low=math.nan,
                               ci_high=math.nan, note="not computed: " + "; ".join(missing))
                else:
                    row.update(recovered_fraction(test.to_dict(), floor.to_dict(), ceiling.to_dict(), alpha))
                rows.append(row)
    return pd.DataFrame(rows, columns=RECOVERY_COLUMNS)


def _status_text(long: pd.DataFrame, dataset: str, backbone: str, strategy: str) -> str:
    """``3 incompatible (reason)``-style summary of a cell without a done seed."""
    cells = long[(long["dataset"] == dataset) & (long["backbone"] == backbone) & (long["strategy"] == strategy)]
    cells = cells.drop_duplicates("seed")
    if cells.empty:
        return "not in the grid"
    parts = [f"{n} {status}" for status, n in cells["status"].value_counts().items()]
    reasons = "; ".join(dict.fromkeys(str(r) for r in cells["reason"] if isinstance(r, str) and r))
    if len(reasons) > 120:
        reasons = reasons[:119] + "…"
    return ", ".join(parts) + (f" ({reasons})" if reasons else "")


def _summary(vals: pd.Series) -> dict[str, Any]:
    n = len(vals)
    return dict(n=n, mean=float(vals.mean()) if n else math.nan,
                std=float(vals.std(ddof=1)) if n > 1 else math.nan)
