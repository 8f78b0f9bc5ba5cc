"""Every strategy config, end to end: a short run of each compatible (strategy, task) pair on the
probe datasets (classification: `probe`; segmentation: `probe_seg`; detection: `probe_det`), so a new strategy YAML is
exercised without a test of its own. Incompatible pairs must say why (the sweep records it).

Pre-stages are shrunk to one epoch / a few steps (the whole file takes < 1 min on 2 CPU cores,
so it runs in the default `make test` and CI); the assertions are about the machinery (a
finished run folder with finite test metrics and the strategy's metadata), the strategies'
specific effects are tested in tests/unit/test_strategy_*.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dkbench.backbones.registry import task_incompatibility
from dkbench.config import config_dir
from dkbench.data.loading import spec_from_config
from dkbench.runner.compose import compose_config
from dkbench.runner.train import train
from dkbench.strategies import strategy_from_config

STRATEGY_CONFIGS = sorted(p.stem for p in (config_dir() / "strategy").glob("*.yaml"))

#: (dataset, backbone, rank metric) per task; tiny data and one short epoch
TASKS = {
    "classification": ("probe", "tinycnn", "test/auroc"),
    "segmentation": ("probe_seg", "unet", "test/dice"),
    "detection": ("probe_det", "tinycnn", "test/map50"),
}
TINY = ["dataset.options.n_train=48", "dataset.options.n_val=24", "dataset.options.n_test=24",
        "trainer.max_epochs=1", "data.batch_size=16", "ui.progress_bar=false", "threads=1"]
#: pre-stages cut to the bone, and ImageNet transfer on a backbone with shipped weights
PER_STRATEGY = {
    "transfer_medical": ["strategy.options.source_epochs=1",
                         "strategy.options.source_overrides=['trainer.limit_train_batches=2','trainer.limit_val_batches=1']"],
    "curriculum": ["strategy.options.teacher_epochs=1"],
    "roi_input": ["strategy.options.predictor_epochs=1"],
    "roi_input_predicted": ["strategy.options.predictor_epochs=1"],
    "shape_prior": ["strategy.options.ae_steps=5"],
}
PER_STRATEGY_BACKBONE = {
    ("transfer_natural", "classification"): "efficientnet_lite0",
    ("transfer_natural_linear", "classification"): "efficientnet_lite0",
    ("transfer_natural", "segmentation"): "unet_efficientnet_lite0",
    ("transfer_natural", "detection"): "efficientnet_lite0",
}


def _overrides(strategy: str, task: str, tmp_path) -> list[str]:
    dataset, backbone, _ = TASKS[task]
    backbone = PER_STRATEGY_BACKBONE.get((strategy, task), backbone)
    extra = PER_STRATEGY.get(strategy, [])
    return [f"dataset={dataset}", f"backbone={backbone}", f"strategy={strategy}", *TINY, *extra,
            f"paths.root_dir={tmp_path}", f"paths.runs_dir={tmp_path / 'runs'}"]


def _reason(cfg) -> str | None:
    spec = spec_from_config(cfg.dataset)
    return (strategy_from_config(cfg.strategy).incompatibility(spec, cfg.backbone.arch)
            or task_incompatibility(cfg.backbone.arch, spec.task))


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("strategy", STRATEGY_CONFIGS)
def test_strategy_config_trains_end_to_end(strategy, task, tmp_path, data_dir):
    cfg = compose_config([*_overrides(strategy, task, tmp_path), f"paths.data_dir={data_dir}"])
    reason = _reason(cfg)
    if reason is not None:
        assert cfg.strategy.method in reason or "backbone" in reason, reason  # the reason names the cause
        pytest.skip(f"incompatible (recorded by the sweep): {reason}")
    if strategy == "transfer_medical" and not (data_dir / "medmnist" / "pneumoniamnist.npz").exists():
        pytest.skip("transfer_medical's source (pneumoniamnist) is not under DKBENCH_DATA")
    metrics = train(cfg)
    rank = TASKS[task][2]
    assert math.isfinite(metrics[rank]), metrics
    run = cfg.paths.run_dir
    meta = json.loads(open(f"{run}/metadata.json").read())
    assert meta["strategy"]["strategy"] == cfg.strategy.method
    assert meta["strategy"]["options"], "typed options recorded"


def test_every_strategy_config_has_a_probe_task():
    """Each YAML runs on at least one of the probe datasets, so the test above exercises it."""
    uncovered = []
    for strategy in STRATEGY_CONFIGS:
        reasons = [_reason(compose_config(_overrides(strategy, task, Path("/tmp/unused")))) for task in TASKS]
        if all(r is not None for r in reasons):
            uncovered.append((strategy, reasons))
    assert not uncovered, uncovered
