"""Pre-flight checks of a composed run config: what would fail late, or silently record wrong
results, refused before any folder is written or any data is loaded.

- names that become path parts (dataset / backbone / strategy / suite names, the tag) must be
  plain names: no separators, no ``..`` — a run folder must never land outside the runs folder;
- ``trainer.max_epochs`` a whole number ≥ 1 (0 would record an untrained model as done, −1
  never ends), ``data.batch_size`` ≥ 1, ``model.optimizer.lr`` a finite number > 0;
- (`check_cell`) the strategy's options, and whether the strategy and the backbone can serve the
  dataset as its config declares it (the loaded data is checked again after loading).
"""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dkbench.errors import RunConfigError

#: a name that is safe as one path component on every filesystem dkbench runs on
SAFE_NAME = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9_.@+=-]*")
NAMED_PARTS = ("suite_name", "dataset.name", "backbone.name", "strategy.name")


def check_name(key: str, value: Any) -> None:
    text = "" if value is None else str(value)
    if not SAFE_NAME.fullmatch(text) or ".." in text:
        raise RunConfigError(
            f"{key}={value!r} cannot name a run folder: use letters, digits and _ . @ + = - only "
            f"(no path separators, no '..'), e.g. {key}=my_name")


def _whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_run_config(cfg: DictConfig) -> None:
    """Raise `RunConfigError` (one line: the setting, the value, the fix) for a config that must
    not start; cheap, no imports beyond OmegaConf."""
    for key in NAMED_PARTS:
        check_name(key, OmegaConf.select(cfg, key))
    tag = OmegaConf.select(cfg, "tag")
    if tag:
        check_name("tag", tag)
    epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if not _whole_number(epochs) or epochs < 1:
        raise RunConfigError(
            f"trainer.max_epochs={epochs!r}: use a whole number of epochs >= 1 (0 would record an "
            f"untrained model as done, -1 would never end)")
    batch = OmegaConf.select(cfg, "data.batch_size")
    if batch is not None and (not _whole_number(batch) or batch < 1):
        raise RunConfigError(f"data.batch_size={batch!r}: use a whole number >= 1, e.g. data.batch_size=32")
    lr = OmegaConf.select(cfg, "model.optimizer.lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0):
        raise RunConfigError(f"model.optimizer.lr={lr!r}: use a finite learning rate > 0, e.g. model.optimizer.lr=1e-3")


def check_cell(cfg: DictConfig) -> None:
    """`check_run_config`, then the strategy's typed options and the declared compatibility of
    dataset, backbone and strategy — all before a folder is written or data is read."""
    check_run_config(cfg)  # first: it needs no torch import
    from dkbench.backbones.registry import task_incompatibility
    from dkbench.data.loading import spec_from_config
    from dkbench.strategies import strategy_from_config

    strategy = strategy_from_config(cfg.strategy)  # InvalidOptionsError names the option
    spec = spec_from_config(cfg.dataset)
    strategy.check_compatible(spec, cfg.backbone.arch)
    reason = task_incompatibility(cfg.backbone.arch, spec.task)
    if reason:
        from dkbench.strategies.base import IncompatibleStrategyError

        raise IncompatibleStrategyError(reason)
