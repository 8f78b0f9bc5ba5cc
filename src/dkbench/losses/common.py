"""Turning the network's logits and the label map into the per-class maps the losses compare."""

from __future__ import annotations

import torch

from dkbench.metrics.segmentation import one_hot


def foreground_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, *spatial) logits → (B, K-1, *spatial) probabilities of the foreground classes
    (softmax over K, background channel 0 dropped; K = 1 means one sigmoid output)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, 1)[:, 1:]


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1, *spatial): probability that a pixel is any foreground class (1 − P(background))."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return 1.0 - torch.softmax(logits, 1)[:, :1]


def foreground_targets(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, *spatial) or (B, *spatial) class indices → (B, max(K,2)-1, *spatial) float one-hot
    of the foreground classes, matching `foreground_probabilities`."""
    return one_hot(label, num_classes)[:, 1:]
