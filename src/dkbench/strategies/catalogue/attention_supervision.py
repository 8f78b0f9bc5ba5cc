"""`attention_supervision`: tell the network where to look (SURVEY.md family D).

Doctors know where the lesion is; these methods turn that into a loss on the network's
attention. Representative papers: Li et al., "Tell me where to look: guided attention
inference network" (GAIN, CVPR 2018), whose external supervision penalises the difference
between the network's attention map and a pixel-level expert map, and the glaucoma AG-CNN
(Li et al., "Attention based glaucoma detection", CVPR 2019 / LAG database), whose attention
prediction subnet is supervised by ophthalmologists' attention maps with a KL divergence.

Here the attention map is computed from the backbone's last feature map
(``outputs["feature_map"]``), bilinearly upsampled to the input size, and the loss term
``weight * L_att`` is added to the task loss at every step:

- ``cam: agnostic`` (default) — the class-agnostic activation map of
  `dkbench.metrics.attention` (channel mean of the ReLU'd feature map), the very map
  ``attention_overlap`` measures; it applies to any backbone and head;
- ``cam: class`` — the class activation map of Zhou et al. (CVPR 2016) for the *target* class:
  the feature map weighted by the linear head's row of that class (binary with one logit: +w
  for the positive label, −w for the negative one), then ReLU. The network `build_net` builds
  for it (`ClassCAMNet`, a `ClassifierNet`) returns its head's weight with its outputs
  (``outputs["head_weight"]``), so the strategy keeps no reference to the network; multilabel
  tasks have no single target class and use the class-agnostic map instead (``cam_used`` in the
  metadata says which).

The expert region is the lesion mask (``region: mask``) or its box filled (``region: bbox``),
dilated by ``dilate`` × the image side (the lesion's margin is evidence too). Losses
(``loss``), each averaged over the images of the batch that have a lesion (images with an
empty mask add nothing):

- ``kl`` (default): KL(region ‖ CAM), both normalised to sum to one (AG-CNN's attention loss):
  the attention must cover the region and put no mass outside it;
- ``energy``: 1 − the fraction of the CAM's mass inside the region (1 − the "energy pointing
  game" of `attention_overlap`, on the dilated region): mass outside the region is penalised,
  however it is distributed inside;
- ``bce``: pixel-wise BCE between the CAM normalised by its maximum and the region (GAIN's
  pixel-level external supervision, with BCE instead of its squared error).

Defaults chosen on the synthetic probe with its corner shortcut (tinycnn, 5 epochs, 2 seeds):
the agnostic map with ``kl`` or ``energy`` removed most of the shortcut (val/test AUROC
≈ 0.70/0.68 and 0.65/0.63, against 0.93/0.54 for the baseline), while the target-class CAM
(any loss) and ``bce`` did not (plausibly: the class CAM constrains only the features'
projection on the head's weights, and the max-normalised BCE tolerates small off-lesion mass).

Simplified relative to the papers: no attention-mining stream (GAIN) and no separate attention
prediction subnet or attention-weighted feature branch (AG-CNN); the attention is the plain
CAM of the classifier itself, supervised directly. Expert maps are lesion masks/boxes, not
eye-tracking heat maps. The term is also computed (and included in ``val/loss``) at
validation / test time, but only the training loss is optimised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dkbench.data.spec import DatasetSpec
from dkbench.metrics.attention import activation_map
from dkbench.data.spec import num_outputs
from dkbench.strategies.base import CLASSIFICATION_TASKS, BuildContext, ClassifierNet, StepContext, Strategy
from dkbench.strategies.catalogue.roi_input import expert_region
from dkbench.strategies.options import NonNegative, StrategyOptions
from dkbench.strategies.registry import register_strategy

Loss = Literal["kl", "energy", "bce"]
Cam = Literal["agnostic", "class"]
#: tasks with a single target class per image, i.e. a class CAM to supervise
SINGLE_LABEL_TASKS = ("binary", "multiclass")
_EPS = 1e-6


def _upsample(cam: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    mode = "bilinear" if cam.ndim == 4 else "trilinear"
    return F.interpolate(cam, size=size, mode=mode, align_corners=False)


def class_cam(feature_map: torch.Tensor, head_weight: torch.Tensor, label: torch.Tensor, task: str,
              size: tuple[int, ...]) -> torch.Tensor:
    """Target-class CAM (Zhou et al. 2016), ReLU'd and upsampled: (B,1,*size).

    binary (one logit): +w for label 1, −w for label 0; multiclass: the label's row.
    """
    if task == "binary" and head_weight.shape[0] == 1:
        sign = label.reshape(-1).float() * 2 - 1
        w = head_weight[0][None] * sign[:, None]  # (B,C)
    elif task in SINGLE_LABEL_TASKS:
        w = head_weight[label.reshape(-1).long()]  # (B,C)
    else:
        raise ValueError(f"class CAM needs a single target class; task is {task}")
    w = w.to(feature_map.dtype).view(*w.shape, *([1] * (feature_map.ndim - 2)))
    cam = (feature_map * w).sum(1, keepdim=True).relu()
    return _upsample(cam.float(), size)


def alignment_loss(cam: torch.Tensor, region: torch.Tensor, loss: Loss = "kl") -> torch.Tensor:
    """Per-image misalignment of a non-negative attention map with a {0,1} region (both
    (B,1,*spatial)); NaN where the region is empty."""
    att = cam.flatten(1).float()
    reg = (region.flatten(1) > 0).float()
    if loss == "energy":
        value = 1 - (att * reg).sum(1) / (att.sum(1) + _EPS)
    elif loss == "bce":
        norm = (att / (att.amax(1, keepdim=True) + _EPS)).clamp(_EPS, 1 - _EPS)
        value = F.binary_cross_entropy(norm, reg, reduction="none").mean(1)
    elif loss == "kl":
        p = reg / reg.sum(1, keepdim=True).clamp_min(1)
        q = att / (att.sum(1, keepdim=True) + _EPS)
        value = (p * (torch.log(p + _EPS) - torch.log(q + _EPS))).sum(1)
    else:
        raise ValueError(f"loss must be one of ['kl', 'energy', 'bce'], got {loss!r}")
    return torch.where(reg.sum(1) > 0, value, torch.full_like(value, float("nan")))


class ClassCAMNet(ClassifierNet):
    """`ClassifierNet` (same modules, same initialisation) whose outputs also carry its linear
    head's weight, from which the loss builds the target-class CAM."""

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return {**super().forward(batch), "head_weight": self.head.weight}


