"""Detection: boxes from masks, the padded collate, augmentation, the feature pyramid per backbone,
the anchor rule, metric correctness on hand-made boxes, and bad input refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dkbench.data.detection import boxes_from_masks, box_counts, check_box_labels, pad_boxes, unpad_boxes
from dkbench.data.spec import DatasetArrays, DatasetSpec, SplitArrays
from dkbench.errors import InvalidDataError, RunConfigError, UserError
from dkbench.geometry.boxes import box_from_mask, flip_rotate_boxes
from dkbench.geometry.components import component_boxes
from dkbench.metrics.detection import DETECTION_METRICS, detection_metrics, froc_key, per_image_rows

DET_SPEC = DatasetSpec(name="toy_det", task="detection", num_classes=1, in_chans=1, spatial_dims=2, size=32,
                       provides=frozenset({"mask", "bbox"}), class_names=("lesion",))


def _blobs(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """(n, 1, size, size) masks with 0..3 random rectangles each (some touching, some apart)."""
    masks = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        for _ in range(rng.integers(0, 4)):
            y, x = rng.integers(0, size - 4, 2)
            h, w = rng.integers(1, 9, 2)
            masks[i, 0, y:y + h, x:x + w] = 1
    return masks


# --- boxes from masks ------------------------------------------------------------------
def test_component_boxes_equal_scipy_objects_in_raster_order():
    from scipy import ndimage

    masks = _blobs(np.random.default_rng(0), 24)
    boxes, image = component_boxes(torch.from_numpy(masks != 0))
    got = [boxes[image == i].numpy() for i in range(len(masks))]
    for i, mask in enumerate(masks[:, 0]):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        want = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(labels)]
        assert n == len(got[i])
        np.testing.assert_array_equal(got[i], np.asarray(want, np.float32).reshape(-1, 4))


def test_boxes_from_masks_keep_negatives_and_split_lesions():
    masks = np.zeros((3, 1, 16, 16), np.uint8)
    masks[1, 0, 2:5, 3:9] = 1  # one lesion
    masks[2, 0, 1:3, 1:3] = 1  # two lesions, diagonal gap of one pixel: 8-connectivity keeps them apart
    masks[2, 0, 10:14, 12:15] = 1
    label = boxes_from_masks(masks)
    assert label.shape == (3, 2, 5) and label.dtype == np.float32
    np.testing.assert_array_equal(box_counts(label), [0, 1, 2])
    assert np.isnan(label[0]).all()  # a negative: padding only, never a NaN box with a class
    np.testing.assert_array_equal(label[1, 0], [3, 2, 9, 5, 0])
    np.testing.assert_array_equal(label[2, :, :4], [[1, 1, 3, 3], [12, 10, 15, 14]])
    # a one-component mask's box is the geometry module's box of that mask
    np.testing.assert_array_equal(label[1, 0, :4], box_from_mask(torch.from_numpy(masks[1:2]))[0].numpy())


def test_pad_and_unpad_keep_variable_lengths_through_a_batch():
    from dkbench.data.datamodule import InMemoryDataset

    boxes = [np.zeros((0, 4)), np.array([[1, 2, 5, 6]]), np.array([[0, 0, 4, 4], [8, 8, 16, 12], [3, 3, 9, 9]])]
    label = pad_boxes(boxes, [np.zeros(0), np.array([0]), np.array([0, 0, 0])])
    assert label.shape == (3, 3, 5)
    split = SplitArrays(image=np.zeros((3, 1, 16, 16), np.uint8), label=label, ids=np.array(["a", "b", "c"]))
    batch = InMemoryDataset(split, "detection", 0.5, 0.5).__getitems__([2, 0, 1])
    got_boxes, got_classes = unpad_boxes(batch["label"])
    assert [len(b) for b in got_boxes] == [3, 0, 1] and all(c.dtype == torch.long for c in got_classes)
    torch.testing.assert_close(got_boxes[0], torch.tensor(boxes[2], dtype=torch.float32))
    assert pad_boxes([np.zeros((0, 4))]).shape == (1, 1, 5)  # a split of negatives still has a box axis


@pytest.mark.parametrize("flip", ["hflip", "vflip", "rot90"])
def test_augmentation_moves_boxes_with_the_pixels(flip):
    from dkbench.data.transforms import AugmentConfig, augment_batch

    masks = _blobs(np.random.default_rng(1), 16)
    masks[0] = 0  # a negative stays one
    label = torch.from_numpy(boxes_from_masks(masks))
    batch = {"image": torch.from_numpy(masks).float(), "mask": torch.from_numpy(masks), "label": label}
    out = augment_batch(batch, AugmentConfig(**{flip: True}), "detection", torch.Generator().manual_seed(0))
    moved = boxes_from_masks(out["mask"].numpy())
    # compare as sets of boxes per image (a flip reverses the raster order of the components)
    for got, want in zip(out["label"].numpy(), moved):
        key = lambda rows: sorted(map(tuple, rows[np.isfinite(rows).all(1)].tolist()))  # noqa: E731
        assert key(got) == key(want)
    assert not torch.equal(out["label"].nan_to_num(), label.nan_to_num())  # something did move


def test_flip_rotate_boxes_rot90_matches_torch_rot90_on_a_non_symmetric_box():
    mask = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    mask[0, 0, 1:3, 2:7] = True  # rows 1-2, cols 2-6
    rotated = mask.rot90(1, dims=(2, 3))
    box = box_from_mask(mask)[:, None]
    got = flip_rotate_boxes(box, (10, 10), rot90=torch.tensor([True]))
    torch.testing.assert_close(got[:, 0], box_from_mask(rotated))


def test_translation_is_refused_for_detection():
    from dkbench.data.datamodule import DKDataModule

    split = SplitArrays(image=np.zeros((2, 1, 32, 32), np.uint8), label=pad_boxes([np.array([[1, 1, 4, 4]])] * 2),
                        ids=np.array(["a", "b"]))
    arrays = DatasetArrays(spec=DET_SPEC, splits={"train": split, "val": split, "test": split})
    with pytest.raises(RunConfigError, match="translate=0"):
        DKDataModule(arrays, augment={"translate": 0.1})
    DKDataModule(arrays, augment={"hflip": True, "rot90": True})


# --- the feature pyramid over dkbench backbones ----------------------------------------
PYRAMIDS = {  # backbone → (strides, encoder channels) of the default 3 levels up to stride 16
    "tinycnn": ((2, 4, 8), (32, 64, 96)),
    "resnet18": ((4, 8, 16), (64, 128, 256)),
    "resnet18_28": ((2, 4, 8), (128, 256, 512)),
    "efficientnet_lite0": ((4, 8, 16), (24, 40, 112)),
    "densenet121": ((4, 8, 16), (256, 512, 1024)),
}


@pytest.mark.parametrize("name", sorted(PYRAMIDS))
def test_pyramid_extractor_shapes_per_backbone(name):
    from dkbench.backbones import create_backbone
    from dkbench.backbones.pyramid import FeaturePyramidExtractor

    backbone = create_backbone(name, in_chans=3, img_size=64)
    running_var = [m.running_var.clone() for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    fpn = FeaturePyramidExtractor(backbone, out_channels=32)
    strides, channels = PYRAMIDS[name]
    assert fpn.strides == strides and fpn.encoder.channels == channels
    # finding the strides ran the backbone in eval mode: its BatchNorm statistics are untouched
    after = [m.running_var for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(running_var, after)) and backbone.training
    out = list(fpn(torch.randn(2, 3, 64, 64)).values())
    assert [tuple(o.shape) for o in out] == [(2, 32, 64 // s, 64 // s) for s in strides]


def test_pyramid_stages_are_the_backbones_own_forward():
    from dkbench.backbones import create_backbone
    from dkbench.backbones.pyramid import EncoderPyramid

    backbone = create_backbone("resnet18_28", in_chans=1, img_size=32).eval()
    x = torch.randn(2, 1, 32, 32)
    stages = EncoderPyramid(backbone, levels=3, max_stride=8)(x)
    torch.testing.assert_close(stages[-1], backbone.forward_features(x))  # layer4 = forward_features


def test_backbones_without_a_pyramid_are_incompatible_with_a_reason():
    from dkbench.backbones.registry import task_incompatibility

    assert task_incompatibility("tinycnn", "detection") is None
    reason = task_incompatibility("unet", "detection")
    assert reason and "unet" in reason and "tinycnn" in reason and "\n" not in reason


def test_a_3d_dataset_is_refused_for_detection():
    from dkbench.backbones import create_backbone
    from dkbench.backbones.pyramid import EncoderPyramid
    from dkbench.errors import IncompatibleInputError

    with pytest.raises(IncompatibleInputError, match="2-D"):
        EncoderPyramid(create_backbone("tinycnn", in_chans=1, spatial_dims=3, img_size=16))


# --- anchors ---------------------------------------------------------------------------
def test_anchor_plan_centres_anchor_sizes_on_the_train_boxes():
    from dkbench.models.detector import plan_anchors

    rng = np.random.default_rng(0)
    side = np.exp(rng.uniform(np.log(6), np.log(40), 200))
    boxes = [np.array([[0, 0, s, s * a]]) for s, a in zip(side, rng.uniform(0.7, 1.4, 200))]
    plan = plan_anchors(pad_boxes(boxes), strides=(4, 8, 16), sizes_per_octave=3)
    assert plan.feature_map_scales == (1.0, 2.0, 4.0) and len(plan.base_shapes) == 9
    sizes = [s * np.sqrt(h * w) for s in plan.feature_map_scales for h, w in plan.base_shapes]
    # the geometric centre of all anchor sizes = the geometric mean of the boxes' sqrt(w h)
    assert np.exp(np.mean(np.log(sizes))) == pytest.approx(plan.geometric_mean_size, rel=1e-6)
    assert plan.coverage > 0.9
    with pytest.raises(InvalidDataError, match="no box"):
        plan_anchors(pad_boxes([np.zeros((0, 4))]), strides=(4, 8, 16))


def test_detector_loss_is_per_image_and_negatives_have_no_box_loss():
    from dkbench.backbones import create_backbone
    from dkbench.models.detector import DetectorNet, plan_anchors

    torch.manual_seed(0)
    label = torch.from_numpy(pad_boxes([np.array([[4, 6, 14, 12]]), np.zeros((0, 4)),
                                        np.array([[20, 20, 28, 30], [2, 2, 9, 9]])]))
    plan = plan_anchors(label.numpy(), strides=(2, 4, 8))
    net = DetectorNet(create_backbone("tinycnn", in_chans=1, img_size=32), 1, plan)
    out = net({"image": torch.randn(3, 1, 32, 32)})
    cls_loss, box_loss = net.per_image_loss(out, label)
    assert cls_loss.shape == box_loss.shape == (3,) and torch.isfinite(cls_loss).all()
    assert box_loss[1] == 0 and box_loss[0] > 0 and box_loss[2] > 0
    (cls_loss + box_loss).sum().backward()
    assert net.backbone.blocks[0][0].weight.grad is not None  # the loss reaches the encoder
    net.eval()
    with torch.no_grad():
        found = net({"image": torch.randn(3, 1, 32, 32)})["detections"]
    assert len(found) == 3 and all(set(d) == {"boxes", "scores", "labels"} for d in found)


def test_monai_puts_rows_first_and_the_boundary_permutation_restores_columns_first():
    """MONAI's boxes and anchors run along the first spatial axis (rows) first; on a 32 x 64 image
    its anchors' first coordinate stays within the 32 rows, and `to_monai` turns them into
    dkbench's (x = column) order, whose x spans the 64 columns."""
    from dkbench.backbones import create_backbone
    from dkbench.models.detector import DetectorNet, plan_anchors, to_monai

    label = pad_boxes([np.array([[4, 6, 14, 12]])])
    net = DetectorNet(create_backbone("tinycnn", in_chans=1, img_size=32), 1, plan_anchors(label, strides=(2, 4, 8)))
    anchors = net({"image": torch.zeros(1, 1, 32, 64)})["anchors"][0]
    centre_rows, centre_cols = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    assert centre_rows.max() < 32 < centre_cols.max() < 64
    ours = to_monai(anchors)
    torch.testing.assert_close((ours[:, 0] + ours[:, 2]) / 2, centre_cols)
    torch.testing.assert_close(to_monai(ours), anchors)


