"""`multitask_seg`: lesion delineation as an auxiliary task (SURVEY.md family A).

Shared encoder, a classification head on the pooled embedding and a light segmentation
decoder on the encoder's last feature map, trained with a weighted joint loss

    L = CE(logits, label) + seg_weight * (soft Dice + BCE)(decoder output, lesion mask).

The principle is Caruana's multitask learning (Machine Learning 28:41-75, 1997): a related
task (where is the lesion?) acts as an inductive bias for the shared features. The
representative in SURVEY.md is multi-task breast-ultrasound classification + segmentation
(the "BUSBench MT rows"; e.g. Vakanski et al., "Attention-enriched deep learning model for
breast tumor segmentation in ultrasound images", Ultrasound Med. Biol. 46(10), 2020, and the
joint classification/segmentation BUS networks it builds on).

Simplified relative to those networks:

- the decoder is light and has no skip connections (the backbone contract exposes only the
  last feature map): a 1×1 channel reduction, then ``decoder_stages`` stages of
  [×2 bilinear upsampling → 3×3 conv → BatchNorm → ReLU] (halving the width, at least 16),
  a 1×1 conv to one lesion logit and a final bilinear resize to the input size. Each stage
  upsamples by 2 but never past the input size, so any feature-map size works, 1×1 included
  (e.g. the standard-stem ResNet-18 at 28 px); the coarse mask is then as coarse as the map;
- one binary lesion channel (every lesion of an image in one mask), no attention modules;
- fixed loss weight ``seg_weight`` (no uncertainty weighting or schedules).

Empty masks (images without a lesion, e.g. the probe's normal class): the Dice term is
computed per image on images *with* a lesion only (averaged over them); BCE covers every
image, so an empty mask is supervised by BCE alone. A batch without any lesion has Dice 0.

Detection (after Retina U-Net: Jaeger, Kohl, Bickelhaupt, Isensee, Kuder, Schlemmer and
Maier-Hein, "Retina U-Net: Embarrassingly Simple Exploitation of Segmentation Supervision for
Medical Object Detection", ML4H @ NeurIPS 2019, PMLR 116:171-183, 2020): the plain RetinaNet
detector (`dkbench.models.detector`) gets the same light decoder as a dense head on its FINEST
FPN level (`DetectorNet.dense_heads`, its width the detector's ``fpn_channels``), supervised by the
lesion masks with the same term; the loss is the detector's per-image loss + seg_weight * (soft
Dice + BCE), and at test time only the boxes are scored (the masks are training knowledge only;
``seg_dice`` is still logged). Simplified relative to Retina U-Net: there the feature pyramid's
top-down path continues to full resolution (levels P1, P0 with skip connections from the
encoder) and the segmentation logits come from P0, over the lesion classes; here the light
decoder upsamples the finest detection level without skips to one binary lesion channel.

Reported metric ``seg_dice`` (logged as ``val/seg_dice`` / ``test/seg_dice``): the decoder's
output thresholded at probability 0.5, Dice per image, then averaged over images. Convention
for an empty ground-truth mask: Dice 1 if the prediction is empty too, else 0 (the empty rules
of `dkbench.metrics.segmentation.per_image_scores`, which computes it; the soft Dice of the loss
is `dkbench.metrics.segmentation.soft_dice`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.spec import num_outputs
from dkbench.metrics.segmentation import per_image_scores, soft_dice
from dkbench.strategies.base import (
    CLASSIFICATION_TASKS, DETECTION_TASKS, BuildContext, StepContext, Strategy, task_net,
)
from dkbench.strategies.options import Count, NonNegative, NonNegativeInt, StrategyOptions
from dkbench.strategies.registry import register_strategy


class LightDecoder(nn.Module):
    """Last feature map (B,C,*s) → one lesion logit map at `out_size` (B,1,*out_size)."""

    def __init__(self, in_channels: int, channels: int = 64, stages: int = 3, spatial_dims: int = 2):
        super().__init__()
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.reduce = nn.Sequential(conv(in_channels, channels, kernel_size=1), nn.ReLU(inplace=True))
        blocks, c_in = [], channels
        for _ in range(stages):
            c_out = max(16, c_in // 2)
            blocks.append(nn.Sequential(
                conv(c_in, c_out, kernel_size=3, padding=1, bias=False), norm(c_out), nn.ReLU(inplace=True)))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.out = conv(c_in, 1, kernel_size=1)

    def _resize(self, x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        if tuple(x.shape[2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode=self.mode, align_corners=False)

    def forward(self, feature_map: torch.Tensor, out_size: tuple[int, ...]) -> torch.Tensor:
        x = self.reduce(feature_map)
        for block in self.blocks:  # ×2 per stage, capped at the output size
            x = block(self._resize(x, tuple(min(2 * s, o) for s, o in zip(x.shape[2:], out_size))))
        return self._resize(self.out(x), tuple(out_size))


class MultiTaskSegNet(nn.Module):
    """Backbone + classification head + segmentation decoder; adds `seg_logits` to the outputs."""

    def __init__(self, backbone: Backbone, num_out: int, dropout: float = 0.0,
                 decoder_channels: int = 64, decoder_stages: int = 3):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(backbone.num_features, num_out)
        self.decoder = LightDecoder(backbone.num_features, decoder_channels, decoder_stages,
                                    getattr(backbone, "spatial_dims", 2))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        image = batch["image"]
        feature_map = self.backbone.forward_features(image)
        embedding = self.backbone.pool(feature_map)
        return {
            "logits": self.head(self.dropout(embedding)),
            "embedding": embedding,
            "feature_map": feature_map,
            "seg_logits": self.decoder(feature_map, tuple(image.shape[2:])),
        }


def _target(outputs: dict, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(seg logits, float {0,1} mask), both (B,1,*spatial) at the mask's size."""
    mask = (batch["mask"] > 0).float()
    seg = outputs["seg_logits"].float()
    if seg.shape[2:] != mask.shape[2:]:
        seg = F.interpolate(seg, size=mask.shape[2:], mode="bilinear" if mask.ndim == 4 else "trilinear",
                            align_corners=False)
    return seg, mask


