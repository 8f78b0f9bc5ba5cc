"""`train(cfg)`: one composed config → one finished run folder.

Flow: data → backbone → strategy → Lightning module (speed settings) → fit → test with the
best-validation weights (kept in memory, written once as `checkpoints/best_weights.pt`) → run
folder. A finished folder with the same config hash is returned as is; an interrupted one
resumes from `checkpoints/last.ckpt` (written every N epochs / M minutes, see `checkpoint:`);
one finished under another config is moved to `superseded/<hash>/` first, never overwritten.
"""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from dkbench import mark_job_start
from dkbench.backbones import create_backbone
from dkbench.data.datamodule import DKDataModule
from dkbench.data.loading import load_dataset
from dkbench.errors import RunInterrupted
from dkbench.leaderboard.collect import selected_val_metrics
from dkbench.losses.task import TaskLoss
from dkbench.runner.callbacks import (
    EarlierAttempts,
    FailOnNonFiniteLoss,
    ProgressLog,
    ResumableRandomState,
    TrainThroughput,
)
from dkbench.runner.checkpointing import (
    BEST_WEIGHTS,
    BestWeights,
    CheckpointSettings,
    PeriodicLastCheckpoint,
    resumable_checkpoint,
)
from dkbench.runner.compose import compose_config
from dkbench.runner.csv_log import KeepLoggedEpochs
from dkbench.runner.devices import trainer_device
from dkbench.runner.environment import git_sha, hardware, package_versions
from dkbench.runner.preflight import check_cell
from dkbench.runner.run_folder import RunFolder, config_hash, locked
from dkbench.runner.signals import raise_on_signals
from dkbench.runner.speed import (
    SpeedSettings,
    apply_module_settings,
    apply_process_settings,
)
from dkbench.strategies import BuildContext, strategy_from_config
from dkbench.storage import link_or_copy
from dkbench.strategies.base import SHARED_TRAINING, Strategy

log = logging.getLogger("dkbench")
# Lightning logs "`weights_only` was not set, defaulting to False" at INFO on every periodic save of
# last.ckpt: that default (the full trainer state) is what a resume needs; the note is noise
logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").setLevel(logging.WARNING)


