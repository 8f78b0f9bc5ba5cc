"""Read run folders into one tidy long table (the only input of the leaderboard).

Layout (written by :mod:`dkbench.runner.run_folder`)::

    <runs_dir>/<suite>/<dataset>/<backbone>__<strategy>/seed_<k>/
        status.json   {"status": done|failed|incompatible|running|interrupted, "config_hash", "reason"|"error"}
        DONE, metrics.json, metadata.json, predictions.csv   (done runs)

Every cell of the suite grid (dataset × backbone × strategy × seed) appears in the result:

* ``done``         – ``DONE`` and a readable ``metrics.json``; one row per metric
  (every numeric ``test/*`` and ``val/*`` key);
* ``failed``       – ``status.json`` says failed; ``reason`` = its ``error``;
* ``incompatible`` – ``status.json`` says incompatible; ``reason`` = its ``reason``;
* ``incomplete``   – a folder that is not done (no ``status.json``, ``running``, ``interrupted``, or a ``done``
  status whose result files are missing: the run was killed mid-way);
* ``missing``      – no folder at all; ``reason`` = ``"not run"``.

Non-done cells get exactly one row with ``metric``/``value`` NaN. Folders on disk outside the
grid are ignored, and their number is reported with a warning.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = ["suite", "dataset", "backbone", "strategy", "seed", "metric", "value", "status", "reason"]
#: Display order of the cell statuses.
STATUS_ORDER = ("done", "failed", "incompatible", "incomplete", "missing")
METRIC_PREFIXES = ("test/", "val/")


def cell_dir(runs_dir: str | Path, suite: str, dataset: str, backbone: str, strategy: str, seed: Any) -> Path:
    return Path(runs_dir) / suite / dataset / f"{backbone}__{strategy}" / f"seed_{seed}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The ``test/*`` and ``val/*`` keys with a numeric (non-bool) value."""
    out = {}
    for key, value in metrics.items():
        if not key.startswith(METRIC_PREFIXES) or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[key] = float(value)
        elif value is None:
            out[key] = math.nan
    return out


def selected_val_metrics(run_dir: Path, best_epoch: Any) -> dict[str, float]:
    """``val/*`` of the selected (best-validation) epoch, read from the run's CSV log: what the
    model scored on validation data when it was chosen, to set beside its test scores (a
    shortcut shows as a val → test drop). Empty when the log or the epoch is missing."""
    path = Path(run_dir) / "csv" / "metrics.csv"
    if best_epoch is None or not path.exists():
        return {}
    try:
        log = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return {}
    if "epoch" not in log:
        return {}
    rows = log[log["epoch"] == best_epoch]
    out = {}
    for column in (c for c in log.columns if str(c).startswith("val/")):
        values = rows[column].dropna()
        if len(values):
            out[str(column)] = float(values.iloc[-1])
    return out


def read_cell(path: Path) -> tuple[str, str, dict[str, float]]:
    """(status, reason, metrics) of one seed folder."""
    if not path.is_dir():
        return "missing", "not run", {}
    status = _read_json(path / "status.json")
    state = status.get("status") if isinstance(status, dict) else None
    if state == "failed":
        return "failed", str(status.get("error") or status.get("reason") or "failed (no error recorded)"), {}
    if state == "incompatible":
        return "incompatible", str(status.get("reason") or status.get("error") or "incompatible"), {}
    # DONE is written after every result file (and before status.json turns to "done"), so a DONE
    # marker plus readable metrics means a complete run even if status.json still says "running".
    metrics = _read_json(path / "metrics.json") if (path / "DONE").exists() else None
    if isinstance(metrics, dict):
        values = numeric_metrics(metrics)
        if not any(k.startswith("val/") for k in values):  # runs written before metrics.json held them
            values.update(selected_val_metrics(path, (metrics.get("selection") or {}).get("best_epoch")))
        return "done", "" if values else "no test/* or val/* metric in metrics.json", values
    if state == "done":
        return "incomplete", "status.json says done but DONE/metrics.json is missing or unreadable", {}
    if state == "running":
        return "incomplete", "interrupted (status.json still 'running')", {}
    if state == "interrupted":
        return "incomplete", f"interrupted by {status.get('signal', 'a signal')}; rerun to resume", {}
    return "incomplete", "interrupted (no status.json)", {}


