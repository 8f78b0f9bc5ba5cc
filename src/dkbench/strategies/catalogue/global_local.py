"""`global_local`: look at the whole image, then zoom in (SURVEY.md family C).

Follows AG-CNN (Guan et al., "Diagnose like a radiologist: attention guided convolutional
neural network for thorax disease classification", arXiv:1801.09927, 2018):

1. a **global branch** reads the whole image;
2. its attention heat map is the maximum over channels of the absolute last feature map,
   ``H(x, y) = max_k |f_k(x, y)|``, upsampled (bilinear) to the input size and min-max
   normalised per image (equal to "τ × the maximum" when the map's minimum is 0);
   inputs larger than ``options.attention_grid`` px per axis get the map (and the box search)
   on that coarser grid, the box then scaled to input pixels — the upsampled map of a 7×7
   feature map is smooth, and this keeps the connected-region search cheap at 224 px;
3. the mask ``H > τ`` (``options.tau``) is reduced to its **largest connected region**
   (8-connectivity, found with a batched label propagation on the device, no per-sample loop
   and, in training, no host sync: see `dkbench.strategies.components`) and the bounding box
   of that region is the crop;
4. the crop is cut from the *input image* and resized back to the input size with one batched
   affine ``grid_sample`` (bilinear), and fed to a **local branch** (a second backbone of the
   same architecture, built from the run's backbone factory);
5. a **fusion head** classifies the concatenated pooled features of both branches
   (input dim = 2 × num_features). ``logits`` are the fusion logits.

Simplified relative to AG-CNN (stated plainly):

* AG-CNN trains the global branch, then the local branch, then the fusion branch in three
  stages. Here the three are trained **jointly** with
  ``loss = w_g·CE(global) + w_l·CE(local) + w_f·CE(fusion)`` (``options.loss_weights``), and the
  crop box is computed from the **detached** global attention (no gradient flows through the
  box selection; the global branch learns from its own loss and the fusion loss).
* ``options.min_crop`` grows a box that is smaller than that fraction of the image side around
  its centre (shifted back inside the image): AG-CNN has no such floor; with the 1/8-1/16
  resolution feature maps of small images a one-cell box would otherwise be a blur.
* ``options.crop_source: mask`` replaces the attention box by the dataset's ``bbox`` (or the box
  of its ``mask``) — in training *and at test time*, i.e. the test-time crop is the ground-truth
  lesion box (an oracle ROI, a different claim from AG-CNN's; recorded in metadata.json).
  Images without a box (NaN: no lesion) fall back to the attention box.

Works for 2D images and (attention mode) 3D volumes alike.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.spec import DatasetSpec
from dkbench.metrics.classification import num_outputs, per_sample_loss
from dkbench.backbones.base import reinitialised_copy
from dkbench.strategies import components
from dkbench.strategies.base import CLASSIFICATION_TASKS, Strategy, StrategyContext
from dkbench.strategies.registry import register_strategy

CROP_SOURCES = ("attention", "mask")


# --- attention → box → crop (pure, batched functions) ------------------------------------------
def attention_map(feature_map: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """AG-CNN heat map: max over channels of |feature map|, upsampled to `size`, min-max
    normalised per sample to [0, 1]. (B, K, *s) → (B, 1, *size)."""
    heat = feature_map.abs().amax(1, keepdim=True).float()
    mode = "bilinear" if heat.ndim == 4 else "trilinear"
    heat = F.interpolate(heat, size=tuple(size), mode=mode, align_corners=False)
    flat = heat.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    shape = (-1,) + (1,) * (heat.ndim - 1)
    return (heat - lo.view(shape)) / (hi - lo).clamp_min(1e-12).view(shape)


def largest_component(mask: torch.Tensor, max_iter: int | None = None, exact: bool = True) -> torch.Tensor:
    """Largest 8-connected (26 in 3D) region of a boolean (B, 1, *s) mask, batched on the mask's
    device (`dkbench.strategies.components`: label propagation with hooking and pointer jumping;
    ties go to the component that starts first in raster order). Empty masks stay empty.
    ``exact=False`` runs a fixed iteration budget (``max_iter``) without any host sync."""
    return components.largest_component(mask, "full", max_iter, exact)[0]


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """Bounding box of a boolean (B, 1, *s) mask: (B, 2·d) = (lo per axis…, hi per axis…) in
    the (x, y[, z]) order of the dataset's `bbox`, i.e. last spatial axis first; hi exclusive.
    Empty masks give the whole image."""
    spatial = mask.shape[2:]
    d = len(spatial)
    m = mask[:, 0]
    lo, hi = [], []
    for axis in reversed(range(d)):  # x = last axis first
        other = tuple(a + 1 for a in range(d) if a != axis)
        hit = m.any(dim=other) if other else m
        size = spatial[axis]
        ar = torch.arange(size, device=mask.device)
        any_hit = hit.any(-1)
        lo.append(torch.where(any_hit, torch.where(hit, ar, size).amin(-1), 0))
        hi.append(torch.where(any_hit, torch.where(hit, ar, -1).amax(-1) + 1, size))
    return torch.stack(lo + hi, -1).float()


def attention_box(heat: torch.Tensor, tau: float) -> torch.Tensor:
    """Box (B, 2·d) around the largest connected region of `heat > tau` (heat in [0, 1])."""
    return mask_box(largest_component(heat > tau))


def clamp_box(box: torch.Tensor, size: tuple[int, ...], min_frac: float = 0.0) -> torch.Tensor:
    """Grow each side to at least `min_frac` × the image side around the box centre, then shift
    the box inside the image. `size` in tensor order (H, W[, D]); box in (x, y[, z]) order."""
    d = len(size)
    extent = components.device_constant(tuple(reversed(size)), box)  # (x, y[, z]) extents
    lo, hi = box[:, :d], box[:, d:]
    side = torch.maximum(hi - lo, (min_frac * extent).clamp_min(1.0))
    side = torch.minimum(side, extent)
    centre = (lo + hi) / 2
    lo = (centre - side / 2).clamp_min(0)
    lo = torch.minimum(lo, extent - side)
    return torch.cat([lo, lo + side], -1)


def crop_resize(image: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Crop boxes (B, 2·d) in pixel units, (x, y[, z]) order, hi exclusive, and resize each crop
    to the input size: one affine grid + bilinear `grid_sample` for the whole batch."""
    spatial = image.shape[2:]
    d = len(spatial)
    extent = components.device_constant(tuple(reversed(spatial)), box)  # grid order = (x, y[, z])
    lo, hi = box[:, :d], box[:, d:]
    scale = (hi - lo) / extent  # half-width in normalised coordinates (align_corners=False)
    shift = (lo + hi) / extent - 1
    theta = torch.zeros(image.shape[0], d, d + 1, device=image.device, dtype=image.dtype)
    idx = torch.arange(d, device=image.device)
    theta[:, idx, idx] = scale.to(image.dtype)
    theta[:, :, d] = shift.to(image.dtype)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = a.shape[1] // 2
    inter = (torch.minimum(a[:, d:], b[:, d:]) - torch.maximum(a[:, :d], b[:, :d])).clamp_min(0).prod(1)
    area_a = (a[:, d:] - a[:, :d]).prod(1)
    area_b = (b[:, d:] - b[:, :d]).prod(1)
    return inter / (area_a + area_b - inter).clamp_min(1e-12)