# --- metrics on hand-made boxes ----------------------------------------------------------
GTS = [{"boxes": np.array([[10, 10, 20, 20]]), "labels": np.array([0])},
       {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)},  # a negative image
       {"boxes": np.array([[1, 1, 5, 5], [30, 30, 40, 44]]), "labels": np.array([0, 0])}]


def _preds(boxes_scores: list[list[tuple[list[float], float]]]) -> list[dict]:
    return [{"boxes": np.array([b for b, _ in image], np.float32).reshape(-1, 4),
             "scores": np.array([s for _, s in image], np.float32), "labels": np.zeros(len(image), int)}
            for image in boxes_scores]


def test_perfect_detections_score_one_and_no_detections_score_zero():
    perfect = _preds([[(g.tolist(), 0.9) for g in gt["boxes"]] for gt in GTS])
    scores, _ = detection_metrics(perfect, GTS, ["lesion"])
    assert list(scores) == list(DETECTION_METRICS)
    assert all(v == pytest.approx(1.0) for v in scores.values()), scores
    nothing = _preds([[], [], []])
    scores, _ = detection_metrics(nothing, GTS, ["lesion"])
    assert all(v == 0.0 for v in scores.values()), scores


def test_a_confident_false_positive_costs_what_the_definitions_say():
    # the false positive (score 0.95) outranks the three hits (0.9): precision 1/2, 2/3, 3/4 at
    # recall 1/3, 2/3, 1 → interpolated AP = 0.75; 1 FP over 3 images = 1/3 FP per image before any hit,
    # so sensitivity 0 below 1/3 FP/image and 1 from there on
    preds = _preds([[([10, 10, 20, 20], 0.9)], [([50, 50, 60, 60], 0.95)],
                    [([1, 1, 5, 5], 0.9), ([30, 30, 40, 44], 0.9)]])
    scores, matched = detection_metrics(preds, GTS, ["lesion"])
    assert scores["map50"] == pytest.approx(0.75) and scores["map10"] == pytest.approx(0.75)
    assert scores[froc_key(0.125)] == 0 and scores[froc_key(0.25)] == 0
    assert all(scores[froc_key(r)] == pytest.approx(1.0) for r in (0.5, 1, 2, 4, 8))
    assert scores["froc_mean"] == pytest.approx(5 / 7)
    from dkbench.metrics.detection import matching_thresholds

    rows = per_image_rows(preds, GTS, matched, matching_thresholds())
    np.testing.assert_array_equal(rows["tp50"], [1, 0, 2])
    np.testing.assert_array_equal(rows["fp50"], [0, 1, 0])
    np.testing.assert_array_equal(rows["recall50"], [1, np.nan, 1])
    np.testing.assert_allclose(rows["max_score"], [0.9, 0.95, 0.9])


