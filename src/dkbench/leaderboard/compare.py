"""Two reports side by side: the same grid run twice (default vs tuned settings, CPU vs GPU, one
code version vs another), with the difference per cell (`dkbench report suite=A compare=B`).

Per (dataset, backbone, strategy, metric) of the grid both suites share: each side's mean ± std
(n) over its done seeds, the difference B − A, and — over the seeds both sides finished, which
pairs the same seed's data split, initialisation and order — the paired t-test of B vs A
(``stats.paired_test``: no test with fewer than ``MIN_SEEDS`` pairs), Holm-adjusted across the
strategies of each dataset × backbone × metric, as the leaderboard's Δ vs baseline is. Beside it,
each side's Δ vs its own baseline, because "does the strategy still help under B?" is the usual
question and a shift of every row (a faster machine, a better-tuned baseline) is not an answer.
"""

from __future__ import annotations

import html
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from dkbench.errors import UserError
from dkbench.leaderboard import page, stats
from dkbench.leaderboard.collect import collect_runs
from dkbench.leaderboard.render import p_text

COLUMNS = ["dataset", "backbone", "strategy", "metric", "higher_is_better", "mean_a", "std_a", "n_a", "mean_b",
           "std_b", "n_b", "diff", "n_pairs", "paired_diff", "p", "p_holm", "significant", "note", "delta_a",
           "delta_b", "gain_b_minus_a"]


def shared_grid(suite_a: dict, suite_b: dict) -> tuple[dict, list[str]]:
    """The grid both suites hold (suite A's order), and a line per axis one side lacks."""
    grid, left_out = dict(suite_a), []
    for axis in ("datasets", "backbones", "strategies", "metrics"):
        a, b = list(suite_a.get(axis) or []), list(suite_b.get(axis) or [])
        if axis == "metrics" and not (a and b):
            continue
        both = [x for x in a if x in b]
        only = [f"{x} (only in {suite_a['name']})" for x in a if x not in b]
        only += [f"{x} (only in {suite_b['name']})" for x in b if x not in a]
        if only:
            left_out.append(f"{axis}: {', '.join(only)}")
        grid[axis] = both
    if suite_a.get("baseline", "baseline") not in grid["strategies"]:
        raise UserError(f"cannot compare '{suite_a['name']}' with '{suite_b['name']}': they share no baseline "
                        f"strategy '{suite_a.get('baseline', 'baseline')}'; compare suites of the same grid")
    if not grid["datasets"] or not grid["backbones"]:
        raise UserError(f"cannot compare '{suite_a['name']}' with '{suite_b['name']}': no dataset × backbone in "
                        "common; compare suites of the same grid")
    return grid, left_out


