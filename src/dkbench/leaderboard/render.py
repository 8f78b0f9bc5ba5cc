"""Turn the leaderboard tables into Markdown, LaTeX, CSV and one self-contained HTML page.

Display conventions: a cell is ``mean ± std (n)`` over its done seeds (std omitted for n = 1);
seeds that are not done are appended in brackets (``[1 failed]``); a cell with no done seed
shows its status (``missing``, ``failed``, ``incompatible``, ``incomplete``). Δ is the mean
paired difference strategy − baseline with its number of paired seeds, ``+0.052 (n=2)``; ``*``
marks Holm-adjusted p < alpha and is never given with fewer than ``MIN_SEEDS`` paired seeds (p
then reads ``n<3``). Bold marks the best mean of a dataset × backbone, not a test.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dkbench.leaderboard import page
from dkbench.leaderboard.collect import STATUS_ORDER, cell_dir
from dkbench.leaderboard.protocol import Protocol
from dkbench.leaderboard.stats import ALPHA, MIN_SEEDS, CDResult, higher_is_better

DIGITS = 3
NOT_DONE = tuple(s for s in STATUS_ORDER if s != "done")


@dataclass
class Tables:
    """Everything the renderers need (built by :func:`dkbench.leaderboard.report.build_report`)."""

    suite: dict
    long: pd.DataFrame
    agg: pd.DataFrame
    deltas: pd.DataFrame  # all reported metrics
    cross: pd.DataFrame
    rank_long: pd.DataFrame
    avg_ranks: pd.DataFrame
    cd: CDResult | None
    cd_message: str
    metrics: list[str]
    alpha: float = ALPHA
    images: dict[str, Path] = field(default_factory=dict)  # title -> png
    #: segmentation: per-image paired Δ vs baseline (dkbench.leaderboard.per_image); empty otherwise
    per_image: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: post-processing vs baseline and vs its own raw output (dkbench.leaderboard.stats.raw_effects)
    raw_effects: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: shortcut controls: ceiling, floor, gap recovered (dkbench.leaderboard.controls); empty without controls
    recovery: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: epochs, selection, seeds, budget, compute as the runs recorded them (dkbench.leaderboard.protocol)
    protocol: Protocol | None = None
    #: where the runs are and where the page goes: the HTML links each matrix cell to its run folder
    runs_dir: Path | None = None
    out_dir: Path | None = None

    @property
    def rank_metric(self) -> str:
        return self.suite.get("rank_metric", self.metrics[0] if self.metrics else "test/auroc")

    @property
    def baseline(self) -> str:
        return self.suite.get("baseline", "baseline")


# --------------------------------------------------------------------------------------------
# formatting helpers


def fmt(x, digits: int = DIGITS, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)) or pd.isna(x):
        return ""
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_p(p) -> str:
    if pd.isna(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def p_text(p, n: int) -> str:
    """p for display; ``n<3`` where fewer than MIN_SEEDS pairs allowed no test."""
    if n < MIN_SEEDS:
        return f"n<{MIN_SEEDS}"
    return fmt_p(p)


def _not_done_note(row) -> str:
    parts = [f"{int(row[f'n_{s}'])} {s}" for s in NOT_DONE if row.get(f"n_{s}", 0)]
    return f" [{', '.join(parts)}]" if parts else ""


def status_word(row) -> str:
    """What an empty cell shows: its status, or the mix of statuses over its seeds."""
    present = [s for s in NOT_DONE if row.get(f"n_{s}", 0)]
    if row.get("n_done", 0):
        return "n/a"  # done, but this metric was not produced
    if len(present) == 1:
        return present[0]
    return " / ".join(f"{s} ({int(row[f'n_{s}'])})" for s in present) or "missing"


def cell_text(row, digits: int = DIGITS) -> str:
    if row["n"] == 0:
        return status_word(row)
    text = fmt(row["mean"], digits) if row["n"] < 2 else f"{fmt(row['mean'], digits)} ± {fmt(row['std'], digits)}"
    return f"{text} ({int(row['n'])}){_not_done_note(row)}"


def delta_text(row, digits: int = DIGITS) -> str:
    """``+0.052 (n=2)``; ``*`` after Δ only with ≥ MIN_SEEDS pairs and Holm p < alpha."""
    if pd.isna(row["delta"]):
        return "n/a"
    n = int(row["n_pairs"])
    star = "*" if bool(row["significant"]) and n >= MIN_SEEDS else ""
    return f"{fmt(row['delta'], digits, signed=True)}{star} (n={n})"


# --------------------------------------------------------------------------------------------
# tables (strings, ready to render)


def status_table(long: pd.DataFrame) -> pd.DataFrame:
    from dkbench.leaderboard.collect import status_counts

    counts = status_counts(long)
    return pd.DataFrame({"status": list(counts.index) + ["total"], "runs": [*counts.to_list(), int(counts.sum())]})


def leaderboard_table(t: Tables, *, bold: bool = False, sparse: bool = False, metric: str | None = None
                      ) -> pd.DataFrame:
    """Rows (dataset, strategy); per backbone: ``metric`` (default the rank metric) as
    ``mean ± std (n)``, Δ vs baseline with its n and the Holm-adjusted p."""
    metric = metric or t.rank_metric
    agg = t.agg[t.agg["metric"] == metric].copy()
    agg["text"] = agg.apply(cell_text, axis=1)
    if bold:  # best mean per (dataset, backbone)
        hib = higher_is_better(metric)
        best = agg.groupby(["dataset", "backbone"])["mean"].transform("max" if hib else "min")
        mark = agg["mean"].notna() & (agg["mean"] == best)
        agg.loc[mark, "text"] = "**" + agg.loc[mark, "text"] + "**"
    d = t.deltas[t.deltas["metric"] == metric].copy()
    d["dtext"] = d.apply(delta_text, axis=1) if len(d) else pd.Series(dtype=str)
    backbones = list(dict.fromkeys(agg["backbone"]))
    rows = []
    for (dataset, strategy), grp in agg.groupby(["dataset", "strategy"], sort=False):
        row = {"dataset": dataset, "strategy": strategy}
        for backbone in backbones:
            cell = grp[grp["backbone"] == backbone]
            row[f"{backbone} {metric}"] = cell["text"].iloc[0] if len(cell) else "missing"
            if strategy == t.baseline:
                row[f"{backbone} Δ"], row[f"{backbone} p (Holm)"] = "(baseline)", ""
            else:
                dd = d[(d["dataset"] == dataset) & (d["backbone"] == backbone) & (d["strategy"] == strategy)]
                row[f"{backbone} Δ"] = dd["dtext"].iloc[0] if len(dd) else "n/a"
                row[f"{backbone} p (Holm)"] = p_text(dd["p_holm"].iloc[0], int(dd["n_pairs"].iloc[0])) if len(dd) else "n/a"
        rows.append(row)
    out = pd.DataFrame(rows)
    if sparse and len(out):
        out.loc[out["dataset"].duplicated(), "dataset"] = ""
    return out


def per_dataset_tables(t: Tables) -> dict[str, pd.DataFrame]:
    """Per dataset: strategies × (backbone, metric) with ``mean ± std (n)`` or the cell status."""
    agg = t.agg[t.agg["metric"].isin(t.metrics)].copy()
    agg["text"] = agg.apply(cell_text, axis=1) if len(agg) else pd.Series(dtype=str)
    out = {}
    for dataset, grp in agg.groupby("dataset", sort=False):
        grp = grp.assign(col=grp["backbone"] + " " + grp["metric"])
        wide = grp.pivot_table(index="strategy", columns="col", values="text", aggfunc="first", sort=False)
        cols = [f"{b} {m}" for b in dict.fromkeys(grp["backbone"]) for m in t.metrics]
        wide = wide.reindex(index=list(dict.fromkeys(grp["strategy"])), columns=cols).fillna("missing")
        out[dataset] = wide.reset_index()
    return out


def delta_table(t: Tables, metrics: list[str] | None = None) -> pd.DataFrame:
    d = t.deltas if metrics is None else t.deltas[t.deltas["metric"].isin(metrics)]
    return pd.DataFrame({
        "dataset": d["dataset"], "backbone": d["backbone"], "strategy": d["strategy"], "metric": d["metric"],
        "n pairs": d["n_pairs"], "strategy mean": d["mean_strategy"].map(fmt),
        "baseline mean": d["mean_baseline"].map(fmt), "Δ": d.apply(delta_text, axis=1) if len(d) else [],
        "gain": d["gain"].map(lambda x: fmt(x, signed=True)),
        "p (t-test)": [p_text(p, n) for p, n in zip(d["p"], d["n_pairs"], strict=True)],
        "p Holm": [p_text(p, n) for p, n in zip(d["p_holm"], d["n_pairs"], strict=True)], "note": d["note"]})


def cross_table(t: Tables) -> pd.DataFrame:
    c = t.cross
    return pd.DataFrame({
        "backbone": c["backbone"], "strategy": c["strategy"], "metric": c["metric"], "datasets": c["n_datasets"],
        "better on": c["n_better"].astype(str) + "/" + c["n_datasets"].astype(str),
        "mean gain": c["mean_gain"].map(lambda x: fmt(x, signed=True)),
        "median gain": c["median_gain"].map(lambda x: fmt(x, signed=True)),
        "p (Wilcoxon)": c["p"].map(fmt_p), "p Holm": c["p_holm"].map(fmt_p),
        "sig.": c["significant"].map(lambda s: "*" if s else ""), "note": c["note"]})


def rank_table(t: Tables) -> pd.DataFrame:
    a = t.avg_ranks
    if a.empty:
        return pd.DataFrame(columns=["strategy"])
    wide = a.pivot_table(index="strategy", columns="backbone", values="avg_rank", sort=False, dropna=False)
    wide = wide.reindex(index=list(dict.fromkeys(a["strategy"])), columns=list(dict.fromkeys(a["backbone"])))
    blocks = a.drop_duplicates("backbone").set_index("backbone")["n_blocks"]
    wide.columns = [f"{b} (n={int(blocks[b])})" for b in wide.columns]
    wide = wide.sort_values(wide.columns[-1], na_position="last")
    return wide.map(lambda x: fmt(x, 2) if pd.notna(x) else "n/a").reset_index()


def per_image_table(t: Tables, metric: str | None = None) -> pd.DataFrame:
    df = t.per_image if metric is None else t.per_image[t.per_image["metric"] == metric]
    return pd.DataFrame({
        "dataset": df["dataset"], "backbone": df["backbone"], "strategy": df["strategy"], "metric": df["metric"],
        "images × seeds": [f"{n} × {s}" for n, s in zip(df["n_images"], df["seeds"], strict=True)],
        "strategy mean": df["mean_strategy"].map(fmt), "baseline mean": df["mean_baseline"].map(fmt),
        "Δ mean": df["delta"].map(lambda x: fmt(x, signed=True)),
        "Δ median": df["median_delta"].map(lambda x: fmt(x, signed=True)),
        "better": df["share_better"].map(lambda x: f"{x:.0%}"),
        "p (Holm)": [f"{fmt_p(p)}{' *' if sig else ''}" for p, sig in zip(df["p_holm"], df["significant"], strict=True)],
    })


def raw_effects_table(t: Tables) -> pd.DataFrame:
    """Post-processing stated twice: against the baseline run and against the run's own raw output."""
    r = t.raw_effects
    if r.empty:
        return pd.DataFrame()
    star = lambda sig: "*" if sig else ""  # noqa: E731
    return pd.DataFrame({
        "dataset": r["dataset"], "backbone": r["backbone"], "strategy": r["strategy"], "metric": r["metric"],
        "baseline": r["mean_baseline"].map(fmt), "raw": r["mean_raw"].map(fmt), "post-processed": r["mean_post"].map(fmt),
        "Δ post − raw": [f"{fmt(d, signed=True)}{star(s)} (n={n})" for d, s, n in
                         zip(r["delta_vs_raw"], r["significant_vs_raw"], r["n_raw"], strict=True)],
        "p (vs raw)": [p_text(p, n) for p, n in zip(r["p_vs_raw"], r["n_raw"], strict=True)],
        "Δ raw − baseline": [f"{fmt(d, signed=True)} (n={n})" for d, n in
                             zip(r["delta_raw_vs_baseline"], r["n_baseline"], strict=True)],
        "Δ post − baseline": [f"{fmt(d, signed=True)}{star(s)} (n={n})" for d, s, n in
                              zip(r["delta_vs_baseline"], r["significant_vs_baseline"], r["n_baseline"], strict=True)],
        "p Holm (vs baseline)": [p_text(p, n) for p, n in
                                 zip(r["p_holm_vs_baseline"], r["n_baseline"], strict=True)],
    })


