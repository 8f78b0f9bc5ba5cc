"""Strategies: how domain knowledge enters training (../shared/SURVEY.md, row by row)."""

from dkbench.strategies.base import IncompatibleStrategyError, Strategy, StrategyContext
from dkbench.strategies.registry import STRATEGIES, register_strategy


def create_strategy(name: str, **options) -> Strategy:
    return STRATEGIES.get(name)(**options)


__all__ = ["STRATEGIES", "IncompatibleStrategyError", "Strategy", "StrategyContext", "create_strategy", "register_strategy"]
