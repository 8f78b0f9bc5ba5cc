"""`build_report`: run folders → tables, figures and the leaderboard in md / html / csv / tex."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from dkbench.leaderboard import plots, render, stats
from dkbench.leaderboard.collect import collect_runs, status_counts
from dkbench.leaderboard.controls import collect_controls, recovery_table
from dkbench.leaderboard.per_image import per_image_deltas
from dkbench.leaderboard.protocol import read_protocol


def _metrics(suite: dict, long: pd.DataFrame) -> list[str]:
    """The suite's metrics (rank metric first), or every observed test/* metric if none given."""
    listed = list(suite.get("metrics") or [])
    rank = suite.get("rank_metric")
    if not listed:
        observed = sorted(m for m in long["metric"].dropna().unique() if str(m).startswith("test/"))
        listed = observed or ([rank] if rank else [])
    if rank and rank not in listed:
        listed = [rank, *listed]
    return listed


def build_tables(runs_dir: str | Path, suite: dict, *, alpha: float = stats.ALPHA,
                 cd_png: str | Path | None = None) -> render.Tables:
    long = collect_runs(runs_dir, suite)
    metrics = _metrics(suite, long)
    rank_metric = suite.get("rank_metric") or (metrics[0] if metrics else "test/auroc")
    baseline = suite.get("baseline", "baseline")
    observed = sorted(long["metric"].dropna().unique())
    agg = stats.aggregate(long, list(dict.fromkeys([*metrics, *observed])))
    deltas = pd.concat([stats.paired_deltas(long, baseline, m, alpha=alpha) for m in metrics], ignore_index=True)
    cross = stats.cross_dataset_tests(deltas, alpha=alpha)
    rank_long = stats.ranks(agg, rank_metric)
    avg = stats.average_ranks(rank_long)
    if cd_png is not None:
        cd, cd_msg = stats.critical_difference(agg, rank_metric, cd_png, alpha=alpha, vector=plots.VECTOR)
    else:
        cd, cd_msg = None, "not requested"
    per_metric = [per_image_deltas(runs_dir, long, baseline, m, alpha=alpha) for m in metrics]
    per_metric = [df for df in per_metric if not df.empty]
    images = pd.concat(per_metric, ignore_index=True) if per_metric else pd.DataFrame()
    raw = stats.raw_effects(long, deltas, baseline, metrics, alpha=alpha)
    recovery = recovery_table(long, collect_controls(runs_dir, suite), suite, rank_metric, alpha=alpha)
    return render.Tables(suite={**suite, "rank_metric": rank_metric, "baseline": baseline}, long=long, agg=agg,
                         deltas=deltas, cross=cross, rank_long=rank_long, avg_ranks=avg, cd=cd, cd_message=cd_msg,
                         metrics=metrics, alpha=alpha, per_image=images, raw_effects=raw,
                         recovery=recovery, protocol=read_protocol(runs_dir, suite, long), runs_dir=Path(runs_dir))


def build_report(runs_dir: str | Path, suite: dict, out_dir: str | Path, *,
                 alpha: float = stats.ALPHA) -> dict[str, Any]:
    """Write the leaderboard of ``suite`` (read from ``runs_dir``) into ``out_dir``.

    Files: ``leaderboard.md``, ``leaderboard.html`` (self-contained), ``leaderboard.csv`` (the
    aggregated table), ``leaderboard.tex``, ``runs_long.csv`` (tidy table), ``deltas.csv``,
    ``cross_dataset.csv``, ``ranks.csv``, ``per_image.csv`` (segmentation: image-paired Wilcoxon; empty
    otherwise), ``raw_effects.csv`` (post-processing vs the baseline and vs its own raw output; empty
    when no strategy logs ``*_raw``), ``shortcut_recovery.csv`` (ceiling, floor and each strategy's
    shortcut gap recovered, for suites with ``controls``; empty otherwise), ``heatmap_delta.png``, ``bars.png`` and
    ``cd_diagram.png`` (only with ≥ 5 complete datasets); the heatmap and the CD diagram also as vector
    figures (``.svg``, ``.pdf``) for papers. Returns ``{"paths": {name: Path},
    "markdown": str, "counts": {status: runs}, "cd": message, "tables": Tables}`` (paths keyed
    by file name)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cd_png = out / "cd_diagram.png"
    for suffix in (".png", *plots.VECTOR):  # never leave a stale diagram from an earlier report
        cd_png.with_suffix(suffix).unlink(missing_ok=True)
    t = build_tables(runs_dir, suite, alpha=alpha, cd_png=cd_png)
    t.out_dir = out
    paths: dict[str, Path] = {}

    rank_deltas = t.deltas[t.deltas["metric"] == t.rank_metric]
    paths["heatmap_delta.png"] = plots.heatmap_delta(rank_deltas, out / "heatmap_delta.png", vector=plots.VECTOR)
    for suffix in plots.VECTOR:
        paths[f"heatmap_delta{suffix}"] = out / f"heatmap_delta{suffix}"
    paths["bars.png"] = plots.bars(t.agg, t.rank_metric, out / "bars.png")
    t.images = {f"Δ {t.rank_metric} vs {t.baseline}": paths["heatmap_delta.png"],
                f"{t.rank_metric} per dataset and strategy (bars from 0, 95% CI over seeds)": paths["bars.png"]}
    links = {"heatmap": "heatmap_delta.png", "bars": "bars.png"}
    if t.cd is not None:
        paths["cd_diagram.png"] = t.cd.path
        for suffix in plots.VECTOR:
            paths[f"cd_diagram{suffix}"] = t.cd.path.with_suffix(suffix)
        links = {"cd": "cd_diagram.png", **links}

    for name, df in {"leaderboard.csv": t.agg, "runs_long.csv": t.long, "deltas.csv": t.deltas,
                     "cross_dataset.csv": t.cross, "ranks.csv": t.rank_long, "per_image.csv": t.per_image,
                     "raw_effects.csv": t.raw_effects, "shortcut_recovery.csv": t.recovery}.items():
        df.to_csv(out / name, index=False)
        paths[name] = out / name
    markdown = render.render_markdown(t, links)
    if suite.get("external"):  # internal and external test scores side by side (leaderboard/external.py)
        from dkbench.leaderboard.external import external_table, render_external_markdown

        external = external_table(runs_dir, suite, t.rank_metric)
        external.to_csv(out / "external.csv", index=False)
        paths["external.csv"] = out / "external.csv"
        markdown += "\n" + render_external_markdown(external)
    for name, text in {"leaderboard.md": markdown, "leaderboard.html": render.render_html(t),
                       "leaderboard.tex": render.render_latex(t)}.items():
        (out / name).write_text(text, encoding="utf-8")
        paths[name] = out / name
    return {"paths": paths, "markdown": markdown, "counts": status_counts(t.long).to_dict(), "cd": t.cd_message,
            "tables": t}
