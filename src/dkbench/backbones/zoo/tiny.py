"""``tinycnn``: four conv-BN-ReLU blocks (≈ 78k parameters in 2D), 2D/3D, for fast tests
and smoke runs; not a benchmark baseline. Strides 1, 2, 2, 2: 28 px → 4 px feature map."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.backbones.registry import register_backbone
from dkbench.backbones.weights import no_offline_pretrained


class TinyCNN(Backbone):
    stem_weight_key = "blocks.0.0.weight"

    def __init__(
        self,
        *,
        in_chans: int = 1,
        spatial_dims: int = 2,
        widths: Sequence[int] = (16, 32, 64, 96),
        strides: Sequence[int] = (1, 2, 2, 2),
    ):
        super().__init__()
        if len(widths) != len(strides):
            raise ValueError(f"tinycnn: widths {list(widths)} and strides {list(strides)} differ in length")
        if spatial_dims not in (2, 3):
            raise ValueError(f"tinycnn: spatial_dims must be 2 or 3, got {spatial_dims}")
        # plain torch layers (same parameter names as MONAI's factories would give): a tinycnn run
        # never imports MONAI, whose package import loads all of its ~430 modules
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d
        self.in_chans, self.spatial_dims = in_chans, spatial_dims
        blocks, c_in = [], in_chans
        for c_out, stride in zip(widths, strides):
            blocks.append(
                nn.Sequential(
                    conv(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
                    norm(c_out),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.num_features = c_in

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


@register_backbone("tinycnn")
def tinycnn(*, in_chans: int, spatial_dims: int = 2, img_size: int | None = None, pretrained: bool = False, **kwargs):
    """tinycnn: 4 conv-BN-ReLU blocks for tests."""
    if pretrained:
        raise no_offline_pretrained("tinycnn")
    return TinyCNN(in_chans=in_chans, spatial_dims=spatial_dims, **kwargs)
