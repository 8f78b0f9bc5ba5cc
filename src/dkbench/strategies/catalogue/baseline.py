"""`baseline`: plain supervised training from scratch, the reference row of every leaderboard.

Follows the MedMNIST v2 protocol (Yang et al., Scientific Data 10:41, 2023): the network sees
images and labels only, with the task loss and nothing else.
"""

from dkbench.data.spec import TASKS
from dkbench.strategies.base import Strategy
from dkbench.strategies.registry import register_strategy


@register_strategy("baseline")
class Baseline(Strategy):
    name = "baseline"
    requires = frozenset()
    tasks = frozenset(TASKS) - {"segmentation"}  # segmentation arrives with its own module
    citation = "Yang et al., MedMNIST v2, Scientific Data 10:41 (2023)"
