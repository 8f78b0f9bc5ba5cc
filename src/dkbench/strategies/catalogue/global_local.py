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
   and, in training, no host sync: see `dkbench.geometry.components`) and the bounding box
   of that region is the crop (the whole image when nothing passes the threshold);
4. the crop is cut from the *input image* and resized back to the input size with one batched
   affine ``grid_sample`` (bilinear, `dkbench.geometry.boxes.crop_resize`), and fed to a
   **local branch** (a second backbone of the same architecture, built by the run's backbone
   factory, ``ctx.make_backbone``, in `build_net`);
5. a **fusion head** classifies the concatenated pooled features of both branches
   (input dim = 2 × num_features). ``logits`` are the fusion logits.

Simplified relative to AG-CNN (stated plainly):

* AG-CNN trains the global branch, then the local branch, then the fusion branch in three
  stages. Here the three are trained **jointly** with
  ``loss = w_g·CE(global) + w_l·CE(local) + w_f·CE(fusion)`` (``options.loss_weights``; each
  term is the run's task loss, ``step.task_loss``), and the
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
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.spec import DatasetSpec
from dkbench.geometry.boxes import box_from_mask, box_iou, clamp_box, crop_resize, or_whole_image
from dkbench.geometry.components import device_constant, largest_component
from dkbench.data.spec import num_outputs
from dkbench.strategies.base import CLASSIFICATION_TASKS, BuildContext, StepContext, Strategy
from dkbench.strategies.options import Bounds, Count, Fraction, OptionError, StrategyOptions
from dkbench.strategies.registry import register_strategy

CropSource = Literal["attention", "mask"]
BRANCHES = ("global", "local", "fusion")


# --- attention → box (pure, batched functions) -------------------------------------------------
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


def region_box(region: torch.Tensor) -> torch.Tensor:
    """Box (B, 2·d) of a boolean (B, 1, *s) region; the whole image where the region is empty
    (nothing above the threshold: the local branch then reads the whole image)."""
    return or_whole_image(box_from_mask(region), tuple(region.shape[2:]))


def attention_box(heat: torch.Tensor, tau: float) -> torch.Tensor:
    """Box (B, 2·d) around the largest connected region (8-connectivity, 26 in 3D; equal
    sizes: the first in raster order) of `heat > tau` (heat in [0, 1])."""
    return region_box(largest_component(heat > tau, "full")[0])


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
        crop_source: CropSource = "attention",
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
            keep, converged = largest_component(heat > self.tau, "full", exact=exact)
            box = region_box(keep)  # = attention_box(heat, tau), with the convergence flag
            if grid != size:  # grid pixels → input pixels (box edges, x first)
                factor = [s / g for s, g in zip(reversed(size), reversed(grid))]
                box = box * device_constant(tuple(factor * 2), box)
            if self.crop_source == "mask":
                given = batch.get("bbox")
                if given is None and "mask" in batch:
                    given = box_from_mask(batch["mask"])  # NaN where the mask is empty
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
    family = "C"
    knowledge = "model-chosen crop (train + test)"

    def knowledge_used(self) -> str:
        return "expert masks as the crop (train + **test**)" if self.options.crop_source == "mask" else self.knowledge
    requires = frozenset()  # masks / boxes are optional (crop_source: mask)
    tasks = CLASSIFICATION_TASKS
    citation = (
        "Guan et al., Diagnose like a radiologist: attention guided convolutional neural network "
        "for thorax disease classification (AG-CNN), arXiv:1801.09927 (2018)"
    )

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: attention threshold on the min-max normalised heat map (AG-CNN: 0.7)
        tau: Annotated[float, Bounds(ge=0, lt=1)] = 0.7
        #: attention: box of the largest high-attention region; mask: the dataset's lesion box
        #: (or its mask's box), in training and at test time (oracle ROI)
        crop_source: CropSource = "attention"
        #: smallest crop side as a fraction of the image side (0: no floor)
        min_crop: Fraction = 0.25
        #: heat map + box search on at most this many px per axis (box scaled to the input)
        attention_grid: Count = 64
        #: weights of the joint loss terms; keys global, local, fusion (a missing key weighs 1)
        loss_weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BRANCHES, 1.0))

        def __post_init__(self) -> None:
            super().__post_init__()
            unknown = sorted(set(self.loss_weights) - set(BRANCHES))
            if unknown:
                raise OptionError("loss_weights", f"keys are {list(BRANCHES)}, got {unknown}")
            # every branch has a weight (1 unless given), so metadata records the weights used
            weights = {**dict.fromkeys(BRANCHES, 1.0), **self.loss_weights}
            object.__setattr__(self, "loss_weights", {k: float(v) for k, v in weights.items()})

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if self.options.crop_source == "mask":
            if not ({"bbox", "mask"} & spec.provides):
                return (
                    f"strategy '{self.name}' with crop_source=mask needs a lesion 'bbox' or 'mask'; "
                    f"dataset '{spec.name}' provides {sorted(spec.provides) or 'nothing beyond images and labels'} "
                    f"(use crop_source=attention)"
                )
            if spec.spatial_dims != 2:
                return f"strategy '{self.name}' with crop_source=mask supports 2D boxes only; dataset '{spec.name}' is 3D"
        return None

    def build_net(self, ctx: BuildContext) -> nn.Module:
        o, spec = self.options, ctx.spec
        global_backbone = ctx.make_backbone()
        local_backbone = ctx.make_backbone()  # a second, independently initialised branch
        return GlobalLocalNet(
            global_backbone, local_backbone, num_outputs(spec.task, spec.num_classes), tau=o.tau,
            crop_source=o.crop_source, min_crop=o.min_crop, attention_grid=o.attention_grid, dropout=o.dropout,
        )

    def loss_terms(self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict,
                   step: StepContext) -> dict[str, torch.Tensor]:
        w = self.options.loss_weights
        terms = {"fusion": w["fusion"] * per_sample_loss.mean()}
        if w["global"]:
            terms["global"] = w["global"] * step.task_loss(outputs["logits_global"], batch["label"]).mean()
        if w["local"]:
            terms["local"] = w["local"] * step.task_loss(outputs["logits_local"], batch["label"]).mean()
        return terms

    def extra_metrics(self, outputs: dict, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
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
        if step.training:
            converged = outputs.get("crop_search_converged")
            if converged is not None:
                out["crop_search_converged"] = converged.float().mean()
            return out
        given = batch.get("bbox")
        if given is not None and d == 2:
            has = torch.isfinite(given).all(1)
            if has.any():  # val/test only (see above)
                g, b = given[has].to(box), box[has]
                out["crop_lesion_iou"] = box_iou(b, g).mean()
                c = (b[:, :2] + b[:, 2:]) / 2
                inside = ((c >= g[:, :2]) & (c <= g[:, 2:])).all(1)
                out["crop_centre_in_lesion"] = inside.float().mean()
        return out

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["test_time_crop"] = (
            "ground-truth lesion box from the dataset (oracle ROI; attention box where none)"
            if self.options.crop_source == "mask"
            else "attention box of the global branch (no ground truth used at test time)"
        )
        meta["training"] = "joint (global + local + fusion losses), crop from the detached global attention"
        return meta
