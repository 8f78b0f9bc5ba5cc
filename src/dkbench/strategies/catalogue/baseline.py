"""`baseline`: plain supervised training from scratch, the reference row of every leaderboard.

Follows the MedMNIST v2 protocol (Yang et al., Scientific Data 10:41, 2023): the network sees
images and labels only, with the task loss and nothing else. For segmentation: the plain
U-Net recipe (Ronneberger et al., MICCAI 2015) with the DiceCE loss of `configs/model/segmentation.yaml`.
For detection: MONAI's RetinaNet recipe (`dkbench.models.detector`) on the backbone's feature pyramid.
"""

from dkbench.strategies.base import ALL_TASKS, DETECTION_TASKS, Strategy
from dkbench.strategies.registry import register_strategy


@register_strategy("baseline")
class Baseline(Strategy):
    name = "baseline"
    family = "A"
    knowledge = "image and label only"
    requires = frozenset()
    tasks = ALL_TASKS | DETECTION_TASKS
    citation = "Yang et al., MedMNIST v2, Scientific Data 10:41 (2023)"