def compare_table(runs_a: str | Path, suite_a: dict, runs_b: str | Path, suite_b: dict,
                  alpha: float = stats.ALPHA) -> pd.DataFrame:
    """One row per shared (dataset, backbone, strategy, metric): ``COLUMNS``."""
    grid, _ = shared_grid(suite_a, suite_b)
    with warnings.catch_warnings():  # folders outside the shared grid are expected here
        warnings.simplefilter("ignore")
        long_a = collect_runs(runs_a, {**grid, "name": suite_a["name"], "seeds": suite_a["seeds"]})
        long_b = collect_runs(runs_b, {**grid, "name": suite_b["name"], "seeds": suite_b["seeds"]})
    baseline = grid.get("baseline", "baseline")
    metrics = list(grid.get("metrics") or []) or sorted(
        set(long_a["metric"].dropna()) & set(long_b["metric"].dropna()))
    rows = []
    for metric in metrics:
        sign = stats.direction(metric)
        values = [_values(long, metric) for long in (long_a, long_b)]
        deltas = [stats.paired_deltas(long, baseline, metric, alpha=alpha).set_index(stats.CELL)["delta"]
                  for long in (long_a, long_b)]
        for dataset in grid["datasets"]:
            for backbone in grid["backbones"]:
                for strategy in grid["strategies"]:
                    key = (dataset, backbone, strategy)
                    a, b = values[0].get(key, pd.Series(dtype=float)), values[1].get(key, pd.Series(dtype=float))
                    pair = pd.concat({"a": a, "b": b}, axis=1, join="inner").dropna()
                    row = dict(dataset=dataset, backbone=backbone, strategy=strategy, metric=metric,
                               higher_is_better=sign > 0, mean_a=a.mean() if len(a) else np.nan,
                               std_a=a.std(ddof=1) if len(a) > 1 else np.nan, n_a=len(a),
                               mean_b=b.mean() if len(b) else np.nan,
                               std_b=b.std(ddof=1) if len(b) > 1 else np.nan, n_b=len(b), n_pairs=len(pair),
                               paired_diff=(pair["b"] - pair["a"]).mean() if len(pair) else np.nan,
                               p=np.nan, note="")
                    row["diff"] = row["mean_b"] - row["mean_a"]
                    if len(pair):
                        test = stats.paired_test(pair["b"].to_numpy(float), pair["a"].to_numpy(float))
                        row.update(p=test.get("p", np.nan), note=test.get("note", ""))
                    else:
                        row["note"] = "no seed done on both sides"
                    da = deltas[0].get(key, np.nan) if strategy != baseline else np.nan
                    db = deltas[1].get(key, np.nan) if strategy != baseline else np.nan
                    row.update(delta_a=da, delta_b=db, gain_b_minus_a=sign * (db - da))
                    rows.append(row)
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "significant")])
    out["p_holm"] = stats.holm_by(out, "p", ["dataset", "backbone", "metric"]).astype(float)
    out["significant"] = (out["p_holm"] < alpha) & (out["n_pairs"] >= stats.MIN_SEEDS)
    out = out[COLUMNS]
    out.attrs["baseline"] = baseline
    return out


def _values(long: pd.DataFrame, metric: str) -> dict[tuple, pd.Series]:
    done = long[(long["status"] == "done") & (long["metric"] == metric)]
    return {key: grp.set_index("seed")["value"].astype(float) for key, grp in done.groupby(stats.CELL, sort=False)}


# --------------------------------------------------------------------------------------------
# rendering


def _score(mean: float, std: float, n: int) -> str:
    if not n or math.isnan(mean):
        return "—"
    return f"{mean:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}") + f" (n={n})"


def cell_text(r) -> str:
    """``0.712 → 0.745: +0.033* (n=3)``: A's mean, B's mean, B − A (``*``: Holm p < alpha over ≥ 3
    paired seeds; n = seeds both sides finished)."""
    if not r["n_a"] and not r["n_b"]:
        return "—"
    a = "—" if not r["n_a"] else f"{r['mean_a']:.3f}"
    b = "—" if not r["n_b"] else f"{r['mean_b']:.3f}"
    if math.isnan(r["diff"]):
        return f"{a} → {b}"
    star = "*" if r["significant"] else ""
    return f"{a} → {b}: {r['diff']:+.3f}{star} (n={int(r['n_pairs'])})"


def display_table(table: pd.DataFrame, name_a: str, name_b: str) -> pd.DataFrame:
    def delta(x):
        return "" if pd.isna(x) else f"{x:+.3f}"

    return pd.DataFrame({
        "dataset": table["dataset"], "backbone": table["backbone"], "strategy": table["strategy"],
        "metric": table["metric"],
        name_a: [_score(m, s, n) for m, s, n in zip(table["mean_a"], table["std_a"], table["n_a"])],
        name_b: [_score(m, s, n) for m, s, n in zip(table["mean_b"], table["std_b"], table["n_b"])],
        "B − A": [("" if pd.isna(d) else f"{d:+.3f}{'*' if s else ''}") for d, s in
                  zip(table["diff"], table["significant"])],
        "paired seeds": table["n_pairs"].astype(int),
        "p Holm": [p_text(p, n) for p, n in zip(table["p_holm"], table["n_pairs"])],
        f"Δ vs baseline ({name_a})": table["delta_a"].map(delta),
        f"Δ vs baseline ({name_b})": table["delta_b"].map(delta), "note": table["note"]})


