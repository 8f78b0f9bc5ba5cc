"""Post-hoc strategies share the baseline's training (issue 15, item 6): `anatomical_postprocess`
evaluates the baseline run's selected network, trained once; its raw output is the baseline's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dkbench.errors import RunConfigError
from dkbench.runner.compose import compose_config
from dkbench.runner.run_folder import config_hash
from dkbench.runner.train import train
from dkbench.strategies import strategy_from_config
from dkbench.strategies.base import SHARED_TRAINING

# two epochs, so the raw-output selection has a choice to make
SETTINGS = ["dataset=probe_seg", "backbone=unet", "dataset.options.n_train=32", "dataset.options.n_val=16",
            "dataset.options.n_test=16", "trainer.max_epochs=2", "data.batch_size=16", "ui.progress_bar=false"]


def _cfg(tmp_path, *overrides):
    return compose_config([*SETTINGS, f"paths.runs_dir={tmp_path / 'runs'}", f"paths.root_dir={tmp_path}", *overrides])


def _metrics(cfg) -> dict:
    return json.loads((Path(cfg.paths.run_dir) / "metrics.json").read_text())


def test_the_twin_is_the_baseline_cell_same_folder_same_hash(tmp_path):
    post = _cfg(tmp_path, "strategy=anatomical_postprocess", "strategy.options.fill_holes=false")
    base = _cfg(tmp_path, "strategy=baseline")
    twin = strategy_from_config(post.strategy).prestage_runs(post)[SHARED_TRAINING]
    assert twin.paths.run_dir == base.paths.run_dir
    assert config_hash(twin) == config_hash(base)
    assert twin.keep_checkpoints is True
    assert strategy_from_config(base.strategy).prestage_runs(base) == {}


def test_post_hoc_run_trains_the_baseline_once_and_evaluates_its_weights(tmp_path):
    post = _cfg(tmp_path, "strategy=anatomical_postprocess", "keep_checkpoints=false")
    metrics = train(post)  # trains the baseline cell first (its pre-stage), then evaluates it
    base = _cfg(tmp_path, "strategy=baseline", "keep_checkpoints=false")
    base_dir = Path(base.paths.run_dir)
    done_at = (base_dir / "DONE").stat().st_mtime_ns
    assert metrics["shared_training"]["run_dir"] == str(base_dir)
    assert metrics["shared_training"]["config_hash"] == config_hash(base)
    assert train(base) == _metrics(base)  # the baseline cell is found done, not retrained
    assert (base_dir / "DONE").stat().st_mtime_ns == done_at
    assert (base_dir / "checkpoints" / "best_weights.pt").is_file()  # kept for the post-hoc run
    baseline = _metrics(base)
    assert metrics["test/dice_raw"] == pytest.approx(baseline["test/dice"], abs=1e-6)  # the same network
    assert metrics["selection"] == baseline["selection"]  # selected on raw validation Dice
    assert metrics["val/dice"] == baseline["val/dice"]
    assert metrics["epochs_trained"] == baseline["epochs_trained"]
    assert not (Path(post.paths.run_dir) / "checkpoints" / "best_weights.pt").exists()  # keep_checkpoints=false


def test_a_baseline_without_weights_makes_the_post_hoc_run_train_the_same_network(tmp_path, caplog):
    base = _cfg(tmp_path, "strategy=baseline", "keep_checkpoints=false")
    baseline = train(base)  # finished before sharing existed: no weights kept
    assert not (Path(base.paths.run_dir) / "checkpoints" / "best_weights.pt").exists()
    metrics = train(_cfg(tmp_path, "strategy=anatomical_postprocess"))
    assert "shared_training" not in metrics
    assert "kept no weights" in caplog.text
    # trained itself, with the baseline's loss, seed and raw-output selection: the same network
    assert metrics["test/dice_raw"] == pytest.approx(baseline["test/dice"], abs=1e-6)
    assert metrics["selection"]["best_epoch"] == baseline["selection"]["best_epoch"]


def test_a_suite_may_not_give_a_post_hoc_strategy_settings_of_another_network():
    from dkbench.runner.sweep import _check_post_hoc_settings

    suite = {"name": "s", "per_strategy": {"anatomical_postprocess": ["strategy.options.fill_holes=false"]}}
    _check_post_hoc_settings(suite, "anatomical_postprocess")
    suite["per_strategy"]["anatomical_postprocess"].append("trainer.max_epochs=3")
    with pytest.raises(RunConfigError, match="trainer.max_epochs=3.*post-hoc"):
        _check_post_hoc_settings(suite, "anatomical_postprocess")


def test_plausible_boxes_evaluates_the_baseline_detector_with_its_own_train_box_rules(tmp_path):
    """Detection (issue 18): the post-hoc run loads the baseline's detector while keeping the rules it
    learned from the train boxes (buffers the baseline's checkpoint does not have). With every rule off
    it scores exactly as the baseline; with the defaults it only removes boxes (the probe has one
    lesion per image, so at most one detection each is left)."""
    import pandas as pd

    det = ["dataset=probe_det", "backbone=tinycnn", "dataset.options.n_train=32", "dataset.options.n_val=16",
           "dataset.options.n_test=16", "trainer.max_epochs=2", "data.batch_size=16", "ui.progress_bar=false",
           f"paths.runs_dir={tmp_path / 'runs'}", f"paths.root_dir={tmp_path}"]
    off = compose_config([*det, "strategy=plausible_boxes", "strategy.options.size_margin=0",
                          "strategy.options.ratio_margin=0", "strategy.options.position=false",
                          "strategy.options.max_boxes=100"])
    rules_off = train(off)
    baseline = _metrics(compose_config([*det, "strategy=baseline"]))
    for key in ("test/map50", "test/map10", "test/froc_mean"):
        assert rules_off[key] == pytest.approx(baseline[key], abs=1e-9), key
    assert rules_off["test/boxes_removed"] == 0
    default = compose_config([*det, "strategy=plausible_boxes"])
    train(default)
    raw = pd.read_csv(Path(compose_config([*det, "strategy=baseline"]).paths.run_dir) / "predictions.csv")
    kept = pd.read_csv(Path(default.paths.run_dir) / "predictions.csv")
    assert list(raw["id"]) == list(kept["id"])
    assert (kept["n_detections"] <= raw["n_detections"]).all() and kept["n_detections"].max() <= 1
    meta = json.loads((Path(default.paths.run_dir) / "metadata.json").read_text())
    assert meta["strategy"]["train_boxes"]["max_boxes"] == 1
