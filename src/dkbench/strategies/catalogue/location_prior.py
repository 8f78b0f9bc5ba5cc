"""`location_prior`: where lesions usually sit, as an extra input channel (SURVEY.md family G).

The anatomical location prior is the pixel-wise foreground frequency of the TRAIN split's masks
(an atlas: the mean training mask), computed once in `build_net` (kept as a buffer, so it
lives on the run's device and in its checkpoints) and concatenated to every batch as one more
image channel, so the network can weigh "is this a place where lesions occur?"
together with the image. For detection the label is box rows, so the atlas is the frequency
with which a pixel lies inside a TRAIN lesion box (`dkbench.data.detection.box_masks`; negative
images count as all-background), and the detector's feature pyramid reads the extra channel. After Zotti C., Luo Z., Lalande A., Jodoin P.-M., "Convolutional
neural network with shape prior applied to cardiac MRI segmentation", IEEE JBHI 23(3):1119-1128,
2019, who build a probabilistic prior from the training ground truths (per-pixel class
frequencies) offline and embed it in their U-Net-like GridNet; survey §5.5 (anatomical priors).

Simplified relative to Zotti et al.: the prior is not registered to each image (they move it to
a regressed centre of the heart) — it stays in the image frame, which is what "organs sit in
typical places" means for our 2D datasets — and it enters at the input, not inside the network.
Multi-class masks give one channel, the frequency of any foreground class. A box atlas is
coarser than a mask atlas (a box covers more than its lesion).

Scaling (option ``scaling``): ``range`` (default) maps the frequency f ∈ [0, 1] to 2f − 1 ∈
[−1, 1], the same affine map as the images' (x − 0.5) / 0.5 normalisation, so 0 % and 100 %
keep their meaning and the channel's range matches the image's; ``standardise`` uses zero mean /
unit std over the prior's pixels instead. Only train masks are read: val/test masks never
influence the input. The channel is fixed in the image frame, so it is NOT flipped with the
image by augmentation (a flipped image meets the unflipped atlas, as a test image would).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dkbench.data.detection import box_masks
from dkbench.data.spec import DatasetSpec
from dkbench.strategies.base import DETECTION_TASKS, SEGMENTATION_TASKS, BuildContext, StepContext, Strategy
from dkbench.strategies.options import StrategyOptions
from dkbench.strategies.registry import register_strategy


@register_strategy("location_prior")
class LocationPrior(Strategy):
    name = "location_prior"
    family = "G"
    knowledge = "atlas of the training masks (detection: boxes) as a channel (train + test)"
    requires = frozenset()  # the segmentation label is the mask; a detection label holds the boxes
    tasks = SEGMENTATION_TASKS | DETECTION_TASKS
    citation = ("Zotti C., Luo Z., Lalande A., Jodoin P.-M., Convolutional neural network with shape prior "
                "applied to cardiac MRI segmentation, IEEE JBHI 23(3):1119-1128 (2019); survey §5.5")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: range: 2f - 1 in [-1, 1] (as the images' normalisation); standardise: zero mean / unit std
        scaling: Literal["range", "standardise"] = "range"

    def backbone_kwargs(self, spec: DatasetSpec) -> dict[str, Any]:
        return {"in_chans": spec.in_chans + 1}

    @staticmethod
    def train_masks(ctx: BuildContext) -> np.ndarray:
        """(N, 1, *spatial) lesion masks of the TRAIN split only: the label itself for segmentation,
        the pixels inside its boxes for detection."""
        train = ctx.arrays.splits["train"]
        if ctx.spec.task in DETECTION_TASKS:
            return box_masks(train.label, tuple(np.asarray(train.image).shape[2:]))
        return train.label

    def build_net(self, ctx: BuildContext) -> nn.Module:
        masks = self.train_masks(ctx)
        frequency = torch.from_numpy((np.asarray(masks) > 0).mean(0, dtype=np.float64)).float().unsqueeze(0)
        if self.options.scaling == "range":
            prior = 2.0 * frequency - 1.0
        else:
            std = float(frequency.std(unbiased=False))
            prior = (frequency - frequency.mean()) / (std if std > 1e-8 else 1.0)
        #: (1, 1, *spatial) float32, the channel appended to every batch
        self.register_buffer("prior", prior)
        self.frequency_stats = {"mean_frequency": float(frequency.mean()), "max_frequency": float(frequency.max())}
        return super().build_net(ctx)

    def channel(self, like: torch.Tensor) -> torch.Tensor:
        """The prior as (1, 1, *spatial) in ``like``'s dtype, resized (linear) if the batch's
        spatial size differs from the train masks'."""
        prior = self.prior
        spatial = tuple(like.shape[2:])
        if tuple(prior.shape[2:]) != spatial:
            mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
            prior = F.interpolate(prior, size=spatial, mode=mode, align_corners=False)
        return prior.to(like.dtype)

    def transform_batch(self, batch: dict, step: StepContext) -> dict:
        batch = dict(batch)
        image = batch["image"]
        prior = self.channel(image).expand(image.shape[0], 1, *image.shape[2:])
        batch["image"] = torch.cat([image, prior], 1)
        return batch

    def metadata(self) -> dict[str, Any]:
        meta = {**super().metadata(), "channels": ["image", "location_prior"],
                "prior_from": "train split masks only (detection: the pixels inside the train boxes)"}
        if hasattr(self, "frequency_stats"):
            meta["prior"] = {"scaling": self.options.scaling, **self.frequency_stats}
        return meta
