"""The matrix view, read first: which strategies help, where, by how much, how sure.

Rows: the suite's strategies grouped by the survey's family (A–G, `strategies.base.FAMILIES`), each
with the knowledge it uses (`Strategy.knowledge_used`); columns: dataset · backbone; a cell is the
paired Δ vs the baseline (mean ± std of the paired differences, n pairs) with `*` where the
Holm-adjusted paired t-test gives p < α — never from fewer than `MIN_SEEDS` pairs (`stats`). The
first row holds the baseline's absolute score. A cell the strategy cannot serve is a neutral "—"
with its reason in a numbered footnote, and a strategy that applies nowhere leaves the table for a
footnote line, so incompatible cells never take up rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd

from dkbench.leaderboard.stats import MIN_SEEDS, higher_is_better

#: a cell's kind, for colouring: sign of the gain (positive = better) and whether it is marked
KINDS = ("better*", "better", "worse", "worse*", "even", "none", "incompatible")


@lru_cache(maxsize=None)
def strategy_facts(name: str) -> tuple[str, str]:
    """(family key, knowledge used) of a strategy config name; ('', '') when it cannot be read."""
    from omegaconf import OmegaConf

    from dkbench.config import group_entry
    from dkbench.strategies import strategy_from_config

    try:
        strategy = strategy_from_config(OmegaConf.create(group_entry("strategy", name)))
    except Exception:  # a report of runs whose strategy YAML is gone still renders
        return "", ""
    return strategy.family, strategy.knowledge_used()


@dataclass
class Cell:
    text: str
    kind: str
    delta: float = math.nan  # the gain (sign-adjusted Δ: positive = better), for colour and sorting
    note: int | None = None  # footnote number (incompatible reason)
    #: the strategy's own score, `mean ± std (n=k)`, for the HTML page's Δ / absolute toggle
    abs_text: str = ""
    #: the sign-adjusted mean (positive direction = better), for sorting absolute scores best first
    abs_key: float = math.nan


@dataclass
class MatrixRow:
    family: str
    strategy: str
    knowledge: str
    cells: list[Cell]


@dataclass
class Matrix:
    metric: str
    columns: list[tuple[str, str]]
    baseline: list[str]
    rows: list[MatrixRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # footnote k+1 = notes[k]
    inapplicable: dict[str, str] = field(default_factory=dict)  # strategy → reason, applies nowhere

    @property
    def max_abs_delta(self) -> float:
        values = [abs(c.delta) for r in self.rows for c in r.cells if not math.isnan(c.delta)]
        return max(values) if values else 0.0


def _first(df: pd.DataFrame) -> pd.Series | None:
    return df.iloc[0] if len(df) else None


def _score(row: pd.Series | None) -> str:
    """`mean ± std (n=k)` of an `agg` row's done seeds; "—" without any."""
    if row is None or not row["n_done"] or pd.isna(row["mean"]):
        return "—"
    n = int(row["n"]) if "n" in row else int(row["n_done"])  # seeds that logged this metric
    return f"{row['mean']:.3f} ± {0.0 if pd.isna(row['std']) else row['std']:.3f} (n={n})"


def build_matrix(agg: pd.DataFrame, deltas: pd.DataFrame, suite: dict, metric: str, baseline: str) -> Matrix:
    """`agg` = leaderboard.csv, `deltas` = deltas.csv of a report (`report.build_tables`)."""
    from dkbench.strategies.base import FAMILIES

    agg, deltas = agg[agg["metric"] == metric], deltas[deltas["metric"] == metric]
    columns = [(str(d), str(b)) for d in suite["datasets"] for b in suite["backbones"]]
    sign = 1.0 if higher_is_better(metric) else -1.0
    matrix = Matrix(metric, columns, [])
    for d, b in columns:
        matrix.baseline.append(_score(_first(agg[(agg.dataset == d) & (agg.backbone == b) & (agg.strategy == baseline)])))
    order = {key: i for i, key in enumerate(FAMILIES)}
    strategies = [s for s in suite["strategies"] if s != baseline]
    strategies.sort(key=lambda s: order.get(strategy_facts(s)[0], len(order)))  # stable: suite order within a family
    for strategy in strategies:
        cells, reasons = [], []
        for d, b in columns:
            status = _first(agg[(agg.dataset == d) & (agg.backbone == b) & (agg.strategy == strategy)])
            delta = _first(deltas[(deltas.dataset == d) & (deltas.backbone == b) & (deltas.strategy == strategy)])
            cell, reason = _cell(status, delta, sign)
            if cell.kind != "incompatible":
                cell.abs_text = _score(status)
                if status is not None and status["n_done"] and not pd.isna(status["mean"]):
                    cell.abs_key = sign * float(status["mean"])
            cells.append(cell)
            reasons.append(reason)
        family, knowledge = strategy_facts(strategy)
        distinct = list(dict.fromkeys(r for r in reasons if r))
        if all(c.kind == "incompatible" for c in cells):
            more = f" (and {len(distinct) - 1} more like it)" if len(distinct) > 1 else ""
            matrix.inapplicable[strategy] = distinct[0] + more
            continue
        for cell, reason in zip(cells, reasons):  # footnotes only for the rows shown
            if reason:
                if reason not in matrix.notes:
                    matrix.notes.append(reason)
                cell.note = matrix.notes.index(reason) + 1
        matrix.rows.append(MatrixRow(family, strategy, knowledge, cells))
    return matrix


