"""`star_shape`: lesions are star-shaped around their centre; a loss term penalises predictions
that are not (SURVEY.md family G).

After Mirikharaji Z. & Hamarneh G., "Star shape prior in fully convolutional networks for skin
lesion segmentation", MICCAI 2018, LNCS 11073, pp. 737-745. A star-shaped region contains the
whole segment from its centre c to each of its points: walking from any foreground pixel
toward c never leaves the foreground. The paper encodes this as a differentiable loss over
pairs (p, q), q being p's neighbour one step along the discrete line toward c, with c the
centroid of the ground-truth mask; the rays and the penalty are in `dkbench.losses.star_shape`.

The term is ``weight`` × the per-image mean over pixels of the penalty (images with an empty
ground truth add 0), added to the DiceCE task loss at every stage (val/loss includes it).

Options and what differs from the paper:

- ``form: monotone`` (default) penalises ReLU(ŷ_p − ŷ_q): the foreground probability must not
  rise when stepping inward. This is the star-shape constraint itself, so it is exactly 0 for
  every star-shaped prediction (even one that disagrees with the ground truth) and positive for
  holes, crescents and detached islands; ``error_weighted: true`` multiplies it by |y_p − ŷ_p|
  as the paper does (default false: our choice, to keep the term a pure shape prior that does
  not also act as a second, error-driven data term).
- ``form: paper`` is the paper's eq. 4 verbatim: β_pq·|ŷ_p − ŷ_q|·|y_p − ŷ_p| with β_pq = 1 iff
  the ground truth agrees at p and q (``error_weighted`` is then implied).
- The paper's network (an FCN on ISIC 2017 with BCE, β = 40 on the star term) is replaced by the
  run's backbone and DiceCE; the default ``weight`` 1.0 is ours, chosen because the monotone
  form is not scaled down by an error factor.
- Multi-class masks: the term acts on the union of the foreground classes (1 − P(background)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from dkbench.losses import foreground_probability
from dkbench.losses.star_shape import star_shape_loss
from dkbench.strategies.base import SEGMENTATION_TASKS, StepContext, Strategy
from dkbench.strategies.options import NonNegative, StrategyOptions
from dkbench.strategies.registry import register_strategy


@register_strategy("star_shape")
class StarShape(Strategy):
    name = "star_shape"
    family = "G"
    knowledge = "lesions are star-shaped (training)"
    requires = frozenset()  # the segmentation label is the mask
    tasks = SEGMENTATION_TASKS
    citation = ("Mirikharaji Z., Hamarneh G., Star shape prior in fully convolutional networks for skin "
                "lesion segmentation, MICCAI 2018, LNCS 11073, pp. 737-745")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: weight of the star-shape term (mean over pixels, per image)
        weight: NonNegative = 1.0
        #: monotone: ReLU(p - q); paper: eq. 4, [y_p = y_q] * |p - q| * |y_p - p|
        form: Literal["monotone", "paper"] = "monotone"
        #: monotone form only: multiply by |y_p - p| as the paper does
        error_weighted: bool = False

    def star_penalty(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """(B,) star-shape penalty of the prediction, rays toward the ground truth's centroid."""
        target = (label > 0).float()
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
        return star_shape_loss(foreground_probability(logits), target, self.options.form,
                               self.options.error_weighted)

    def loss_terms(self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict,
                   step: StepContext) -> dict[str, torch.Tensor]:
        star = self.star_penalty(outputs["logits"], batch["label"]).mean()
        return {"task": per_sample_loss.mean(), "star": self.options.weight * star.to(per_sample_loss.dtype)}

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "centre": "centroid of the ground-truth foreground, per image",
                "neighbour": "one step toward the centre, direction rounded to the nearest of 8 (26 in 3D)"}