def test_iou_between_the_thresholds_counts_at_01_not_at_05():
    # [10,10,20,20] vs [14,10,24,20]: IoU = 60 / 140 = 0.43
    preds = _preds([[([14, 10, 24, 20], 0.8)], [], [([1, 1, 5, 5], 0.8), ([30, 30, 40, 44], 0.8)]])
    scores, matched = detection_metrics(preds, GTS, ["lesion"])
    assert scores["map10"] == pytest.approx(1.0)
    assert scores["map50"] < 1.0
    # FROC at IoU 0.5: two of three lesions found, the shifted box is a false positive (1/3 per image)
    assert scores[froc_key(8)] == pytest.approx(2 / 3)
    lenient, _ = detection_metrics(preds, GTS, ["lesion"], froc_iou=0.1)
    assert lenient[froc_key(8)] == pytest.approx(1.0)


def test_no_lesion_in_the_set_gives_nan_not_zero():
    scores, _ = detection_metrics(_preds([[([1, 1, 4, 4], 0.5)]]), [GTS[1]], ["lesion"])
    assert all(np.isnan(v) for v in scores.values())


# --- bad input ----------------------------------------------------------------------------
def _arrays(label: np.ndarray, size: int = 32, task: str = "detection") -> DatasetArrays:
    from dataclasses import replace

    n = len(label)
    split = SplitArrays(image=np.zeros((n, 1, size, size), np.uint8), label=label,
                        ids=np.array([f"img{i}" for i in range(n)]))
    return DatasetArrays(spec=replace(DET_SPEC, size=size, task=task, provides=frozenset()), splits={"train": split, "val": split,
                                                                                "test": split})