def _legend(name_a: str, name_b: str, alpha: float) -> str:
    return (f"Cells: mean of {name_a} → mean of {name_b}: their difference B − A, n = seeds done on both sides. "
            f"`*` = paired t-test of B vs A over those seeds, Holm-adjusted across strategies within dataset × "
            f"backbone × metric, p < {alpha}, never with fewer than {stats.MIN_SEEDS} paired seeds. Δ vs baseline "
            "(long table): each side's paired difference from its own baseline, so a shift of every row (a faster "
            "machine, a better-tuned baseline) is told apart from a change in what a strategy adds.")


def render_markdown(table: pd.DataFrame, name_a: str, name_b: str, left_out: list[str],
                    alpha: float = stats.ALPHA) -> str:
    from dkbench.leaderboard.matrix import _family_label, strategy_facts

    out = [f"# Comparison: {name_a} (A) vs {name_b} (B)", "", _legend(name_a, name_b, alpha), ""]
    if left_out:
        out += ["Not compared (in one suite only): " + "; ".join(left_out) + ".", ""]
    for metric, sub, columns, line in _per_metric(table):
        out += [f"## {metric}", ""] + ([line, ""] if line else []) + [
            "| family | strategy | " + " | ".join(f"{d} · {b}" for d, b in columns) + " |",
            "|---|---|" + "---|" * len(columns)]
        previous = None
        for strategy, rows in _by_family(sub):
            family = "" if strategy == sub.attrs["baseline"] else strategy_facts(strategy)[0]
            label = f"**{_family_label(family)}**" if family and family != previous else ""
            previous = family
            cells = {(r["dataset"], r["backbone"]): cell_text(r) for _, r in rows.iterrows()}
            out.append(f"| {label} | {strategy} | " + " | ".join(cells.get(c, "—") for c in columns) + " |")
        out.append("")
    out += ["## Every cell", "", display_table(table, name_a, name_b).to_markdown(index=False, disable_numparse=True),
            ""]
    return "\n".join(out)


def _per_metric(table: pd.DataFrame):
    """(metric, rows, columns, line): per metric the rows of the strategies and dataset · backbone
    columns with a result on at least one side; ``line`` names what was dropped for having none
    (an incompatible strategy, a dataset one suite never ran), so empty rows take no space."""
    for metric, sub in table.groupby("metric", sort=False):
        has = (sub["n_a"] > 0) | (sub["n_b"] > 0)
        strategies = set(sub.loc[has, "strategy"])
        columns = [c for c in dict.fromkeys(zip(sub["dataset"], sub["backbone"]))
                   if has[(sub["dataset"] == c[0]) & (sub["backbone"] == c[1])].any()]
        empty_s = [x for x in dict.fromkeys(sub["strategy"]) if x not in strategies]
        empty_c = [f"{d} · {b}" for d, b in dict.fromkeys(zip(sub["dataset"], sub["backbone"])) if (d, b) not in columns]
        parts = ([f"strategies {', '.join(empty_s)}"] if empty_s else []) + (
            [f"columns {', '.join(empty_c)}"] if empty_c else [])
        line = f"No done run on either side, left out: {'; '.join(parts)}." if parts else ""
        rows = sub[sub["strategy"].isin(strategies) & sub.apply(lambda r: (r["dataset"], r["backbone"]) in columns,
                                                                   axis=1)]
        rows.attrs["baseline"] = table.attrs.get("baseline", "baseline")
        yield metric, rows, columns, line


