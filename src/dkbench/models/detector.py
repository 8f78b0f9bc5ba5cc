"""The detection network: MONAI's RetinaNet on a dkbench backbone's feature pyramid.

RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017) as MONAI implements it
for medical images after nnDetection (Baumgartner et al., MICCAI 2021): `monai.apps.detection`'s
`RetinaNet` heads (4 conv + GroupNorm layers per head) and `RetinaNetDetector`'s training parts —
the ATSS matcher (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection
via Adaptive Training Sample Selection", CVPR 2020), the hard-negative sampler, BCE on sampled
anchors + smooth-L1 box regression, score threshold / NMS / top-k box selection — configured as
MONAI's LUNA16 detection tutorial does (ATSS with 4 candidates, centre not required inside the
box; 64 sampled anchors per image, 30 % positive at most, pool 20, ≥ 16 negatives; NMS 0.22). The
feature extractor is `dkbench.backbones.pyramid.FeaturePyramidExtractor` (MONAI's FPN block over
the backbone's stages), because MONAI's own extractors import torchvision.

Box order: dkbench boxes are (x_lo, y_lo, x_hi, y_hi) with x the column (last tensor axis);
MONAI's "StandardMode" boxes put the FIRST spatial axis (rows) first, and its anchors and
clipping follow that. Boxes are permuted at this module's boundary (`to_monai`, its own inverse),
so datasets, metrics and strategies only ever see dkbench's order.

Anchors sized for the data (`plan_anchors`), the rule: the levels' anchors are the pyramid's
scales (stride / finest stride: 1, 2, 4) × `sizes_per_octave` sizes 2^(j/n) × aspect ratios
h/w = the `ratio_quantiles` (10 %, 50 %, 90 %) of the TRAIN boxes (clipped to [1/4, 4]); the
base size is chosen so that the geometric centre of all anchor sizes equals the geometric mean
of the train boxes' sqrt(w·h). The plan records how many train boxes have a same-centre anchor
with IoU ≥ 0.5 (`coverage`); ATSS then picks each box's positives among the nearest anchors of
every level with an adaptive IoU threshold, so boxes between anchor sizes still get positives.

Simplified relative to MONAI's `RetinaNetDetector.forward`: no sliding-window inference (images
are small and whole) and the loss is per image — the mean BCE over that image's sampled anchors
plus the mean smooth-L1 over its positive anchors (0 for a negative image) — so strategies can
weight images; MONAI pools the sampled anchors of the whole batch instead (the same when every
image contributes equally many samples, which the sampler's fixed 64 per image nearly ensures).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dkbench.backbones.base import Backbone
from dkbench.data.detection import all_boxes, box_sizes_and_ratios, unpad_boxes
from dkbench.errors import InvalidDataError, RunConfigError

#: dkbench (x_lo, y_lo, x_hi, y_hi) ↔ MONAI (row_lo, col_lo, row_hi, col_hi); the permutation is its own inverse
TO_MONAI = (1, 0, 3, 2)


def to_monai(boxes: torch.Tensor) -> torch.Tensor:
    """Swap the axes of (n, 4) boxes between dkbench's and MONAI's order (either way)."""
    return boxes[..., list(TO_MONAI)]


@dataclass(frozen=True)
class DetectorSettings:
    """`model.detector` of configs/model/detection.yaml (defaults: MONAI's LUNA16 tutorial where it
    has one, sized down for CPU-trainable 64-128 px images)."""

    #: channels of every FPN level and of the heads' convolutions (GroupNorm(8): a multiple of 8)
    fpn_channels: int = 64
    #: pyramid levels and the coarsest stride allowed (`dkbench.backbones.pyramid`)
    levels: int = 3
    max_stride: int = 16
    #: anchor sizes per octave and the train-box aspect-ratio quantiles that set the anchor shapes
    sizes_per_octave: int = 3
    ratio_quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    #: ATSS: candidates per level, and whether a positive anchor's centre must lie in the box
    atss_candidates: int = 4
    center_in_gt: bool = False
    #: hard-negative sampler: anchors per image, largest positive share, pool factor, fewest negatives
    sampler_batch_size: int = 64
    sampler_positive_fraction: float = 0.3
    sampler_pool_size: float = 20.0
    sampler_min_neg: int = 16
    #: box selection at inference: score threshold, NMS IoU, top-k per level, boxes per image
    score_thresh: float = 0.05
    nms_thresh: float = 0.22
    topk_candidates_per_level: int = 1000
    detections_per_img: int = 100

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> DetectorSettings:
        raw = dict(cfg or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise RunConfigError(f"model.detector: unknown setting(s) {unknown}; valid: {sorted(fields)}")
        values = {}
        for name, value in raw.items():
            default = getattr(cls, name)
            try:
                if isinstance(default, tuple):
                    values[name] = tuple(float(v) for v in value)
                elif isinstance(default, bool):
                    if not isinstance(value, bool):
                        raise TypeError
                    values[name] = value
                else:
                    values[name] = type(default)(value)
            except (TypeError, ValueError):
                raise RunConfigError(f"model.detector.{name}={value!r}: expected {type(default).__name__} "
                                     f"like the default {default!r}") from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.fpn_channels < 8 or self.fpn_channels % 8:
            raise RunConfigError(f"model.detector.fpn_channels={self.fpn_channels}: the heads' GroupNorm(8) needs "
                                 f"a positive multiple of 8, e.g. 64")
        for name in ("levels", "max_stride", "sizes_per_octave", "atss_candidates", "sampler_batch_size",
                     "detections_per_img", "topk_candidates_per_level"):
            if getattr(self, name) < 1:
                raise RunConfigError(f"model.detector.{name}={getattr(self, name)}: must be >= 1")
        if not self.ratio_quantiles or not all(0 <= q <= 1 for q in self.ratio_quantiles):
            raise RunConfigError(f"model.detector.ratio_quantiles={list(self.ratio_quantiles)}: quantiles in [0, 1]")
        for name in ("sampler_positive_fraction", "score_thresh", "nms_thresh"):
            if not 0 <= getattr(self, name) <= 1:
                raise RunConfigError(f"model.detector.{name}={getattr(self, name)}: must be in [0, 1]")


@dataclass(frozen=True)
class AnchorPlan:
    """Anchor shapes for `AnchorGeneratorWithAnchorShape`, and how well they fit the train boxes."""

    feature_map_scales: tuple[float, ...]
    #: (height, width) per anchor at the finest level, in MONAI's axis order (rows first)
    base_shapes: tuple[tuple[float, float], ...]
    train_boxes: int
    geometric_mean_size: float
    #: share of train boxes with a same-centre anchor of IoU >= 0.5 (any level)
    coverage: float

    def as_dict(self) -> dict[str, Any]:
        return {"feature_map_scales": list(self.feature_map_scales),
                "base_shapes_hw": [[round(h, 2), round(w, 2)] for h, w in self.base_shapes],
                "train_boxes": self.train_boxes, "geometric_mean_size": round(self.geometric_mean_size, 2),
                "coverage_iou50": round(self.coverage, 4),
                "rule": "scales = stride / finest stride; sizes 2^(j/n); ratios h/w = train quantiles; base size "
                        "centres the anchors' log-sizes on the train boxes' geometric mean sqrt(w*h)"}


def plan_anchors(train_label: np.ndarray, strides: tuple[int, ...], sizes_per_octave: int = 3,
                 ratio_quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> AnchorPlan:
    """The anchor rule of the module docstring, from the train split's (N, K, 5) box rows."""
    boxes = all_boxes(train_label)
    if len(boxes) == 0:
        raise InvalidDataError("the train split has no box: anchors cannot be sized and nothing can be learned; "
                               "check the dataset's split or reader")
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sizes, ratios = box_sizes_and_ratios(boxes)
    g = float(np.exp(np.log(sizes).mean()))
    scales = tuple(float(s) / strides[0] for s in strides)
    n = int(sizes_per_octave)
    # geometric centre of the anchor sizes: base * sqrt(first * last scale) * 2^((n-1)/(2n))
    base = g / (math.sqrt(scales[0] * scales[-1]) * 2 ** ((n - 1) / (2 * n)))
    chosen = np.clip(np.quantile(ratios, ratio_quantiles), 0.25, 4.0)
    shapes = tuple((base * 2 ** (j / n) * math.sqrt(r), base * 2 ** (j / n) / math.sqrt(r))
                   for j in range(n) for r in dict.fromkeys(np.round(chosen, 4).tolist()))
    # coverage: best IoU of a same-centre anchor (any level) per train box
    ah = np.array([s * hh for s in scales for hh, _ in shapes])
    aw = np.array([s * ww for s in scales for _, ww in shapes])
    inter = np.minimum(h[:, None], ah[None]) * np.minimum(w[:, None], aw[None])
    iou = inter / ((h * w)[:, None] + (ah * aw)[None] - inter)
    return AnchorPlan(feature_map_scales=scales, base_shapes=shapes, train_boxes=int(len(boxes)),
                      geometric_mean_size=g, coverage=float((iou.max(1) >= 0.5).mean()))


