"""`dkbench report suite=<name>`: the suite's leaderboard from its run folders alone."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from dkbench.errors import RunConfigError
from dkbench.runner.compose import compose_config


#: report-only options (not config keys, so taken out before composing; `+key=` is accepted too);
#: publish=<folder> also copies the leaderboard and its figures there (leaderboard/publish.py)
REPORT_OPTIONS = ("compare", "compare_runs", "publish")


def _report_options(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    rest, options = [], {}
    for o in overrides:
        key, eq, value = o.removeprefix("+").partition("=")
        if eq and key in REPORT_OPTIONS:
            options[key] = value
        else:
            rest.append(o)
    return rest, options


def report_suite(overrides: list[str]) -> dict:
    from dkbench.leaderboard import build_report

    overrides = [o for o in overrides if not o.startswith("hydra/") and not o.startswith("hydra.")]
    overrides, options = _report_options(overrides)
    cfg = compose_config(overrides)
    if cfg.get("suite") is None:
        raise RunConfigError("report needs a suite: `dkbench report suite=<name>` (see `dkbench list suites`)")
    suite = OmegaConf.to_container(cfg.suite, resolve=True)
    suite["name"] += str(cfg.get("variant") or "")  # the sweep's command-line settings: run_folder.variant_suffix
    runs_dir = Path(cfg.paths.runs_dir)
    if "compare" in options or "compare_runs" in options:  # two suites side by side (leaderboard/compare.py)
        if "publish" in options:
            raise RunConfigError("publish= copies a suite's own leaderboard; drop compare=/compare_runs= to publish")
        from dkbench.leaderboard.compare import report_comparison

        return report_comparison(runs_dir, suite, Path(cfg.paths.reports_dir), options)
    if str(cfg.get("protocol") or "default") == "tuned":
        return _published(_report_tuned(runs_dir, suite, Path(cfg.paths.reports_dir)), options)
    suite_dir = runs_dir / suite["name"]
    if not any(suite_dir.glob("*/*/seed_*/status.json")):  # nothing was ever run here
        print(f"dkbench report: no run folders of suite '{suite['name']}' under {suite_dir}; run "
              f"`dkbench sweep suite={suite['name']}` first, or point paths.runs_dir (or DKBENCH_ROOT) "
              "at the folder that holds them", file=sys.stderr)
        return {}
    out_dir = Path(cfg.paths.reports_dir) / suite["name"]
    result = build_report(runs_dir, suite, out_dir)
    print(result["markdown"])
    print(f"\nreport of {suite_dir} written to {out_dir}/ (leaderboard.md, .html, .csv, .tex, figures)")
    return _published({**result, "out_dir": out_dir, "suite_name": suite["name"]}, options)


def _published(result: dict, options: dict[str, str]) -> dict:
    """`publish=<folder>`: the report's Markdown and figures copied there under the suite's name."""
    if not result or not options.get("publish"):
        return result
    from dkbench.leaderboard.publish import publish_report

    written = publish_report(result["out_dir"], Path(options["publish"]), result["suite_name"])
    print(f"published to {written[0]} (+ {len(written) - 1} figures)")
    return {**result, "published": written}


def _report_tuned(runs_dir: Path, suite: dict, reports_dir: Path) -> dict:
    """The tuned protocol's leaderboard (`<suite>@tuned`, the usual tables and tests) with the
    default-vs-tuned table appended (leaderboard/tuning.py); also tuning.csv / tuning.md."""
    from dkbench.leaderboard import build_report
    from dkbench.leaderboard.tuning import budget_line, render_tuning_markdown, tuning_table
    from dkbench.runner.tuning import TUNED_SUFFIX

    tuned = {**suite, "name": suite["name"] + TUNED_SUFFIX}
    if not any((runs_dir / tuned["name"]).glob("*/*/seed_*/status.json")):
        print(f"dkbench report: no tuned runs of suite '{suite['name']}' under {runs_dir / tuned['name']}; run "
              f"`dkbench sweep suite={suite['name']} protocol=tuned` first", file=sys.stderr)
        return {}
    out_dir = reports_dir / tuned["name"]
    result = build_report(runs_dir, tuned, out_dir)
    metric = suite.get("rank_metric") or "test/auroc"
    table = tuning_table(runs_dir, suite, metric)
    section = render_tuning_markdown(table, budget_line(runs_dir, suite), metric)
    table.to_csv(out_dir / "tuning.csv", index=False)
    (out_dir / "tuning.md").write_text(section, encoding="utf-8")
    markdown = result["markdown"] + "\n" + section
    (out_dir / "leaderboard.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"\nreport of {runs_dir / tuned['name']} written to {out_dir}/ (leaderboard.md, tuning.md, .html, .csv, PNGs)")
    return {**result, "markdown": markdown, "tuning": table, "out_dir": out_dir, "suite_name": tuned["name"]}