GOOD = [np.array([[2, 3, 10, 12]]), np.zeros((0, 4))]


@pytest.mark.parametrize(("boxes", "match"), [
    ([np.array([[2, 3, 40, 12]]), np.zeros((0, 4))], "outside the 32x32 image"),
    ([np.array([[-1, 3, 10, 12]]), np.zeros((0, 4))], "outside"),
    ([np.array([[10, 3, 2, 12]]), np.zeros((0, 4))], "x_hi <= x_lo"),
    ([np.array([[2, 3, 2, 12]]), np.zeros((0, 4))], "x_hi <= x_lo"),
])
def test_malformed_boxes_are_refused_in_one_line_naming_image_and_fix(boxes, match):
    from dkbench.data.loading import validate

    with pytest.raises(InvalidDataError, match=match) as err:
        validate(_arrays(pad_boxes(boxes)))
    assert "img0" in str(err.value) and "\n" not in str(err.value) and isinstance(err.value, UserError)


def test_padding_negatives_and_other_malformations():
    from dkbench.data.loading import validate

    validate(_arrays(pad_boxes(GOOD)))  # one lesion image, one negative: fine
    partial = pad_boxes(GOOD)
    partial[0, 0, 2] = np.nan
    with pytest.raises(InvalidDataError, match="partly NaN"):
        validate(_arrays(partial))
    wrong_class = pad_boxes(GOOD, [np.array([1]), np.zeros(0)])
    with pytest.raises(InvalidDataError, match="class"):
        validate(_arrays(wrong_class))
    with pytest.raises(InvalidDataError, match="no image has a box"):
        validate(_arrays(pad_boxes([np.zeros((0, 4))] * 2)))
    # a classification dataset's labels where boxes are expected
    with pytest.raises(InvalidDataError, match="_det datasets"):
        validate(_arrays(np.array([0, 1])))
    with pytest.raises(InvalidDataError, match="_det datasets"):
        validate(_arrays(np.zeros((2, 3), np.int64)))
    with pytest.raises(InvalidDataError, match="dtype"):
        check_box_labels("x", "train", np.zeros((2, 1, 5), np.int64), np.array(["a", "b"]), 32, 1)


