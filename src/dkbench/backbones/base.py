"""The backbone contract every registry entry fulfils.

A backbone maps an image batch to a last feature map (for CAMs, attention, decoders) and a
pooled embedding (for heads). Heads live in the task module, so a strategy can swap or add
heads without touching the backbone.
"""

from __future__ import annotations

import torch
from torch import nn

from dkbench.errors import IncompatibleInputError  # noqa: F401  (re-exported: backbones raise it)


class Backbone(nn.Module):
    """Base class: subclasses set `num_features` and implement `forward_features`."""

    num_features: int
    spatial_dims: int = 2
    #: Smallest spatial input size the network accepts (DenseNet-121: 32).
    min_size: int = 1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map, (B, num_features, *spatial)."""
        raise NotImplementedError

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Global average pool → (B, num_features)."""
        return feature_map.flatten(2).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x))

    def check_input(self, in_chans: int, size: int) -> None:
        if size < self.min_size:
            raise IncompatibleInputError(
                f"backbone {type(self).__name__} needs inputs of at least {self.min_size}px, "
                f"the dataset gives {size}px. Use a larger dataset size (e.g. dataset.size=64) "
                f"or a backbone made for small images (e.g. backbone=resnet18_28)."
            )


def reinitialised_copy(backbone: Backbone) -> Backbone:
    """A second backbone of the same architecture with fresh weights (for two-branch networks
    when no backbone factory is at hand, e.g. in unit tests)."""
    import copy

    other = copy.deepcopy(backbone)
    for module in other.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return other
