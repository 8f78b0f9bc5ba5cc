"""The classification LightningModule (binary, multiclass, multilabel).

Loss, metrics and predictions follow the MedMNIST v2 protocol; everything a strategy changes
goes through its hooks (batch transform, loss terms, post-processing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch import nn

from dkbench.data.spec import DatasetSpec
from dkbench.metrics.attention import attention_overlap
from dkbench.metrics.classification import make_metrics, metric_inputs, per_sample_loss, probabilities
from dkbench.strategies.base import Strategy


class ClassificationModule(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        spec: DatasetSpec,
        strategy: Strategy,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
    ):
        super().__init__()
        self.net = net
        self.spec = spec
        self.strategy = strategy
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.val_metrics = make_metrics(spec.task, spec.num_classes, "val")
        self.test_metrics = make_metrics(spec.task, spec.num_classes, "test")
        self._test_rows: list[dict[str, np.ndarray]] = []
        self.test_predictions: pd.DataFrame | None = None

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.net(batch)

    def _step(self, batch: dict, stage: str) -> tuple[dict, dict, torch.Tensor]:
        batch = self.strategy.transform_batch(batch, stage)
        outputs = self.net(batch)
        losses = per_sample_loss(outputs["logits"], batch["label"], self.spec.task)
        terms = self.strategy.loss_terms(losses, outputs, batch, stage)
        return batch, outputs, terms

    def on_train_epoch_start(self) -> None:
        self.strategy.on_train_epoch_start(self.current_epoch, self.trainer.max_epochs)

    def _log_extra(self, outputs: dict, batch: dict, stage: str) -> None:
        n = batch["image"].shape[0]
        extra = dict(self.strategy.extra_metrics(outputs, batch, stage))
        if stage != "train":  # where the network looks vs the lesion mask, for every strategy
            overlap = attention_overlap(outputs, batch)
            if overlap is not None:
                extra.setdefault("attention_overlap", overlap)
        for name, value in extra.items():
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, batch_size=n)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch, outputs, terms = self._step(batch, "train")
        self._log_extra(outputs, batch, "train")
        loss = torch.stack(list(terms.values())).sum()
        n = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        if len(terms) > 1:
            for name, value in terms.items():
                self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _evaluate(self, batch: dict, stage: str) -> tuple[dict, torch.Tensor]:
        batch, outputs, terms = self._step(batch, stage)
        outputs = self.strategy.postprocess(outputs, batch)
        self._log_extra(outputs, batch, stage)
        probs = outputs.get("probs")
        if probs is None:
            probs = probabilities(outputs["logits"].float(), self.spec.task)
        loss = torch.stack(list(terms.values())).sum()
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=batch["image"].shape[0])
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(metric_inputs(probs, self.spec.task), batch["label"])
        return batch, probs

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        batch, probs = self._evaluate(batch, "test")
        self._test_rows.append(
            {"id": np.asarray(batch["id"]), "label": batch["label"].cpu().numpy(), "probs": probs.cpu().numpy()}
        )

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()
        self.test_predictions = predictions_frame(self._test_rows, self.spec)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}


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