def _cell(status: pd.Series | None, delta: pd.Series | None, sign: float) -> tuple[Cell, str]:
    """The cell, and the reason why it cannot run ('' when it can)."""
    if status is not None and status["n_incompatible"] and not status["n_done"]:
        return Cell("—", "incompatible"), str(status.get("reasons") or "incompatible")
    if status is None or not status["n_done"]:
        return Cell("not run", "none"), ""
    if delta is None or not delta["n_pairs"] or pd.isna(delta["delta"]):
        return Cell(f"no pair (n={int(status['n_done'])})", "none"), ""
    value, n = float(delta["delta"]), int(delta["n_pairs"])
    spread = "" if pd.isna(delta["delta_std"]) else f" ± {float(delta['delta_std']):.3f}"
    marked = bool(delta["significant"]) and n >= MIN_SEEDS
    gain = sign * value
    kind = "even" if gain == 0 else ("better" if gain > 0 else "worse") + ("*" if marked else "")
    return Cell(f"{value:+.3f}{spread}{'*' if marked else ''} (n={n})", kind, delta=gain), ""


def caption(m: Matrix, suite: dict, baseline: str, alpha: float) -> str:
    seeds = len(suite.get("seeds") or [])
    return (f"Δ {m.metric} vs {baseline}: mean ± std of the paired differences over n seeds ({seeds} per cell planned); "
            f"* = paired t-test, Holm-adjusted across strategies within dataset × backbone, p < {alpha}, never with "
            f"fewer than {MIN_SEEDS} paired seeds; — = the strategy cannot serve the dataset (reason in the notes). "
            "Strategies grouped by the survey's families (Xie et al., MedIA 2021); knowledge used in bold where "
            "expert knowledge is needed at test time.")


def _family_label(key: str) -> str:
    from dkbench.strategies.base import FAMILIES

    return f"{key} · {FAMILIES[key]}" if key in FAMILIES else "other"


