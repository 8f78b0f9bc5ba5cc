"""Pre-flight checks of a composed run config: what would fail late, or silently record wrong
results, refused before any folder is written or any data is loaded.

- names that become path parts (dataset / backbone / strategy / suite names, the tag) must be
  plain names: no separators, no ``..`` — a run folder must never land outside the runs folder;
- ``trainer.max_epochs`` a whole number ≥ 1 (0 would record an untrained model as done, −1
  never ends), ``data.batch_size`` ≥ 1, ``model.optimizer.lr`` a finite number > 0;
- (`check_cell`) the strategy's options, the dataset's files under paths.data_dir, and whether
  the strategy and the backbone can serve the dataset as its config declares it (the loaded data
  is checked again after loading);
- one process per run (`check_single_process`): several devices are served by several runs.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dkbench.errors import IncompatibleInputError, RunConfigError

#: a name that is safe as one path component on every filesystem dkbench runs on
SAFE_NAME = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9_.@+=:-]*")  # ":" from run_folder.variant_suffix
NAMED_PARTS = ("suite_name", "dataset.name", "backbone.name", "strategy.name")


def check_name(key: str, value: Any) -> None:
    text = "" if value is None else str(value)
    if not SAFE_NAME.fullmatch(text) or ".." in text:
        raise RunConfigError(
            f"{key}={value!r} cannot name a run folder: use letters, digits and _ . @ + = : - only "
            f"(no path separators, no '..'), e.g. {key}=my_name")


def check_writable(key: str, folder: str) -> None:
    """`folder` exists as a writable folder, or can be created: its nearest existing ancestor is
    a writable folder. Checked without writing anything."""
    path = os.path.abspath(os.path.expanduser(str(folder)))
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise RunConfigError(f"{key}={folder}: {probe} is a file, not a folder; point {key} at a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunConfigError(f"{key}={folder}: {probe} is not writable by this user; point {key} at a writable "
                             f"folder (e.g. {key}=$HOME/dkbench/runs, or env DKBENCH_ROOT)")


def _input_size(cfg: DictConfig) -> int | None:
    """The side (px) of the images the network sees: `dataset.resize` if set, else `dataset.size`."""
    size = OmegaConf.select(cfg, "dataset.resize") or OmegaConf.select(cfg, "dataset.size")
    return int(size) if _whole_number(size) else None


def _whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_run_config(cfg: DictConfig) -> None:
    """Raise `RunConfigError` (one line: the setting, the value, the fix) for a config that must
    not start; cheap, no imports beyond OmegaConf."""
    for key in NAMED_PARTS:
        check_name(key, OmegaConf.select(cfg, key))
    for key in ("tag", "variant"):
        if OmegaConf.select(cfg, key):
            check_name(key, OmegaConf.select(cfg, key))
    epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if not _whole_number(epochs) or epochs < 1:
        raise RunConfigError(
            f"trainer.max_epochs={epochs!r}: use a whole number of epochs >= 1 (0 would record an "
            f"untrained model as done, -1 would never end)")
    batch = OmegaConf.select(cfg, "data.batch_size")
    if batch is not None and (not _whole_number(batch) or batch < 1):
        raise RunConfigError(f"data.batch_size={batch!r}: use a whole number >= 1, e.g. data.batch_size=32")
    check_single_process(cfg)
    runs_dir = OmegaConf.select(cfg, "paths.runs_dir")
    if runs_dir:
        check_writable("paths.runs_dir", runs_dir)
    seed = OmegaConf.select(cfg, "seed")
    if not _whole_number(seed) or not 0 <= seed < 2**32:
        raise RunConfigError(f"seed={seed!r}: use a whole number from 0 to 2**32-1, e.g. seed=0")
    on_device = OmegaConf.select(cfg, "data.on_device")
    if on_device not in (None, True, False, "auto"):
        raise RunConfigError(f"data.on_device={on_device!r}: use true, false or auto")
    min_size, size = OmegaConf.select(cfg, "backbone.min_size"), _input_size(cfg)
    if min_size and size and size < int(min_size):
        raise IncompatibleInputError(
            f"backbone={OmegaConf.select(cfg, 'backbone.name')} needs inputs of at least {min_size}px, the dataset "
            f"gives {size}px: use a larger dataset size (e.g. dataset.size=64) or a backbone made for small "
            f"images (e.g. backbone=resnet18_28)")
    mode = OmegaConf.select(cfg, "monitor.mode")
    if mode not in (None, "min", "max"):
        raise RunConfigError(f"monitor.mode={mode!r}: use min or max (the direction in which monitor.metric improves)")
    lr = OmegaConf.select(cfg, "model.optimizer.lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0):
        raise RunConfigError(f"model.optimizer.lr={lr!r}: use a finite learning rate > 0, e.g. model.optimizer.lr=1e-3")


#: one run, one process, one device: the fix for "more devices" is more runs at once
ONE_RUN_PER_DEVICE = ("run one cell per GPU instead: dkbench sweep suite=<name> hydra/launcher=gpu_pack "
                      "(every GPU of the node, placement.runs_per_device=k runs on each), or "
                      "hydra/launcher=submitit_slurm with one GPU per job")


def check_single_process(cfg: DictConfig) -> None:
    """Refuse multi-process training (`trainer.devices` > 1, several nodes, a DDP strategy).

    A dkbench run is one process: its run folder, status and metrics are written by that process,
    segmentation metrics are reduced on it, and its predictions come from it. Under DDP every rank
    would write the folder and each would score a shard of the test set. Benchmarks need many
    small runs, not one large one, so the throughput answer is one run per device (the launcher
    packs them), which also keeps each run's numbers independent of the GPU count."""
    devices = OmegaConf.select(cfg, "trainer.devices")
    count = len(devices) if isinstance(devices, list | tuple) or OmegaConf.is_list(devices) else devices
    if isinstance(count, str) and count.strip().lstrip("-").isdigit():
        count = int(count)
    if count in ("auto", -1) or (isinstance(count, int) and not isinstance(count, bool) and count > 1):
        raise RunConfigError(f"trainer.devices={devices!r}: a dkbench run trains on one device (trainer.devices=1); "
                             + ONE_RUN_PER_DEVICE)
    nodes = OmegaConf.select(cfg, "trainer.num_nodes")
    if nodes not in (None, 1):
        raise RunConfigError(f"trainer.num_nodes={nodes!r}: a dkbench run is one process on one node; "
                             + ONE_RUN_PER_DEVICE)
    strategy = OmegaConf.select(cfg, "trainer.strategy")
    if strategy is not None and str(strategy).split("_")[0] in ("ddp", "fsdp", "deepspeed"):
        raise RunConfigError(f"trainer.strategy={strategy}: distributed training is not supported for a dkbench run; "
                             + ONE_RUN_PER_DEVICE)


