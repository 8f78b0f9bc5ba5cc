"""Strategies: how domain knowledge enters training (../shared/SURVEY.md, row by row)."""

from dkbench.strategies.base import BuildContext, IncompatibleStrategyError, StepContext, Strategy
from dkbench.strategies.options import OptionError, StrategyOptions
from dkbench.strategies.registry import STRATEGIES, register_strategy


def create_strategy(name: str, **options) -> Strategy:
    return STRATEGIES.get(name)(**options)


def strategy_from_config(strategy_cfg) -> Strategy:
    """From a `configs/strategy/*.yaml` node: `method` is the registry key; options arrive as
    plain containers (not DictConfig), so strategies and metadata.json see ordinary dicts."""
    from omegaconf import OmegaConf

    options = strategy_cfg.get("options")
    plain = OmegaConf.to_container(options, resolve=True) if OmegaConf.is_config(options) else dict(options or {})
    return create_strategy(strategy_cfg.method, **plain)


__all__ = ["STRATEGIES", "BuildContext", "IncompatibleStrategyError", "OptionError", "StepContext", "Strategy",
           "StrategyOptions", "create_strategy", "register_strategy", "strategy_from_config"]
