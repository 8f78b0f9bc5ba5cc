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