class _WithoutAdvertising(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger" line, logged at every Trainer start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_WithoutAdvertising())

# Lightning hints that do not apply to in-memory data and fixed logging intervals.
for _pattern in (
    ".*number of training batches.*smaller than the logging interval.*",
    ".*does not have many workers.*",
    ".*LeafSpec.*",
    ".*Checkpoint directory .* exists and is not empty.*",
    r".*module\(s\) in eval mode at the start of training.*",  # a strategy's frozen submodule (ROI predictor)
):
    warnings.filterwarnings("ignore", message=_pattern)


def _instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every `_target_` entry of a (possibly empty / null) config group."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def _backbone_factory(cfg: DictConfig, spec, strategy_kwargs: dict[str, Any]):
    """Builds the run's backbone: its config, then the strategy's needs, then call overrides."""

    def make(**overrides: Any):
        kwargs = {
            "in_chans": spec.in_chans,
            "spatial_dims": spec.spatial_dims,
            "img_size": spec.size,
            "pretrained": bool(cfg.backbone.get("pretrained", False)),
            "weights": cfg.backbone.get("weights"),
            **dict(cfg.backbone.get("kwargs") or {}),
            **strategy_kwargs,
            **overrides,
        }
        return create_backbone(cfg.backbone.arch, **kwargs)

    return make


def build_module(model_cfg: DictConfig, **parts: Any) -> pl.LightningModule:
    """The task module from `configs/model/*.yaml`: its class, optimizer and scheduler partials
    (`parts`: net, spec, strategy, task_loss). The loss weights (`lambda_*`) live in `task_loss`
    (`TaskLoss.from_model_options`), the one place that reads them; `detector` is the network's
    (read by the strategy's `build_net`)."""
    options = {k: v for k, v in model_cfg.items()
               if k not in ("_target_", "optimizer", "scheduler", "monitor", "lambda_dice", "lambda_ce", "detector")}
    return get_class(model_cfg._target_)(
        **parts,
        optimizer=instantiate(model_cfg.optimizer),
        scheduler=instantiate(model_cfg.scheduler) if model_cfg.get("scheduler") else None,
        **options,
    )


def train(cfg: DictConfig, *, job_started_at: float | None = None, wait: bool = False) -> dict[str, Any]:
    """Run one experiment; returns the metrics dict written to metrics.json.

    `job_started_at`: when the calling job began (a sweep's `run_cell` marks it); by default
    this call is the job and marks it itself. `wait`: if another process holds the run folder,
    wait for it (then find the run done) instead of refusing — for pre-stage runs cells share."""
    if job_started_at is None:
        job_started_at = mark_job_start()
    check_cell(cfg)  # names, values, options, compatibility, data: before the run folder exists
    run = RunFolder(cfg.paths.run_dir)
    with raise_on_signals(), locked(run, wait=wait):
        return _train_locked(cfg, run, job_started_at)


def build_context(cfg: DictConfig, arrays: Any, strategy: Strategy, prestages: dict[str, Path]) -> BuildContext:
    """What `Strategy.build_net` (and `build_prestage`) get: the data, the backbone factory, the
    run's one task loss (model.lambda_* for segmentation), the cache, the device, pre-stage runs."""
    spec = arrays.spec
    return BuildContext(
        arrays=arrays,
        make_backbone=_backbone_factory(cfg, spec, strategy.backbone_kwargs(spec)),
        seed=int(cfg.seed),
        cache_dir=Path(cfg.paths.cache_dir),
        task_loss=TaskLoss.from_model_options(spec.task, cfg.model),
        config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
        compose=compose_config,
        device=trainer_device(cfg.trainer),  # pre-stages train where the Trainer will
        prestages=prestages,
    )


def build_prestage_artefact(cfg: DictConfig, role: str) -> dict[str, Any]:
    """One cached artefact pre-stage of the cell `cfg` (`Strategy.prestage_artefacts`: an ROI
    predictor, a shape autoencoder), built now or found in the cache; a sweep runs these as jobs
    before the cells. The artefact draws from generators of its own (`dkbench.seeding`), so it
    is the one the cell would build."""
    strategy = strategy_from_config(cfg.strategy)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    arrays = load_dataset(cfg.dataset, cfg.paths.data_dir)
    started = time.time()
    strategy.build_prestage(role, build_context(cfg, arrays, strategy, {}))
    return {"role": role, "wall_time_s": round(time.time() - started, 2)}


def train_prestages(strategy: Strategy, cfg: DictConfig) -> dict[str, Path]:
    """The strategy's pre-stage runs, each finished (trained now, or found DONE): role → folder."""
    folders = {}
    for role, prestage_cfg in strategy.prestage_runs(cfg).items():
        log.info("pre-stage %s of %s: %s", role, cfg.strategy.name, prestage_cfg.paths.run_dir)
        train(prestage_cfg, wait=True)
        folders[role] = Path(prestage_cfg.paths.run_dir)
    return folders


def shared_training(strategy: Strategy, prestages: dict[str, Path]) -> Path | None:
    """The baseline run folder whose weights a `post_hoc` strategy evaluates, or None (train).

    None also when that run kept no weights (it finished with keep_checkpoints=false before it
    was shared): the run then trains the same network itself — same loss, seed, data and
    raw-output selection — at the cost sharing would have saved, and says so."""
    folder = prestages.get(SHARED_TRAINING) if strategy.post_hoc else None
    if folder is None:
        return None
    if not (folder / "checkpoints" / BEST_WEIGHTS).is_file():
        log.warning("%s kept no weights (it ran with keep_checkpoints=false); %s trains the same network "
                    "itself", folder, strategy.name)
        return None
    return folder


def _train_locked(cfg: DictConfig, run: RunFolder, job_started_at: float) -> dict[str, Any]:
    cfg_hash = config_hash(cfg)
    previous = run.done_hash
    if previous == cfg_hash:
        log.info("already done (config %s): %s", cfg_hash, run.path)
        return run.read_json("metrics.json")
    if previous is not None:
        moved = run.supersede(previous)
        log.warning("run folder held results of another config (%s): moved to %s", previous, moved)
    run.path.mkdir(parents=True, exist_ok=True)
    run.clear_stale(cfg_hash)
    run.set_status("running", cfg_hash)
    try:
        return _fit_and_record(cfg, run, cfg_hash, job_started_at)
    except RunInterrupted as err:  # SIGTERM / Ctrl-C: resumable, not failed
        run.set_status("interrupted", cfg_hash, signal=err.signal_name)
        log.warning("%s interrupted by %s; rerun to resume from its last checkpoint", run.path, err.signal_name)
        raise
    except Exception as err:  # recorded for the leaderboard, then re-raised to the caller
        run.set_status("failed", cfg_hash, error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise


def _fit_and_record(cfg: DictConfig, run: RunFolder, cfg_hash: str, job_started_at: float) -> dict[str, Any]:
    started = time.time()
    # typed settings first: a bad value fails before any data is loaded
    speed = SpeedSettings.from_config(cfg.get("speed"))
    ckpt_settings = CheckpointSettings.from_config(cfg.get("checkpoint"))
    strategy = strategy_from_config(cfg.strategy)  # options and compatibility: checked by `train`
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    # pre-stage runs (source model, teacher) first: ordinary runs that seed themselves, so this
    # run seeds afterwards and its random stream is the same whether they trained now or not
    prestages = train_prestages(strategy, cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    apply_process_settings(speed)

    arrays = load_dataset(cfg.dataset, cfg.paths.data_dir)
    spec = arrays.spec
    strategy.check_compatible(spec, cfg.backbone.arch)  # what the loaded data really provides
    ctx = build_context(cfg, arrays, strategy, prestages)
    net = strategy.build_net(ctx)
    module = build_module(cfg.model, net=net, spec=spec, strategy=strategy, task_loss=ctx.task_loss)
    apply_module_settings(module, speed)

    datamodule = DKDataModule(
        arrays,
        exclude=spec.label_derived,  # label-derived keys never reach a model
        seed=int(cfg.seed),
        sampler_factory=strategy.train_sampler,
        **dict(cfg.data),
    )

    ckpt_dir = run.file("checkpoints")
    keep_checkpoints = bool(cfg.get("keep_checkpoints", True))
    best = BestWeights(cfg.monitor.metric, cfg.monitor.mode)
    last = PeriodicLastCheckpoint(ckpt_dir, ckpt_settings)
    throughput = TrainThroughput()
    # `best` before `last`: an epoch's improvement is in the last.ckpt written at that epoch
    # the random streams travel in last.ckpt and the CSV log keeps earlier epochs: a resumed
    # run ends as an uninterrupted one would (tests/robustness/test_resume.py)
    attempts = EarlierAttempts(started)
    callbacks = [best, last, throughput, attempts, FailOnNonFiniteLoss(), ResumableRandomState(), KeepLoggedEpochs(),
                 *_instantiate_list(cfg.get("callbacks"))]
    if not cfg.ui.progress_bar:  # no terminal: progress as log lines (train.log and the console)
        callbacks.append(ProgressLog(logging.getLogger("dkbench.progress"), str(cfg.monitor.metric), str(cfg.monitor.mode),
                                     float(cfg.ui.get("progress_every_s", 30))))
    loggers = _instantiate_list(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, benchmark=speed.cudnn_benchmark)

    shared = shared_training(strategy, prestages)
    try:
        if shared is None:
            # an unreadable last.ckpt (damaged, or planted: loaded with weights_only, so no code runs)
            # is moved aside and the run starts over instead of failing on every rerun
            resume = resumable_checkpoint(ckpt_dir)
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)
            # the test phase runs on the best weights, straight from memory (no checkpoint reload)
            tested_best = best.load_into(module)
        else:  # a post-hoc strategy: the baseline run's selected network, tested with this run's outputs
            saved = torch.load(shared / "checkpoints" / BEST_WEIGHTS, map_location="cpu", weights_only=True)
            # the network only: the post-hoc strategy's own state (rules learned from the train split in
            # build_net, e.g. plausible_boxes' size ranges) is not in the baseline's checkpoint
            module.net.load_state_dict({k[len("net."):]: v for k, v in saved["state_dict"].items()
                                        if k.startswith("net.")})
        test_out = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    finally:
        _finish_wandb(loggers)

    if shared is None:
        if keep_checkpoints:
            best.save(ckpt_dir / BEST_WEIGHTS, module)  # the one write of the tested weights
        best_epoch = best.best_epoch if tested_best else None
        selection = {"monitor": cfg.monitor.metric, "mode": cfg.monitor.mode,
                     "best_score": best.best_score if tested_best else None,
                     "best_epoch": best_epoch, "checkpoint": "best" if tested_best else "last"}
        training: dict[str, Any] = {"epochs_trained": trainer.current_epoch}
    else:
        if keep_checkpoints:
            link_or_copy(shared / "checkpoints" / BEST_WEIGHTS, ckpt_dir / BEST_WEIGHTS)
        trained = RunFolder(shared).read_json("metrics.json")
        selection, best_epoch = trained["selection"], trained["selection"].get("best_epoch")
        training = {"epochs_trained": trained.get("epochs_trained"),
                    "shared_training": {"run_dir": str(shared), "config_hash": RunFolder(shared).done_hash,
                                        "wall_time_s": trained.get("wall_time_s")}}
    metrics = {
        **{k: float(v) for k, v in test_out.items() if k.startswith("test/")},
        "selection": selection,
        **training,
        # with the checkpointed time of earlier attempts when resumed (EarlierAttempts)
        "wall_time_s": round(time.time() - started + attempts.earlier_s, 2),
        "resumed_after_s": round(attempts.earlier_s, 2) if attempts.resumed else None,
        "started_at": started,
        # runner overhead to the first training step: from the start of this job (for a process's
        # first job, the dkbench import: imports, composition; in a reused sweep worker, entering
        # the job) and from the start of this run (data, model, Trainer)
        "overhead_s": {
            "import_to_first_step": _seconds(job_started_at, throughput.first_step_at),
            "run_start_to_first_step": _seconds(started, throughput.first_step_at),
        },
        "finished_at": time.time(),
        "train_images_per_s": round(throughput.images_per_second, 2),
        # the device slot a packed sweep gave this run (runner/placement.py); null outside one
        "placement": _plain(OmegaConf.select(cfg, "placement.assigned")),
    }
    run.write_text("config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    assert module.test_predictions is not None
    run.write_text("predictions.csv", module.test_predictions.to_csv(index=False))
    for name, arrays_out in module.test_arrays.items():  # e.g. predicted masks, compressed
        run.write_npz(f"{name}.npz", arrays_out)
    run.write_json("metadata.json", {
        "config_hash": cfg_hash,
        "suite": cfg.suite_name, "variant": cfg.get("variant") or "", "dataset": spec.name, "backbone": cfg.backbone.name,
        "strategy": strategy.metadata(), "seed": int(cfg.seed), "task": spec.task,
        "data": {"checksum_sha256": arrays.checksum, "split_sizes": {k: len(v) for k, v in arrays.splits.items()},
                 "source": spec.source, "notes": arrays.notes},
        "versions": package_versions(), "git_sha": git_sha(), "hardware": hardware(),
        "params": sum(p.numel() for p in module.net.parameters()),
        **module.run_metadata(),  # e.g. the detector's anchor plan
    })
    # the selected epoch's validation scores, beside the test scores (val → test gap = shortcut)
    val_log = run.path if shared is None else shared  # a shared network's validation is its training run's
    metrics.update({k: v for k, v in selected_val_metrics(val_log, best_epoch).items() if k not in metrics})
    run.write_json("metrics.json", metrics)
    if not keep_checkpoints:
        for f in (*ckpt_dir.glob("*.ckpt"), ckpt_dir / BEST_WEIGHTS):
            f.unlink(missing_ok=True)
    run.mark_done(cfg_hash)
    log.info("finished %s: %s", run.path, {k: round(v, 4) for k, v in metrics.items() if k.startswith("test/")})
    return metrics


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _seconds(start: float, end: float | None) -> float | None:
    return round(end - start, 2) if end is not None else None


def _finish_wandb(loggers: list[Any]) -> None:
    """`wandb.finish()` after every run, or the next run in this process logs into it."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()
