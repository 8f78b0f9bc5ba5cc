"""multitask_seg: a segmentation decoder shares the encoder; both heads learn, the seg term
reaches the encoder, and the decoder's Dice beats trivial masks (SURVEY.md family A)."""

from __future__ import annotations

import json

import pytest
import torch

from dkbench.backbones import create_backbone
from dkbench.data.datamodule import InMemoryDataset
from dkbench.data.loading import spec_from_config
from dkbench.data.readers.probe import generate_split, resolve_options
from dkbench.data.spec import DatasetArrays
from dkbench.runner.compose import compose_config
from dkbench.strategies import BuildContext, IncompatibleStrategyError, StepContext, create_strategy
from dkbench.strategies.catalogue.multitask_seg import hard_dice, soft_dice_loss


def _spec(name: str):
    return spec_from_config(compose_config([f"dataset={name}"]).dataset)


@pytest.fixture(scope="module")
def probe_batch() -> dict:
    """32 clearly visible probe lesions (64 px), normalised as the DataModule does."""
    split = generate_split(32, size=64, split="train", options=resolve_options({"signal": 1.0}))
    return InMemoryDataset(split, "binary", 0.5, 0.5).__getitems__(list(range(32)))


def _net(strategy, arch="tinycnn", size=64, dataset="probe"):
    torch.manual_seed(0)
    spec = _spec(dataset)

    def make_backbone(**overrides):
        return create_backbone(arch, **{"in_chans": 1, "spatial_dims": 2, "img_size": size, **overrides})

    return strategy.build_net(BuildContext(arrays=DatasetArrays(spec, {}), make_backbone=make_backbone))


def _step(stage: str, dataset: str = "probe") -> StepContext:
    return StepContext.for_stage(stage, _spec(dataset))


def _train(strategy, net, batch, steps):
    """Full-batch Adam on the strategy's joint loss; returns per-step (cls, seg) losses."""
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    history = []
    step = _step("train")
    for _ in range(steps):
        out = net(batch)
        terms = strategy.loss_terms(step.task_loss(out["logits"], batch["label"]), out, batch, step)
        dice, bce = strategy.seg_losses(out, batch)
        history.append((terms["task"].item(), (dice + bce).item()))
        opt.zero_grad()
        torch.stack(list(terms.values())).sum().backward()
        opt.step()
    return history


@pytest.mark.parametrize(("arch", "size", "fmap"), [("tinycnn", 64, 8), ("resnet18", 28, 1), ("resnet18", 128, 4)])
def test_output_shapes_for_any_feature_map_size(arch, size, fmap):
    """The decoder returns a mask at the input size, also from a 1×1 feature map."""
    net = _net(create_strategy("multitask_seg"), arch, size)
    out = net({"image": torch.randn(2, 1, size, size)})
    assert out["feature_map"].shape[-2:] == (fmap, fmap)
    assert out["seg_logits"].shape == (2, 1, size, size)
    assert out["logits"].shape == (2, 2) and out["embedding"].shape == (2, net.backbone.num_features)


def test_seg_term_alone_reaches_decoder_and_encoder(probe_batch):
    strategy = create_strategy("multitask_seg")
    net = _net(strategy)
    out = net(probe_batch)
    seg = strategy.loss_terms(torch.zeros(32), out, probe_batch, _step("train"))["seg"]
    seg.backward()
    for part in (net.decoder, net.backbone):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert net.head.weight.grad is None  # the classification head is not on the seg path


def test_both_heads_train_and_dice_beats_trivial_masks(probe_batch):
    mask = probe_batch["mask"].float()
    all_fg = hard_dice(torch.full_like(mask, 10.0), mask).mean()
    mean_mask = (mask.mean(0, keepdim=True) > 0.5).float().expand_as(mask)
    trivial = max(all_fg.item(), hard_dice(20 * mean_mask - 10, mask).mean().item())

    strategy = create_strategy("multitask_seg", seg_weight=1.0)
    net = _net(strategy)
    history = _train(strategy, net, probe_batch, steps=25)
    (cls0, seg0), (cls1, seg1) = history[0], history[-1]
    assert cls1 < 0.5 * cls0 and seg1 < 0.8 * seg0
    with torch.no_grad():  # batch statistics: 25 steps are too few for BatchNorm's running ones
        dice = strategy.extra_metrics(net(probe_batch), probe_batch, _step("test"))["seg_dice"].item()
    assert dice > trivial + 0.2, (dice, trivial)

    # control: the same training without the seg term leaves the decoder at chance
    control = create_strategy("multitask_seg", seg_weight=0.0)
    net0 = _net(control)
    _train(control, net0, probe_batch, steps=25)
    with torch.no_grad():
        dice0 = control.extra_metrics(net0(probe_batch), probe_batch, _step("test"))["seg_dice"].item()
    assert dice > dice0 + 0.3, (dice, dice0)


