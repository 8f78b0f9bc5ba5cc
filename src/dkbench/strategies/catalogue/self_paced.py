"""`self_paced`: the learner picks what it can handle — per-sample weights from the current loss.

Follows Kumar, Packer & Koller, "Self-Paced Learning for Latent Variable Models", NeurIPS 2010:
a sample takes part in training only while its loss is below a threshold λ, and λ grows so
that harder samples join as the model improves. Weights (``regime``):

* ``hard`` (Kumar et al.): v_i = 1[ℓ_i < λ];
* ``linear`` (Jiang et al., "Easy Samples First: Self-paced Reranking for Zero-Example
  Multimedia Search", ACM MM 2014): v_i = max(0, 1 - ℓ_i / λ).

Training loss = Σ v_i ℓ_i / max(Σ v_i, 1), with v detached (the weights are chosen, not
learned through). λ_e = λ_0 · growth^e at epoch e; λ_0 is ``lambda0`` when given, else the
``start_quantile`` quantile of the losses of the first training batch (so that fraction of the
samples is selected at the start). Validation and test use the plain mean loss. The mean
weight, the selected fraction and λ are logged every epoch as ``train/spl_weight``,
``train/spl_selected`` and ``train/spl_lambda`` (csv/metrics.csv).

λ_0 (NaN until the first training batch sets it) and the current epoch are buffers of the
strategy: they are saved in every checkpoint, so a resumed run continues the schedule with the
λ_0 of its first batch instead of re-estimating it.

Simplified relative to Kumar et al.: instead of alternating exact minimisation over the
weights and the parameters (ACS on the whole training set) the weights are set per
mini-batch from the current losses (the closed-form minimiser for fixed parameters), and
λ grows once per epoch by a fixed factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch

from dkbench.strategies.base import StepContext, Strategy
from dkbench.strategies.options import Bounds, StrategyOptions
from dkbench.strategies.registry import register_strategy

Regime = Literal["hard", "linear"]


def self_paced_weights(losses: torch.Tensor, lam: torch.Tensor | float, regime: Regime = "hard") -> torch.Tensor:
    """Per-sample weights v_i (detached) for losses ℓ_i and threshold λ."""
    losses = losses.detach()
    if regime == "hard":
        return (losses < lam).to(losses.dtype)
    if regime == "linear":
        return (1.0 - losses / torch.as_tensor(lam).clamp(min=1e-12)).clamp(min=0.0)
    raise ValueError(f"self_paced: regime must be 'hard' or 'linear', got {regime!r}")


def weighted_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ v_i ℓ_i / max(Σ v_i, 1)."""
    weights = weights.detach()
    return (weights * losses).sum() / weights.sum().clamp(min=1.0)


@register_strategy("self_paced")
class SelfPaced(Strategy):
    name = "self_paced"
    family = "B"
    knowledge = "its own loss (training)"
    requires = frozenset()
    citation = "Kumar, Packer & Koller, Self-Paced Learning for Latent Variable Models, NeurIPS 2010"

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: hard: v = 1[loss < λ] (Kumar et al.); linear: v = max(0, 1 - loss/λ) (Jiang et al.)
        regime: Regime = "hard"
        #: λ_0 = this quantile of the first training batch's losses (ignored if lambda0 is set)
        start_quantile: Annotated[float, Bounds(gt=0, le=1)] = 0.5
        #: absolute λ_0 instead of the quantile
        lambda0: float | None = None
        #: λ_e = λ_0 · growth^epoch (≥ 1: harder samples join as training goes on)
        growth: Annotated[float, Bounds(ge=1)] = 1.2

    def __init__(self, **options: Any):
        super().__init__(**options)
        given = self.options.lambda0
        # float64: λ_e = λ_0 · growth^e is computed in double precision, as the schedule's record
        self.register_buffer("lambda0", torch.tensor(math.nan if given is None else given, dtype=torch.float64))
        self.register_buffer("epoch", torch.tensor(0, dtype=torch.int64))
        #: the last epoch started, for metadata.json: the buffer is set back to the selected
        #: epoch's value before testing (the best weights are the whole module's state)
        self._last_epoch_started: int | None = None
        self._last: dict[str, torch.Tensor] = {}

    @property
    def lambda_source(self) -> str:
        if self.options.lambda0 is not None:
            return "lambda0"
        return f"quantile {self.options.start_quantile} of batch 0"

    @property
    def threshold(self) -> float | None:
        """λ at the current epoch (None until λ_0 is known); reads the buffers back to the host."""
        lambda0 = float(self.lambda0)
        return None if math.isnan(lambda0) else lambda0 * self.options.growth ** int(self.epoch)

    def on_train_epoch_start(self, epoch: int, max_epochs: int) -> None:
        self.epoch.fill_(epoch)
        self._last_epoch_started = int(epoch)

    def loss_terms(
        self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict, step: StepContext
    ) -> dict[str, torch.Tensor]:
        if not step.training:
            return {"task": per_sample_loss.mean()}
        # λ_0 is set by the first training batch (or was given, or restored from a checkpoint);
        # `where` keeps it on the device: knowing whether it is set needs no host read
        estimate = torch.quantile(per_sample_loss.detach().float(), self.options.start_quantile)
        self.lambda0.copy_(torch.where(self.lambda0.isnan(), estimate.double().clamp(min=1e-12), self.lambda0))
        lam = self.lambda0 * self.options.growth**step.epoch
        weights = self_paced_weights(per_sample_loss, lam, self.options.regime)
        self._last = {
            "spl_weight": weights.mean(),
            "spl_selected": (weights > 0).float().mean(),
            "spl_lambda": lam.float(),
        }
        return {"task": weighted_loss(per_sample_loss, weights)}

    def extra_metrics(self, outputs: dict, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        return dict(self._last) if step.training else {}

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        lambda0 = float(self.lambda0)
        known = not math.isnan(lambda0)
        epochs = range(self._last_epoch_started + 1) if known and self._last_epoch_started is not None else ()
        meta.update({
            "lambda0": lambda0 if known else None,
            "lambda_source": self.lambda_source,
            # the schedule λ_e = λ_0 · growth^e of every epoch trained (a resumed run: its earlier
            # epochs too, as λ_0 was restored)
            "lambda_per_epoch": {str(e): lambda0 * self.options.growth**e for e in epochs},
        })
        return meta
