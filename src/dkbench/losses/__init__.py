"""Differentiable segmentation losses that encode anatomical priors (SURVEY.md family G).

- `common`      foreground probabilities / one-hot targets from logits and label maps;
- `cldice`      soft skeleton and soft clDice (Shit et al., CVPR 2021);
- `star_shape`  star-shape penalty along discrete rays to the lesion centre (Mirikharaji &
  Hamarneh, MICCAI 2018).

Every function works on (B, C, *spatial) tensors with 2 or 3 spatial dimensions.
"""

from dkbench.losses.cldice import soft_cldice_loss, soft_dilate, soft_erode, soft_skeleton
from dkbench.losses.common import foreground_probabilities, foreground_probability, foreground_targets
from dkbench.losses.star_shape import inward_neighbour_index, star_shape_loss

__all__ = [
    "foreground_probabilities", "foreground_probability", "foreground_targets", "inward_neighbour_index",
    "soft_cldice_loss", "soft_dilate", "soft_erode", "soft_skeleton", "star_shape_loss",
]