class DetectorNet(nn.Module):
    """Backbone pyramid + RetinaNet heads + MONAI's detector parts.

    `forward(batch)` returns the head outputs (per-anchor class logits and box regression, MONAI
    layout), the anchors, the deepest encoder map (`feature_map`) and its pooled `embedding`, and —
    in eval mode — `detections`: one dict per image with `boxes` (n, 4) in dkbench order,
    `scores` (n,) and `labels` (n,) int64, after score threshold, NMS and top-k.

    `dense_heads` (empty by default: the plain detector) holds auxiliary dense heads a strategy
    attaches, name → module called with (finest FPN level, input size); `forward` adds each one's
    output under its name (e.g. a segmentation head on the pyramid as in Retina U-Net, Jaeger et al.,
    ML4H 2019: strategies/catalogue/multitask_seg.py). `level_context` (None by default) adds a
    per-image vector from the batch to every FPN level before the heads (a second view's features:
    strategies/catalogue/multiview.py).
    """

    def __init__(self, backbone: Backbone, num_classes: int, plan: AnchorPlan,
                 settings: DetectorSettings = DetectorSettings()):
        super().__init__()
        from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
        from monai.apps.detection.networks.retinanet_network import RetinaNet
        from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

        from dkbench.backbones.pyramid import FeaturePyramidExtractor

        s = settings
        pyramid = FeaturePyramidExtractor(backbone, out_channels=s.fpn_channels, levels=s.levels,
                                          max_stride=s.max_stride)
        expected = tuple(pyramid.strides[0] * k for k in plan.feature_map_scales)
        if tuple(float(x) for x in pyramid.strides) != expected:
            raise ValueError(f"anchor plan scales {plan.feature_map_scales} do not fit the pyramid strides "
                             f"{pyramid.strides}: plan the anchors with these strides")
        generator = AnchorGeneratorWithAnchorShape(feature_map_scales=plan.feature_map_scales,
                                                   base_anchor_shapes=plan.base_shapes)
        network = RetinaNet(spatial_dims=2, num_classes=int(num_classes), num_anchors=len(plan.base_shapes),
                            feature_extractor=pyramid, size_divisible=max(pyramid.strides))
        self.detector = RetinaNetDetector(network, generator)
        self.detector.set_atss_matcher(num_candidates=s.atss_candidates, center_in_gt=s.center_in_gt)
        self.detector.set_hard_negative_sampler(batch_size_per_image=s.sampler_batch_size,
                                                positive_fraction=s.sampler_positive_fraction,
                                                pool_size=s.sampler_pool_size, min_neg=s.sampler_min_neg)
        self.detector.set_box_selector_parameters(score_thresh=s.score_thresh, nms_thresh=s.nms_thresh,
                                                  topk_candidates_per_level=s.topk_candidates_per_level,
                                                  detections_per_img=s.detections_per_img)
        self.settings, self.plan = settings, plan
        self.num_classes = int(num_classes)
        self.strides = tuple(pyramid.strides)
        #: auxiliary heads on the finest FPN level (name → module(level, input size)); an empty
        #: ModuleDict adds no parameters, so a plain detector's state_dict is unchanged
        self.dense_heads = nn.ModuleDict()
        #: optional global context added to every FPN level before the heads: module(batch, backbone)
        #: → (B, fpn_channels), e.g. a second view's features (strategies/catalogue/multiview.py); None:
        #: the plain detector
        self.level_context: nn.Module | None = None

    @property
    def pyramid(self) -> nn.Module:
        return self.detector.network.feature_extractor

    @property
    def backbone(self) -> Backbone:
        return self.pyramid.backbone

    def forward(self, batch: dict) -> dict[str, Any]:
        images = batch["image"]
        size = tuple(images.shape[2:])
        if any(d % max(self.strides) for d in size):
            raise ValueError(f"detector input {size} must be divisible by the coarsest stride {max(self.strides)}; "
                             f"resize the dataset (dataset.resize=...) or lower model.detector.max_stride")
        net, det = self.detector.network, self.detector
        stages = self.pyramid.encoder(images)
        levels = list(self.pyramid.fpn(OrderedDict((f"p{i}", x) for i, x in enumerate(stages))).values())
        if self.level_context is not None:  # one (B, C) vector per image, broadcast over every level's grid
            context = self.level_context(batch, self.backbone)[:, :, None, None]
            levels = [level + context.to(level.dtype) for level in levels]
        head = {net.cls_key: net.classification_head(levels), net.box_reg_key: net.regression_head(levels)}
        det.generate_anchors(images, head)
        num_locs = [x.shape[2:].numel() for x in head[net.cls_key]]
        out: dict[str, Any] = {
            "cls_logits": det._reshape_maps(head[net.cls_key]),  # (B, sum HWA, C)
            "box_regression": det._reshape_maps(head[net.box_reg_key]),  # (B, sum HWA, 4), MONAI order
            "anchors": det.anchors, "num_anchor_locs": num_locs,
            "feature_map": stages[-1], "embedding": self.backbone.pool(stages[-1]),
        }
        for name, dense_head in self.dense_heads.items():
            if name in out:
                raise ValueError(f"dense head '{name}' would overwrite the detector's output '{name}'; rename it")
            out[name] = dense_head(levels[0], size)
        if not self.training:
            out["detections"] = self.detect(out, size)
        return out

    def detect(self, outputs: dict[str, Any], size: tuple[int, ...]) -> list[dict[str, torch.Tensor]]:
        """Boxes, scores, labels per image from the head outputs (MONAI's box selection)."""
        det = self.detector
        head = {det.cls_key: outputs["cls_logits"], det.box_reg_key: outputs["box_regression"]}
        found = det.postprocess_detections(head, outputs["anchors"], [list(size)] * outputs["cls_logits"].shape[0],
                                           outputs["num_anchor_locs"])
        return [{"boxes": to_monai(d[det.target_box_key]).float(), "scores": d[det.pred_score_key].float(),
                 "labels": d[det.target_label_key].long()} for d in found]

    def match_anchors(self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                      num_anchor_locs: list[int]) -> list[torch.Tensor]:
        """Per image, the matched box index of every anchor (-1: background), by MONAI's ATSS
        matcher. (`RetinaNetDetector.compute_anchor_matched_idxs` does the same, but first asks
        `isinstance(matcher, torchvision Matcher)`, which fails without torchvision.)"""
        det = self.detector
        matched = []
        for anchors_i, target in zip(anchors, targets):
            boxes = target[det.target_box_key]
            if boxes.numel() == 0:  # a negative image: every anchor is background
                matched.append(torch.full((anchors_i.shape[0],), -1, dtype=torch.int64, device=anchors_i.device))
                continue
            _, idx = det.proposal_matcher(boxes.to(anchors_i.device), anchors_i, num_anchor_locs,
                                          det.num_anchors_per_loc)
            matched.append(idx)
        return matched

    def per_image_loss(self, outputs: dict[str, Any], label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) classification and (B,) box-regression losses against (B, K, 5) box rows."""
        det = self.detector
        boxes, classes = unpad_boxes(label)
        targets = [{det.target_box_key: to_monai(b), det.target_label_key: c} for b, c in zip(boxes, classes)]
        anchors = outputs["anchors"]
        matched = self.match_anchors(anchors, targets, outputs["num_anchor_locs"])
        cls_logits, box_regression = outputs["cls_logits"], outputs["box_regression"]
        cls_loss, box_loss = [], []
        for i in range(len(targets)):
            cls_loss.append(det.compute_cls_loss(cls_logits[i:i + 1], targets[i:i + 1], matched[i:i + 1]))
            # MONAI returns a host scalar 0 for an image without positives (a negative image)
            box = det.compute_box_loss(box_regression[i:i + 1], targets[i:i + 1], anchors[i:i + 1], matched[i:i + 1])
            box_loss.append(box.to(device=cls_logits.device, dtype=cls_logits.dtype))
        return torch.stack(cls_loss), torch.stack(box_loss)


def detection_loss(net: nn.Module, outputs: dict[str, Any], label: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The detection task loss, (B,): per image, the detector's classification + box-regression loss
    (`DetectorNet.per_image_loss`), and the two parts (B,) by name. The one definition that
    `DetectionModule` trains with and a curriculum teacher ranks the train images by. The hard-
    negative sampler draws from the torch random stream, so the value is random unless seeded."""
    cls_loss, box_loss = net.per_image_loss(outputs, label)
    return cls_loss + box_loss, {"loss_cls": cls_loss, "loss_box": box_loss}


def detector_net(backbone: Backbone, arrays: Any, config: Mapping[str, Any] | None = None) -> DetectorNet:
    """The run's detector: settings from `config["model"]["detector"]`, anchors from the train boxes."""
    spec = arrays.spec
    if spec.spatial_dims != 2:
        raise RunConfigError(f"dataset '{spec.name}': detection is 2-D here (spatial_dims 2); this dataset has "
                             f"spatial_dims {spec.spatial_dims}")
    model = dict((config or {}).get("model") or {})
    settings = DetectorSettings.from_config(model.get("detector"))
    from dkbench.backbones.pyramid import EncoderPyramid

    strides = EncoderPyramid(backbone, settings.levels, settings.max_stride).strides
    plan = plan_anchors(arrays.splits["train"].label, strides, settings.sizes_per_octave, settings.ratio_quantiles)
    return DetectorNet(backbone, spec.num_classes, plan, settings)
