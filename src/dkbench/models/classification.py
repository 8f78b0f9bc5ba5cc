"""The classification LightningModule (binary, multiclass, multilabel).

Loss, metrics and predictions follow the MedMNIST v2 protocol; everything a strategy changes
goes through its hooks (batch transform, loss terms, post-processing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from dkbench.data.spec import DatasetSpec
from dkbench.metrics.attention import attention_overlap
from dkbench.models.base import TaskModule
from dkbench.metrics.classification import make_metrics, metric_inputs, probabilities
from dkbench.strategies.base import CLASSIFICATION_TASKS, Strategy


class ClassificationModule(TaskModule):
    def __init__(self, net: nn.Module, spec: DatasetSpec, strategy: Strategy, **kwargs: Any):
        if spec.task not in CLASSIFICATION_TASKS:
            raise ValueError(
                f"ClassificationModule got dataset '{spec.name}', a {spec.task} task; drop the model=classification "
                f"override (segmentation datasets select model=segmentation themselves)"
            )
        super().__init__(net, spec, strategy, **kwargs)
        self.val_metrics = make_metrics(spec.task, spec.num_classes, "val")
        self.test_metrics = make_metrics(spec.task, spec.num_classes, "test")
        self._test_rows: list[dict[str, np.ndarray]] = []

    def extra_logs(self, outputs: dict, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        if stage == "train":
            return {}
        overlap = attention_overlap(outputs, batch)  # where the network looks vs the lesion mask
        return {} if overlap is None else {"attention_overlap": overlap}

    def _probabilities(self, outputs: dict) -> torch.Tensor:
        probs = outputs.get("probs")
        return probabilities(outputs["logits"].float(), self.spec.task) if probs is None else probs

    def score(self, outputs: dict, batch: dict, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(metric_inputs(self._probabilities(outputs), self.spec.task), batch["label"])

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        batch, outputs = self._evaluate(batch, "test")
        self._test_rows.append({"id": np.asarray(batch["id"]), "label": batch["label"].cpu().numpy(),
                                "probs": self._probabilities(outputs).cpu().numpy()})

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()
        self.test_predictions = predictions_frame(self._test_rows, self.spec)


def predictions_frame(rows: list[dict[str, np.ndarray]], spec: DatasetSpec) -> pd.DataFrame:
    """id, label(s), per-class probabilities — the input `medmnist.Evaluator` expects."""
    ids = np.concatenate([r["id"] for r in rows])
    labels = np.concatenate([r["label"] for r in rows])
    probs = np.concatenate([r["probs"] for r in rows])
    frame = pd.DataFrame({"id": ids})
    if labels.ndim == 1:
        frame["label"] = labels
    else:
        for k in range(labels.shape[1]):
            frame[f"label_{k}"] = labels[:, k]
    for k in range(probs.shape[1]):
        frame[f"prob_{k}"] = probs[:, k]
    return frame