# --- the network ---------------------------------------------------------------------------------
class GlobalLocalNet(nn.Module):
    """Global backbone → attention crop → local backbone → fusion head (AG-CNN)."""

    #: Training-step region search without host syncs: None = on accelerators only (on the CPU
    #: the exact search's checks cost nothing and it stops earlier); True forces it (tests run
    #: the accelerator code path on the CPU this way).
    sync_free_search: bool | None = None

    def __init__(
        self,
        global_backbone: Backbone,
        local_backbone: Backbone,
        num_out: int,
        tau: float = 0.7,
        crop_source: str = "attention",
        min_crop: float = 0.0,
        attention_grid: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        if global_backbone.num_features != local_backbone.num_features:
            raise ValueError("global_local: both branches must have the same num_features")
        self.global_backbone = global_backbone
        self.local_backbone = local_backbone
        f = global_backbone.num_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.global_head = nn.Linear(f, num_out)
        self.local_head = nn.Linear(f, num_out)
        self.fusion_head = nn.Linear(2 * f, num_out)
        self.tau, self.crop_source, self.min_crop = float(tau), crop_source, float(min_crop)
        self.attention_grid = int(attention_grid)

    def crop_box(self, batch: dict, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(attention heat map, crop box, region search converged) from the detached global
        feature map (and the dataset's box in mask mode).

        Training steps on an accelerator search the region with a fixed iteration budget and no
        host sync (a sync per step would stall the device queue); evaluation, and any step on the
        CPU (where the check costs nothing), iterates to the exact fixed point."""
        image = batch["image"]
        size = tuple(image.shape[2:])
        grid = tuple(min(s, self.attention_grid) for s in size)
        with torch.no_grad():
            heat = attention_map(feature_map.detach(), grid)
            # exact where a host check is free (evaluation, the CPU); sync-free budget otherwise
            sync_free = heat.device.type != "cpu" if self.sync_free_search is None else self.sync_free_search
            exact = not (self.training and sync_free)
            keep, converged = components.largest_component(heat > self.tau, "full", exact=exact)
            box = mask_box(keep)  # = attention_box(heat, tau), with the convergence flag
            if grid != size:  # grid pixels → input pixels (box edges, x first)
                factor = [s / g for s, g in zip(reversed(size), reversed(grid))]
                box = box * components.device_constant(tuple(factor * 2), box)
            if self.crop_source == "mask":
                given = batch.get("bbox")
                if given is None and "mask" in batch:
                    given = mask_box(batch["mask"] > 0)
                    given = torch.where((batch["mask"] > 0).flatten(1).any(1, keepdim=True), given, float("nan"))
                if given is None:
                    raise KeyError("global_local with crop_source=mask needs the batch's 'bbox' or 'mask'")
                given = given.to(box)
                has = torch.isfinite(given).all(1, keepdim=True)
                box = torch.where(has, given, box)
            box = clamp_box(box, size, self.min_crop)
        return heat, box, converged

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        image = batch["image"]
        fmap_g = self.global_backbone.forward_features(image)
        emb_g = self.global_backbone.pool(fmap_g)
        heat, box, converged = self.crop_box(batch, fmap_g)
        local_image = crop_resize(image, box)
        fmap_l = self.local_backbone.forward_features(local_image)
        emb_l = self.local_backbone.pool(fmap_l)
        fused = torch.cat([emb_g, emb_l], 1)
        return {
            "logits": self.fusion_head(self.dropout(fused)),
            "logits_global": self.global_head(self.dropout(emb_g)),
            "logits_local": self.local_head(self.dropout(emb_l)),
            "embedding": fused,
            "feature_map": fmap_g,
            "local_feature_map": fmap_l,
            "attention": heat,
            "crop_box": box,
            "crop_search_converged": converged,
            "local_image": local_image,
        }



@register_strategy("global_local")
class GlobalLocal(Strategy):
    """AG-CNN-style global + attention-cropped local branch + fusion head (module docstring)."""

    name = "global_local"
    requires = frozenset()  # masks / boxes are optional (crop_source: mask)
    tasks = CLASSIFICATION_TASKS
    citation = (
        "Guan et al., Diagnose like a radiologist: attention guided convolutional neural network "
        "for thorax disease classification (AG-CNN), arXiv:1801.09927 (2018)"
    )

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.tau = float(options.get("tau", 0.7))
        self.crop_source = str(options.get("crop_source", "attention"))
        if self.crop_source not in CROP_SOURCES:
            raise ValueError(f"global_local: crop_source must be one of {CROP_SOURCES}, got {self.crop_source!r}")
        if not 0.0 <= self.tau < 1.0:
            raise ValueError(f"global_local: tau must be in [0, 1), got {self.tau}")
        self.min_crop = float(options.get("min_crop", 0.25))
        self.attention_grid = int(options.get("attention_grid", 64))
        weights = {"global": 1.0, "local": 1.0, "fusion": 1.0, **dict(options.get("loss_weights") or {})}
        unknown = set(weights) - {"global", "local", "fusion"}
        if unknown:
            raise ValueError(f"global_local: loss_weights keys are global, local, fusion; got {sorted(unknown)}")
        self.loss_weights = {k: float(v) for k, v in weights.items()}
        self._make_backbone = None
        self._task: str | None = None

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if self.crop_source == "mask":
            if not ({"bbox", "mask"} & spec.provides):
                return (
                    f"strategy '{self.name}' with crop_source=mask needs a lesion 'bbox' or 'mask'; "
                    f"dataset '{spec.name}' provides {sorted(spec.provides) or 'nothing beyond images and labels'} "
                    f"(use crop_source=attention)"
                )
            if spec.spatial_dims != 2:
                return f"strategy '{self.name}' with crop_source=mask supports 2D boxes only; dataset '{spec.name}' is 3D"
        return None

    def prepare(self, context: StrategyContext) -> None:
        self._make_backbone = context.make_backbone  # builds the local branch in build_net

    def build_net(self, backbone: Backbone, spec: DatasetSpec) -> nn.Module:
        self._task = spec.task
        local = self._make_backbone() if self._make_backbone is not None else reinitialised_copy(backbone)
        self._make_backbone = None  # the factory holds the run config; not needed any more
        return GlobalLocalNet(
            backbone, local, num_outputs(spec.task, spec.num_classes), tau=self.tau,
            crop_source=self.crop_source, min_crop=self.min_crop, attention_grid=self.attention_grid,
            dropout=self.options.get("dropout", 0.0),
        )

    def loss_terms(self, per_sample_loss_: torch.Tensor, outputs: dict, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        task = self._task or ("multilabel" if batch["label"].ndim > 1 else "multiclass")
        w = self.loss_weights
        terms = {"fusion": w["fusion"] * per_sample_loss_.mean()}
        if w["global"]:
            terms["global"] = w["global"] * per_sample_loss(outputs["logits_global"], batch["label"], task).mean()
        if w["local"]:
            terms["local"] = w["local"] * per_sample_loss(outputs["logits_local"], batch["label"], task).mean()
        return terms

    def extra_metrics(self, outputs: dict, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        """crop_area: mean crop area / image area. Training also logs crop_search_converged (the
        fraction of images whose sync-free region search reached its fixed point; 1.0 expected).
        Val/test, with a dataset box: crop_lesion_iou (IoU of crop and lesion box) and
        crop_centre_in_lesion (fraction of crop centres inside it), over the images with a box.
        Those two are skipped in training: choosing the images with a box is a data-dependent
        branch, i.e. a host sync per step, for a diagnostic of the test-time crop."""
        box = outputs.get("crop_box")
        if box is None:
            return {}
        spatial = batch["image"].shape[2:]
        d = len(spatial)
        total = float(math.prod(spatial))
        out = {"crop_area": ((box[:, d:] - box[:, :d]).prod(1) / total).mean()}
        if stage == "train":
            converged = outputs.get("crop_search_converged")
            if converged is not None:
                out["crop_search_converged"] = converged.float().mean()
            return out
        given = batch.get("bbox")
        if given is not None and d == 2:
            has = torch.isfinite(given).all(1)
            if has.any():  # val/test only (see above)
                g, b = given[has].to(box), box[has]
                out["crop_lesion_iou"] = _box_iou(b, g).mean()
                c = (b[:, :2] + b[:, 2:]) / 2
                inside = ((c >= g[:, :2]) & (c <= g[:, 2:])).all(1)
                out["crop_centre_in_lesion"] = inside.float().mean()
        return out

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["options"]["loss_weights"] = dict(self.loss_weights)  # plain dict, not a DictConfig
        meta["test_time_crop"] = (
            "ground-truth lesion box from the dataset (oracle ROI; attention box where none)"
            if self.crop_source == "mask"
            else "attention box of the global branch (no ground truth used at test time)"
        )
        meta["training"] = "joint (global + local + fusion losses), crop from the detached global attention"
        return meta