def check_data_present(cfg: DictConfig, spec: Any) -> None:
    """The files the dataset's reader declares (`data.registry.data_files`) exist under
    paths.data_dir: a missing one is refused in one line naming the file, the setting and where to
    get it — before a run folder exists, not after the data loader starts."""
    from dkbench.data.registry import check_data_files

    node = cfg.dataset.get("options")
    options = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    check_data_files(str(cfg.dataset.reader), cfg.paths.data_dir, spec, options)  # type: ignore[arg-type]


def check_cell(cfg: DictConfig) -> None:
    """`check_run_config`, then the dataset's files, the strategy's typed options, the declared
    compatibility of dataset, backbone and strategy, the typed run settings and whether the
    backbone takes the input size — all before a folder is written or data is read. Cheapest
    first: a refusal costs only the imports its own check needs."""
    check_run_config(cfg)  # first: it needs no torch import
    from dkbench.data.loading import spec_from_config

    spec = spec_from_config(cfg.dataset)
    check_data_present(cfg, spec)  # numpy and the reader's module only
    from dkbench.backbones.registry import task_incompatibility
    from dkbench.strategies import strategy_from_config

    strategy = strategy_from_config(cfg.strategy)  # InvalidOptionsError names the option
    strategy.check_compatible(spec, cfg.backbone.arch)
    reason = task_incompatibility(cfg.backbone.arch, spec.task)
    if reason:
        from dkbench.strategies.base import IncompatibleStrategyError

        raise IncompatibleStrategyError(reason)
    from dkbench.backbones.weights import check_weights_file
    from dkbench.runner.checkpoint_settings import CheckpointSettings
    from dkbench.runner.speed import SpeedSettings

    SpeedSettings.from_config(cfg.get("speed"))  # typed settings: each error names its key
    CheckpointSettings.from_config(cfg.get("checkpoint"))
    weights = OmegaConf.select(cfg, "backbone.weights")
    if weights:
        check_weights_file(weights)
    check_backbone_fits(cfg, spec)


def check_backbone_fits(cfg: DictConfig, spec: Any) -> None:
    """Build the backbone on PyTorch's `meta` device (shapes only: no memory, no weights, a
    fraction of a second) so that its own input checks — DenseNet-121 needs ≥ 32 px, a U-Net an
    input divisible by its downsampling — refuse the pair before a run folder exists. Pretrained
    backbones are left to the run (their weights cannot load onto `meta`); any other failure here
    is left to the run too, which reports it with its full context."""
    import torch

    from dkbench.backbones import create_backbone
    from dkbench.backbones.base import IncompatibleInputError

    if cfg.backbone.get("pretrained") or cfg.backbone.get("weights"):
        return
    size = _input_size(cfg) or spec.size
    try:
        with torch.device("meta"):
            create_backbone(cfg.backbone.arch, in_chans=spec.in_chans, spatial_dims=spec.spatial_dims, img_size=size,
                            **dict(cfg.backbone.get("kwargs") or {}))
    except IncompatibleInputError:
        raise
    except Exception:  # noqa: BLE001 - not this check's business: the run reports it in context
        return
