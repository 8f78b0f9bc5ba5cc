"""`dkbench reproduce run=<run folder>`: retrain a finished run with today's code and compare.

A cell's hash is its configuration, not the code (finished cells are never recomputed), so a
suite's runs may come from several commits; the report's **code** line says which. Whether an
older run still stands for the current code is a measurement, not an assumption: this retrains
the run from its own resolved `config.yaml` (same seed, same settings, pre-stages included) into a
scratch folder — the original is never touched — and compares every recorded val/test number,
the selected epoch, the config hash and the data checksum. On CPU a dkbench run is deterministic,
so "identical" is the expected answer; GPU kernels are not bit-exact, hence `tolerance=`.
The comparison is written beside the new run as `reproduction.json`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dkbench.errors import RunConfigError
from dkbench.runner.run_folder import RunFolder, config_hash
from dkbench.storage import atomic_write_text

#: recorded numbers compared between the run and its reproduction
COMPARED_PREFIXES = ("test/", "val/")


def scratch_config(cfg: DictConfig, original: Path, into: Path, today: DictConfig) -> DictConfig:
    """`cfg` with every output path under `into` and the data read from today's data folder.

    The saved config is resolved: `paths.run_dir` and what derives from it (the CSV logger's
    folder, a placement lock, ...) are plain strings by now. Each string under one of the run's
    recorded folders becomes an interpolation of that folder again (`${paths.run_dir}/csv`), and
    `paths` gets today's templates with `into` as its root, so the run lands at the same place
    under `into` — and a pre-stage composed from this config (the baseline a post-hoc run shares,
    a teacher) follows its own strategy to its own folder instead of sharing this one's.
    `today`: the config composed in this environment (its path templates, data and weights folders)."""
    templates = OmegaConf.to_container(today.paths, resolve=False)
    keys = ("run_dir", "cache_dir", "runs_dir", "reports_dir", "weights_dir", "data_dir", "root_dir")
    old = {k: str(cfg.paths[k]).rstrip("/") for k in keys if cfg.paths.get(k)}
    prefixes = sorted(old.items(), key=lambda kv: -len(kv[1]))  # the most specific folder first

    def interpolated(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: interpolated(v) for k, v in value.items()}
        if isinstance(value, list):
            return [interpolated(v) for v in value]
        if isinstance(value, str):
            for key, prefix in prefixes:
                if value == prefix or value.startswith(prefix + "/"):
                    return "${paths." + key + "}" + value[len(prefix):]
        return value

    container = interpolated(OmegaConf.to_container(cfg, resolve=False))
    container["paths"] = {**templates, "root_dir": str(into), "data_dir": str(today.paths.data_dir),
                          "weights_dir": str(today.paths.weights_dir)}
    scratch = OmegaConf.create(container)
    if Path(scratch.paths.run_dir).resolve() == original.resolve():
        raise RunConfigError(f"into={into} would retrain into the run's own folder; give another folder")
    return scratch


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if k.startswith(COMPARED_PREFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def compare_metrics(recorded: dict[str, Any], now: dict[str, Any], tolerance: float = 0.0) -> dict[str, Any]:
    """Every recorded val/test number against the reproduction's; NaN equals NaN. `differ` lists
    the metrics further apart than `tolerance` (absolute), `missing` those the reproduction lacks."""
    a, b = _numbers(recorded), _numbers(now)
    missing = sorted(set(a) - set(b))
    gaps = {k: abs(a[k] - b[k]) for k in sorted(set(a) & set(b))
            if not (math.isnan(a[k]) and math.isnan(b[k]))}
    gaps = {k: (math.inf if math.isnan(g) else g) for k, g in gaps.items()}
    differ = {k: {"recorded": a[k], "now": b[k]} for k, g in gaps.items() if g > tolerance}
    epochs = ((recorded.get("selection") or {}).get("best_epoch"), (now.get("selection") or {}).get("best_epoch"))
    return {"compared": len(gaps), "identical": sum(g == 0 for g in gaps.values()),
            "max_abs_diff": max(gaps.values(), default=0.0), "differ": differ, "missing": missing,
            "selected_epoch": {"recorded": epochs[0], "now": epochs[1]}}


def reproduce(run_dir: str | Path, into: str | Path | None = None, tolerance: float = 0.0) -> dict[str, Any]:
    """Retrain `run_dir` under `into` (default `<paths.root_dir>/reproduce`) and compare; returns
    the record also written as `reproduction.json` in the new run folder. `agrees` is True when
    no number differs by more than `tolerance`, none is missing and the same epoch was selected."""
    from dkbench.runner.compose import compose_config
    from dkbench.runner.train import train

    if tolerance < 0 or math.isnan(tolerance):
        raise RunConfigError(f"tolerance={tolerance} must be ≥ 0 (an absolute difference; 0: identical)")
    run = RunFolder(run_dir)
    cfg = run.finished_config("reproduce")
    today = compose_config([])
    into = Path(into) if into else Path(today.paths.root_dir) / "reproduce"
    cfg = scratch_config(cfg, run.path, into, today)
    recorded = run.read_json("metrics.json")
    recorded_meta = run.read_json("metadata.json") if run.file("metadata.json").exists() else {}
    train(cfg)  # an existing finished reproduction (same config hash) is read back, not retrained
    new_run = RunFolder(cfg.paths.run_dir)
    now, now_meta = new_run.read_json("metrics.json"), new_run.read_json("metadata.json")
    comparison = compare_metrics(recorded, now, tolerance)
    same_epoch = comparison["selected_epoch"]["recorded"] == comparison["selected_epoch"]["now"]
    record = {
        "run": str(run.path), "reproduction": str(new_run.path), "tolerance": tolerance,
        "agrees": not comparison["differ"] and not comparison["missing"] and same_epoch,
        **comparison,
        "config_hash": {"recorded": run.done_hash, "now": config_hash(cfg)},
        "git_sha": {"recorded": recorded_meta.get("git_sha"), "now": now_meta.get("git_sha")},
        "data_checksum_sha256": {"recorded": (recorded_meta.get("data") or {}).get("checksum_sha256"),
                                 "now": (now_meta.get("data") or {}).get("checksum_sha256")},
    }
    atomic_write_text(new_run.file("reproduction.json"), json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def summary_line(record: dict[str, Any]) -> str:
    """One line: the verdict, what was compared and what differs (at most three metrics named)."""
    code = record["git_sha"]
    head = (f"{'REPRODUCED' if record['agrees'] else 'DIFFERS'}: {record['identical']}/{record['compared']} "
            f"val/test numbers identical, max |Δ| {record['max_abs_diff']:.3g}, selected epoch "
            f"{record['selected_epoch']['recorded']} → {record['selected_epoch']['now']}; code "
            f"{str(code['recorded'])[:7]} → {str(code['now'])[:7]}")
    if record["config_hash"]["recorded"] != record["config_hash"]["now"]:
        head += "; config hash changed (the saved config no longer means the same run)"
    data = record["data_checksum_sha256"]
    if data["recorded"] and data["recorded"] != data["now"]:
        head += "; the data changed (checksum)"
    shown = list(record["differ"].items())[:3]
    if shown:
        head += "; " + ", ".join(f"{k} {v['recorded']:.4f} → {v['now']:.4f}" for k, v in shown)
    if record["missing"]:
        head += f"; missing now: {', '.join(record['missing'][:3])}"
    return head + f" ({record['reproduction']}/reproduction.json)"