def test_empty_masks_use_bce_only_and_dice_convention():
    logits = torch.full((2, 1, 8, 8), -5.0)
    empty = torch.zeros(2, 1, 8, 8)
    assert soft_dice_loss(logits, empty).item() == 0.0  # no lesion: Dice term off, BCE supervises
    assert hard_dice(logits, empty).tolist() == [1.0, 1.0]  # empty truth, empty prediction
    assert hard_dice(-logits, empty).tolist() == [0.0, 0.0]  # empty truth, false positives


def test_dice_terms_equal_the_pre_v2_formulas():
    """soft_dice_loss / hard_dice now use dkbench.metrics.segmentation (soft_dice, per_image_scores):
    bit-for-bit the values of the former local formulas, written out here."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 1, 20, 20, generator=gen) * 3
    mask = (torch.rand(6, 1, 20, 20, generator=gen) < 0.3).float()
    mask[1] = 0  # an image without a lesion: out of the Dice mean
    mask[2] = 0  # … and with an empty prediction below: hard Dice 1
    logits[2] = -5.0
    prob, target = torch.sigmoid(logits).flatten(1), mask.flatten(1)
    dice = (2 * (prob * target).sum(1) + 0.5) / (prob.sum(1) + target.sum(1) + 0.5)
    has_lesion = (target.sum(1) > 0).float()
    assert torch.equal(soft_dice_loss(logits, mask, 0.5), ((1 - dice) * has_lesion).sum() / has_lesion.sum())
    pred = (prob > 0.5).float()
    total = pred.sum(1) + target.sum(1)
    expected = torch.where(total > 0, 2 * (pred * target).sum(1) / total.clamp_min(1), torch.ones_like(total))
    assert torch.equal(hard_dice(logits, mask), expected) and float(expected[2]) == 1.0


def test_options_are_typed_and_checked():
    strategy = create_strategy("multitask_seg", seg_weight=2, decoder_stages=1)
    assert strategy.options.seg_weight == 2.0 and isinstance(strategy.options.seg_weight, float)
    assert len(_net(strategy).decoder.blocks) == 1
    for option, value in (("seg_weight", -1.0), ("decoder_channels", 0), ("decoder_stages", -1), ("dice_smooth", -1.0)):
        with pytest.raises(ValueError, match=f"option '{option}' must be"):
            create_strategy("multitask_seg", **{option: value})


def test_incompatible_without_masks():
    strategy = create_strategy("multitask_seg")
    reason = strategy.incompatibility(_spec("breastmnist"))
    assert reason and "mask" in reason
    with pytest.raises(IncompatibleStrategyError, match="mask"):
        strategy.check_compatible(_spec("breastmnist"))
    assert strategy.incompatibility(_spec("busi_binary")) is None


def test_tiny_run_records_seg_dice(tiny_run):
    metrics, run_dir = tiny_run("strategy=multitask_seg", "dataset.options.signal=1.0")
    for name in ("config.yaml", "metrics.json", "metadata.json", "predictions.csv"):
        assert (run_dir / name).is_file(), name
    assert 0.0 <= metrics["test/seg_dice"] <= 1.0 and "test/auroc" in metrics
    meta = json.loads((run_dir / "metadata.json").read_text())
    assert meta["strategy"]["strategy"] == "multitask_seg" and "seg_dice" in meta["strategy"]
    state = torch.load(run_dir / "checkpoints" / "best_weights.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("net.decoder.") for k in state)  # the decoder is part of the trained net


# --- detection (issue 18): Retina U-Net's segmentation head beside the detector ---------------
@pytest.fixture(scope="module")
def det_data(tmp_path_factory):
    """A tiny probe_det (visible lesions, a third negatives), its BuildContext and one train batch."""
    from dkbench.data.loading import load_dataset

    cfg = compose_config(["dataset=probe_det", "dataset.options.n_train=8", "dataset.options.n_val=4",
                          "dataset.options.n_test=4", "dataset.options.signal=1.0"])
    arrays = load_dataset(cfg.dataset, tmp_path_factory.mktemp("data"))

    def make_backbone(**overrides):
        return create_backbone("tinycnn", **{"in_chans": 1, "spatial_dims": 2, "img_size": 64, **overrides})

    ctx = BuildContext(arrays=arrays, make_backbone=make_backbone, config={"model": {"detector": {"fpn_channels": 16}}})
    batch = InMemoryDataset(arrays.splits["train"], "detection", 0.5, 0.5).__getitems__(list(range(8)))
    assert batch["mask"].shape == (8, 1, 64, 64) and batch["label"].shape[-1] == 5
    return arrays, ctx, batch


def _det_net(strategy, ctx):
    torch.manual_seed(0)
    return strategy.build_net(ctx)


def test_detection_net_is_the_detector_with_a_seg_head_on_the_finest_level(det_data):
    from dkbench.models.detector import DetectorNet

    arrays, ctx, batch = det_data
    strategy = create_strategy("multitask_seg")
    assert strategy.incompatibility(arrays.spec) is None and strategy.knowledge == "expert masks (training)"
    net = _det_net(strategy, ctx)
    assert isinstance(net, DetectorNet) and set(net.dense_heads) == {"seg_logits"}
    head = net.dense_heads["seg_logits"]
    assert head.reduce[0].in_channels == 16  # the detector's fpn_channels: it reads an FPN level
    ids = {id(p) for p in net.parameters()}  # what TaskModule.configure_optimizers optimises
    assert all(id(p) in ids for p in head.parameters())
    seen = []
    hook = head.register_forward_hook(lambda module, args, result: seen.append(tuple(args[0].shape)))
    out = net(batch)
    hook.remove()
    assert seen == [(8, 16, 32, 32)] and net.strides[0] == 2  # the finest level (stride 2 at 64 px)
    assert out["seg_logits"].shape == (8, 1, 64, 64) and "cls_logits" in out
    net.eval()
    with torch.no_grad():
        found = net(batch)
    assert found["seg_logits"].shape == (8, 1, 64, 64) and len(found["detections"]) == 8  # boxes still scored
    assert "finest FPN level (stride 2" in strategy.metadata()["decoder_input"]
    # the plain detector has no head, no seg output and no extra weights
    plain = _det_net(create_strategy("baseline"), ctx)
    assert len(plain.dense_heads) == 0 and "seg_logits" not in plain(batch)
    assert not any(k.startswith("dense_heads.") for k in plain.state_dict())
    assert set(net.state_dict()) - set(plain.state_dict()) == {f"dense_heads.seg_logits.{k}"
                                                              for k in head.state_dict()}


def test_detection_seg_term_reaches_the_encoder_and_the_head_only(det_data):
    from dkbench.models.detector import detection_loss

    arrays, ctx, batch = det_data
    strategy = create_strategy("multitask_seg")
    net = _det_net(strategy, ctx)
    out = net(batch)
    step = StepContext.for_stage("train", arrays.spec)
    terms = strategy.loss_terms(detection_loss(net, out, batch["label"])[0], out, batch, step)
    assert set(terms) == {"task", "seg"} and terms["seg"] > 0
    terms["seg"].backward()
    for part in (net.dense_heads, net.backbone):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    # the detector's heads are not on the seg path
    assert all(p.grad is None for p in net.detector.network.classification_head.parameters())
    assert 0.0 <= strategy.extra_metrics(out, batch, step)["seg_dice"].item() <= 1.0


def _encoder_grads(net, loss_fn, seed=0):
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the hard-negative sampler draws random anchors
    loss_fn().backward()
    return [p.grad.clone() for p in net.backbone.parameters()]


@pytest.mark.parametrize("seg_weight", [0.0, 1.0])
def test_detection_seg_weight_is_what_moves_the_encoder(det_data, seg_weight):
    """seg_weight 0: the encoder's gradient is the plain detector loss's; 1: the seg term changes it."""
    from dkbench.models.detector import detection_loss

    arrays, ctx, batch = det_data
    strategy = create_strategy("multitask_seg", seg_weight=seg_weight)
    net = _det_net(strategy, ctx)
    step = StepContext.for_stage("train", arrays.spec)

    def joint():
        out = net(batch)
        terms = strategy.loss_terms(detection_loss(net, out, batch["label"])[0], out, batch, step)
        return torch.stack(list(terms.values())).sum()  # as TaskModule.training_step

    def detector_only():
        out = net(batch)
        return detection_loss(net, out, batch["label"])[0].mean()

    g_joint, g_plain = _encoder_grads(net, joint), _encoder_grads(net, detector_only)
    same = all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(g_joint, g_plain, strict=True))
    assert same == (seg_weight == 0.0)


def test_detection_tiny_run_scores_boxes_and_logs_seg_dice(tiny_run):
    metrics, run_dir = tiny_run("dataset=probe_det", "strategy=multitask_seg", "dataset.options.n_train=48",
                                "dataset.options.n_val=24", "dataset.options.n_test=24", "data.batch_size=16",
                                "model.detector.fpn_channels=16")
    assert 0.0 <= metrics["test/seg_dice"] <= 1.0 and 0.0 <= metrics["test/map50"] <= 1.0
    assert "test/auroc" not in metrics  # the test metric is the detector's
    state = torch.load(run_dir / "checkpoints" / "best_weights.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("net.dense_heads.seg_logits.") for k in state)  # the head was trained with the net
    meta = json.loads((run_dir / "metadata.json").read_text())["strategy"]
    assert "FPN" in meta["decoder_input"]