def test_a_classification_dataset_asked_for_detection_names_the_fix():
    from dkbench.models.detection import DetectionModule
    from dkbench.strategies import create_strategy

    spec = DatasetSpec(name="breastmnist", task="binary", num_classes=2, in_chans=1, spatial_dims=2, size=28)
    with pytest.raises(RunConfigError, match="busi_det") as err:
        DetectionModule(torch.nn.Linear(1, 1), spec, create_strategy("baseline"), optimizer=torch.optim.Adam)
    assert "\n" not in str(err.value)


def test_strategies_declare_detection_and_the_others_are_recorded_incompatible():
    from dkbench.strategies import STRATEGIES, create_strategy

    assert create_strategy("baseline").incompatibility(DET_SPEC) is None
    for name in STRATEGIES.names():
        strategy = STRATEGIES.get(name)
        if "detection" in strategy.tasks:
            continue
        reason = create_strategy(name).incompatibility(DET_SPEC)
        assert reason and "detection" in reason, name


def test_detector_settings_refuse_unknown_and_bad_values():
    from dkbench.models.detector import DetectorSettings

    assert DetectorSettings.from_config({"fpn_channels": 32}).fpn_channels == 32
    with pytest.raises(RunConfigError, match="unknown"):
        DetectorSettings.from_config({"fpn_channel": 32})
    with pytest.raises(RunConfigError, match="multiple of 8"):
        DetectorSettings.from_config({"fpn_channels": 12})


