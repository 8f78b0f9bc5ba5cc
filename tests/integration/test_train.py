"""End-to-end runs through `train(cfg)`: run folder, official evaluator, resume, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dkbench.data.registry import MissingDataError
from dkbench.runner.compose import compose_config
from dkbench.runner.train import train
from tests.conftest import require_file

FAST = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=32"]


def _cfg(tmp_path, *overrides, data_dir=None):
    extra = [f"paths.runs_dir={tmp_path / 'runs'}", f"paths.root_dir={tmp_path}"]
    if data_dir is not None:
        extra.append(f"paths.data_dir={data_dir}")
    return compose_config([*FAST, *extra, *overrides])


def test_probe_run_writes_complete_folder_and_resumes(tmp_path):
    cfg = _cfg(tmp_path, "dataset=probe", "backbone=tinycnn", "dataset.options.n_train=128",
               "dataset.options.n_val=64", "dataset.options.n_test=64")
    metrics = train(cfg)
    run = tmp_path / "runs/adhoc/probe/tinycnn__baseline/seed_0"
    for name in ("config.yaml", "metadata.json", "metrics.json", "predictions.csv", "DONE", "csv/metrics.csv"):
        assert (run / name).exists(), name
    assert 0.0 <= metrics["test/auroc"] <= 1.0 and metrics["selection"]["checkpoint"] == "best"
    assert metrics["val/auroc"] == pytest.approx(metrics["selection"]["best_score"], abs=1e-6)
    assert {"val/acc", "val/loss"} <= set(metrics)
    preds = pd.read_csv(run / "predictions.csv")
    assert list(preds.columns) == ["id", "label", "prob_0", "prob_1"] and len(preds) == 64
    np.testing.assert_allclose(preds[["prob_0", "prob_1"]].sum(1), 1.0, atol=1e-5)
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["data"]["split_sizes"] == {"train": 128, "val": 64, "test": 64}
    assert meta["versions"]["torch"].startswith("2.")

    # same config again: nothing recomputed, files untouched
    stamp = (run / "metrics.json").stat().st_mtime_ns
    assert train(cfg) == metrics
    assert (run / "metrics.json").stat().st_mtime_ns == stamp

    # changed config: old results moved aside, never overwritten
    old_hash = json.loads((run / "DONE").read_text())["config_hash"]
    train(_cfg(tmp_path, "dataset=probe", "backbone=tinycnn", "dataset.options.n_train=128",
               "dataset.options.n_val=64", "dataset.options.n_test=64", "model.optimizer.lr=0.01"))
    assert (run / "superseded" / old_hash / "metrics.json").exists()
    assert json.loads((run / "DONE").read_text())["config_hash"] != old_hash


@pytest.mark.data
def test_breastmnist_predictions_reproduce_official_evaluator(tmp_path, data_dir):
    require_file(data_dir, "medmnist/breastmnist.npz")
    medmnist = pytest.importorskip("medmnist", reason="medmnist not installed (make install adds it)")
    cfg = _cfg(tmp_path, "experiment=medmnist_v2_resnet18_28", "dataset=breastmnist", *FAST, data_dir=data_dir)
    metrics = train(cfg)
    preds = pd.read_csv(f"{cfg.paths.run_dir}/predictions.csv")
    scores = preds[["prob_0", "prob_1"]].to_numpy()
    official = medmnist.Evaluator("breastmnist", "test", root=str(data_dir / "medmnist")).evaluate(scores)
    assert metrics["test/auroc"] == pytest.approx(official.AUC, abs=1e-6)
    assert metrics["test/acc"] == pytest.approx(official.ACC, abs=1e-6)


def _fake_medmnist(root, flag: str, n_classes: int, chans: int, sizes=(96, 32, 48)):
    """A small file with the official keys (readers must not need the official sample count)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        labels = rng.integers(0, n_classes, size=(n, 1))
        images = rng.integers(0, 60, size=(n, 28, 28, chans) if chans == 3 else (n, 28, 28))
        images = images + (labels[:, :, None, None] if chans == 3 else labels[:, :, None]) * 20  # learnable
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    (root / "medmnist").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / "medmnist" / f"{flag}.npz", **arrays)


def test_multiclass_predictions_reproduce_official_evaluator(tmp_path):
    medmnist = pytest.importorskip("medmnist", reason="medmnist not installed (make install adds it)")
    _fake_medmnist(tmp_path / "data", "bloodmnist", 8, 3)
    cfg = _cfg(tmp_path, "dataset=bloodmnist", "backbone=tinycnn", data_dir=tmp_path / "data")
    metrics = train(cfg)
    preds = pd.read_csv(f"{cfg.paths.run_dir}/predictions.csv")
    scores = preds[[f"prob_{k}" for k in range(8)]].to_numpy()
    official = medmnist.Evaluator("bloodmnist", "test", root=str(tmp_path / "data/medmnist")).evaluate(scores)
    assert metrics["test/auroc"] == pytest.approx(official.AUC, abs=1e-6)
    assert metrics["test/acc"] == pytest.approx(official.ACC, abs=1e-6)
    meta = json.loads((tmp_path / "runs/adhoc/bloodmnist/tinycnn__baseline/seed_0/metadata.json").read_text())
    assert "differ from the official" in meta["data"]["notes"]["warning"]


def test_missing_medmnist_file_says_where_and_how(tmp_path):
    cfg = _cfg(tmp_path, "dataset=dermamnist", data_dir=tmp_path / "nowhere")
    with pytest.raises(MissingDataError) as err:
        train(cfg)
    msg = str(err.value)
    assert "dermamnist.npz" in msg and "DKBENCH_DATA" in msg and "download=true" in msg and "zenodo" in msg


def test_backbone_too_small_for_input_is_refused_clearly(tmp_path):
    from dkbench.backbones import IncompatibleInputError

    _fake_medmnist(tmp_path / "data", "bloodmnist", 8, 3)
    cfg = _cfg(tmp_path, "dataset=bloodmnist", "backbone=densenet121", data_dir=tmp_path / "data")
    with pytest.raises(IncompatibleInputError, match="32"):
        train(cfg)
