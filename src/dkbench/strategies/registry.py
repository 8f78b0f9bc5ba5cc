"""The strategy axis: name → Strategy subclass (one module per SURVEY.md row)."""

from dkbench.registry import Registry

STRATEGIES: Registry = Registry("strategy", package="dkbench.strategies.catalogue")
register_strategy = STRATEGIES.register
