"""`location_prior`: where lesions usually sit, as an extra input channel (SURVEY.md family G).

The anatomical location prior is the pixel-wise foreground frequency of the TRAIN split's masks
(an atlas: the mean training mask), computed once in `prepare` and concatenated to every batch
as one more image channel, so the network can weigh "is this a place where lesions occur?"
together with the image. After Zotti C., Luo Z., Lalande A., Jodoin P.-M., "Convolutional
neural network with shape prior applied to cardiac MRI segmentation", IEEE JBHI 23(3):1119-1128,
2019, who build a probabilistic prior from the training ground truths (per-pixel class
frequencies) offline and embed it in their U-Net-like GridNet; survey §5.5 (anatomical priors).

Simplified relative to Zotti et al.: the prior is not registered to each image (they move it to
a regressed centre of the heart) — it stays in the image frame, which is what "organs sit in
typical places" means for our 2D datasets — and it enters at the input, not inside the network.
Multi-class masks give one channel, the frequency of any foreground class.

Scaling (option ``scaling``): ``range`` (default) maps the frequency f ∈ [0, 1] to 2f − 1 ∈
[−1, 1], the same affine map as the images' (x − 0.5) / 0.5 normalisation, so 0 % and 100 %
keep their meaning and the channel's range matches the image's; ``standardise`` uses zero mean /
unit std over the prior's pixels instead. Only train masks are read: val/test masks never
influence the input. The channel is fixed in the image frame, so it is NOT flipped with the
image by augmentation (a flipped image meets the unflipped atlas, as a test image would).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dkbench.data.spec import DatasetSpec
from dkbench.strategies.base import SEGMENTATION_TASKS, Strategy, StrategyContext
from dkbench.strategies.registry import register_strategy

SCALINGS = ("range", "standardise")


@register_strategy("location_prior")
class LocationPrior(Strategy):
    name = "location_prior"
    requires = frozenset()  # the segmentation label is the mask
    tasks = SEGMENTATION_TASKS
    citation = ("Zotti C., Luo Z., Lalande A., Jodoin P.-M., Convolutional neural network with shape prior "
                "applied to cardiac MRI segmentation, IEEE JBHI 23(3):1119-1128 (2019); survey §5.5")

    @property
    def scaling(self) -> str:
        return str(self.options.get("scaling", "range"))

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if self.scaling not in SCALINGS:
            return f"strategy '{self.name}': option scaling '{self.scaling}' is not one of {list(SCALINGS)}"
        return None

    def backbone_kwargs(self, spec: DatasetSpec) -> dict[str, Any]:
        return {"in_chans": spec.in_chans + 1}

    def prepare(self, context: StrategyContext) -> None:
        masks = context.arrays.splits["train"].label  # (N, 1, *spatial); only the train split
        frequency = (np.asarray(masks) > 0).mean(0, dtype=np.float64)  # (1, *spatial)
        self.frequency = torch.from_numpy(frequency).float().unsqueeze(0)  # (1, 1, *spatial)
        if self.scaling == "range":
            prior = 2.0 * self.frequency - 1.0
        else:
            std = float(self.frequency.std(unbiased=False))
            prior = (self.frequency - self.frequency.mean()) / (std if std > 1e-8 else 1.0)
        self.prior = prior
        self._on: dict[tuple[Any, Any, tuple[int, ...]], torch.Tensor] = {}

    def channel(self, like: torch.Tensor) -> torch.Tensor:
        """The prior as (1, 1, *spatial) on ``like``'s device and dtype, resized (linear) if
        the batch's spatial size differs from the train masks'."""
        if not hasattr(self, "prior"):
            raise RuntimeError("location_prior: prepare() must run before batches are transformed")
        spatial = tuple(like.shape[2:])
        key = (like.device, like.dtype, spatial)
        if key not in self._on:  # one copy per device/dtype/size, not one transfer per batch
            prior = self.prior
            if tuple(prior.shape[2:]) != spatial:
                mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
                prior = F.interpolate(prior, size=spatial, mode=mode, align_corners=False)
            self._on[key] = prior.to(device=like.device, dtype=like.dtype)
        return self._on[key]

    def transform_batch(self, batch: dict, stage: str) -> dict:
        batch = dict(batch)
        image = batch["image"]
        prior = self.channel(image).expand(image.shape[0], 1, *image.shape[2:])
        batch["image"] = torch.cat([image, prior], 1)
        return batch

    def metadata(self) -> dict[str, Any]:
        meta = {**super().metadata(), "channels": ["image", "location_prior"], "prior_from": "train split masks only"}
        if hasattr(self, "frequency"):
            meta["prior"] = {"scaling": self.scaling, "mean_frequency": float(self.frequency.mean()),
                             "max_frequency": float(self.frequency.max())}
        return meta
