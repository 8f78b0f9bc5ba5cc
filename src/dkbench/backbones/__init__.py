"""Backbones: a registry of feature extractors over MONAI (and timm when installed).

`create_backbone("resnet18_28", in_chans=1, img_size=28)` returns a `Backbone`:
`forward_features(x)` gives the last feature map (B, C, *spatial), `forward(x)` the pooled
embedding (B, num_features). Heads live in the task module.
"""

from dkbench.backbones.base import Backbone, IncompatibleInputError
from dkbench.backbones.registry import (
    BACKBONES,
    create_backbone,
    list_backbones,
    pretrained_weights_file,
    register_backbone,
)
from dkbench.backbones.weights import (
    WeightsMismatchError,
    WeightsUnavailableError,
    adapt_stem_weight,
    load_local_weights,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "IncompatibleInputError",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "adapt_stem_weight",
    "create_backbone",
    "list_backbones",
    "load_local_weights",
    "pretrained_weights_file",
    "register_backbone",
]
