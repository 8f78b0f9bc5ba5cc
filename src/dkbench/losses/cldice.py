"""Soft skeleton and soft clDice, after Shit S. et al., "clDice - a novel topology-preserving loss
function for tubular structure segmentation", CVPR 2021, pp. 16560-16569.

The soft skeleton is the paper's Algorithm 1: iterated soft erosion (min-pooling along each axis
in turn, so the structuring element is a cross) and soft opening (erosion then 3^N max-pooling);
what each opening removes is added to the skeleton. It equals morphological skeletonisation on
binary inputs and is differentiable on probabilities. ``iterations`` must reach the largest
half-thickness of the structures, otherwise their centres stay out of the skeleton.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _max_pool(x: torch.Tensor, kernel: tuple[int, ...], padding: tuple[int, ...]) -> torch.Tensor:
    return _POOL[x.ndim - 2](x, kernel, stride=1, padding=padding)


def soft_erode(x: torch.Tensor) -> torch.Tensor:
    """Min over the 1-D 3-neighbourhood of each axis (a cross), like the reference code."""
    dims = x.ndim - 2
    out = None
    for axis in range(dims):
        kernel = tuple(3 if a == axis else 1 for a in range(dims))
        padding = tuple(1 if a == axis else 0 for a in range(dims))
        eroded = -_max_pool(-x, kernel, padding)  # max-pool pads with -inf: the border is not eroded
        out = eroded if out is None else torch.minimum(out, eroded)
    return out  # type: ignore[return-value]


def soft_dilate(x: torch.Tensor) -> torch.Tensor:
    dims = x.ndim - 2
    return _max_pool(x, (3,) * dims, (1,) * dims)


def soft_open(x: torch.Tensor) -> torch.Tensor:
    return soft_dilate(soft_erode(x))


def soft_skeleton(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """Soft skeleton of (B, C, *spatial) maps in [0, 1] (Shit et al. 2021, Algorithm 1)."""
    skeleton = F.relu(x - soft_open(x))
    for _ in range(int(iterations)):
        x = soft_erode(x)
        delta = F.relu(x - soft_open(x))
        skeleton = skeleton + F.relu(delta - skeleton * delta)  # add only what is not there yet
    return skeleton


def soft_cldice_loss(prob: torch.Tensor, target: torch.Tensor, iterations: int = 10,
                     smooth: float = 1.0) -> torch.Tensor:
    """1 − clDice per image and channel, averaged over channels: a (B,) tensor.

    ``prob`` and ``target`` are (B, C, *spatial) in [0, 1] (foreground classes only).
    Topology precision = |S(P) ∩ T| / |S(P)|, topology sensitivity = |S(T) ∩ P| / |S(T)|, with
    ``smooth`` added to numerators and denominators as in the reference code; clDice is their
    harmonic mean. The target skeleton carries no gradient.
    """
    dims = tuple(range(2, prob.ndim))
    skel_pred = soft_skeleton(prob, iterations)
    with torch.no_grad():
        skel_true = soft_skeleton(target, iterations)
    t_prec = ((skel_pred * target).sum(dims) + smooth) / (skel_pred.sum(dims) + smooth)
    t_sens = ((skel_true * prob).sum(dims) + smooth) / (skel_true.sum(dims) + smooth)
    cl_dice = 2.0 * t_prec * t_sens / (t_prec + t_sens)
    return (1.0 - cl_dice).mean(1)
