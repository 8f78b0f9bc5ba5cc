"""plausible_boxes (SURVEY.md family G, post-processing for a detector): the rules are learned from
the TRAIN boxes only, and a test detection is removed exactly when its size, aspect ratio, position
or rank breaks them; the strategy is post-hoc (the baseline's network, test outputs only)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dkbench.backbones import create_backbone
from dkbench.data.detection import pad_boxes
from dkbench.data.spec import DatasetSpec
from dkbench.runner.compose import compose_config
from dkbench.strategies import STRATEGIES, BuildContext, StepContext, create_strategy

SPEC = DatasetSpec(name="toy_det", task="detection", num_classes=1, in_chans=1, spatial_dims=2, size=32)
#: train boxes: sizes 8 (8x8) and 4 (4x4, 2 per image) and one 8x4 (ratio 0.5); all in the left half
TRAIN = pad_boxes([np.array([[0, 0, 8, 8]]), np.zeros((0, 4)),
                   np.array([[2, 10, 6, 14], [8, 20, 12, 24]]), np.array([[4, 24, 12, 28]])])


def built(label=TRAIN, **options):
    strategy = create_strategy("plausible_boxes", **options)
    train = SimpleNamespace(label=label, image=np.zeros((len(label), 1, 32, 32), np.uint8))
    arrays = SimpleNamespace(spec=SPEC, splits={"train": train})

    def make(**overrides):
        return create_backbone("tinycnn", **{"in_chans": 1, "spatial_dims": 2, "img_size": 32, **overrides})

    config = {"model": dict(compose_config(["dataset=probe_det"]).model)}
    strategy.build_net(BuildContext(arrays=arrays, make_backbone=make, config=config))
    return strategy


def detections(rows):
    boxes = torch.tensor([r[:4] for r in rows], dtype=torch.float32).reshape(-1, 4)
    return {"boxes": boxes, "scores": torch.tensor([r[4] for r in rows], dtype=torch.float32),
            "labels": torch.zeros(len(rows), dtype=torch.int64)}


def test_registered_post_hoc_and_detection_only():
    assert "plausible_boxes" in STRATEGIES.names()
    strategy = create_strategy("plausible_boxes")
    assert strategy.post_hoc and strategy.family == "G"
    seg = DatasetSpec(name="toy_seg", task="segmentation", num_classes=2, in_chans=1, spatial_dims=2, size=32)
    assert "detection" in strategy.incompatibility(seg)
    assert strategy.incompatibility(SPEC) is None
    with pytest.raises(ValueError, match="size_margin"):
        create_strategy("plausible_boxes", size_margin=-1)


def test_the_rules_come_from_the_train_boxes():
    s = built()
    assert s.size_range.tolist() == pytest.approx([4.0, 8.0])
    assert s.ratio_range.tolist() == pytest.approx([0.5, 1.0])  # h/w of the 8-wide, 4-high box
    assert s.box_limit() == 2  # the most lesions of a train image
    assert bool(s.atlas[2, 2]) and bool(s.atlas[26, 8]) and not bool(s.atlas[2, 20]) and not bool(s.atlas[30, 30])
    meta = s.metadata()["train_boxes"]
    assert json.dumps(meta) and meta["max_boxes"] == 2


def test_each_rule_removes_exactly_the_implausible_detections():
    s = built()
    found = detections([
        [1, 1, 7, 7, 0.9],      # size 6, ratio 1, centre (4, 4) covered: kept
        [2, 2, 4, 4, 0.8],      # size 2 < 4 / 1.25: removed (too small)
        [0, 0, 14, 14, 0.7],    # size 14 > 8 * 1.25: removed (too large)
        [0, 0, 10, 2.5, 0.6],   # ratio 0.25 < 0.5 / 1.25 (size 5 fits): removed (implausible shape)
        [18, 0, 24, 6, 0.95],   # centre (21, 3): no train box there: removed (implausible place)
        [8, 20, 12, 24, 0.5],   # a train-like box: kept
        [2, 10, 6, 14, 0.4],    # also plausible, but the third: removed by the count (2 per image)
    ])
    kept = s.filter(found)
    assert kept["boxes"].tolist() == [[1, 1, 7, 7], [8, 20, 12, 24]]
    assert kept["scores"].tolist() == pytest.approx([0.9, 0.5])  # best first
    # every rule off but the count: the two best, wherever and however large
    loose = built(size_margin=0, ratio_margin=0, position=False)
    assert loose.filter(found)["scores"].tolist() == pytest.approx([0.95, 0.9])
    assert built(max_boxes=5, size_margin=0, ratio_margin=0, position=False).filter(found)["scores"].numel() == 5


def test_postprocess_changes_only_the_detections_and_reports_what_it_removed():
    s = built()
    raw = [detections([[1, 1, 7, 7, 0.9], [2, 2, 4, 4, 0.8]]), detections([])]
    outputs = {"detections": raw, "cls_logits": torch.zeros(2, 3, 1)}
    step = StepContext.for_stage("test", SPEC)
    cleaned = s.postprocess(outputs, {}, step)
    assert [len(d["scores"]) for d in cleaned["detections"]] == [1, 0]
    assert cleaned["cls_logits"] is outputs["cls_logits"] and cleaned["detections_raw"] is raw
    metrics = s.extra_metrics(cleaned, {}, step)
    assert metrics["boxes_removed"].item() == pytest.approx(0.5)
    assert metrics["boxes_per_image"].item() == pytest.approx(0.5)
    assert s.extra_metrics(cleaned, {}, StepContext.for_stage("train", SPEC)) == {}


def test_a_train_split_without_boxes_is_refused():
    with pytest.raises(ValueError, match="no box"):
        built(label=pad_boxes([np.zeros((0, 4))]))