def recovery_display(t: Tables) -> pd.DataFrame:
    """Control rows (ceiling, floor) and each strategy's shortcut gap recovered, as text."""
    r = t.recovery
    if r.empty:
        return pd.DataFrame()
    level = round(100 * (1 - t.alpha))

    def score(row) -> str:
        if row["n"] == 0:
            return "no done run"
        sd = "" if pd.isna(row["std"]) else f" ± {fmt(row['std'])}"
        return f"{fmt(row['mean'])}{sd} ({int(row['n'])})"

    def recovered(row) -> str:
        if row["role"] != "strategy":
            return f"{fmt(row['recovered'], 2)} (definition)" if pd.notna(row["recovered"]) else "n/a"
        if pd.isna(row["recovered"]):
            return "n/a"
        ci = "" if pd.isna(row["ci_low"]) else f" [{fmt(row['ci_low'], 2)}, {fmt(row['ci_high'], 2)}]"
        return f"{fmt(row['recovered'], 2)}{ci} (n={int(row['n_pairs'])})"

    names = {"ceiling": "ceiling: {s} on {on}", "floor": "floor: {s} on {on}", "strategy": "{s}"}
    return pd.DataFrame({
        "dataset": r["dataset"], "backbone": r["backbone"],
        "row": [names[role].format(s=s, on=on) for role, s, on in zip(r["role"], r["strategy"], r["on"], strict=True)],
        f"{t.rank_metric} (n)": r.apply(score, axis=1),
        f"gap recovered [{level}% CI] (n)": r.apply(recovered, axis=1),
        "note": r["note"]})


