"""The `knowledge_real` matrix for docs/results/knowledge_real.md, from the suite's report.

    dkbench report suite=knowledge_real            # writes reports/knowledge_real/
    .venv/bin/python scripts/summarize_knowledge_real.py [reports/knowledge_real] [--metric test/auroc]

Rows: strategies with the knowledge each one uses on these datasets (in training / at test time);
columns: dataset × backbone; a cell is the paired Δ vs the baseline (mean over the seeds both
finished, n beside it) with `*` where the Holm-adjusted paired t-test gives p < 0.05 (never from
fewer than 3 paired seeds); the first row holds the baseline's absolute score (mean ± std, n).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from dkbench.leaderboard.matrix import strategy_facts  # what each strategy feeds the network (declared by it)

#: cells whose knowledge differs from their row's label, marked and explained under the table
CELL_NOTES = {
    ("handcrafted_feature", "derm7pt"): "†",
    ("handcrafted_decision", "derm7pt"): "†",
    ("attribute_multitask", "busi_binary"): "‡",
}
LEGEND = ("† Derm7pt has no masks: the mask variant reads the whole image and equals its `_nomask` row.  \n"
          "‡ BUSI's attributes (shape, orientation, margin, size) are computed from the expert masks, "
          "not scored by radiologists.")


def _cell(row: pd.Series | None) -> str:
    if row is None:
        return "—"
    if not row["n_pairs"] or (isinstance(row["delta"], float) and math.isnan(row["delta"])):
        return "—"
    mark = "*" if bool(row["significant"]) else ""
    return f"{row['delta']:+.3f}{mark} (n={int(row['n_pairs'])})"


def matrix(report: Path, metric: str) -> str:
    board = pd.read_csv(report / "leaderboard.csv")
    deltas = pd.read_csv(report / "deltas.csv")
    board, deltas = board[board.metric == metric], deltas[deltas.metric == metric]
    columns = [(d, b) for d, b in board[["dataset", "backbone"]].drop_duplicates().itertuples(index=False)]
    header = ["strategy", "knowledge used", *[f"{d} · {b}" for d, b in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = []
    for d, b in columns:
        r = board[(board.dataset == d) & (board.backbone == b) & (board.strategy == "baseline")]
        r = r.iloc[0] if len(r) else None
        base.append("—" if r is None or not r["n_done"] else f"{r['mean']:.3f} ± {r['std']:.3f} (n={int(r['n_done'])})")
    lines.append(f"| baseline ({metric}) | {strategy_facts('baseline')[1]} | " + " | ".join(base) + " |")
    for strategy in [s for s in board.strategy.drop_duplicates() if s != "baseline"]:
        cells = []
        for d, b in columns:
            r = deltas[(deltas.dataset == d) & (deltas.backbone == b) & (deltas.strategy == strategy)]
            status = board[(board.dataset == d) & (board.backbone == b) & (board.strategy == strategy)]
            if len(status) and status.iloc[0]["n_incompatible"] and not status.iloc[0]["n_done"]:
                cells.append("n/a")
            else:
                cells.append(_cell(r.iloc[0] if len(r) else None) + CELL_NOTES.get((strategy, d), ""))
        lines.append(f"| {strategy} | {strategy_facts(strategy)[1] or '?'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + LEGEND


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", nargs="?", type=Path, default=Path("reports/knowledge_real"))
    ap.add_argument("--metric", default="test/auroc")
    args = ap.parse_args()
    print(matrix(args.report, args.metric))


if __name__ == "__main__":
    main()
