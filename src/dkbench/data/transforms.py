"""Normalisation and augmentation as batched tensor ops (no per-sample PIL work).

Geometric transforms are applied identically to every spatial key of a batch (image, mask,
views and, for segmentation, the label mask), so dense targets stay aligned; detection box rows
are moved by the same flips and rotations. Random numbers
are drawn on the batch's device and no op reads a value back to the host, so augmenting a
batch on a GPU never waits for the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Batch keys that are images or maps on the image grid.
SPATIAL_KEYS = ("image", "mask", "views")


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    #: Maximum translation as a fraction of the image size (0 disables).
    translate: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.hflip or self.vflip or self.rot90 or self.translate > 0


def normalize(image: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 0–255 → float, (x/255 − mean)/std (MedMNIST v2: mean = std = 0.5)."""
    return (image.float().div_(255.0) - mean).div_(std)


def _spatial_keys(batch: dict, task: str) -> list[str]:
    keys = [k for k in SPATIAL_KEYS if k in batch]
    if task == "segmentation":
        keys.append("label")
    return keys


def _flip(t: torch.Tensor, which: torch.Tensor, dim_from_end: int) -> torch.Tensor:
    # Always flip and select: skipping when no sample flips would need `which.any()`, a host sync.
    shape = (-1,) + (1,) * (t.ndim - 1)
    return torch.where(which.view(shape), t.flip(t.ndim - dim_from_end), t)


def translate(t: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Per-sample `torch.roll(t[i], shifts[i], dims=(-2, -1))` as one gather over the batch.

    `shifts` is (N, 2) integer (dy, dx) on `t`'s device; leading dims between the batch and the
    last two (channels, depth, views) move together.
    """
    n, h, w = t.shape[0], t.shape[-2], t.shape[-1]
    # roll: out[y, x] = in[(y - dy) mod h, (x - dx) mod w]; `%` on tensors is non-negative here
    rows = (torch.arange(h, device=t.device) - shifts[:, :1]) % h  # (N, H)
    cols = (torch.arange(w, device=t.device) - shifts[:, 1:]) % w  # (N, W)
    src = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w)
    flat = t.reshape(n, -1, h * w)
    return flat.gather(2, src.expand(-1, flat.shape[1], -1)).view(t.shape)


def augment_batch(batch: dict, cfg: AugmentConfig, task: str, generator: torch.Generator | None = None) -> dict:
    """Random flips / 90° rotations / integer translations, per sample, one op per batch.

    `generator` must live on the batch's device (the random numbers are drawn there).
    """
    if not cfg.enabled:
        return batch
    image = batch["image"]
    n, device = image.shape[0], image.device

    def coin() -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device) < 0.5

    hflip = coin() if cfg.hflip else None
    vflip = coin() if cfg.vflip else None
    rot = coin() if cfg.rot90 else None
    max_shift = int(round(cfg.translate * image.shape[-1]))
    shifts = (
        torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator, device=device)
        if max_shift > 0 else None
    )
    out = dict(batch)
    for key in _spatial_keys(batch, task):
        t = out[key]
        if hflip is not None:
            t = _flip(t, hflip, 1)
        if vflip is not None:
            t = _flip(t, vflip, 2)
        if rot is not None and t.shape[-1] == t.shape[-2]:
            shape = (-1,) + (1,) * (t.ndim - 1)
            t = torch.where(rot.view(shape), t.rot90(1, dims=(t.ndim - 2, t.ndim - 1)), t)
        if shifts is not None:
            t = translate(t, shifts)
        out[key] = t
    if task == "detection":  # box rows follow the same flips / rotation (translation: refused by the data module)
        from dkbench.geometry.boxes import flip_rotate_boxes

        label = out["label"]
        moved = flip_rotate_boxes(label[..., :4], (image.shape[-2], image.shape[-1]), hflip, vflip, rot)
        out["label"] = torch.cat([moved, label[..., 4:]], -1)
    return out