def cell_rows(base: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """A run folder as long-format rows: one per metric, or one NaN row carrying its status."""
    status, reason, metrics = read_cell(path)
    if metrics:
        return [{**base, "metric": m, "value": v, "status": status, "reason": reason}
                for m, v in sorted(metrics.items())]
    return [{**base, "metric": math.nan, "value": math.nan, "status": status, "reason": reason}]


def _grid(suite: dict) -> tuple[str, list[str], list[str], list[str], list[Any]]:
    try:
        return (str(suite["name"]), [str(d) for d in suite["datasets"]], [str(b) for b in suite["backbones"]],
                [str(s) for s in suite["strategies"]], list(suite["seeds"]))
    except KeyError as err:
        raise KeyError(f"suite definition lacks {err}; needs name, datasets, backbones, strategies, seeds") from None


def _out_of_grid(runs_dir: Path, suite: dict) -> list[Path]:
    name, datasets, backbones, strategies, seeds = _grid(suite)
    known = {(d, b, s, str(k)) for d in datasets for b in backbones for s in strategies for k in seeds}
    from dkbench.leaderboard.controls import (
        control_cells,  # the suite's shortcut controls are run too
    )

    known |= control_cells(suite)
    extra = []
    for folder in sorted((runs_dir / name).glob("*/*__*/seed_*")):
        if not folder.is_dir():
            continue
        backbone, _, strategy = folder.parent.name.partition("__")
        key = (folder.parent.parent.name, backbone, strategy, folder.name.removeprefix("seed_"))
        if key not in known:
            extra.append(folder)
    return extra


def collect_runs(runs_dir: str | Path, suite: dict) -> pd.DataFrame:
    """Tidy long table of every grid cell: one row per (cell, metric) for done runs, one row per
    cell (metric NaN) otherwise. Columns: ``COLUMNS``. ``df.attrs["out_of_grid"]`` counts
    run folders found on disk that are not part of the grid (ignored)."""
    runs_dir = Path(runs_dir)
    name, datasets, backbones, strategies, seeds = _grid(suite)
    rows = []
    for dataset in datasets:
        for backbone in backbones:
            for strategy in strategies:
                for seed in seeds:
                    base = dict(suite=name, dataset=dataset, backbone=backbone, strategy=strategy, seed=seed)
                    rows += cell_rows(base, cell_dir(runs_dir, name, dataset, backbone, strategy, seed))
    long = pd.DataFrame(rows, columns=COLUMNS)
    long["value"] = long["value"].astype(float)
    long["metric"] = long["metric"].astype(object)
    extra = _out_of_grid(runs_dir, suite)
    long.attrs["out_of_grid"] = len(extra)
    if extra:
        warnings.warn(f"{len(extra)} run folder(s) under {runs_dir / name} are outside the suite grid and were "
                      f"ignored (e.g. {extra[0]})", stacklevel=2)
    return long


def cell_status(long: pd.DataFrame) -> pd.DataFrame:
    """One row per grid cell (dataset, backbone, strategy, seed) with its status and reason."""
    keys = ["dataset", "backbone", "strategy", "seed"]
    return long.drop_duplicates(keys)[keys + ["status", "reason"]].reset_index(drop=True)


def status_counts(long: pd.DataFrame) -> pd.Series:
    """Number of grid cells (runs) in each status, in ``STATUS_ORDER`` (zeros included)."""
    return cell_status(long)["status"].value_counts().reindex(STATUS_ORDER, fill_value=0).astype(int)
