"""`attention_supervision`: a loss that pulls the class-activation map onto the lesion.

Mechanism: (1) every alignment loss is lower for a CAM inside the expert region than for one
outside it (hand-made maps), for masks and boxes; (2) the term's gradient reaches the backbone
and, followed for a few steps, moves the CAM's mass into the region; (3) the run's loss
includes the term, its metadata says which CAM was supervised, and on a tiny shortcut probe
the attention-mask overlap of the run is higher than the baseline's with the same seed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dkbench.backbones import create_backbone
from dkbench.geometry.boxes import box_from_mask
from dkbench.data.spec import DatasetArrays, SplitArrays
from dkbench.data.loading import spec_from_config
from dkbench.data.readers.probe import generate_split
from dkbench.data.transforms import normalize
from dkbench.metrics.attention import attention_overlap
from dkbench.runner.compose import compose_config
from dkbench.strategies import BuildContext, StepContext, create_strategy
from dkbench.strategies.catalogue.attention_supervision import alignment_loss, class_cam


def _region() -> torch.Tensor:
    region = torch.zeros(2, 1, 16, 16)
    region[:, :, 4:10, 4:10] = 1
    return region


@pytest.mark.parametrize("loss", ["energy", "bce", "kl"])
def test_loss_is_lower_for_a_cam_inside_the_region(loss):
    region = _region()
    inside = torch.zeros(2, 1, 16, 16)
    inside[:, :, 5:9, 5:9] = 1.0
    outside = torch.zeros(2, 1, 16, 16)
    outside[:, :, 0:3, 12:16] = 1.0  # a corner, like the probe's marker
    half = inside + outside
    l_in, l_half, l_out = (alignment_loss(c, region, loss) for c in (inside, half, outside))
    assert (l_in < l_half).all() and (l_half < l_out).all()
    if loss == "energy":
        assert torch.allclose(l_in, torch.zeros(2), atol=1e-5) and torch.allclose(l_out, torch.ones(2))
    empty = alignment_loss(inside, torch.zeros_like(region), loss)
    assert torch.isnan(empty).all()  # images without a lesion are left out


def test_class_cam_uses_the_target_class_weights():
    fmap = torch.zeros(2, 2, 4, 4)
    fmap[:, 0, 0, 0] = 1.0  # channel 0 fires in the top-left corner
    fmap[:, 1, 3, 3] = 1.0  # channel 1 in the bottom-right
    w = torch.tensor([[1.0, -1.0]])  # one logit: channel 0 = malignant evidence, channel 1 = benign
    cam = class_cam(fmap, w, torch.tensor([1, 0]), "binary", (4, 4))
    assert cam[0, 0, 0, 0] > 0 and cam[0, 0, 3, 3] == 0  # label 1: where the malignant evidence is
    assert cam[1, 0, 3, 3] > 0 and cam[1, 0, 0, 0] == 0  # label 0: where the benign evidence is
    w3 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    cam3 = class_cam(fmap, w3, torch.tensor([1, 2]), "multiclass", (4, 4))
    assert cam3[0, 0, 0, 0] > 0 and cam3[1, 0, 3, 3] > 0 and cam3[0, 0, 3, 3] == 0


def _spec(dataset: str = "probe"):
    return spec_from_config(compose_config([f"dataset={dataset}"]).dataset)


def _build(strategy, spec):
    """build_net with a context whose factory builds a tinycnn for the spec."""
    split = SplitArrays(image=np.zeros((2, spec.in_chans, spec.size, spec.size), np.uint8),
                        label=np.zeros(2, np.int64), ids=np.array(["a", "b"]))
    arrays = DatasetArrays(spec, {"train": split, "val": split, "test": split})

    def make(**overrides):
        return create_backbone("tinycnn", **{"in_chans": spec.in_chans, "spatial_dims": spec.spatial_dims,
                                             "img_size": spec.size, **overrides})

    return strategy.build_net(BuildContext(arrays=arrays, make_backbone=make))


TRAIN = StepContext.for_stage("train", _spec())


def _probe_batch(n: int = 32) -> dict:
    arr = generate_split(n, size=64, split="train", options={"shortcut": {"enabled": True}})
    mask = torch.from_numpy(arr.extras["mask"])
    return {"image": normalize(torch.from_numpy(arr.image), 0.5, 0.5), "label": torch.from_numpy(arr.label),
            "mask": mask, "bbox": box_from_mask(mask)}


@pytest.mark.parametrize("cam,region,loss", [("agnostic", "mask", "kl"), ("agnostic", "bbox", "energy"),
                                             ("class", "mask", "energy")])
def test_gradient_reaches_the_backbone_and_moves_attention_onto_the_lesion(cam, region, loss):
    strategy = create_strategy("attention_supervision", cam=cam, region=region, loss=loss)
    torch.manual_seed(0)
    net = _build(strategy, _spec())
    assert strategy.cam_used == cam
    batch = _probe_batch(16)
    net.train()
    net.zero_grad()
    strategy.attention_loss(net(batch), batch, TRAIN).backward()
    first_conv = net.backbone.blocks[0][0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0

    def measure() -> tuple[float, float]:  # batch statistics: the running ones lag after 8 steps
        with torch.no_grad():
            out = net(batch)
            return float(strategy.attention_loss(out, batch, TRAIN)), float(attention_overlap(out, batch))

    loss0, overlap0 = measure()
    opt = torch.optim.Adam(net.backbone.parameters(), lr=3e-3)  # the attention term alone, backbone only
    for _ in range(8):
        loss = strategy.attention_loss(net(batch), batch, TRAIN)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss1, overlap1 = measure()
    assert loss1 < 0.5 * loss0
    if cam == "agnostic":  # the supervised map is the one attention_overlap measures
        assert overlap1 > overlap0 + 0.15


def test_class_cam_reads_the_head_the_network_returns_and_falls_back_to_the_agnostic_map():
    from dkbench.metrics.attention import activation_map
    from dkbench.strategies.base import ClassifierNet

    strategy = create_strategy("attention_supervision", cam="class")
    torch.manual_seed(0)
    net = _build(strategy, _spec())
    torch.manual_seed(0)
    plain = _build(create_strategy("attention_supervision"), _spec())
    # the same classifier (modules, initial weights) as the agnostic run's, plus its head weight
    # in the outputs; the strategy keeps no reference to the network and no state
    assert strategy.cam_used == "class" and isinstance(net, ClassifierNet) and type(plain) is ClassifierNet
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), plain.state_dict().values(), strict=True))
    assert not list(strategy.modules())[1:] and not strategy.state_dict()
    batch = _probe_batch(4)
    out = net(batch)
    assert out["head_weight"] is net.head.weight
    cam = strategy.attention(out, batch, TRAIN)
    torch.testing.assert_close(cam, class_cam(out["feature_map"], net.head.weight, batch["label"], "binary", (64, 64)))
    # the term's gradient reaches the head through the returned weight
    strategy.attention_loss(out, batch, TRAIN).backward()
    assert net.head.weight.grad is not None and net.head.weight.grad.abs().sum() > 0
    # a network that returns no head weight: the class-agnostic map
    without = {k: v for k, v in out.items() if k != "head_weight"}
    torch.testing.assert_close(strategy.attention(without, batch, TRAIN), activation_map(out["feature_map"], (64, 64)))
    assert torch.isfinite(strategy.attention_loss(without, batch, TRAIN))
    # multilabel: no single target class, so the agnostic map (and the plain classifier)
    s2 = create_strategy("attention_supervision", cam="class")
    multilabel = _build(s2, _spec("chestmnist"))
    assert s2.cam_used == "agnostic" and type(multilabel) is ClassifierNet


def test_tiny_run_adds_the_term_and_raises_attention_overlap_over_the_baseline(tiny_run):
    """Same seed, same tiny shortcut probe, 3 epochs: the supervised run looks at the lesion more.
    (On the full probe, 5 epochs: 0.035 -> 0.35 test overlap, and test AUROC 0.54 -> 0.68.)"""
    epochs = "trainer.max_epochs=3"
    base, _ = tiny_run("strategy=baseline", epochs)
    metrics, run_dir = tiny_run("strategy=attention_supervision", epochs)
    for f in ("config.yaml", "metrics.json", "metadata.json", "predictions.csv"):
        assert (run_dir / f).exists(), f
    meta = json.loads((run_dir / "metadata.json").read_text())["strategy"]
    assert meta["cam_used"] == "agnostic" and meta["options"]["loss"] == "kl"
    logs = list(run_dir.rglob("metrics.csv"))
    assert logs, "csv logger output"
    header = logs[0].read_text().splitlines()[0]
    assert "train/loss_attention" in header and "train/loss_task" in header
    assert metrics["test/attention_overlap"] > base["test/attention_overlap"] + 0.02


@pytest.mark.parametrize("loss", ["energy", "bce", "kl"])
def test_the_term_is_a_masked_mean_computed_without_host_reads(monkeypatch, loss):
    """The term averages the images with a lesion on the device (no `valid.any()` / boolean
    indexing, which wait for the device every step): equal to the mean over those images, zero
    and still differentiable for a batch without any lesion."""
    from tests.unit.test_strategy_global_local import no_host_reads

    strategy = create_strategy("attention_supervision", loss=loss)
    torch.manual_seed(0)
    net = _build(strategy, _spec())
    batch = _probe_batch(4)
    batch["mask"] = batch["mask"].clone()
    batch["mask"][1] = 0  # one image without a lesion
    with no_host_reads(monkeypatch):
        out = net(batch)
        term = strategy.attention_loss(out, batch, TRAIN)
        term.backward()
    from dkbench.strategies.catalogue.roi_input import expert_region

    per_image = alignment_loss(strategy.attention(out, batch, TRAIN), expert_region(batch, "mask", strategy.options.dilate),
                               loss)
    torch.testing.assert_close(term, per_image[[0, 2, 3]].mean())
    empty = dict(batch, mask=torch.zeros_like(batch["mask"]))
    net.zero_grad()
    with no_host_reads(monkeypatch):
        zero = strategy.attention_loss(net(empty), empty, TRAIN)
        zero.backward()
    assert float(zero.detach()) == 0.0 and zero.requires_grad
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
