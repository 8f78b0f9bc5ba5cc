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
  for the positive label, −w for the negative one), then ReLU. Used when the network has a
  ``head`` ``nn.Linear`` on the pooled features (`ClassifierNet`); otherwise, and for multilabel
  tasks, the class-agnostic map is used instead (``cam_used`` in the metadata says which).

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

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.spec import DatasetSpec
from dkbench.metrics.attention import activation_map
from dkbench.strategies.base import CLASSIFICATION_TASKS, Strategy
from dkbench.strategies.catalogue.roi_input import expert_region
from dkbench.strategies.registry import register_strategy

LOSSES = ("kl", "energy", "bce")
CAMS = ("agnostic", "class")
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
    elif task in ("binary", "multiclass"):
        w = head_weight[label.reshape(-1).long()]  # (B,C)
    else:
        raise ValueError(f"class CAM needs a single target class; task is {task}")
    w = w.to(feature_map.dtype).view(*w.shape, *([1] * (feature_map.ndim - 2)))
    cam = (feature_map * w).sum(1, keepdim=True).relu()
    return _upsample(cam.float(), size)


def alignment_loss(cam: torch.Tensor, region: torch.Tensor, loss: str = "kl") -> torch.Tensor:
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
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return torch.where(reg.sum(1) > 0, value, torch.full_like(value, float("nan")))


@register_strategy("attention_supervision")
class AttentionSupervision(Strategy):
    name = "attention_supervision"
    requires = frozenset({"mask"})
    tasks = CLASSIFICATION_TASKS
    citation = ("Li et al., Tell me where to look: guided attention inference network, CVPR 2018; "
                "Li et al., Attention based glaucoma detection: a large-scale database and CNN model "
                "(AG-CNN), CVPR 2019")

    def __init__(self, **options: Any):
        super().__init__(**options)
        o = self.options
        self.weight = float(o.get("weight", 1.0))
        self.loss = str(o.get("loss", "kl"))
        self.cam = str(o.get("cam", "agnostic"))
        self.region = str(o.get("region", "mask"))
        self.dilate = float(o.get("dilate", 0.04))
        if self.loss not in LOSSES:
            raise ValueError(f"attention_supervision: loss must be one of {LOSSES}, got {self.loss!r}")
        if self.cam not in CAMS:
            raise ValueError(f"attention_supervision: cam must be one of {CAMS}, got {self.cam!r}")
        if self.region not in ("mask", "bbox"):
            raise ValueError(f"attention_supervision: region must be 'mask' or 'bbox', got {self.region!r}")
        self._head: nn.Linear | None = None
        self._task = "binary"
        self.cam_used = self.cam

    def incompatibility(self, spec: DatasetSpec, backbone: str | None = None) -> str | None:
        reason = super().incompatibility(spec, backbone)
        if reason:
            return reason
        if self.region == "bbox" and ("bbox" not in spec.provides or spec.spatial_dims != 2):
            return (f"strategy 'attention_supervision' with region=bbox needs 2-D boxes; dataset "
                    f"'{spec.name}' provides {sorted(spec.provides)} ({spec.spatial_dims}-D)")
        return None

    def build_net(self, backbone: Backbone, spec: DatasetSpec) -> nn.Module:
        return self.bind(super().build_net(backbone, spec), spec)

    def bind(self, net: nn.Module, spec: DatasetSpec) -> nn.Module:
        """Decide which CAM to supervise for this network: the target-class CAM needs a linear
        head on the pooled last feature map (`net.head`) and a single-label task."""
        self._task = spec.task
        head = getattr(net, "head", None)
        backbone = getattr(net, "backbone", None)
        usable = (isinstance(head, nn.Linear) and spec.task in ("binary", "multiclass")
                  and head.in_features == getattr(backbone, "num_features", -1))
        self._head = head if usable else None
        self.cam_used = "class" if (self.cam == "class" and usable) else "agnostic"
        return net

    def attention(self, outputs: dict, batch: dict) -> torch.Tensor:
        """The supervised map (B,1,*input size), differentiable w.r.t. features (and head)."""
        size = tuple(batch["image"].shape[2:])
        fmap = outputs["feature_map"]
        if self.cam_used == "class" and self._head is not None:
            return class_cam(fmap, self._head.weight, batch["label"], self._task, size)
        return activation_map(fmap, size)

    def attention_loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        """Mean alignment loss over the batch's images with a lesion (0, in the graph, if none)."""
        region = expert_region(batch, self.region, self.dilate)
        cam = self.attention(outputs, batch)
        per_image = alignment_loss(cam, region, self.loss)
        # a masked mean on the device: `if valid.any()` / `per_image[valid]` would each stop the
        # host every training step until the device caught up. NaN marks the images without a
        # lesion; `where` gives them zero weight and zero gradient (their value is finite before
        # `alignment_loss` replaces it, so no NaN reaches the backward pass).
        valid = ~torch.isnan(per_image)
        total = torch.where(valid, per_image, torch.zeros_like(per_image)).sum()
        return total / valid.sum().clamp_min(1)  # no lesion in the batch: 0, still in the graph

    def loss_terms(self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        return {"task": per_sample_loss.mean(), "attention": self.weight * self.attention_loss(outputs, batch)}

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "cam_used": self.cam_used,
            "attention_loss": f"{self.weight} * {self.loss}(CAM, {self.region} dilated by {self.dilate} x side), "
                              "mean over images with a lesion",
        }