RECOVERY_LEGEND = (
    "The suite's shortcut controls. Ceiling: the control strategy on the same data without the shortcut (what the "
    "task supports); floor: the same strategy with the shortcut (what reading the shortcut leaves at test). Gap "
    "recovered = (strategy − floor) / (ceiling − floor), computed per training seed from runs of the same seed, "
    "then mean and a two-sided t interval over those seeds (n); no interval with fewer than {min_seeds} seeds. "
    "0 = no better than the shortcut-fooled baseline, 1 = as good as a baseline that never saw the shortcut; "
    "values above 1 are possible (a strategy may use knowledge the plain baseline cannot read).")


def not_done_table(long: pd.DataFrame) -> pd.DataFrame:
    cells = long.drop_duplicates(["dataset", "backbone", "strategy", "seed"])
    cells = cells[cells["status"] != "done"]
    if cells.empty:
        return pd.DataFrame(columns=["dataset", "backbone", "strategy", "seeds", "status", "reason"])
    g = cells.groupby(["dataset", "backbone", "strategy", "status", "reason"], sort=False)["seed"]
    out = g.agg(lambda s: ", ".join(str(x) for x in s)).rename("seeds").reset_index()
    return out[["dataset", "backbone", "strategy", "seeds", "status", "reason"]]