def _by_family(sub: pd.DataFrame):
    """(strategy, rows): the baseline first, then by survey family (suite order within one)."""
    from dkbench.leaderboard.matrix import strategy_facts
    from dkbench.strategies.base import FAMILIES

    order = {k: i for i, k in enumerate(FAMILIES)}
    baseline = sub.attrs.get("baseline", "baseline")
    strategies = sorted(dict.fromkeys(sub["strategy"]), key=lambda s: (
        s != baseline, order.get(strategy_facts(s)[0], len(order))))  # stable: suite order within a family
    return [(s, sub[sub["strategy"] == s]) for s in strategies]


def render_html(table: pd.DataFrame, name_a: str, name_b: str, left_out: list[str],
                alpha: float = stats.ALPHA) -> str:
    from dkbench.leaderboard.matrix import _family_label, strategy_facts
    from dkbench.leaderboard.render import CSS

    e = html.escape
    baseline = table.attrs.get("baseline", "baseline")  # the reference row: no family filter hides it
    families = {s: strategy_facts(s)[0] for s in dict.fromkeys(table["strategy"]) if s != baseline}
    filters = {"family": [(k, _family_label(k)) for k in sorted(set(families.values()) - {""})],
               "dataset": [(d, d) for d in dict.fromkeys(table["dataset"])],
               "backbone": [(b, b) for b in dict.fromkeys(table["backbone"])],
               "metric": [(m, m) for m in dict.fromkeys(table["metric"])]}
    body = [f"<h1>Comparison: {e(name_a)} (A) vs {e(name_b)} (B)</h1>", f"<p class='legend'>{e(_legend(name_a, name_b, alpha))}</p>"]
    if left_out:
        body.append(f"<p>Not compared (in one suite only): {e('; '.join(left_out))}.</p>")
    body.append(page.controls(filters).replace("Δ vs baseline</label>", "B − A</label>")
                .replace("absolute score</label>", "A → B</label>"))
    for metric, sub, columns, line in _per_metric(table):
        where = [f" data-dataset='{e(d)}' data-backbone='{e(b)}'" for d, b in columns]
        head = "".join(f"<th data-sort='num'{w}>{e(d)}<br><small>{e(b)}</small></th>" for (d, b), w in zip(columns, where))
        rows = []
        for strategy, cells in _by_family(sub):
            by = {(r["dataset"], r["backbone"]): r for _, r in cells.iterrows()}
            tds = []
            for c, w in zip(columns, where):
                r = by.get(c)
                if r is None or (not r["n_a"] and not r["n_b"]):
                    tds.append(f"<td class='cell none'{w}>—</td>")
                    continue
                gain = stats.direction(metric) * r["diff"]
                diff_text = "—" if math.isnan(r["diff"]) else (
                    f"{r['diff']:+.3f}{'*' if r['significant'] else ''} (n={int(r['n_pairs'])})")
                both = f"{_score(r['mean_a'], r['std_a'], r['n_a'])} → {_score(r['mean_b'], r['std_b'], r['n_b'])}"
                style = ""
                if not math.isnan(gain) and gain != 0:
                    rgb = "26,127,55" if gain > 0 else "207,34,46"
                    style = f" style='background: rgba({rgb},{0.45 if r['significant'] else 0.2})'"
                key = "" if math.isnan(gain) else f"{gain:.6g}"
                tds.append(f"<td class='cell'{w} data-gain='{key}' data-abs-key='{key}' data-delta-text='{e(diff_text)}' "
                           f"data-abs-text='{e(both)}'{style} title='{e(r['note'])}'><span class='v'>{e(diff_text)}</span></td>")
            fam = families.get(strategy, "")
            rows.append(f"<tr data-family='{e(fam)}'><td class='fam'>{e(fam)}</td><td>{e(strategy)}</td>{''.join(tds)}</tr>")
        note = f"<p class='legend'>{e(line)}</p>" if line else ""
        body.append(f"<section data-metric='{e(metric)}'><h2>{e(metric)}</h2>{note}<table class='matrix sortable'><thead><tr>"
                    f"<th data-sort='family'>family</th><th data-sort='text'>strategy</th>{head}</tr></thead><tbody>"
                    + "".join(rows) + "</tbody></table></section>")
    body += ["<h2>Every cell</h2>", page.html_table(display_table(table, name_a, name_b), families=families,
                                                    backbones=[], metrics=[])]
    title = e(f"dkbench comparison: {name_a} vs {name_b}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style>'
            f"</head>\n<body data-mode='delta'>\n<div id='report'>\n" + "\n".join(body)
            + f"\n</div>\n<script>{page.SCRIPT}</script>\n</body></html>\n")


