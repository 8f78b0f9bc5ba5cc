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

Simplified relative to Kumar et al.: instead of alternating exact minimisation over the
weights and the parameters (ACS on the whole training set) the weights are set per
mini-batch from the current losses (the closed-form minimiser for fixed parameters), and
λ grows once per epoch by a fixed factor. λ_0 is not stored in checkpoints: a run resumed
mid-training re-estimates it from its first batch after resuming.
"""

from __future__ import annotations

from typing import Any

import torch

from dkbench.strategies.base import Strategy
from dkbench.strategies.registry import register_strategy

REGIMES = ("hard", "linear")


def self_paced_weights(losses: torch.Tensor, lam: float, regime: str = "hard") -> torch.Tensor:
    """Per-sample weights v_i (detached) for losses ℓ_i and threshold λ."""
    losses = losses.detach()
    if regime == "hard":
        return (losses < lam).to(losses.dtype)
    if regime == "linear":
        return (1.0 - losses / max(float(lam), 1e-12)).clamp(min=0.0)
    raise ValueError(f"self_paced: regime must be one of {REGIMES}, got {regime!r}")


def weighted_loss(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ v_i ℓ_i / max(Σ v_i, 1)."""
    weights = weights.detach()
    return (weights * losses).sum() / weights.sum().clamp(min=1.0)


@register_strategy("self_paced")
class SelfPaced(Strategy):
    name = "self_paced"
    requires = frozenset()
    citation = "Kumar, Packer & Koller, Self-Paced Learning for Latent Variable Models, NeurIPS 2010"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.regime = str(options.get("regime", "hard"))
        if self.regime not in REGIMES:
            raise ValueError(f"self_paced: regime must be one of {REGIMES}, got {self.regime!r}")
        self.growth = float(options.get("growth", 1.2))
        self.start_quantile = float(options.get("start_quantile", 0.5))
        lambda0 = options.get("lambda0")
        self.lambda0: float | None = None if lambda0 is None else float(lambda0)
        if self.growth < 1.0:
            raise ValueError(f"self_paced: growth must be >= 1 (λ grows), got {self.growth}")
        if not 0.0 < self.start_quantile <= 1.0:
            raise ValueError(f"self_paced: start_quantile must be in (0, 1], got {self.start_quantile}")
        self.lambda_source = "lambda0" if self.lambda0 is not None else f"quantile {self.start_quantile} of batch 0"
        self.epoch = 0
        self.history: dict[int, float] = {}  # epoch → λ used
        self._last: dict[str, torch.Tensor] = {}

    @property
    def threshold(self) -> float | None:
        """λ at the current epoch (None until λ_0 is known)."""
        if self.lambda0 is None:
            return None
        return self.lambda0 * self.growth**self.epoch

    def on_train_epoch_start(self, epoch: int, max_epochs: int) -> None:
        self.epoch = int(epoch)

    def loss_terms(
        self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict, stage: str
    ) -> dict[str, torch.Tensor]:
        if stage != "train":
            return {"task": per_sample_loss.mean()}
        if self.lambda0 is None:
            q = torch.quantile(per_sample_loss.detach().float(), self.start_quantile)
            self.lambda0 = max(float(q), 1e-12)
        lam = float(self.threshold)  # type: ignore[arg-type]
        self.history[self.epoch] = lam
        weights = self_paced_weights(per_sample_loss, lam, self.regime)
        self._last = {
            "spl_weight": weights.mean(),
            "spl_selected": (weights > 0).float().mean(),
            "spl_lambda": torch.tensor(lam, device=per_sample_loss.device),
        }
        return {"task": weighted_loss(per_sample_loss, weights)}

    def extra_metrics(self, outputs: dict, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        return dict(self._last) if stage == "train" else {}

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update({"lambda0": self.lambda0, "lambda_source": self.lambda_source,
                     "lambda_per_epoch": {str(e): v for e, v in sorted(self.history.items())}})
        return meta