# --------------------------------------------------------------------------------------------
# Markdown


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(empty)_"
    return df.to_markdown(index=False, disable_numparse=True)


def _header_lines(t: Tables, protocol: bool = True) -> list[str]:
    """The report's opening lines (Markdown): grid, rank metric, the protocol when known (``protocol``:
    as one bullet list; the HTML page renders it itself), the test-time knowledge in play."""
    s = t.suite
    n_runs = len(s["datasets"]) * len(s["backbones"]) * len(s["strategies"]) * len(s["seeds"])
    direction = "higher is better" if higher_is_better(t.rank_metric) else "lower is better"
    lines = [f"Rank metric **{t.rank_metric}** ({direction}); baseline **{t.baseline}**; grid "
             f"{len(s['datasets'])} datasets × {len(s['backbones'])} backbones × "
             f"{len(s['strategies'])} strategies × "
             f"{len(s['seeds'])} seeds = {n_runs} runs."]
    if protocol and t.protocol is not None:
        lines.append("Protocol:\n" + "\n".join(f"- **{k}**: {v}" for k, v in t.protocol.lines()))
    lines.append(_knowledge_line(t))
    extra = t.long.attrs.get("out_of_grid", 0)
    if extra:
        lines.append(f"**Warning:** {extra} run folder(s) on disk are outside this grid and were ignored.")
    return lines


def _knowledge_line(t: Tables) -> str:
    from dkbench.leaderboard.matrix import strategy_facts

    ran = set(t.agg.loc[t.agg["n_done"] > 0, "strategy"]) if "n_done" in t.agg else set()
    at_test = [s for s in t.suite.get("strategies", []) if s != t.baseline and s in ran and "**" in strategy_facts(s)[1]]
    return ("Knowledge each strategy used: the matrix's \"knowledge used\" column (each strategy's declaration). "
            + (f"Expert knowledge needed at test time (a different claim from image-only strategies): "
               f"{', '.join(at_test)}." if at_test else "No strategy here needs expert knowledge at test time."))


# --------------------------------------------------------------------------------------------
# across datasets: ranks, the CD diagram and the Wilcoxon tests, only where they can say something


@dataclass
class Across:
    ranks: bool  # average ranks + CD diagram (the Friedman/Nemenyi analysis ran)
    cross: pd.DataFrame  # the Wilcoxon rows with enough datasets to reach p < alpha (may be empty)
    sentence: str  # what is left out and why; "" when nothing is


