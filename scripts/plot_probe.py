"""Plot example images of the synthetic knowledge probe to docs/probe_examples.png.

Rows: benign without marker, benign with marker, malignant without marker, malignant with
marker, then the second view and the mask outline of the malignant row. Columns: examples.
Run: `.venv/bin/python scripts/plot_probe.py [--signal 0.5] [--out docs/probe_examples.png]`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dkbench.data.readers.probe import generate_split, marker_present  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--signal", type=float, default=0.5)
    ap.add_argument("--n-cols", type=int, default=6)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs/probe_examples.png"))
    args = ap.parse_args()

    opts = {"signal": args.signal, "shortcut": {"enabled": True, "train_rate": 0.5}}
    arr = generate_split(400, size=args.size, split="train", options=opts)
    present = marker_present(arr.image, opts)
    mal = arr.label == 1
    rows = [
        ("benign", ~mal & ~present),
        ("benign + marker", ~mal & present),
        ("malignant", mal & ~present),
        ("malignant + marker", mal & present),
    ]
    k = args.n_cols
    fig, axes = plt.subplots(len(rows) + 2, k, figsize=(1.7 * k, 1.9 * (len(rows) + 2)))
    for r, (name, sel) in enumerate(rows):
        idx = np.flatnonzero(sel)[:k]
        for c, i in enumerate(idx):
            ax = axes[r, c]
            ax.imshow(arr.image[i, 0], cmap="gray", vmin=0, vmax=255)
            a = arr.extras["attributes"][i]
            ax.set_title(f"{name}\n" + "".join(map(str, a)), fontsize=6)
    idx = np.flatnonzero(mal)[:k]
    for c, i in enumerate(idx):
        axes[-2, c].imshow(arr.extras["views"][i, 1, 0], cmap="gray", vmin=0, vmax=255)
        axes[-2, c].set_title("malignant, view 1", fontsize=6)
        axes[-1, c].imshow(arr.image[i, 0], cmap="gray", vmin=0, vmax=255)
        axes[-1, c].contour(arr.extras["mask"][i, 0], levels=[0.5], colors="r", linewidths=0.6)
        x0, y0, x1, y1 = arr.extras["bbox"][i]
        axes[-1, c].add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                            ec="y", lw=0.6))
        axes[-1, c].set_title(f"mask, d={arr.extras['difficulty'][i]:.2f}", fontsize=6)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"dkbench knowledge probe (signal={args.signal}); attributes = "
                 "shape/orientation/margin/echo", fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")
    print("example reports:", *arr.extras["text"][:3], sep="\n  ")


if __name__ == "__main__":
    main()
