"""Leaderboard figures (matplotlib, Agg backend only)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

from dkbench.leaderboard.stats import higher_is_better  # noqa: E402


#: vector copies written beside a figure's PNG for papers
VECTOR = (".svg", ".pdf")


def save_vector(fig, out_png: Path, vector: tuple[str, ...]) -> list[Path]:
    """The figure beside ``out_png`` with each suffix in ``vector``. Text stays text (SVG text
    elements, TrueType fonts in the PDF) so a journal's editor can restyle and search it."""
    paths = []
    with matplotlib.rc_context({"pdf.fonttype": 42, "svg.fonttype": "none"}):
        for suffix in vector:
            fig.savefig(out_png.with_suffix(suffix), bbox_inches="tight")
            paths.append(out_png.with_suffix(suffix))
    return paths


def _save(fig, out_png: str | Path, vector: tuple[str, ...] = ()) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=130, bbox_inches="tight")
    save_vector(fig, out_png, vector)
    plt.close(fig)
    return out_png


def heatmap_delta(deltas: pd.DataFrame, out_png: str | Path, *, average_backbones: bool = False,
                  vector: tuple[str, ...] = ()) -> Path:
    """Mean sign-adjusted Δ vs baseline (``gain``: positive = better), strategies × datasets, one
    panel per backbone (or one panel averaged over backbones). Diverging colormap centred at 0,
    values annotated, ``*`` = significant after Holm, which needs ≥ 3 paired seeds (per-backbone
    panels only). ``vector``: suffixes of vector copies beside the PNG (``VECTOR``)."""
    if deltas.empty or not deltas["gain"].notna().any():  # only the baseline ran: say so
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no Δ vs baseline yet (no other strategy finished)", ha="center", va="center")
        return _save(fig, out_png, vector)
    metric = str(deltas["metric"].iloc[0])
    d = deltas.copy()
    if average_backbones:
        d = d.groupby(["dataset", "strategy"], sort=False, as_index=False)["gain"].mean()
        d["backbone"], d["significant"] = "mean over backbones", False
    backbones = list(dict.fromkeys(d["backbone"])) or ["(none)"]
    datasets = list(dict.fromkeys(d["dataset"]))
    strategies = list(dict.fromkeys(d["strategy"]))
    vmax = float(np.nanmax(np.abs(d["gain"].to_numpy(float)))) if d["gain"].notna().any() else 1.0
    vmax = vmax or 1.0
    norm, cmap = Normalize(-vmax, vmax), plt.get_cmap("RdBu").with_extremes(bad="#dddddd")

    width = max(4.0, 1.05 * len(datasets) + 2.8)
    height_each = max(1.6, 0.5 * len(strategies) + 1.0)
    fig, axes = plt.subplots(len(backbones), 1, figsize=(width, height_each * len(backbones)), squeeze=False)
    for ax, backbone in zip(axes[:, 0], backbones):
        sub = d[d["backbone"] == backbone]
        gain = sub.pivot_table(index="strategy", columns="dataset", values="gain", dropna=False).reindex(
            index=strategies, columns=datasets)
        sig = sub.pivot_table(index="strategy", columns="dataset", values="significant", aggfunc="any",
                              dropna=False).reindex(index=strategies, columns=datasets)
        im = ax.imshow(np.ma.masked_invalid(gain.to_numpy(float)), cmap=cmap, norm=norm, aspect="auto")
        for i in range(len(strategies)):
            for j in range(len(datasets)):
                v = gain.iat[i, j]
                if pd.isna(v):
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="#555555")
                    continue
                star = "*" if not pd.isna(sig.iat[i, j]) and bool(sig.iat[i, j]) else ""
                ax.text(j, i, f"{v:+.3f}{star}", ha="center", va="center", fontsize=8,
                        color="white" if abs(v) > 0.6 * vmax else "black")
        ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(strategies)), strategies, fontsize=8)
        ax.set_title(f"{backbone}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=7)
    direction = "" if higher_is_better(metric) else " (sign flipped: lower is better)"
    fig.suptitle(f"Δ {metric} vs baseline{direction}; + = better, * = Holm p<0.05 (only with ≥ 3 paired seeds)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png, vector)


def ci95_half_width(std, n) -> np.ndarray:
    """Half width of the 95% t confidence interval of a mean over n seeds: t_{0.975, n−1} · std / √n
    (NaN for n < 2, where no interval exists)."""
    from scipy.stats import t as student_t

    std, n = np.asarray(std, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = student_t.ppf(0.975, n - 1) * std / np.sqrt(n)
    return np.where(n >= 2, half, np.nan)


def bars_figure(agg: pd.DataFrame, metric: str):
    """The figure of :func:`bars` (returned, not saved, so tests can read its axes)."""
    sub = agg[agg["metric"] == metric]
    backbones = list(dict.fromkeys(sub["backbone"])) or ["(none)"]
    datasets = list(dict.fromkeys(sub["dataset"]))
    strategies = list(dict.fromkeys(sub["strategy"]))
    colors = plt.get_cmap("tab10")

    width = max(5.0, 0.35 * len(strategies) * len(datasets) + 2.0)
    fig, axes = plt.subplots(len(backbones), 1, figsize=(width, 3.0 * len(backbones)), squeeze=False)
    bar_w = 0.8 / max(1, len(strategies))
    x = np.arange(len(datasets))
    for ax, backbone in zip(axes[:, 0], backbones):
        b = sub[sub["backbone"] == backbone].set_index(["dataset", "strategy"])
        for k, strategy in enumerate(strategies):
            means = np.array([b["mean"].get((ds, strategy), np.nan) for ds in datasets], dtype=float)
            stds = np.array([b["std"].get((ds, strategy), np.nan) for ds in datasets], dtype=float)
            ns = np.array([b["n"].get((ds, strategy), 0) for ds in datasets], dtype=float)
            half = ci95_half_width(stds, ns)
            pos = x - 0.4 + bar_w * (k + 0.5)
            # bars from 0: a bar's length is read as the value, so a zoomed axis would exaggerate differences
            ax.bar(pos, np.where(np.isnan(means), 0, means), width=bar_w, color=colors(k % 10), label=strategy,
                   yerr=np.where(np.isnan(half), 0, half), capsize=2, error_kw={"lw": 0.8})
            for p_, m in zip(pos, means):
                if np.isnan(m):
                    ax.text(p_, 0, "×", ha="center", va="bottom", color=colors(k % 10), fontsize=9)
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(0.0, lo), max(0.0, hi))
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(x, datasets, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.set_title(backbone, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="y", labelsize=7)
    axes[0, 0].legend(fontsize=7, ncol=min(len(strategies), 5), loc="lower center", bbox_to_anchor=(0.5, 1.12),
                      frameon=False)
    note = "higher is better" if higher_is_better(metric) else "lower is better"
    fig.suptitle(f"{metric} ({note}); mean over seeds, bars from 0, whiskers = 95% t-CI of the mean "
                 "(none for n = 1), × = no result", fontsize=10, y=1.0)
    fig.tight_layout()
    return fig


def bars(agg: pd.DataFrame, metric: str, out_png: str | Path) -> Path:
    """Mean ``metric`` per dataset × strategy, one panel per backbone: bars start at 0 and the
    whiskers are the 95% t confidence interval of the mean over seeds. Cells without a result
    are marked ``×``."""
    return _save(bars_figure(agg, metric), out_png)
