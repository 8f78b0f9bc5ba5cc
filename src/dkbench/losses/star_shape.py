"""Star-shape penalty, after Mirikharaji Z. & Hamarneh G., "Star shape prior in fully convolutional
networks for skin lesion segmentation", MICCAI 2018, LNCS 11073, pp. 737-745.

A region is star-shaped with respect to a centre c when every segment from c to one of its
points stays inside it. On the pixel grid the paper checks each pixel p against q, its
neighbour one step along the discrete line from p toward c: the direction c − p is quantised
to the nearest of the 8 (2D; 26 in 3D) neighbour directions (angles rounded to multiples of
45°, the paper's "regional maps"). Here the quantisation is per axis: step along axis i iff
|v_i| ≥ tan(22.5°) · max_j |v_j| (v = c − p), which is exactly the nearest-of-8 rounding in 2D
and its natural extension in 3D; the pixel whose cell holds c (max_j |v_j| < 0.5) has no step.

Two forms:

- ``monotone`` (default): ReLU(ŷ_p − ŷ_q), the foreground probability must not increase when
  stepping toward the centre; with ``error_weighted`` multiplied by |y_p − ŷ_p| (the paper's
  weighting). It is exactly 0 for any binary prediction that is star-shaped under this
  discrete ray rule (disks, ellipses, rectangles, fat convex polygons containing c) and
  positive for holes, crescents and islands.
- ``paper``: the paper's eq. 4, β_pq · |ŷ_p − ŷ_q| · |y_p − ŷ_p| with β_pq = 1 iff the
  ground truth agrees at p and q: smoothness along the rays, weighted by the error at p.

c is the centroid of the ground-truth foreground (the paper's rule; float, not floored).
"""

from __future__ import annotations

import math

import torch

#: tan(22.5°): below this ratio to the dominant axis, a component of the direction rounds to 0.
TAN_HALF_OCTANT = math.tan(math.pi / 8)
FORMS = ("monotone", "paper")


def _coordinates(spatial: tuple[int, ...], device: torch.device) -> torch.Tensor:
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in spatial]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (N, *spatial)


def centroids(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image centroid (B, N) of a (B, 1, *spatial) binary target, and whether it exists (B,)."""
    spatial = tuple(target.shape[2:])
    coords = _coordinates(spatial, target.device).flatten(1)  # (N, P)
    fg = target.flatten(1).float()  # (B, P)
    area = fg.sum(1)
    centre = fg @ coords.T / area.clamp_min(1.0).unsqueeze(1)
    return centre, area > 0


def inward_neighbour_index(centre: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """(B, P) flat index of q, each pixel's neighbour one quantised step toward ``centre`` (B, N)."""
    coords = _coordinates(spatial, centre.device)  # (N, *spatial)
    view = (*centre.shape, *([1] * len(spatial)))
    v = centre.view(view) - coords.unsqueeze(0)  # (B, N, *spatial): from p to c
    size = v.abs()
    dominant = size.amax(1, keepdim=True)
    moves = (size >= TAN_HALF_OCTANT * dominant) & (dominant >= 0.5)
    q = coords.unsqueeze(0).long() + torch.sign(v).long() * moves.long()
    flat = torch.zeros_like(q[:, 0])
    for axis, n in enumerate(spatial):  # row-major flattening; the clamp is a safety net only
        flat = flat * n + q[:, axis].clamp(0, n - 1)
    return flat.flatten(1)


def star_shape_loss(prob: torch.Tensor, target: torch.Tensor, form: str = "monotone",
                    error_weighted: bool = False) -> torch.Tensor:
    """(B,) star-shape penalty, mean over pixels; 0 for images whose ground truth is empty.

    ``prob``: (B, 1, *spatial) foreground probability; ``target``: (B, 1, *spatial) binary mask.
    """
    if form not in FORMS:
        raise ValueError(f"star_shape_loss: form '{form}' is not one of {FORMS}")
    target = target.to(prob.dtype)
    centre, has_fg = centroids(target)
    index = inward_neighbour_index(centre, tuple(prob.shape[2:]))
    p, t = prob.flatten(1), target.flatten(1)
    p_q = p.gather(1, index)
    if form == "monotone":
        penalty = torch.relu(p - p_q)
        if error_weighted:
            penalty = penalty * (t - p).abs()
    else:
        same = (t == t.gather(1, index)).to(p.dtype)
        penalty = same * (p - p_q).abs() * (t - p).abs()
    return penalty.mean(1) * has_fg.to(p.dtype)
