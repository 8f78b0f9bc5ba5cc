"""Compose a run config in process (tests, `dkbench demo`, the sweep runner) without Hydra's CLI."""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from dkbench.config import config_dir, searchpath_overrides


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Works outside Hydra and inside a Hydra job (where Hydra is already initialised on the
    same config tree), e.g. when a strategy composes its source-dataset run."""
    overrides = [*searchpath_overrides(), *overrides]  # the user's config folders, when given
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)