def soft_dice_loss(seg_logits: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged over images whose mask is not empty (0 if none is);
    both (B, 1, *spatial)."""
    dice = soft_dice(torch.sigmoid(seg_logits), mask, smooth)[:, 0]
    # masked mean, not `if has_lesion.any()`: no host sync per step; 0 (graph kept) when no
    # image has a lesion, and BCE alone supervises that batch
    has_lesion = (mask.flatten(1).sum(1) > 0).float()
    return ((1 - dice) * has_lesion).sum() / has_lesion.sum().clamp_min(1.0)


def hard_dice(seg_logits: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-image Dice of the thresholded prediction (B,); empty truth: 1 if prediction empty else 0."""
    pred = (torch.sigmoid(seg_logits) > threshold).long()
    return per_image_scores(pred, (mask > 0).long(), num_classes=2, hd95=False)["dice"]


@register_strategy("multitask_seg")
class MultiTaskSeg(Strategy):
    name = "multitask_seg"
    family = "A"
    knowledge = "expert masks (training)"
    requires = frozenset({"mask"})
    #: detection: the decoder is a dense head of the detector's pyramid (Retina U-Net)
    tasks = CLASSIFICATION_TASKS | DETECTION_TASKS
    citation = ("multi-task breast-ultrasound classification + segmentation (SURVEY.md: BUSBench MT rows; "
                "e.g. Vakanski et al., Ultrasound Med. Biol. 46(10), 2020); Caruana, Multitask "
                "learning, Machine Learning 28:41-75 (1997); detection: Jaeger et al., Retina U-Net, "
                "ML4H @ NeurIPS 2019, PMLR 116:171-183 (2020)")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: weight of the segmentation term (soft Dice on lesion images + BCE on all images)
        seg_weight: NonNegative = 1.0
        #: width after the decoder's 1x1 reduction of the last feature map (halved per stage, min 16)
        decoder_channels: Count = 64
        #: upsampling stages (x2 bilinear + 3x3 conv-BN-ReLU each, capped at the input size)
        decoder_stages: NonNegativeInt = 3
        #: smoothing added to the soft Dice numerator and denominator
        dice_smooth: NonNegative = 1.0

    def __init__(self, **options: Any):
        super().__init__(**options)
        #: which feature map the decoder reads (metadata.json), set by build_net
        self.decoder_input = "the backbone's last feature map"

    def build_net(self, ctx: BuildContext) -> nn.Module:
        o = self.options
        if ctx.spec.task in DETECTION_TASKS:  # Retina U-Net: the plain detector + a seg head on its pyramid
            net = task_net(ctx.make_backbone(), ctx.spec, o.dropout, ctx)
            net.dense_heads["seg_logits"] = LightDecoder(net.settings.fpn_channels, o.decoder_channels,
                                                         o.decoder_stages, spatial_dims=2)
            self.decoder_input = f"the detector's finest FPN level (stride {net.strides[0]}; Retina U-Net)"
            return net
        return MultiTaskSegNet(ctx.make_backbone(), num_outputs(ctx.spec.task, ctx.spec.num_classes), o.dropout,
                               decoder_channels=o.decoder_channels, decoder_stages=o.decoder_stages)

    def seg_losses(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(soft Dice loss over lesion images, BCE over all pixels of all images)."""
        seg, mask = _target(outputs, batch)
        dice = soft_dice_loss(seg, mask, self.options.dice_smooth)
        bce = F.binary_cross_entropy_with_logits(seg, mask)
        return dice, bce

    def loss_terms(self, per_sample_loss: torch.Tensor, outputs: dict, batch: dict,
                   step: StepContext) -> dict[str, torch.Tensor]:
        dice, bce = self.seg_losses(outputs, batch)
        return {"task": per_sample_loss.mean(), "seg": self.options.seg_weight * (dice + bce)}

    def extra_metrics(self, outputs: dict, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        seg, mask = _target(outputs, batch)
        return {"seg_dice": hard_dice(seg.detach(), mask).mean()}

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "seg_loss": "seg_weight * (soft Dice on images with a lesion + BCE on all images)",
            "decoder_input": self.decoder_input,
            "seg_dice": "threshold 0.5, Dice per image then mean; empty truth: 1 if prediction empty else 0",
        }