# --- the three datasets -----------------------------------------------------------------------
def _load(name: str, data_dir, *overrides: str):
    from dkbench.data.loading import load_dataset
    from dkbench.runner.compose import compose_config

    return load_dataset(compose_config([f"dataset={name}", *overrides]).dataset, data_dir)


@pytest.mark.data
@pytest.mark.parametrize(("det", "seg", "file"), [("busi_det", "busi_seg", "busi/busi_128.npz"),
                                                  ("kvasir_det", "kvasir_seg", "kvasir_seg/kvasir_seg_128.npz")])
def test_real_detection_sets_are_their_segmentation_sets_with_boxes(det, seg, file, data_dir):
    from tests.conftest import require_file

    require_file(data_dir, file)
    boxes, masks = _load(det, data_dir), _load(seg, data_dir, "dataset.options={include_normal: true}"
                                                if seg == "busi_seg" else "dataset.options={}")
    assert boxes.spec.task == "detection" and "derived from the lesion masks" in boxes.notes["boxes"].lower()
    for split in ("train", "val", "test"):
        b, m = boxes.splits[split], masks.splits[split]
        np.testing.assert_array_equal(b.ids, m.ids)  # the same leak-free split, image by image
        counts = box_counts(b.label)
        lesion = m.label.reshape(len(m), -1).any(1)
        np.testing.assert_array_equal(counts > 0, lesion)  # a negative is exactly an empty mask
        # the boxes of an image span its mask's bounding box
        rows = b.label[lesion]
        span = np.stack([np.nanmin(rows[..., 0], 1), np.nanmin(rows[..., 1], 1),
                         np.nanmax(rows[..., 2], 1), np.nanmax(rows[..., 3], 1)], 1)
        np.testing.assert_array_equal(span, b.extras["bbox"][lesion])
    if det == "busi_det":  # normal images are kept as negatives
        assert boxes.notes["box_counts"]["train"]["negatives"] > 0


def test_probe_det_boxes_are_the_generators_lesion_boxes_with_negatives(tmp_path):
    arrays = _load("probe_det", tmp_path, "dataset.options.n_train=30", "dataset.options.n_val=12",
                   "dataset.options.n_test=12")
    for split in arrays.splits.values():
        counts = box_counts(split.label)
        assert set(counts.tolist()) == {0, 1}  # one lesion or none
        has = counts == 1
        np.testing.assert_array_equal(split.label[has, 0, :4], split.extras["bbox"][has])
        assert np.isnan(split.extras["bbox"][~has]).all()
    resized = _load("probe_det", tmp_path, "dataset.options.n_train=30", "dataset.options.n_val=12",
                    "dataset.options.n_test=12", "dataset.resize=32")
    np.testing.assert_allclose(resized.splits["test"].label, arrays.splits["test"].label * [0.5, 0.5, 0.5, 0.5, 1])