def across(t: Tables) -> Across:
    """Average ranks and the CD diagram only when the Friedman + Nemenyi analysis ran
    (``stats.critical_difference``: ≥ ``CD_MIN_DATASETS`` complete datasets, ≥ 3 strategies);
    Wilcoxon rows only with ≥ ``wilcoxon_min_datasets(alpha)`` datasets (below, the exact test
    cannot reach p < alpha). What is left out is said once, in one sentence."""
    from dkbench.leaderboard.stats import CD_MIN_DATASETS, wilcoxon_min_datasets

    need = wilcoxon_min_datasets(t.alpha)
    cross = t.cross[t.cross["n_datasets"] >= need] if len(t.cross) else t.cross
    ranks = t.cd is not None
    n_datasets = len(t.suite.get("datasets", []))
    rank_part = (f"average ranks and the critical-difference diagram need the Friedman + Nemenyi analysis, which "
                 f"needs ≥ {CD_MIN_DATASETS} complete datasets and ≥ 3 strategies (Demšar 2006; here "
                 f"{t.cd_message.removeprefix('not computed: ')})")
    cross_part = (f"the exact two-sided Wilcoxon signed-rank test across datasets cannot reach p < {t.alpha} with "
                  f"fewer than {need} datasets (its smallest p is 2/2^n)")
    if not ranks and cross.empty:
        sentence = (f"With {n_datasets} dataset(s), this report states no ranking or test across datasets: "
                    f"{rank_part}, and {cross_part}.")
    elif not ranks:
        sentence = f"No average ranks or critical-difference diagram: {rank_part}."
    elif cross.empty:
        sentence = f"No test across datasets: {cross_part}."
    else:
        sentence = ""
    left = len(t.cross) - len(cross)
    if left and not cross.empty:
        sentence += (" " if sentence else "") + (
            f"{left} strategy × backbone × metric row(s) with fewer than {need} datasets with a Δ are left out of "
            f"the Wilcoxon table: with so few the exact test cannot reach p < {t.alpha}.")
    return Across(ranks=ranks, cross=cross, sentence=sentence)


def _cross_view(t: Tables, a: Across) -> pd.DataFrame:
    return cross_table(Tables(**{**t.__dict__, "cross": a.cross}))


RANKS_LEGEND = ("Rank of each strategy by mean {metric} within each dataset × backbone (1 = best, ties averaged), "
                "averaged over the complete blocks (n = number of blocks; blocks where a strategy has no result are "
                "left out: {dropped} dropped).")
CROSS_LEGEND = ("Two-sided, Holm-adjusted across strategies within each backbone × metric; gain = Δ signed so that "
                "positive = better.")


def _across_markdown(t: Tables, image_links: dict[str, str] | None) -> list[str]:
    a = across(t)
    out = ["## Across datasets: ranks, critical difference, Wilcoxon", ""]
    if a.sentence:
        out += [a.sentence, ""]
    if a.ranks:
        out += ["### Average ranks", "", RANKS_LEGEND.format(metric=t.rank_metric,
                                                            dropped=t.avg_ranks.attrs.get("dropped_blocks", 0)),
                "", md_table(rank_table(t)), "", "### Critical difference (Friedman + Nemenyi)", "", t.cd_message, ""]
        if image_links and "cd" in image_links:
            out += [f"![critical difference diagram]({image_links['cd']})", ""]
    if not a.cross.empty:
        out += ["### Wilcoxon signed-rank on per-dataset mean Δ", "", CROSS_LEGEND, "",
                md_table(_cross_view(t, a)), ""]
    return out


def _across_html(t: Tables, table) -> list[str]:
    e = html.escape
    a = across(t)
    out = ["<h2>Across datasets: ranks, critical difference, Wilcoxon</h2>"]
    if a.sentence:
        out.append(f"<p class='legend'>{e(a.sentence)}</p>")
    if a.ranks:
        legend = RANKS_LEGEND.format(metric=t.rank_metric, dropped=t.avg_ranks.attrs.get("dropped_blocks", 0))
        out += ["<h3>Average ranks</h3>", table(rank_table(t)), f"<p class='legend'>{e(legend)}</p>",
                "<h3>Critical difference (Friedman + Nemenyi)</h3>", f"<p>{e(t.cd_message)}</p>"]
        if Path(t.cd.path).exists():
            out.append(f'<img alt="critical difference diagram" src="{data_uri(t.cd.path)}">')
    if not a.cross.empty:
        out += ["<h3>Wilcoxon signed-rank on per-dataset mean Δ</h3>", table(_cross_view(t, a)),
                f"<p class='legend'>{e(CROSS_LEGEND)}</p>"]
    return out