def render_markdown(m: Matrix, suite: dict, baseline: str, alpha: float, legend: bool = True) -> str:
    """The matrix as a Markdown table, with its caption and notes unless ``legend`` is False (a
    further metric's matrix under the first: same layout, same cells incompatible, same notes)."""
    header = ["family", "strategy", "knowledge used", *[f"{d} · {b}" for d, b in m.columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             "| | **" + baseline + f"** ({m.metric}) | image and label only | " + " | ".join(m.baseline) + " |"]
    previous = None
    for row in m.rows:
        label = f"**{_family_label(row.family)}**" if row.family != previous else ""
        previous = row.family
        cells = [f"{c.text}{_sup(c.note)}" for c in row.cells]
        lines.append(f"| {label} | {row.strategy} | {row.knowledge} | " + " | ".join(cells) + " |")
    if not legend:
        return "\n".join(lines)
    out = ["\n".join(lines), "", caption(m, suite, baseline, alpha)]
    notes = [f"{i}. {reason}" for i, reason in enumerate(m.notes, 1)]
    notes += [f"- `{s}` applies to none of these datasets: {r}" for s, r in m.inapplicable.items()]
    if notes:
        out += ["", *notes]
    return "\n".join(out)


def _sup(note: int | None) -> str:
    return f" [{note}]" if note else ""


def render_latex(m: Matrix, suite: dict, baseline: str, alpha: float) -> str:
    from dkbench.leaderboard.render import latex_escape

    def tex(text: str) -> str:  # **bold** (test-time knowledge) → \textbf
        parts = latex_escape(text).split("**")
        return "".join(rf"\textbf{{{p}}}" if i % 2 else p for i, p in enumerate(parts))

    n = len(m.columns)
    lines = [f"% dkbench matrix for suite {suite.get('name', '')}; needs \\usepackage{{booktabs}}",
             r"\begin{table}[ht]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(caption(m, suite, baseline, alpha))}}}",
             rf"\label{{tab:matrix-{m.metric.replace('/', '-')}}}",
             rf"\begin{{tabular}}{{ll{'r' * n}}}", r"\toprule",
             " & ".join(["strategy", "knowledge used", *[latex_escape(f"{d} · {b}") for d, b in m.columns]]) + r" \\",
             r"\midrule",
             " & ".join([latex_escape(baseline), "image and label only", *[latex_escape(x) for x in m.baseline]]) + r" \\"]
    previous = None
    for row in m.rows:
        if row.family != previous:
            lines += [r"\midrule", rf"\multicolumn{{{n + 2}}}{{l}}{{\emph{{{latex_escape(_family_label(row.family))}}}}} \\"]
            previous = row.family
        cells = [latex_escape(c.text) + (rf"$^{{{c.note}}}$" if c.note else "") for c in row.cells]
        lines.append(" & ".join([latex_escape(row.strategy), tex(row.knowledge), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = [f"{i}: {reason}" for i, reason in enumerate(m.notes, 1)]
    notes += [f"{s} applies to none of these datasets: {r}" for s, r in m.inapplicable.items()]
    if notes:
        lines += [r"\par\smallskip\footnotesize", "; ".join(latex_escape(x) for x in notes)]
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


#: a function (dataset, backbone, strategy) → (href of the cell's run folder, href of a config or None), or None
Links = Callable[[str, str, str], "tuple[str, str | None] | None"]


def _num(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.6g}"


def render_html(m: Matrix, suite: dict, baseline: str, alpha: float, links: Links | None = None) -> str:
    """A table whose cells are coloured by the sign and size of the gain (green better, red worse,
    stronger when marked); an incompatible cell is a neutral "—" whose reason is its tooltip and a
    footnote. For the page's script (`leaderboard/page.py`): every cell carries its Δ text and its
    absolute score (`data-delta-text` / `data-abs-text`) and both sort keys, sign-adjusted so that
    larger = better (`data-gain` / `data-abs-key`); cells and rows carry the dataset, backbone and
    family they belong to, for the filters; a cell links to its run folder and a seed's config
    (`links`)."""
    import html

    e = html.escape
    scale = m.max_abs_delta or 1.0
    where = [f" data-dataset='{e(d)}' data-backbone='{e(b)}'" for d, b in m.columns]
    head = "".join(f"<th class='col' data-sort='num'{w}>{e(d)}<br><small>{e(b)}</small></th>"
                   for (d, b), w in zip(m.columns, where))
    thead = (f"<thead><tr><th data-sort='family'>family</th><th data-sort='text'>strategy</th>"
             f"<th data-sort='text'>knowledge used</th>{head}</tr>"
             f"<tr class='baseline'><th></th><th>{e(baseline)}</th><th>image and label only</th>"
             + "".join(f"<td class='absolute'{w}>{e(x)}</td>" for x, w in zip(m.baseline, where)) + "</tr></thead>")
    rows = []
    previous = None
    for order, row in enumerate(m.rows):
        if row.family != previous:
            rows.append(f"<tr class='family' data-family='{e(row.family)}'>"
                        f"<th colspan='{len(m.columns) + 3}'>{e(_family_label(row.family))}</th></tr>")
            previous = row.family
        cells = []
        for c, (d, b), w in zip(row.cells, m.columns, where):
            style = ""
            if not math.isnan(c.delta) and c.delta != 0:
                alpha_bg = 0.15 + 0.6 * min(1.0, abs(c.delta) / scale) * (1.0 if "*" in c.kind else 0.5)
                rgb = "26,127,55" if c.delta > 0 else "207,34,46"
                style = f" style='background: rgba({rgb},{alpha_bg:.2f})'"
            title = f" title='{e(m.notes[c.note - 1])}'" if c.note else ""
            sup = f"<sup>{c.note}</sup>" if c.note else ""
            value = f"<span class='v'>{e(c.text)}</span>"
            data = ""
            if c.kind != "incompatible":
                data = (f" data-gain='{_num(c.delta)}' data-abs-key='{_num(c.abs_key)}'"
                        f" data-delta-text='{e(c.text)}' data-abs-text='{e(c.abs_text or c.text)}'")
                target = links(d, b, row.strategy) if links else None
                if target:
                    folder, config = target
                    value = f"<a class='runs' href='{e(folder)}' title='run folders of this cell'>{value}</a>"
                    if config:
                        value += f" <a class='cfg' href='{e(config)}' title='config.yaml of a seed'>cfg</a>"
            cells.append(f"<td class='cell {e(c.kind.rstrip('*'))}'{w}{data}{style}{title}>{value}{sup}</td>")
        knowledge = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", e(row.knowledge))  # bold: knowledge needed at test time
        rows.append(f"<tr data-family='{e(row.family)}' data-order='{order}'><td class='fam'>{e(row.family)}</td>"
                    f"<td>{e(row.strategy)}</td><td>{knowledge}</td>{''.join(cells)}</tr>")
    notes = "".join(f"<li>[{i}] {e(r)}</li>" for i, r in enumerate(m.notes, 1))
    notes += "".join(f"<li><code>{e(s)}</code> applies to none of these datasets: {e(r)}</li>"
                     for s, r in m.inapplicable.items())
    return (f"<table class='matrix sortable'>{thead}<tbody>" + "".join(rows) + "</tbody></table>"
            f"<p class='legend'>{e(caption(m, suite, baseline, alpha))}</p>"
            + (f"<ol class='notes'>{notes}</ol>" if notes else ""))
