"""What every task module shares: strategy hooks, loss terms, logging, optimizers.

A task module (classification, segmentation) only says how its outputs become a per-sample
loss, how they update its metrics and what it writes as test predictions. The strategy hooks
are called here, in the same order for every task, so a strategy that supports several tasks
(curriculum, transfer, input channels) needs no task-specific path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from torch import nn

from dkbench.data.spec import DatasetSpec
from dkbench.losses.task import TaskLoss
from dkbench.strategies.base import StepContext, Strategy


class TaskModule(pl.LightningModule):
    """Base LightningModule; subclasses implement `task_loss`, `score` and the test hooks."""

    def __init__(
        self,
        net: nn.Module,
        spec: DatasetSpec,
        strategy: Strategy,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        task_loss: TaskLoss | None = None,
    ):
        super().__init__()
        self.net = net
        self.spec = spec
        #: a child module: the strategy's buffers (tables, priors, pacing state) follow the
        #: network to the device and into every checkpoint
        self.strategy = strategy
        #: the run's per-sample task loss, the same object strategies get in their contexts
        self.loss_fn = task_loss or TaskLoss(spec.task)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        #: per-sample test predictions (predictions.csv), filled by `on_test_epoch_end`
        self.test_predictions: pd.DataFrame | None = None
        #: extra test artefacts the run folder saves as compressed arrays (name → arrays)
        self.test_arrays: dict[str, Any] = {}

    # --- task-specific -------------------------------------------------------------------
    def task_loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        """(B,) unreduced task loss, so strategies can weight samples."""
        return self.loss_fn(outputs["logits"], batch["label"])

    def scores_hd95(self, stage: str) -> bool:
        """Whether a stage computes HD95 (segmentation overrides)."""
        return False

    def step_context(self, stage: str) -> StepContext:
        trainer = self._trainer  # None outside a Trainer (direct calls in tests)
        max_epochs = getattr(trainer, "max_epochs", None)  # None: a Trainer without an epoch limit
        return StepContext(
            stage=stage, spec=self.spec, task_loss=self.loss_fn, device=self.device,
            epoch=self.current_epoch, max_epochs=int(max_epochs) if max_epochs is not None else 1,
            hd95=self.scores_hd95(stage), net=self.net,
        )

    def extra_logs(self, outputs: dict, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        """Task-level scalars logged for every strategy (e.g. attention overlap)."""
        return {}

    def score(self, outputs: dict, batch: dict, stage: str) -> None:
        """Update the stage's metrics with a post-processed val/test batch."""
        raise NotImplementedError

    # --- shared flow ---------------------------------------------------------------------
    def run_metadata(self) -> dict[str, Any]:
        """What the task module adds to metadata.json (the detector: its anchor plan); nothing by default."""
        return {}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.net(batch)

    def _step(self, batch: dict, step: StepContext) -> tuple[dict, dict, dict[str, torch.Tensor]]:
        batch = self.strategy.transform_batch(batch, step)
        outputs = self.net(batch)
        terms = self.strategy.loss_terms(self.task_loss(outputs, batch), outputs, batch, step)
        return batch, outputs, terms

    def on_train_epoch_start(self) -> None:
        self.strategy.on_train_epoch_start(self.current_epoch, self.trainer.max_epochs)

    def _log_extra(self, outputs: dict, batch: dict, step: StepContext) -> None:
        n = batch["image"].shape[0]
        extra = dict(self.strategy.extra_metrics(outputs, batch, step))
        for name, value in self.extra_logs(outputs, batch, step.stage).items():
            extra.setdefault(name, value)
        for name, value in extra.items():
            self.log(f"{step.stage}/{name}", value, on_step=False, on_epoch=True, batch_size=n)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        step = self.step_context("train")
        batch, outputs, terms = self._step(batch, step)
        self._log_extra(outputs, batch, step)
        loss = torch.stack(list(terms.values())).sum()
        n = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        if len(terms) > 1:
            for name, value in terms.items():
                self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _evaluate(self, batch: dict, stage: str) -> tuple[dict, dict]:
        step = self.step_context(stage)
        batch, outputs, terms = self._step(batch, step)
        if stage != "val" or not self.strategy.post_hoc:  # post-hoc: selected on raw outputs, as the baseline
            outputs = self.strategy.postprocess(outputs, batch, step)
        self._log_extra(outputs, batch, step)
        loss = torch.stack(list(terms.values())).sum()
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=batch["image"].shape[0])
        self.score(outputs, batch, stage)
        return batch, outputs

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def configure_optimizers(self) -> Any:
        # the network's parameters only: a strategy's own modules (a frozen shape model, a
        # predictor) are state, trained in their pre-stage if at all
        optimizer = self.optimizer_factory(params=[p for p in self.net.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}
