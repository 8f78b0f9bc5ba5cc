"""`dkbench report suite=<name>`: the suite's leaderboard from its run folders alone."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from dkbench.runner.compose import compose_config


def report_suite(overrides: list[str]) -> dict:
    from dkbench.leaderboard import build_report

    overrides = [o for o in overrides if not o.startswith("hydra/") and not o.startswith("hydra.")]
    cfg = compose_config(overrides)
    if cfg.get("suite") is None:
        raise ValueError("report needs a suite: `dkbench report suite=<name>` (see `dkbench list suites`)")
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    out_dir = Path(cfg.paths.reports_dir) / suite["name"]
    result = build_report(Path(cfg.paths.runs_dir), suite, out_dir)
    print(result["markdown"])
    print(f"\nreport written to {out_dir}/ (leaderboard.md, .html, .csv, .tex, PNGs)")
    return result