def build_comparison(runs_a: str | Path, suite_a: dict, runs_b: str | Path, suite_b: dict, out_dir: str | Path,
                     alpha: float = stats.ALPHA) -> dict:
    """Write ``compare.md``, ``compare.html`` and ``compare.csv`` into ``out_dir``; returns
    ``{"paths": {...}, "markdown": str, "table": DataFrame}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _, left_out = shared_grid(suite_a, suite_b)
    table = compare_table(runs_a, suite_a, runs_b, suite_b, alpha=alpha)
    if not (table["n_a"] > 0).any() or not (table["n_b"] > 0).any():
        empty = suite_a["name"] if not (table["n_a"] > 0).any() else suite_b["name"]
        raise UserError(f"cannot compare: no done run of '{empty}' in the shared grid; run "
                        f"`dkbench sweep suite=...` for it first, or check compare_runs= (the folder holding it)")
    name_a, name_b = suite_a["name"], suite_b["name"]
    markdown = render_markdown(table, name_a, name_b, left_out, alpha)
    paths = {"compare.csv": out / "compare.csv", "compare.md": out / "compare.md", "compare.html": out / "compare.html"}
    table.to_csv(paths["compare.csv"], index=False)
    paths["compare.md"].write_text(markdown, encoding="utf-8")
    paths["compare.html"].write_text(render_html(table, name_a, name_b, left_out, alpha), encoding="utf-8")
    return {"paths": paths, "markdown": markdown, "table": table}


def report_comparison(runs_dir: Path, suite: dict, reports_dir: Path, options: dict[str, str]) -> dict:
    """`compare=B [compare_runs=DIR]`: suite A (this one) and B side by side, the difference per cell
    (leaderboard/compare.py) → reports/<A>__vs__<B>/. B is a suite folder name under DIR (default:
    this runs folder), e.g. `<suite>@tuned`; its grid is A's unless its name (before any `@`) is
    another suite's."""
    from dkbench.config import group_entry, group_files
    from dkbench.errors import RunConfigError

    name_b = options.get("compare") or suite["name"]
    runs_b = Path(options["compare_runs"]).expanduser() if options.get("compare_runs") else runs_dir
    if name_b == suite["name"] and runs_b.resolve() == runs_dir.resolve():
        raise RunConfigError(f"compare={name_b} is the suite itself: name another suite folder (e.g. "
                             f"compare={suite['name']}@tuned) or another runs folder (compare_runs=/path/to/runs)")
    if not any((runs_b / name_b).glob("*/*/seed_*/status.json")):
        raise RunConfigError(f"compare: no run folders of '{name_b}' under {runs_b / name_b}; name a suite folder "
                             f"that exists there (ls {runs_b}) or point compare_runs= at the runs folder that holds it")
    base = name_b.split("@")[0]
    other = group_entry("suite", base) if base != suite["name"].split("@")[0] and base in group_files("suite") else suite
    suite_b = {**other, "name": name_b}
    folder = f"{suite['name']}__vs__{name_b}" + ("" if runs_b.resolve() == runs_dir.resolve() else f"@{runs_b.name}")
    result = build_comparison(runs_dir, suite, runs_b, suite_b, reports_dir / folder)
    print(result["markdown"])
    print(f"\ncomparison of {runs_dir / suite['name']} (A) and {runs_b / name_b} (B) written to "
          f"{reports_dir / folder}/ (compare.md, .html, .csv)")
    return result
