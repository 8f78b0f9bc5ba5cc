"""Where the network looks, compared with where the expert looks (lesion mask).

The attention map is the class-agnostic activation map of the last feature map (channel mean
of ReLU'd activations, Zhou et al. CVPR 2016 without the class weighting, so it applies to any
backbone and head). `energy_inside_mask` is the fraction of that map's mass inside the mask
(the "energy-based pointing game" of Score-CAM, Wang et al. 2020): 1 = all attention on the
lesion, the mask's area fraction = uniform attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def activation_map(feature_map: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """(B,C,*s) → (B,1,*size) non-negative map, bilinear/trilinear upsampled to the input."""
    amap = feature_map.float().relu().mean(1, keepdim=True)
    mode = "bilinear" if amap.ndim == 4 else "trilinear"
    return F.interpolate(amap, size=size, mode=mode, align_corners=False)


def energy_inside_mask(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample fraction of attention mass inside the mask; NaN where the mask is empty."""
    att = attention.flatten(1)
    m = (mask.flatten(1) > 0).float()
    total = att.sum(1).clamp_min(1e-12)
    energy = (att * m).sum(1) / total
    return torch.where(m.sum(1) > 0, energy, torch.full_like(energy, float("nan")))


def attention_overlap(outputs: dict, batch: dict) -> torch.Tensor | None:
    """Mean energy-inside-mask over the batch's images with a lesion, or None if not applicable."""
    if "mask" not in batch or "feature_map" not in outputs:
        return None
    mask = batch["mask"]
    energy = energy_inside_mask(activation_map(outputs["feature_map"], tuple(mask.shape[2:])), mask)
    valid = ~torch.isnan(energy)
    return energy[valid].mean() if valid.any() else None