@register_strategy("attention_supervision")
class AttentionSupervision(Strategy):
    name = "attention_supervision"
    family = "D"
    knowledge = "expert masks (training)"
    requires = frozenset({"mask"})
    tasks = CLASSIFICATION_TASKS
    citation = ("Li et al., Tell me where to look: guided attention inference network, CVPR 2018; "
                "Li et al., Attention based glaucoma detection: a large-scale database and CNN model "
                "(AG-CNN), CVPR 2019")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: weight of the attention term added to the task loss
        weight: NonNegative = 1.0
        #: kl: KL(region ‖ CAM) (AG-CNN) | energy: 1 − CAM mass inside | bce: BCE(CAM/max, region)
        loss: Loss = "kl"
        #: agnostic: channel mean of ReLU'd features | class: target-class CAM of the linear head
        cam: Cam = "agnostic"
        #: mask: the lesion mask | bbox: the lesion box, filled
        region: Literal["mask", "bbox"] = "mask"
        #: region dilation radius as a fraction of the image side
        dilate: NonNegative = 0.04

    def __init__(self, **options: Any):
        super().__init__(**options)
        #: the map supervised (metadata.json): the class CAM needs a single-label task; set by `build_net`
        self.cam_used: str = self.options.cam

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if self.options.region == "bbox" and ("bbox" not in spec.provides or spec.spatial_dims != 2):
            return (f"strategy 'attention_supervision' with region=bbox needs 2-D boxes; dataset "
                    f"'{spec.name}' provides {sorted(spec.provides)} ({spec.spatial_dims}-D)")
        return None

    def build_net(self, ctx: BuildContext) -> nn.Module:
        """The task's classifier; for the class CAM of a single-label task, one that returns its
        head's weight with its outputs (`ClassCAMNet`)."""
        spec = ctx.spec
        class_cam_possible = self.options.cam == "class" and spec.task in SINGLE_LABEL_TASKS
        self.cam_used = "class" if class_cam_possible else "agnostic"
        if not class_cam_possible:
            return super().build_net(ctx)
        return ClassCAMNet(ctx.make_backbone(), num_outputs(spec.task, spec.num_classes), self.options.dropout)

    def attention(self, outputs: dict, batch: dict, step: StepContext) -> torch.Tensor:
        """The supervised map (B,1,*input size), differentiable w.r.t. features (and head): the
        target-class CAM where the network returns its head's weight, else the agnostic map."""
        size = tuple(batch["image"].shape[2:])
        fmap = outputs["feature_map"]
        head_weight = outputs.get("head_weight")
        if head_weight is not None:
            return class_cam(fmap, head_weight, batch["label"], step.task, size)
        return activation_map(fmap, size)

    def attention_loss(self, outputs: dict, batch: dict, step: StepContext) -> torch.Tensor:
        """Mean alignment loss over the batch's images with a lesion (0, in the graph, if none)."""
        region = expert_region(batch, self.options.region, self.options.dilate)
        cam = self.attention(outputs, batch, step)
        per_image = alignment_loss(cam, region, self.options.loss)
        # a masked mean on the device: `if valid.any()` / `per_image[valid]` would each stop the
        # host every training step until the device caught up. NaN marks the images without a
        # lesion; `where` gives them zero weight and zero gradient (their value is finite before
        # `alignment_loss` replaces it, so no NaN reaches the backward pass).
        valid = ~torch.isnan(per_image)
        total = torch.where(valid, per_image, torch.zeros_like(per_image)).sum()
        return total / valid.sum().clamp_min(1)  # no lesion in the batch: 0, still in the graph

    def loss_terms(self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict,
                   step: StepContext) -> dict[str, torch.Tensor]:
        return {"task": per_sample_loss.mean(),
                "attention": self.options.weight * self.attention_loss(outputs, batch, step)}

    def metadata(self) -> dict[str, Any]:
        o = self.options
        return {
            **super().metadata(),
            "cam_used": self.cam_used,
            "attention_loss": f"{o.weight} * {o.loss}(CAM, {o.region} dilated by {o.dilate} x side), "
                              "mean over images with a lesion",
        }
