"""DenseNet-121 from MONAI (`monai.networks.nets.DenseNet121`; Huang et al., CVPR 2017), 2D/3D.

Needs inputs of at least 32 px (four stride-2 stages after a stride-4 stem: 28 px would
shrink to zero), so it is refused on 28 px MedMNIST; use ``resnet18_28`` there.
torchvision ``densenet121`` state dicts (new ``norm1`` or old ``norm.1`` key style) load via
``backbone.weights``: `remap_state_dict` inserts MONAI's ``.layers.`` level.
"""

from __future__ import annotations

import re

import torch
from monai.networks.nets import DenseNet121
from torch.nn import functional as F

from dkbench.backbones.base import Backbone
from dkbench.backbones.registry import register_backbone
from dkbench.backbones.weights import no_offline_pretrained

# torchvision: features.denseblock1.denselayer1.norm1.weight (or old style norm.1.weight)
# MONAI:       features.denseblock1.denselayer1.layers.norm1.weight
_TV_KEY = re.compile(
    r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)


class MonaiDenseNet121(Backbone):
    """MONAI DenseNet-121 ``features`` (ending in norm5) followed by ReLU."""

    min_size = 32
    stem_weight_key = "features.conv0.weight"

    def __init__(self, *, in_chans: int = 3, spatial_dims: int = 2, **kwargs):
        super().__init__()
        net = DenseNet121(spatial_dims=spatial_dims, in_channels=in_chans, out_channels=1, **kwargs)
        self.in_chans = in_chans
        self.spatial_dims = spatial_dims
        self.features = net.features
        self.num_features = self.features.norm5.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.features(x))

    @staticmethod
    def remap_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {_TV_KEY.sub(r"\1.layers.\2\3.\4", k) if ".layers." not in k else k: v for k, v in state.items()}


@register_backbone("densenet121")
def densenet121(
    *, in_chans: int, spatial_dims: int = 2, img_size: int | None = None, pretrained: bool = False, **kwargs
):
    """densenet121: MONAI DenseNet-121, inputs ≥ 32 px."""
    if pretrained:
        raise no_offline_pretrained("densenet121", "a torchvision densenet121 state dict loads")
    return MonaiDenseNet121(in_chans=in_chans, spatial_dims=spatial_dims, **kwargs)
