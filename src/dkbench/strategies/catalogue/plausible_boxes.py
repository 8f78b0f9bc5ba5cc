"""`plausible_boxes`: remove detections that the training lesions say cannot be lesions (SURVEY.md
family G, post-processing with anatomical priors, here for boxes).

Radiologists discard candidate findings that are too small or too large, implausibly shaped, in
places where such lesions do not occur, or too many for one image. Detection pipelines encode
this knowledge as rule-based false-positive reduction after the network: e.g. Setio A.A.A. et al.,
"Validation, comparison, and combination of algorithms for automatic detection of pulmonary
nodules in computed tomography images: the LUNA16 challenge", Medical Image Analysis 42:1-13,
2017 (candidate size limits before false-positive reduction), and nnDetection's per-dataset
minimum-size and maximum-count box selection (Baumgartner M. et al., "nnDetection: A
self-configuring method for medical object detection", MICCAI 2021). Survey §5.5 (post-
processing with anatomical priors).

The rules come from the TRAIN split's boxes only (computed in `build_net`, kept as buffers) and
apply to each image's kept detections at test time, in this order:

- ``size_margin``: a box's size sqrt(w·h) must lie in [smallest train size / margin, largest train
  size · margin];
- ``ratio_margin``: its aspect ratio h/w must lie in [smallest train ratio / margin, largest · margin];
- ``position``: its centre must lie in a pixel that some train box covered (the train box atlas of
  `location_prior`, `dkbench.data.detection.box_masks`);
- ``max_boxes``: at most the largest number of lesions of any train image (``max_boxes: 0``) or
  the given number, the highest-scoring first.

A rule whose margin is 0 (or ``position: false``) is off. The defaults (margins 1.25, every rule
on) were set before any run of this strategy and are not tuned (a test-set look would make them
test-tuned; a validation search is possible through the suite's tuned protocol).

The strategy is `post_hoc`: the network is the baseline run's (same weights, model selected on the
raw validation detections); only the test detections change. `extra_metrics` reports the share
of test detections removed (``boxes_removed``) and the detections kept per image
(``boxes_per_image``); the raw scores are the baseline's own row of the leaderboard.

Simplified: no per-rule decision on validation data (nnDetection chooses its settings on
validation folds); the rules are options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dkbench.data.detection import all_boxes, box_counts, box_masks, box_sizes_and_ratios
from dkbench.strategies.base import DETECTION_TASKS, BuildContext, StepContext, Strategy
from dkbench.strategies.options import NonNegative, NonNegativeInt, StrategyOptions
from dkbench.strategies.registry import register_strategy


@register_strategy("plausible_boxes")
class PlausibleBoxes(Strategy):
    name = "plausible_boxes"
    family = "G"
    knowledge = "sizes, shapes, places and counts of the training lesions (test outputs)"
    requires = frozenset()  # the detection label holds the boxes
    tasks = DETECTION_TASKS
    post_hoc = True  # evaluates the baseline run's detector; only the test detections change
    citation = ("Setio A.A.A. et al., Validation, comparison, and combination of algorithms for automatic detection "
                "of pulmonary nodules in CT images: the LUNA16 challenge, Medical Image Analysis 42:1-13 (2017); "
                "Baumgartner M. et al., nnDetection: a self-configuring method for medical object detection, "
                "MICCAI 2021")

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        #: sizes sqrt(w*h) outside [train min / margin, train max * margin] are removed (0: off)
        size_margin: NonNegative = 1.25
        #: aspect ratios h/w outside [train min / margin, train max * margin] are removed (0: off)
        ratio_margin: NonNegative = 1.25
        #: centres in pixels no train box ever covered are removed
        position: bool = True
        #: most boxes per image, best scores first; 0: the largest lesion count of a train image
        max_boxes: NonNegativeInt = 0

    def build_net(self, ctx: BuildContext) -> nn.Module:
        train = ctx.arrays.splits["train"]
        boxes = all_boxes(train.label)
        if len(boxes) == 0:
            raise ValueError("plausible_boxes: the train split has no box to learn plausible boxes from")
        sizes, ratios = box_sizes_and_ratios(boxes)
        #: (min, max) of the train boxes' sizes and aspect ratios
        self.register_buffer("size_range", torch.tensor([sizes.min(), sizes.max()], dtype=torch.float32))
        self.register_buffer("ratio_range", torch.tensor([ratios.min(), ratios.max()], dtype=torch.float32))
        #: (H, W) bool: pixels some train box covered
        atlas = box_masks(train.label, tuple(np.asarray(train.image).shape[2:])).any(0)[0]
        self.register_buffer("atlas", torch.from_numpy(atlas))
        self.register_buffer("train_max_boxes", torch.tensor(int(box_counts(train.label).max())))
        return super().build_net(ctx)

    def keep_mask(self, boxes: torch.Tensor) -> torch.Tensor:
        """(n,) bool: which of an image's (n, 4) boxes pass the size, shape and position rules."""
        o = self.options
        keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
        if len(boxes) == 0:
            return keep
        sizes, ratios = box_sizes_and_ratios(boxes.float())
        for margin, values, bounds in ((o.size_margin, sizes, self.size_range),
                                       (o.ratio_margin, ratios, self.ratio_range)):
            if margin > 0:
                bounds = bounds.to(boxes.device)
                keep &= (values >= bounds[0] / margin) & (values <= bounds[1] * margin)
        if o.position:
            h, w = self.atlas.shape
            col = ((boxes[:, 0] + boxes[:, 2]) / 2).floor().long().clamp(0, w - 1)
            row = ((boxes[:, 1] + boxes[:, 3]) / 2).floor().long().clamp(0, h - 1)
            keep &= self.atlas.to(boxes.device)[row, col]
        return keep

    def box_limit(self) -> int:
        return int(self.options.max_boxes or self.train_max_boxes)

    def filter(self, found: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One image's detections (boxes, scores, labels) after the rules."""
        keep = self.keep_mask(found["boxes"])
        kept = {k: v[keep] for k, v in found.items()}
        order = torch.argsort(kept["scores"], descending=True)[: self.box_limit()]
        return {k: v[order] for k, v in kept.items()}

    def postprocess(self, outputs: dict, batch: dict, step: StepContext) -> dict:
        raw = outputs.get("detections")
        if raw is None:
            return outputs
        return {**outputs, "detections": [self.filter(found) for found in raw], "detections_raw": raw}

    def extra_metrics(self, outputs: dict, batch: dict, step: StepContext) -> dict[str, torch.Tensor]:
        if step.training or "detections_raw" not in outputs:
            return {}
        before = sum(len(d["scores"]) for d in outputs["detections_raw"])
        after = sum(len(d["scores"]) for d in outputs["detections"])
        n = max(len(outputs["detections"]), 1)
        return {"boxes_removed": torch.tensor((before - after) / max(before, 1)),
                "boxes_per_image": torch.tensor(after / n)}

    def metadata(self) -> dict[str, Any]:
        meta = {**super().metadata(), "training": "the baseline run's (post-hoc: its weights, raw-output selection)"}
        if hasattr(self, "size_range"):
            meta["train_boxes"] = {"size_range": [round(float(v), 3) for v in self.size_range],
                                   "ratio_range": [round(float(v), 3) for v in self.ratio_range],
                                   "atlas_coverage": round(float(self.atlas.float().mean()), 4),
                                   "max_boxes": self.box_limit()}
        return meta
