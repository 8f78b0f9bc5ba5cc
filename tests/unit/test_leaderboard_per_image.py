"""Per-image pairing of segmentation runs: seeds averaged per image, Wilcoxon over images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dkbench.leaderboard.per_image import per_image_deltas


def _write(root, strategy, seed, dice, hd95):
    run = root / "seg" / "toy" / f"unet__{strategy}" / f"seed_{seed}"
    run.mkdir(parents=True)
    ids = [f"img{i}" for i in range(len(dice))]
    pd.DataFrame({"id": ids, "dice": dice, "iou": dice, "hd95": hd95}).to_csv(run / "predictions.csv", index=False)
    return {"suite": "seg", "dataset": "toy", "backbone": "unet", "strategy": strategy, "seed": seed, "status": "done"}


def test_images_are_paired_across_seeds_and_direction_is_respected(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.8, 20)
    rows = []
    for seed in (0, 1):
        rows.append(_write(tmp_path, "baseline", seed, base, 10 - 5 * base))
        rows.append(_write(tmp_path, "prior", seed, base + 0.05 + 0.01 * seed, 10 - 5 * base - 1.0))
        rows.append(_write(tmp_path, "noise", seed, base + rng.normal(0, 0.01, 20), 10 - 5 * base))
    rows.append({**rows[-1], "seed": 2, "status": "failed"})  # not done: never read
    long = pd.DataFrame(rows)

    dice = per_image_deltas(tmp_path, long, "baseline", "test/dice").set_index("strategy")
    assert dice.loc["prior", "n_images"] == 20 and dice.loc["prior", "seeds"] == 2
    assert dice.loc["prior", "delta"] == pytest.approx(0.055)  # per-image mean over the two seeds
    assert dice.loc["prior", "share_better"] == 1.0 and dice.loc["prior", "p_holm"] < 0.01
    assert dice.loc["noise", "p_holm"] > 0.05
    hd = per_image_deltas(tmp_path, long, "baseline", "test/hd95").set_index("strategy")
    assert hd.loc["prior", "delta"] == pytest.approx(-1.0) and hd.loc["prior", "share_better"] == 1.0


def test_classification_runs_give_an_empty_table(tmp_path):
    run = tmp_path / "cls" / "toy" / "tinycnn__baseline" / "seed_0"
    run.mkdir(parents=True)
    pd.DataFrame({"id": ["a"], "label": [0], "prob_0": [0.5], "prob_1": [0.5]}).to_csv(run / "predictions.csv")
    long = pd.DataFrame([{"suite": "cls", "dataset": "toy", "backbone": "tinycnn", "strategy": s, "seed": 0,
                          "status": "done"} for s in ("baseline", "other")])
    assert per_image_deltas(tmp_path, long, "baseline", "test/auroc").empty
