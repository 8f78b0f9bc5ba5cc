"""Boxes of masks, box clamping and IoU, and cropping boxes out of images (batched, any device).

One empty-mask rule: the box of an empty mask is NaN (no box), and the caller says what
replaces it (`or_whole_image`, or a box of its own), so a missing lesion is never silently a
whole-image box somewhere and a NaN box elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dkbench.geometry.components import device_constant


def box_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bounding box of a (B, 1, *spatial) mask (nonzero = inside), 2-D or 3-D: (B, 2·d) float,
    (lo per axis…, hi per axis…) in (x, y[, z]) order, hi exclusive; NaN rows for empty masks."""
    m = mask[:, 0] != 0
    spatial = m.shape[1:]
    d = len(spatial)
    lo, hi = [], []
    for axis in reversed(range(d)):  # x = last axis first
        other = tuple(a + 1 for a in range(d) if a != axis)
        hit = m.any(dim=other) if other else m
        size = spatial[axis]
        ar = torch.arange(size, device=m.device)
        # Python scalars as fill values: a device tensor made from one would be a host→device copy
        lo.append(torch.where(hit, ar, size).amin(-1))
        hi.append(torch.where(hit, ar, -1).amax(-1) + 1)
    box = torch.stack(lo + hi, -1).float()
    present = m.flatten(1).any(1, keepdim=True)
    return torch.where(present, box, torch.full_like(box, float("nan")))


def or_whole_image(box: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """NaN rows (no box) replaced by the whole image; `size` in tensor order (H, W[, D])."""
    d = len(size)
    whole = device_constant((0.0,) * d + tuple(float(s) for s in reversed(size)), box)
    return torch.where(torch.isfinite(box).all(1, keepdim=True), box, whole.expand_as(box))


def clamp_box(box: torch.Tensor, size: tuple[int, ...], min_frac: float = 0.0) -> torch.Tensor:
    """Grow each side to at least `min_frac` × the image side around the box centre, then shift
    the box inside the image. `size` in tensor order (H, W[, D]); box in (x, y[, z]) order."""
    d = len(size)
    extent = device_constant(tuple(reversed(size)), box)  # (x, y[, z]) extents
    lo, hi = box[:, :d], box[:, d:]
    side = torch.maximum(hi - lo, (min_frac * extent).clamp_min(1.0))
    side = torch.minimum(side, extent)
    centre = (lo + hi) / 2
    lo = (centre - side / 2).clamp_min(0)
    lo = torch.minimum(lo, extent - side)
    return torch.cat([lo, lo + side], -1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) IoU of paired boxes (B, 2·d)."""
    d = a.shape[1] // 2
    inter = (torch.minimum(a[:, d:], b[:, d:]) - torch.maximum(a[:, :d], b[:, :d])).clamp_min(0).prod(1)
    area_a = (a[:, d:] - a[:, :d]).prod(1)
    area_b = (b[:, d:] - b[:, :d]).prod(1)
    return inter / (area_a + area_b - inter).clamp_min(1e-12)


def box_theta(box: torch.Tensor, spatial: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
    """(B, d, d+1) affine maps (`F.affine_grid`, align_corners=False) from the output grid to
    each box's window; `spatial` in tensor order (H, W[, D]), box (B, 2·d) in pixels."""
    d = len(spatial)
    extent = device_constant(tuple(reversed(spatial)), box)  # grid order = (x, y[, z])
    lo, hi = box[:, :d], box[:, d:]
    scale = (hi - lo) / extent  # half-width in normalised coordinates
    shift = (lo + hi) / extent - 1
    dtype = dtype or box.dtype
    theta = torch.zeros(box.shape[0], d, d + 1, device=box.device, dtype=dtype)
    idx = torch.arange(d, device=box.device)
    theta[:, idx, idx] = scale.to(dtype)
    theta[:, :, d] = shift.to(dtype)
    return theta


def crop_resize(image: torch.Tensor, box: torch.Tensor, padding_mode: str = "border",
                mode: str = "bilinear") -> torch.Tensor:
    """Crop boxes (B, 2·d) in pixel units, (x, y[, z]) order, hi exclusive, and resize each crop
    to the input size: one affine grid + `grid_sample` for the whole batch."""
    theta = box_theta(box, tuple(image.shape[2:]), image.dtype)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def flip_rotate_boxes(boxes: torch.Tensor, size: tuple[int, int], hflip: torch.Tensor | None = None,
                      vflip: torch.Tensor | None = None, rot90: torch.Tensor | None = None) -> torch.Tensor:
    """Boxes (B, K, 4) of (H, W) = `size` images moved as the images are by `transforms.augment_batch`:
    per-sample horizontal flip, then vertical flip, then `torch.rot90(k=1)` over (H, W) (square
    images only, as there), each a (B,) bool or None. (x, y) order, hi exclusive; NaN rows (padding)
    stay NaN. rot90 maps the pixel (row r, col c) to (W-1-c, r), so the box (x, y) → (y, W - x)."""
    h, w = size

    def where(which: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return torch.where(which.view(-1, 1, 1), new, old)

    x1, y1, x2, y2 = boxes.unbind(-1)
    out = boxes
    if hflip is not None:
        out = where(hflip, torch.stack([w - x2, y1, w - x1, y2], -1), out)
        x1, y1, x2, y2 = out.unbind(-1)
    if vflip is not None:
        out = where(vflip, torch.stack([x1, h - y2, x2, h - y1], -1), out)
        x1, y1, x2, y2 = out.unbind(-1)
    if rot90 is not None and h == w:
        out = where(rot90, torch.stack([y1, w - x2, y2, w - x1], -1), out)
    return out
