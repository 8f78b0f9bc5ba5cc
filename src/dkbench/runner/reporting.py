"""`dkbench report suite=<name>`: the suite's leaderboard from its run folders alone."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from dkbench.errors import RunConfigError
from dkbench.runner.compose import compose_config


def report_suite(overrides: list[str]) -> dict:
    from dkbench.leaderboard import build_report

    overrides = [o for o in overrides if not o.startswith("hydra/") and not o.startswith("hydra.")]
    cfg = compose_config(overrides)
    if cfg.get("suite") is None:
        raise RunConfigError("report needs a suite: `dkbench report suite=<name>` (see `dkbench list suites`)")
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    runs_dir = Path(cfg.paths.runs_dir)
    suite_dir = runs_dir / suite["name"]
    if not any(suite_dir.glob("*/*/seed_*/status.json")):  # nothing was ever run here
        print(f"dkbench report: no run folders of suite '{suite['name']}' under {suite_dir}; run "
              f"`dkbench sweep suite={suite['name']}` first, or point paths.runs_dir (or DKBENCH_ROOT) "
              "at the folder that holds them", file=sys.stderr)
        return {}
    out_dir = Path(cfg.paths.reports_dir) / suite["name"]
    result = build_report(runs_dir, suite, out_dir)
    print(result["markdown"])
    print(f"\nreport of {suite_dir} written to {out_dir}/ (leaderboard.md, .html, .csv, .tex, PNGs)")
    return result
