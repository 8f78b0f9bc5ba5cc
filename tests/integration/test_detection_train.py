"""End-to-end detection runs through `dkbench train`: run folder with mAP / FROC, per-image rows, boxes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dkbench.metrics.detection import DETECTION_METRICS
from dkbench.runner.compose import compose_config
from dkbench.runner.train import train
from dkbench.strategies.base import IncompatibleStrategyError
from tests.conftest import REPO

TINY_PROBE_DET = ["dataset=probe_det", "backbone=tinycnn", "strategy=baseline", "trainer.max_epochs=1",
                  "data.batch_size=16", "dataset.resize=32", "dataset.options.n_train=48",
                  "dataset.options.n_val=24", "dataset.options.n_test=24", "ui.progress_bar=false"]


def test_dkbench_train_probe_det_writes_a_detection_run_folder(tmp_path):
    """The command line end to end: 1 epoch of RetinaNet on a tiny probe at 32 px."""
    env = {**os.environ, "DKBENCH_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "dkbench.cli", "train", *TINY_PROBE_DET], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list(tmp_path.glob("runs/*/probe_det/tinycnn__baseline/seed_0"))
    assert len(runs) == 1, list(tmp_path.rglob("DONE"))
    run = runs[0]
    for name in ("config.yaml", "metadata.json", "metrics.json", "predictions.csv", "test_boxes.npz", "DONE"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection"]["monitor"] == "val/map50"
    for name in DETECTION_METRICS:
        assert 0 <= metrics[f"test/{name}"] <= 1, name
    preds = pd.read_csv(run / "predictions.csv")
    assert len(preds) == 24 and {"id", "n_lesions", "tp50", "fp50", "recall50", "max_score", "best_iou"} <= set(preds)
    # a third of the probe's images are negatives: no lesion, recall and best IoU undefined
    negatives = preds["n_lesions"] == 0
    assert negatives.any() and preds.loc[negatives, "recall50"].isna().all()
    boxes = np.load(run / "test_boxes.npz")
    np.testing.assert_array_equal(boxes["id"], preds["id"].astype(str))
    np.testing.assert_array_equal(np.isfinite(boxes["scores"]).sum(1), preds["n_detections"])
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["task"] == "detection" and meta["detector"]["pyramid"]["strides"] == [2, 4, 8]
    assert meta["detector"]["anchors"]["train_boxes"] == int(meta["data"]["notes"]["box_counts"]["train"]["boxes"])


def test_strategies_and_backbones_that_cannot_detect_are_refused_with_the_reason(tmp_path):
    def cfg(*overrides):
        return compose_config([*TINY_PROBE_DET, f"paths.runs_dir={tmp_path / 'runs'}",
                               f"paths.root_dir={tmp_path}", *overrides])

    with pytest.raises(IncompatibleStrategyError, match="detection"):
        train(cfg("strategy=topology_loss"))  # a segmentation-only prior
    with pytest.raises(IncompatibleStrategyError, match="multi-scale encoder"):
        train(cfg("backbone=unet"))
    assert not list(tmp_path.rglob("status.json")) and not list(tmp_path.rglob("DONE"))  # refused before a run folder
