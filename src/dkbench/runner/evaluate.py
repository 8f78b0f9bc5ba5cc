"""`dkbench evaluate run=<run folder> dataset=<name>`: a finished run scored on another dataset.

External validation: the model a run selected (its `checkpoints/best_weights.pt`) is rebuilt
exactly as the run built it — from the run's own resolved config and training data, so every
data-dependent part of a strategy (feature standardisation, encoders, fitted heads) is the run's —
its weights are loaded, and the other dataset's test split (or `split=`) goes through
`Trainer.test`. Results land in `<run>/external/<dataset>/` (metrics.json, predictions.csv); the
run's own files are not touched. A head that does not fit the other dataset (task, classes,
channels, dimensions) or knowledge the strategy needs at test time that the other dataset lacks is
refused in one line.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dkbench.errors import RunConfigError
from dkbench.runner.checkpointing import BEST_WEIGHTS
from dkbench.runner.run_folder import RunFolder, external_folder
from dkbench.storage import atomic_write_text

log = logging.getLogger("dkbench")
SPLITS = ("train", "val", "test")


def _run_config(run: RunFolder) -> DictConfig:
    cfg = run.finished_config("evaluate")
    if not run.file("checkpoints").joinpath(BEST_WEIGHTS).is_file():
        raise RunConfigError(f"{run.path} kept no weights (checkpoints/{BEST_WEIGHTS} is absent: it ran with "
                             "keep_checkpoints=false); rerun it with keep_checkpoints=true to evaluate it")
    return cfg


def _mismatch(trained: Any, other: Any) -> str | None:
    for field, what in (("task", "task"), ("num_classes", "number of classes"), ("in_chans", "input channels"),
                        ("spatial_dims", "spatial dimensions")):
        a, b = getattr(trained, field), getattr(other, field)
        if a != b:
            return f"its head does not fit: {what} {a} (trained on '{trained.name}') vs {b}"
    return None


def external_dataset_config(run_cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The other dataset's node, composed from its YAML and `overrides`; the run's input size
    (`resize`, `size` when the other one is not given) carries over so the network sees the
    resolution it was trained at."""
    from dkbench.runner.compose import compose_config

    node = compose_config(overrides).dataset
    if run_cfg.dataset.get("resize") and not node.get("resize"):
        OmegaConf.set_struct(node, False)
        node.resize = run_cfg.dataset.resize
    return node


def evaluate(run_dir: str | Path, overrides: list[str], split: str = "test") -> dict[str, Any]:
    from dkbench.data.datamodule import DKDataModule
    from dkbench.data.loading import load_dataset
    from dkbench.runner.devices import trainer_device
    from dkbench.runner.train import build_context, build_module, train_prestages
    from dkbench.strategies import strategy_from_config

    if split not in SPLITS:
        raise RunConfigError(f"split '{split}' is not a split (valid: {', '.join(SPLITS)})")
    run = RunFolder(run_dir)
    cfg = _run_config(run)
    other_cfg = external_dataset_config(cfg, overrides)
    strategy = strategy_from_config(cfg.strategy)
    other = load_dataset(other_cfg, cfg.paths.data_dir)
    trained = load_dataset(cfg.dataset, cfg.paths.data_dir)
    reason = _mismatch(trained.spec, other.spec)
    if reason is None:
        reason = strategy.incompatibility(other.spec, cfg.backbone.arch)
    if reason is not None:
        raise RunConfigError(f"cannot evaluate {run.path} on '{other.spec.name}': {reason}")

    same_source = other.spec.name != trained.spec.name and other.spec.source == trained.spec.source
    if same_source:  # e.g. BreastMNIST is BUSI's images: not external data, whatever its name
        log.warning("'%s' and '%s' share their source ('%s'): the images may overlap, so this is not an "
                    "external validation", trained.spec.name, other.spec.name, other.spec.source)
    started = time.time()
    torch.manual_seed(int(cfg.seed))
    ctx = build_context(cfg, trained, strategy, train_prestages(strategy, cfg))  # the run's own build
    module = build_module(cfg.model, net=strategy.build_net(ctx), spec=trained.spec, strategy=strategy,
                          task_loss=ctx.task_loss)
    saved = torch.load(run.file("checkpoints") / BEST_WEIGHTS, map_location="cpu", weights_only=True)
    module.load_state_dict(saved["state_dict"])

    data_options = dict(OmegaConf.to_container(cfg.data, resolve=True))
    arrays = other if split == "test" else _as_test(other, split)
    datamodule = DKDataModule(arrays, exclude=other.spec.label_derived, seed=int(cfg.seed),
                              sampler_factory=strategy.train_sampler, **data_options)
    import pytorch_lightning as pl

    device = trainer_device(cfg.trainer)
    trainer = pl.Trainer(accelerator=device.type, devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    out = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    metrics = {k: float(v) for k, v in out.items() if k.startswith("test/")}
    record = {**metrics, "run": str(run.path), "run_config_hash": run.done_hash,
              "trained_on": trained.spec.name, "evaluated_on": other.spec.name,
              "split": split, "same_source": same_source, "checkpoint": saved.get("checkpoint"),
              "data_checksum_sha256": other.checksum,
              "wall_time_s": round(time.time() - started, 2)}
    folder = external_folder(run.path, other.spec.name + ("" if split == "test" else f"@{split}"))
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "metrics.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
    if module.test_predictions is not None:
        atomic_write_text(folder / "predictions.csv", module.test_predictions.to_csv(index=False))
    log.info("evaluated %s on %s (%s): %s", run.path, other.spec.name, split,
             {k: round(v, 4) for k, v in metrics.items()})
    return record


def _as_test(arrays: Any, split: str) -> Any:
    """The same arrays with `split` in the test role (the datamodule tests on 'test')."""
    import dataclasses

    return dataclasses.replace(arrays, splits={**arrays.splits, "test": arrays.splits[split]})


def is_evaluated(run_dir: str | Path, other: str) -> bool:
    """An external result of this very run (a retrained run's old result does not count)."""
    try:
        record = json.loads((external_folder(run_dir, other) / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return record.get("run_config_hash") == RunFolder(run_dir).done_hash


def evaluate_external_sets(suite: dict, folders: dict[str, tuple[str, str]], cells: list) -> dict[str, int]:
    """The suite's external test sets (`external: {dataset: [others]}`) for every finished cell
    that lacks them; each failure is printed in one line and counted, the sweep goes on."""
    external = suite.get("external") or {}
    counts = {"evaluated": 0, "already": 0, "failed": 0}
    for cell in cells:
        folder = folders.get(cell.label)
        if folder is None or cell.dataset not in external or RunFolder(folder[0]).done_hash is None:
            continue
        for other in external[cell.dataset] or []:
            if is_evaluated(folder[0], other):
                counts["already"] += 1
                continue
            try:
                record = evaluate(folder[0], [f"dataset={other}"])
            except Exception as err:  # noqa: BLE001 - one external set must not stop the others
                counts["failed"] += 1
                print(f"[external] failed {cell.label} on {other}: {(str(err).splitlines() or [''])[0]}", flush=True)
                continue
            counts["evaluated"] += 1
            scores = ", ".join(f"{k}={v:.3f}" for k, v in record.items() if k in ("test/auroc", "test/dice"))
            print(f"[external] {cell.label} on {other}: {scores}", flush=True)
    return counts
