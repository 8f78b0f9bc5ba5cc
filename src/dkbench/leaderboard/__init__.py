"""Leaderboard: run folders → aggregated tables, paired tests vs the baseline, ranks, the
critical-difference diagram, and the leaderboard as Markdown / HTML / CSV / LaTeX.

Entry point: :func:`build_report` (``python -m dkbench.leaderboard RUNS_DIR SUITE.yaml OUT_DIR``).
"""

from dkbench.leaderboard.collect import collect_runs
from dkbench.leaderboard.report import build_report

__all__ = ["build_report", "collect_runs"]