LEGEND = ("Cells: mean ± std over done seeds (n seeds); `[k failed]` etc. counts seeds that are not done; a "
          "cell with no done seed shows its status (missing / failed / incompatible / incomplete). "
          "Δ = mean paired difference strategy − baseline over the n seeds both finished; p = paired t-test over "
          "those seeds, Holm-adjusted across strategies within dataset × backbone; `*` = p < {alpha}. With fewer "
          "than {min_seeds} paired seeds there is no test and no mark (p reads `n<{min_seeds}`). Bold = best mean "
          "of its dataset × backbone, not a test.")
PER_IMAGE_LEGEND = (
    "Each test image's value averaged over the seeds both runs finished, then paired with the baseline's on the "
    "same image; Wilcoxon signed-rank over images, Holm-adjusted across strategies within dataset × backbone × "
    "metric. `better` = share of images where the strategy beats the baseline. The images are this test's unit, "
    "but with few seeds every image's value comes from the same one or two trained models, so `*` (p < {alpha}) "
    "also needs ≥ {min_seeds} seeds per strategy; below that p is shown without a mark.")
RAW_LEGEND = (
    "Strategies whose runs also log the score before their own post-processing (`<metric>_raw`), stated against "
    "the baseline run and against their own raw output. Δ post − raw: same runs, paired over seeds (t-test, no "
    "mark with fewer than {min_seeds} seeds; one comparison per cell, not Holm-adjusted). Δ raw − baseline and "
    "Δ post − baseline: paired over seeds with the baseline; p Holm as in the leaderboard. The two Δ vs baseline "
    "split the effect into the trained model's part and the post-processing's part. Δ is in the metric's units: for "
    "lower-is-better metrics (HD95) a negative Δ is an improvement.")


def _legend(text: str, t: Tables) -> str:
    return text.format(alpha=t.alpha, min_seeds=MIN_SEEDS)


def _matrix(t: Tables):
    from dkbench.leaderboard.matrix import build_matrix

    return build_matrix(t.agg, t.deltas, t.suite, t.rank_metric, t.baseline)


def render_markdown(t: Tables, image_links: dict[str, str] | None = None) -> str:
    from dkbench.leaderboard import matrix

    header = [x for line in _header_lines(t) for x in (line, "")]
    out = [f"# Leaderboard: {t.suite.get('name', '')}", "", *header,
           f"## At a glance: Δ {t.rank_metric} vs {t.baseline}, by survey family", "",
           matrix.render_markdown(_matrix(t), t.suite, t.baseline, t.alpha), ""]
    for metric in [m for m in t.metrics if m != t.rank_metric]:  # every metric's Δ up front, not only in CSV
        m = matrix.build_matrix(t.agg, t.deltas, t.suite, metric, t.baseline)
        out += [f"### Δ {metric} vs {t.baseline}", "", "Same layout, marks and notes as above.", "",
                matrix.render_markdown(m, t.suite, t.baseline, t.alpha, legend=False), ""]
    out += ["## Run status", "", md_table(status_table(t.long)), ""]
    out += [f"## Leaderboard ({t.rank_metric})", "", md_table(leaderboard_table(t, bold=True, sparse=True)), "",
            _legend(LEGEND, t), ""]
    for metric in [m for m in t.metrics if m != t.rank_metric]:
        out += [f"### Leaderboard ({metric})", "",
                md_table(leaderboard_table(t, bold=True, sparse=True, metric=metric)), ""]
    if not t.recovery.empty:
        out += ["## Shortcut controls: ceiling, floor and the gap recovered", "", _legend(RECOVERY_LEGEND, t), "",
                md_table(recovery_display(t)), ""]
    if not t.raw_effects.empty:
        out += ["## Post-processing: against the baseline and against the run's own raw output", "",
                _legend(RAW_LEGEND, t), "", md_table(raw_effects_table(t)), ""]
    out += _across_markdown(t, image_links)
    out += ["## Δ vs baseline per dataset (paired t-test over seeds)", "",
            f"p reads `n<{MIN_SEEDS}` with fewer than {MIN_SEEDS} paired seeds (no test) and n/a with zero variance of "
            "the differences (see note). Also in `deltas.csv`.", ""]
    for metric in t.metrics:
        out += [f"### {metric}", "", md_table(delta_table(t, [metric])), ""]
    if not t.per_image.empty:
        out += ["## Δ vs baseline per image (Wilcoxon signed-rank over test images)", "",
                _legend(PER_IMAGE_LEGEND, t), ""]
        for metric in dict.fromkeys(t.per_image["metric"]):
            out += [f"### {metric}", "", md_table(per_image_table(t, metric)), ""]
    out += ["## Per-dataset results", ""]
    for dataset, table in per_dataset_tables(t).items():
        out += [f"### {dataset}", "", md_table(table), ""]
    out += ["## Runs not done", "", md_table(not_done_table(t.long)), ""]
    if image_links:
        out += ["## Figures", ""]
        out += [f"![{name}]({link})" for name, link in image_links.items() if name != "cd"]
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# LaTeX (own renderer: DataFrame.to_latex needs jinja2, which dkbench does not depend on)

