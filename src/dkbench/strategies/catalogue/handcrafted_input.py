"""`handcrafted_input`: radiomics-style feature maps as extra input channels (SURVEY.md family E).

Input-level fusion of hand-crafted features, after MV-KBC (Xie Y. et al., "Knowledge-based
collaborative deep learning for benign-malignant lung nodule classification on chest CT",
IEEE TMI 38(4):991-1004, 2019), where image patches that show what radiologists weigh
(overall appearance, heterogeneity of intensity, heterogeneity of shape) are fed to the
networks as inputs; survey §3.6. Here per-pixel texture / edge maps that radiologists read
(`dkbench.features.radiomics.feature_maps`) are concatenated to the image as channels:
Sobel edge magnitude (margins), local standard deviation and local entropy (heterogeneity,
in a ``window`` square) and the uniform LBP code (micro-texture). The backbone is built with
in_chans = image channels + number of maps; channel order = image, then ``maps`` in order.

Each map is standardised per channel with the mean and std of that map over the TRAIN split
(computed in `build_net` from the un-augmented images and kept as the strategy's buffers
``map_mean`` / ``map_std``, so they live on the run's device and in its checkpoints). The maps are computed on the fly in
`transform_batch` from the batch's image with torch ops (they equal scikit-image's
`filters.sobel`, `filters.rank.entropy` and `feature.local_binary_pattern`; the tests check
it), so they always follow the augmentation (flips, rotations, shifts happen before
`transform_batch`), run on the GPU, and need no cache: computing them costs a few
milliseconds per batch, less than keeping augmented copies aligned with a cached table.
Multi-channel images: the maps are computed on the channel mean. No masks are used.

Simplified relative to MV-KBC: one backbone with extra channels instead of nine ResNet-50
submodels (three knowledge patches x three views) with learned fusion weights; the maps are
generic radiomics texture maps, not MV-KBC's nodule-specific patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import nn

from dkbench.data.spec import DatasetSpec
from dkbench.data.transforms import normalize
from dkbench.features.radiomics import MAP_NAMES, feature_maps
from dkbench.strategies.base import ALL_TASKS, DETECTION_TASKS, BuildContext, StepContext, Strategy
from dkbench.strategies.options import Bounds, Count, OptionError, Positive, StrategyOptions
from dkbench.strategies.registry import register_strategy

MapName = Literal["sobel", "local_std", "local_entropy", "lbp"]  # = MAP_NAMES


@register_strategy("handcrafted_input")
class HandcraftedInput(Strategy):
    name = "handcrafted_input"
    family = "E"
    knowledge = "texture / edge maps of the image (train + test)"
    requires = frozenset()
    #: the maps are per pixel, so they serve segmentation networks and a detector's feature pyramid as well
    tasks = ALL_TASKS | DETECTION_TASKS
    citation = ("MV-KBC: Xie Y., Xia Y., Zhang J., Song Y., Feng D., Fulham M., Cai W., Knowledge-based "
                "collaborative deep learning for benign-malignant lung nodule classification on chest CT, "
                "IEEE TMI 38(4):991-1004 (2019); survey §3.6 input-level fusion")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: extra channels after the image, in this order (a non-empty subset of the four)
        maps: tuple[MapName, ...] = MAP_NAMES
        #: side (px) of the square window of local_std and local_entropy
        window: Count = 7
        #: grey-level bins of the local entropy histogram
        entropy_levels: Annotated[int, Bounds(ge=2)] = 8
        #: uniform LBP: neighbours P (the map is the code / (P+1)) and radius R (px)
        lbp_points: Count = 8
        lbp_radius: Positive = 1.0

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.maps:
                raise OptionError("maps", f"must be a non-empty subset of {list(MAP_NAMES)}, got []")

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if spec.spatial_dims != 2:
            return f"strategy '{self.name}' computes 2D feature maps; dataset '{spec.name}' is {spec.spatial_dims}D"
        return None

    def backbone_kwargs(self, spec: DatasetSpec) -> dict[str, Any]:
        return {"in_chans": spec.in_chans + len(self.options.maps)}

    # --- maps ------------------------------------------------------------------------------
    def gray255(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised (B,C,H,W) batch → (B,1,H,W) grey levels on the 0–255 scale."""
        return ((image.float() * self.data_std + self.data_mean) * 255.0).mean(1, keepdim=True)

    def raw_maps(self, image: torch.Tensor) -> torch.Tensor:
        o = self.options
        return feature_maps(self.gray255(image), maps=list(o.maps), window=o.window, entropy_levels=o.entropy_levels,
                            lbp_points=o.lbp_points, lbp_radius=o.lbp_radius)

    def build_net(self, ctx: BuildContext) -> nn.Module:
        data = ctx.config.get("data") or {}
        # the data module's input normalisation, inverted to read grey levels from a batch
        self.data_mean, self.data_std = float(data.get("mean", 0.5)), float(data.get("std", 0.5))
        train = ctx.arrays.splits["train"].image
        n_maps = len(self.options.maps)
        total = np.zeros(n_maps)
        total_sq = np.zeros(n_maps)
        count = 0
        for start in range(0, len(train), 256):  # per-channel mean / std over train pixels
            x = normalize(torch.from_numpy(np.ascontiguousarray(train[start:start + 256])), self.data_mean, self.data_std)
            m = self.raw_maps(x).double()
            total += m.sum((0, 2, 3)).numpy()
            total_sq += (m**2).sum((0, 2, 3)).numpy()
            count += m.shape[0] * m.shape[2] * m.shape[3]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        std[std < 1e-8] = 1.0
        self.register_buffer("map_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("map_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        return super().build_net(ctx)

    def standardised_maps(self, image: torch.Tensor) -> torch.Tensor:
        return (self.raw_maps(image) - self.map_mean) / self.map_std

    def transform_batch(self, batch: dict, step: StepContext) -> dict:
        batch = dict(batch)
        image = batch["image"]
        batch["image"] = torch.cat([image, self.standardised_maps(image).to(image.dtype)], 1)
        return batch

    def metadata(self) -> dict[str, Any]:
        meta = {**super().metadata(), "channels": ["image", *self.options.maps], "masks": "not used"}
        if hasattr(self, "map_mean"):  # after build_net
            meta["map_standardisation"] = {
                "statistics": "per map channel over all train-split pixels (un-augmented)",
                "mean": self.map_mean.flatten().tolist(), "std": self.map_std.flatten().tolist(),
            }
        return meta
