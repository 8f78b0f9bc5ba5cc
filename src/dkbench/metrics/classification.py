"""Classification metrics that equal `medmnist.Evaluator` (MedMNIST v2, Yang et al. 2023).

- binary: the head has two logits (as in the MedMNIST training code, cross-entropy); AUROC and
  accuracy use the softmax probability of class 1 (threshold 0.5), as the evaluator does with
  `y_score[:, -1]`;
- multiclass: macro one-vs-rest AUROC and *micro* accuracy (torchmetrics' default `macro`
  accuracy is a different number);
- binary and multiclass also get `bacc`, balanced accuracy (mean per-class recall; for binary
  tasks the mean of sensitivity and specificity at 0.5), not part of the MedMNIST evaluator;
- multilabel: macro AUROC over labels and accuracy at 0.5 averaged over all label entries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassAUROC,
    BinaryRecall,
    BinarySpecificity,
    MulticlassRecall,
    MultilabelAccuracy,
    MultilabelAUROC,
)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """(B, K) per-class probabilities as written to predictions.csv."""
    if task == "multilabel":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def per_sample_loss(logits: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    """Unreduced task loss, so strategies can weight samples (self-paced learning); (B,) for
    every task (segmentation: the per-image DiceCE of `dkbench.metrics.segmentation`)."""
    if task == "segmentation":
        from dkbench.metrics.segmentation import dice_ce_loss

        return dice_ce_loss(logits, target)
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").mean(1)
    return F.cross_entropy(logits, target.long(), reduction="none")


def metric_inputs(probs: torch.Tensor, task: str) -> torch.Tensor:
    """What the metric objects score: the positive-class probability for binary tasks."""
    return probs[:, 1] if task == "binary" else probs


def make_metrics(task: str, num_classes: int, prefix: str) -> MetricCollection:
    if task == "binary":
        metrics = {"auroc": BinaryAUROC(), "acc": BinaryAccuracy(threshold=0.5),
                   # balanced accuracy: the mean of sensitivity and specificity at 0.5
                   "bacc": (BinaryRecall(threshold=0.5) + BinarySpecificity(threshold=0.5)) / 2}
    elif task == "multiclass":
        metrics = {
            "auroc": MulticlassAUROC(num_classes=num_classes, average="macro"),
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            # balanced accuracy: the mean per-class recall (what imbalanced dermoscopy sets report)
            "bacc": MulticlassRecall(num_classes=num_classes, average="macro"),
        }
    elif task == "multilabel":
        metrics = {
            "auroc": MultilabelAUROC(num_labels=num_classes, average="macro"),
            "acc": MultilabelAccuracy(num_labels=num_classes, threshold=0.5, average="micro"),
        }
    else:
        raise ValueError(f"no classification metrics for task '{task}'")
    return MetricCollection(metrics, prefix=f"{prefix}/")