_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "±": r"$\pm$", "Δ": r"$\Delta$",
                  "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$", "α": r"$\alpha$", "−": "-"}


def latex_escape(text) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def latex_tabular(df: pd.DataFrame, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs ``table`` with one left-aligned column per DataFrame column (cells as text)."""
    lines = [r"\begin{table}[ht]", r"\centering", r"\small"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{'l' * max(1, len(df.columns))}}}", r"\toprule",
              " & ".join(latex_escape(c) for c in df.columns) + r" \\", r"\midrule"]
    for row in df.itertuples(index=False):
        lines.append(" & ".join(latex_escape("" if pd.isna(v) else v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def render_latex(t: Tables) -> str:
    from dkbench.leaderboard import matrix

    name = t.suite.get("name", "")
    parts = [f"% dkbench leaderboard for suite {name}; needs \\usepackage{{booktabs}}", "",
             matrix.render_latex(_matrix(t), t.suite, t.baseline, t.alpha),
             *[latex_tabular(leaderboard_table(t, metric=m), f"{name}: {m} (mean ± std (n)), Δ vs {t.baseline} "
                             f"(n paired seeds) and Holm p; * = Holm p<{t.alpha}, never with n<{MIN_SEEDS}",
                             "tab:leaderboard" if m == t.rank_metric else f"tab:leaderboard-{m.replace('/', '-')}")
               for m in dict.fromkeys([t.rank_metric, *t.metrics])],
             latex_tabular(status_table(t.long), f"{name}: run status", "tab:status")]
    a = across(t)
    if a.ranks:
        parts.append(latex_tabular(rank_table(t), f"{name}: average rank by {t.rank_metric} over complete "
                                   "dataset × backbone blocks (1 = best)", "tab:ranks"))
    if not a.cross.empty:
        parts.append(latex_tabular(_cross_view(t, a).drop(columns=["note"]), f"{name}: two-sided Wilcoxon "
                                   "signed-rank test across datasets on per-dataset mean Δ, Holm-adjusted across "
                                   "strategies within backbone × metric", "tab:wilcoxon"))
    if a.sentence:
        parts.append(f"% {a.sentence}")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# HTML

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 0 2em 2em; color: #222;
       max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
td.note { white-space: normal; }
table.matrix td.cell { text-align: right; } table.matrix td.incompatible, table.matrix td.none { color: #888; }
table.matrix tr.family th { text-align: left; background: #e8eef5; } td.absolute { font-weight: 600; }
.status-done { color: #1a7f37; } .status-failed { color: #cf222e; } .status-incompatible { color: #8250df; }
.status-incomplete { color: #bf8700; } .status-missing { color: #6e7781; }
.counts span { display: inline-block; margin-right: 1.2em; font-weight: 600; }
p.legend { font-size: 0.85em; color: #555; max-width: 70em; }
dl.protocol { display: grid; grid-template-columns: max-content auto; gap: 0.1em 1em; font-size: 0.9em; }
dl.protocol dt { font-weight: 600; } dl.protocol dd { margin: 0; }
img { max-width: 100%; border: 1px solid #eee; }
""" + page.CSS


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def _md_bold_to_html(text: str) -> str:
    return re.sub(r"[*][*](.+?)[*][*]", r"<b>\1</b>", text)


def _families(t: Tables) -> dict[str, str]:
    from dkbench.leaderboard.matrix import strategy_facts

    # the baseline is every row's reference: no family filter hides it
    return {s: strategy_facts(s)[0] for s in t.suite.get("strategies", []) if s != t.baseline}


def run_links(t: Tables):
    """(dataset, backbone, strategy) → (href of the cell's folder, href of the first seed's
    config.yaml or None), relative to the page, or None when the page does not know where the runs
    are or the folder is absent. Relative, so a copied runs + reports tree keeps its links."""
    if t.runs_dir is None or t.out_dir is None:
        return None
    runs_dir, out_dir = Path(t.runs_dir), Path(t.out_dir)

    def link(dataset: str, backbone: str, strategy: str):
        folder = cell_dir(runs_dir, t.suite["name"], dataset, backbone, strategy, 0).parent
        if not folder.is_dir():
            return None
        configs = [cell_dir(runs_dir, t.suite["name"], dataset, backbone, strategy, k) / "config.yaml"
                   for k in t.suite.get("seeds", [])]
        config = next((c for c in configs if c.is_file()), None)
        rel = lambda p: Path(os.path.relpath(p, out_dir)).as_posix()  # noqa: E731
        return rel(folder) + "/", rel(config) if config else None

    return link


def render_html(t: Tables) -> str:
    from dkbench.leaderboard import matrix

    e = html.escape
    families = _families(t)
    table = lambda df: page.html_table(df, families=families, backbones=t.suite["backbones"],  # noqa: E731
                                       metrics=t.metrics)
    counts = status_table(t.long)
    matrices = {m: matrix.build_matrix(t.agg, t.deltas, t.suite, m, t.baseline) for m in t.metrics}
    shown = [k for k in dict.fromkeys(r.family for m in matrices.values() for r in m.rows)]
    filters = {"family": [(k, matrix._family_label(k)) for k in sorted(shown)],
               "dataset": [(d, d) for d in t.suite["datasets"]], "backbone": [(b, b) for b in t.suite["backbones"]],
               "metric": [(m, m) for m in t.metrics]}
    body = [f"<h1>Leaderboard: {e(str(t.suite.get('name', '')))}</h1>"]
    body += [f"<p>{_md_bold_to_html(e(line))}</p>" for line in _header_lines(t, protocol=False)]
    if t.protocol is not None:
        body.append("<dl class='protocol'>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>"
                                                       for k, v in t.protocol.lines()) + "</dl>")
    body.append('<p class="counts">' + "".join(
        f'<span class="status-{e(s)}">{e(s)}: {n}</span>' for s, n in zip(counts["status"], counts["runs"])) + "</p>")
    body.append(page.controls(filters))
    links = run_links(t)
    body.append("<h2>At a glance: Δ vs baseline, by survey family</h2>")
    body.append('<p class="legend">Filter with the bar above; click a column header to sort (best first, again to '
                "reverse; <i>family</i> restores the grouping); switch the cells between Δ and the strategy's own "
                "score; a cell links to its run folders (<i>cfg</i>: a seed's config).</p>")
    for metric, m in matrices.items():
        body.append(f"<section class='matrix-block' id='matrix-{page.slug(metric)}' data-metric='{e(metric)}'>"
                    f"<h3>{e(metric)}{' (rank metric)' if metric == t.rank_metric else ''}</h3>"
                    + matrix.render_html(m, t.suite, t.baseline, t.alpha, links) + "</section>")
    body += [f"<h2>Leaderboard ({e(t.rank_metric)})</h2>", table(leaderboard_table(t)),
             f'<p class="legend">{e(_legend(LEGEND, t))}</p>']
    for metric in [m for m in t.metrics if m != t.rank_metric]:
        body += [f"<section data-metric='{e(metric)}'><h3>Leaderboard ({e(metric)})</h3>",
                 table(leaderboard_table(t, metric=metric)), "</section>"]
    if not t.recovery.empty:
        body += ["<h2>Shortcut controls: ceiling, floor and the gap recovered</h2>",
                 f'<p class="legend">{e(_legend(RECOVERY_LEGEND, t))}</p>', table(recovery_display(t))]
    if not t.raw_effects.empty:
        body += ["<h2>Post-processing: against the baseline and against the run's own raw output</h2>",
                 f'<p class="legend">{e(_legend(RAW_LEGEND, t))}</p>', table(raw_effects_table(t))]
    body += _across_html(t, table)
    body += ["<h2>Δ vs baseline per dataset (paired t-test over seeds, Holm within dataset × backbone)</h2>",
             table(delta_table(t))]
    if not t.per_image.empty:
        body += ["<h2>Δ vs baseline per image (Wilcoxon signed-rank over test images)</h2>",
                 f'<p class="legend">{e(_legend(PER_IMAGE_LEGEND, t))}</p>', table(per_image_table(t))]
    body.append("<h2>Per-dataset results</h2>")
    for dataset, df in per_dataset_tables(t).items():
        body += [f"<section data-dataset='{e(dataset)}'><h3>{e(dataset)}</h3>", table(df), "</section>"]
    body += ["<h2>Runs not done</h2>", table(not_done_table(t.long))]
    if t.images:
        body.append("<h2>Figures</h2>")
        body += [f'<h3>{e(title)}</h3><img alt="{e(title)}" src="{data_uri(png)}">'
                 for title, png in t.images.items() if Path(png).exists()]
    title = e(f"dkbench leaderboard: {t.suite.get('name', '')}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head>\n<body data-mode='delta'>\n<div id='report'>\n" + "\n".join(body)
            + f"\n</div>\n<script>{page.SCRIPT}</script>\n</body></html>\n")
