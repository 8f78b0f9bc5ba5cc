"""The segmentation LightningModule (binary and multi-class masks, 2D or 3D via spatial_dims).

Loss: Dice + cross-entropy (MONAI's DiceCE recipe, computed per image so strategies can weight
samples): foreground soft Dice (background excluded, as nnU-Net does) plus pixel-wise CE over
all classes. Model selection on validation Dice; validation logs Dice and IoU only (HD95 is a
CPU distance transform per image and nothing selects on it; ``val_hd95=True`` adds val/hd95).
The test metrics come from the selected checkpoint:
Dice, IoU and HD95 per image (`dkbench.metrics.segmentation` states how empty masks count),
written to predictions.csv with each image's predicted and true areas, and the predicted
masks saved compressed (`test_masks.npz`) so strategies can be compared image by image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from dkbench.data.spec import DatasetSpec
from dkbench.metrics.segmentation import (
    SEGMENTATION_METRICS,
    VALIDATION_METRICS,
    per_image_scores,
    predicted_labels,
)
from dkbench.models.base import TaskModule
from dkbench.strategies.base import Strategy


class SegmentationModule(TaskModule):
    def __init__(
        self,
        net: nn.Module,
        spec: DatasetSpec,
        strategy: Strategy,
        val_hd95: bool = False,
        **kwargs: Any,
    ):
        if spec.task != "segmentation":
            raise ValueError(
                f"SegmentationModule got dataset '{spec.name}', a {spec.task} task; use model=classification "
                f"(segmentation datasets select model=segmentation themselves)"
            )
        super().__init__(net, spec, strategy, **kwargs)  # task_loss: DiceCE with the run's model.lambda_*
        self.val_hd95 = bool(val_hd95)
        self._scores: dict[str, list[torch.Tensor]] = {}
        self._test_rows: list[dict[str, Any]] = []

    def scores_hd95(self, stage: str) -> bool:
        return "hd95" in self.metric_names(stage)  # strategies' own HD95 variants follow it

    @staticmethod
    def prediction(outputs: dict) -> torch.Tensor:
        """(B, *spatial) labels: the strategy's post-processed `pred` if any, else the argmax."""
        pred = outputs.get("pred")
        return predicted_labels(outputs["logits"]) if pred is None else pred

    def metric_names(self, stage: str) -> tuple[str, ...]:
        """The per-image scores of a stage: all at test; Dice and IoU at validation unless
        ``val_hd95`` (selection reads val/dice, so HD95 there would only cost time)."""
        return SEGMENTATION_METRICS if stage == "test" or self.val_hd95 else VALIDATION_METRICS

    def score(self, outputs: dict, batch: dict, stage: str) -> None:
        names = self.metric_names(stage)
        scores = per_image_scores(self.prediction(outputs), batch["label"], self.spec.num_classes,
                                  hd95="hd95" in names)
        for name, values in scores.items():
            self._scores.setdefault(name, []).append(values)

    def _log_scores(self, stage: str) -> None:
        for name in self.metric_names(stage):
            values = torch.cat(self._scores.get(name, [torch.zeros(0)]))
            self.log(f"{stage}/{name}", values.mean() if len(values) else torch.tensor(float("nan")),
                     prog_bar=(stage == "val" and name == "dice"))
        self._scores = {}

    def on_validation_epoch_start(self) -> None:
        self._scores = {}

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_start(self) -> None:
        self._scores, self._test_rows = {}, []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        batch, outputs = self._evaluate(batch, "test")  # `score` appended this batch's values last
        pred = self.prediction(outputs)
        label = batch["label"][:, 0]
        dims = tuple(range(1, pred.ndim))
        self._test_rows.append({
            "id": np.asarray(batch["id"]),
            **{k: self._scores[k][-1].cpu().numpy() for k in SEGMENTATION_METRICS},
            "pred_area": (pred > 0).sum(dims).cpu().numpy(),
            "true_area": (label > 0).sum(dims).cpu().numpy(),
            "pred": pred.to(torch.uint8).cpu().numpy(),
        })

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")
        rows = self._test_rows
        self.test_predictions = pd.DataFrame({
            "id": np.concatenate([r["id"] for r in rows]),
            **{k: np.concatenate([r[k] for r in rows]) for k in (*SEGMENTATION_METRICS, "pred_area", "true_area")},
        })
        self.test_arrays = {"test_masks": {"id": self.test_predictions["id"].to_numpy().astype(str),
                                           "pred": np.concatenate([r["pred"] for r in rows])}}
