"""The run's per-sample task loss as one object, built once from the run's settings.

The task module trains with it, and strategies receive the same object (`StepContext.task_loss`,
`BuildContext.task_loss`) for auxiliary outputs (a second head, a teacher), so every loss in a
run follows `model.lambda_dice` / `model.lambda_ce` without a strategy re-reading the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TaskLoss:
    """(logits, label) → (B,) unreduced loss: cross-entropy (binary, multiclass), BCE
    (multilabel), per-image DiceCE (segmentation, `dkbench.metrics.segmentation.dice_ce_loss`)."""

    task: str
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0

    @classmethod
    def from_model_options(cls, task: str, options: Mapping[str, Any]) -> TaskLoss:
        """From the model config (`configs/model/*.yaml`): only segmentation has λ weights."""
        return cls(task, float(options.get("lambda_dice", 1.0)), float(options.get("lambda_ce", 1.0)))

    def __call__(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if self.task == "segmentation":
            from dkbench.metrics.segmentation import dice_ce_loss

            return dice_ce_loss(logits, label, self.lambda_dice, self.lambda_ce)
        from dkbench.metrics.classification import per_sample_loss

        return per_sample_loss(logits, label, self.task)
